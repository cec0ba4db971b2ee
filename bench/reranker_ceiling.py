"""Benchmark diagnostic: can a cross-encoder reranker, trained at joint training's CPU scale, lift recall@5 where the dual
encoder stops?

What joint training leaves is telling an article's paragraphs apart (bench/retrieval_misses.py), which a dual encoder,
embedding question and passage apart, does poorly and a cross-encoder, reading them together, does well. This script
trains one as `bench/retriever_ceiling.py` trains the dual encoder: the first N questions of joint training's order,
the dense top --candidates of each, a perfect teacher (all the mass on the gold passages, pdist), AdamW with linear
warm-up and decay. The cross-encoder is the index's encoder reading "question [SEP] title [SEP] text", mean-pooled, with
a linear head; a candidate's score is the dual encoder's s / tau plus the head's output, and the head starts at zero,
so the untrained reranker keeps the dense order and training moves it only where the teacher says. It then reranks the
dense top --depth of each held-out question (the training files' questions about a tenth of their articles, never
trained on) and measures recall@1/5. For scale, it measures first how far the shipped span reader's relevance head
(the same encoder read as a cross-encoder, trained on about 32,000 questions) reorders the same candidates.
Settings are chosen on these held-out sets; `--evaluation-sets` adds the joint bench's (evaluation only).

Run: `python bench/reranker_ceiling.py --threads 2` (about 50 minutes on two cores: 150 steps of about 7 s, and
about 6 minutes per set and reranker to read 10,000 pairs).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bench.common import DEFAULT_INDEX, default_out, log, machine_info, results_out, write_result
from bench.joint_training import HELD_OUT_SHARE, TRAIN, held_out_sets, question_sets
from indexer.encoder import load_encoder_model
from indexer.index import Index
from indexer.records import SearchHit
from rag.command_line import check_counts, warn_of_emulated_bf16
from rag.models import DEFAULT_READER
from rag.span_reader import SpanReader
from trainer.joint_losses import pdist_loss
from trainer.joint_training import JointTrainingConfig, training_order
from trainer.qa_data import QARecord

Scorer = Callable[[str, Sequence[SearchHit]], torch.Tensor]


class CrossEncoder(torch.nn.Module):
    """The index's encoder reading a question with each passage, mean-pooled, and a zero-initialised linear head: its
    output corrects the dual encoder's score, and starts by correcting nothing."""

    def __init__(self, encoder: str, max_length: int) -> None:
        super().__init__()
        self.tokenizer, self.encoder, _ = load_encoder_model(encoder, "cross-encoder")
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.max_length = max_length

    def forward(self, question: str, hits: Sequence[SearchHit]) -> torch.Tensor:
        """(len(hits),) corrections of the candidates' scores."""
        batch = self.tokenizer([question] * len(hits), [f"{h.title} {self.tokenizer.sep_token} {h.text}" for h in hits],
                               truncation="only_second", max_length=self.max_length, padding=True, return_tensors="pt")
        batch = batch.to(self.head.weight.device)
        hidden = self.encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)


def dense_scores(hits: Sequence[SearchHit], tau: float, device: str) -> torch.Tensor:
    """The dual encoder's scores of `hits` over tau: the logits the cross-encoder corrects."""
    return torch.tensor([h.score for h in hits], device=device) / tau


def reranked_recall(index: Index, records: Sequence[QARecord], depth: int, score: Scorer) -> dict[str, Any]:
    """recall@1/5 of the dense top `depth` and of the same passages ordered by `score` (higher first)."""
    dense = {"recall@1": 0, "recall@5": 0}
    reranked = dict(dense)
    found = index.search_many([r.question for r in records], k=depth, mode="dense")
    with torch.inference_mode():
        for record, hits in zip(tqdm(records, desc="reranking", unit="question"), found):
            gold = [h.doc_id in record.gold_ids for h in hits]
            order = score(record.question, hits).argsort(descending=True).tolist()
            for k in (1, 5):
                dense[f"recall@{k}"] += any(gold[:k])
                reranked[f"recall@{k}"] += any(gold[i] for i in order[:k])
    n = len(records)
    return {"n": n, "dense": {k: v / n for k, v in dense.items()}, "reranked": {k: v / n for k, v in reranked.items()}}


def train_on_gold(index: Index, records: Sequence[QARecord], args: argparse.Namespace) -> tuple[CrossEncoder, dict[str, Any]]:
    """The cross-encoder after len(records) / batch_size steps towards the gold passages among each question's dense
    top candidates (questions whose gold is not among them teach nothing, as in joint training)."""
    torch.manual_seed(args.seed)
    model = CrossEncoder(index.manifest.encoder, args.max_length).to(args.device).train()
    # The head starts at zero, and at the encoder's rate it would stay near it: its own, higher, rate.
    optimizer = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": args.lr},
                                   {"params": model.head.parameters(), "lr": args.head_lr}], weight_decay=0.0)
    steps = len(records) // args.batch_size
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(args.warmup * steps), steps)
    taught, losses = 0, []
    # as rag-train joint --bf16: the compute autocast, the weights and the optimizer in float32
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
    for step in tqdm(range(steps), desc=f"{len(records)} questions", unit="step"):
        batch = records[step * args.batch_size : (step + 1) * args.batch_size]
        for record, hits in zip(batch, index.search_many([r.question for r in batch], k=args.candidates, mode="dense")):
            gold = torch.tensor([h.doc_id in record.gold_ids for h in hits])
            if gold.any():
                taught += 1
                with autocast:
                    scores = dense_scores(hits, args.tau, args.device) + model(record.question, hits)
                loss = pdist_loss(scores[None], torch.where(gold, 0.0, -1e4).to(args.device)[None]) / len(batch)
                loss.backward()
                losses.append(float(loss.detach()) * len(batch))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    tenth = max(1, len(losses) // 10)
    return model.eval(), {"steps": steps, "questions": len(records), "questions_with_gold_in_candidates": taught,
                          "loss_first_tenth": sum(losses[:tenth]) / tenth, "loss_last_tenth": sum(losses[-tenth:]) / tenth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--questions", type=int, default=600, help="training questions (the first N of joint training's order)")
    parser.add_argument("--batch-size", type=int, default=JointTrainingConfig.batch_size)
    parser.add_argument("--candidates", type=int, default=16, help="dense candidates the loss ranks per training question")
    parser.add_argument("--depth", type=int, default=20, help="dense candidates reranked per measured question")
    parser.add_argument("--lr", type=float, default=3e-5, help="the encoder's learning rate")
    parser.add_argument("--head-lr", type=float, default=1e-3, help="the head's learning rate")
    parser.add_argument("--tau", type=float, default=JointTrainingConfig.tau, help="temperature of the dual encoder's scores")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps the learning rate warms up over")
    parser.add_argument("--max-length", type=int, default=256, help="tokens of question and passage the cross-encoder reads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training order and the head")
    parser.add_argument("--limit", type=int, default=500, help="questions per measured set (seeded sample, seed 0)")
    parser.add_argument("--evaluation-sets", action="store_true",
                        help="also measure the joint bench's sets (squad-open-dev, nq-open-test with gold_ids; evaluation only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/reranker_ceiling.json; with another --limit, reranker_ceiling_limitN.json)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-span-reader", action="store_true",
                        help="skip the shipped span reader's reordering (where its encoder is missing: the GPU kit's tree lacks it)")
    parser.add_argument("--bf16", action="store_true", help="train and rerank with bf16 autocast (on a GPU, or a CPU with avx512_bf16)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the cross-encoders train and read")
    args = parser.parse_args()
    try:
        check_counts(args, at_least_one=("questions", "batch_size", "candidates", "depth", "max_length", "limit", "threads"))
    except ValueError as exc:
        parser.error(str(exc))
    if args.depth < 5:
        parser.error("--depth must be at least 5: recall@5 is measured on the reranked top --depth")
    out, info = results_out(parser, args, default_out(__file__)), machine_info()
    warn_of_emulated_bf16(parser.prog, args)
    torch.set_num_threads(args.threads)
    index = Index.open(args.index, readonly=True)
    sets = held_out_sets(index, args.limit, HELD_OUT_SHARE) | (question_sets(args.limit) if args.evaluation_sets else {})
    train = training_order(index, TRAIN, HELD_OUT_SHARE, args.seed)[0][: args.questions]
    result: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("index", "out", "threads", "no_span_reader")},
                              "span_reader": {}, "trained": {}}
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
    span_reader = None if args.no_span_reader else SpanReader.from_pretrained(DEFAULT_READER, device=args.device)
    for name, records in sets.items() if span_reader is not None else ():
        with autocast:
            result["span_reader"][name] = reranked_recall(
                index, records, args.depth, lambda q, hits: torch.tensor([s.relevance for s in span_reader.read([q], [list(hits)])[0]]))
        log("span reader", name, json.dumps(result["span_reader"][name]))
        write_result(out, result, info)  # a run stopped during the training keeps these
    model, result["training"] = train_on_gold(index, train, args)
    log("training", json.dumps(result["training"]))
    for name, records in sets.items():
        with autocast:
            result["trained"][name] = reranked_recall(
                index, records, args.depth, lambda q, hits: dense_scores(hits, args.tau, args.device) + model(q, hits))
        log("trained", name, json.dumps(result["trained"][name]))
        write_result(out, result, info)


if __name__ == "__main__":
    main()
