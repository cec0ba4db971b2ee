"""Benchmark: the recall a perfect teacher would reach, at the scale joint training runs at.

Joint training moves the query encoder towards the passages its reader (the teacher) prefers among the
top candidates; the best any teacher can do is to put all its mass on the gold passages. This script trains
the query encoder as `rag-train joint --query-side-only --loss pdist --candidates C` does (the same training
questions in the same order, the index's frozen passage vectors, tau, AdamW with linear warm-up and decay,
gradient clipping), except that the target is the gold passages (shared equally when the gold document has
several) instead of the reader's preference; questions whose gold is not among the candidates teach nothing,
as in joint training. With --passage-side both sides train, as `rag-train joint --refresh every:N` without
--query-side-only trains them (the candidates' passages embedded afresh at each step, with gradients), and
the whole corpus is re-embedded with the trained encoder at the end; with --rerank L the candidates are the best C
of the stale top L by the current passage side, as `--refresh rerank:L` picks them; with --candidates-from hybrid
they are fused with BM25's best C, as `rag-train joint --candidates-from hybrid` fuses them; with --cloze N, N inverse
cloze examples of the corpus (a passage's sentence asks for the rest of it) train beside the questions, a signal that
needs no question at all; --separate-sides trains a query and a passage encoder apart (DPR's layout) instead of one
for both; --in-batch-negatives ranks each gold among every candidate of its batch (DPR's in-batch negatives);
--gold-in-candidates puts a question's gold passage among its candidates when the search missed it; --teacher span-reader
replaces the perfect teacher with a real one, the shipped span reader's relevance logits over every candidate (a
cross-encoder, and a soft target: it ranks the other candidates too, which a gold-only target cannot). It then measures recall@1/5/20 on the
joint-training benchmark's sets (500 seeded questions each of squad-open-dev and the gold_ids records of
nq-open-test). So for each number of training questions it gives the ceiling of what the pdist/emdr2 losses
can add to recall@5; bench/joint_training.py says how much of it they reach. Those sets are evaluation only:
settings are chosen on the `*-held-out` sets, the training files' questions about a tenth of their articles
(--held-out-share), which never train. No reader runs, so it is cheap
on a CPU (but --passage-side re-embeds the whole corpus once per run: about 25 minutes on two cores).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from bench.common import DEFAULT_INDEX, default_out, log, machine_info, results_out, write_result
from bench.joint_training import HELD_OUT_SHARE, TRAIN, held_out_sets, question_sets, recall
from indexer.index import Index
from indexer.records import SearchHit
from rag.command_line import warn_of_emulated_bf16
from rag.models import DEFAULT_READER
from rag.retriever import DualEncoder
from rag.span_reader import SpanReader
from trainer.joint_losses import pdist_loss
from trainer.joint_training import JointTrainingConfig, training_order
from trainer.training_index import CANDIDATE_SOURCES, TrainingIndex, check_candidate_source, passage_scores, rerank
from trainer.qa_data import QARecord

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def recall_of_sets(index: Index | TrainingIndex, retriever: DualEncoder, sets: dict[str, list[QARecord]]) -> dict[str, dict[str, Any]]:
    """recall@1/5/20 of each set with `retriever` in eval mode, over `index`'s passage vectors."""
    return {name: recall(index, retriever, records) for name, records in sets.items()}


@dataclass(frozen=True)
class ClozeExample:
    """An inverse cloze task example (ORQA's ICT): a sentence of a corpus passage asks for that passage, which is
    ranked with the sentence taken out (else the task is string matching)."""

    question: str  # the sentence
    row: int  # the store row of its passage, the only gold candidate
    rest: str  # the passage's text without the sentence


def cloze_examples(index: Index, n: int, seed: int) -> list[ClozeExample]:
    """`n` ICT examples from seeded passages of `index` that have three sentences or more, a sentence of six words or
    more taken from each. Corpus text only: no question or answer of any QA file."""
    rng = random.Random(seed)
    passages = list(index.store.iter_passages(index.generation))
    rng.shuffle(passages)
    examples = []
    for passage in passages:
        sentences = SENTENCE_END.split(passage.text)
        long = [i for i, sentence in enumerate(sentences) if len(sentence.split()) >= 6]
        if len(sentences) >= 3 and long:
            i = rng.choice(long)
            examples.append(ClozeExample(sentences[i], passage.row, " ".join(sentences[:i] + sentences[i + 1:])))
            if len(examples) == n:
                break
    return examples


def stored_hit(search: TrainingIndex, row: int) -> SearchHit:
    """The passage in store row `row` as a search hit (score 0: its score is computed afresh where it is ranked)."""
    return search.index.store.passages([row], search.index.generation)[row].hit(0.0)


def with_cloze_gold(example: ClozeExample, hits: list[SearchHit], search: TrainingIndex) -> list[SearchHit]:
    """`hits` with the example's passage among them (in the last place when the search missed it) and its text
    without the sentence."""
    at = next((i for i, h in enumerate(hits) if h.row == example.row), len(hits) - 1)
    if hits[at].row != example.row:
        hits[at] = stored_hit(search, example.row)
    hits[at] = replace(hits[at], text=example.rest)
    return hits


def with_question_gold(record: QARecord, hits: list[SearchHit], search: TrainingIndex) -> list[SearchHit]:
    """`hits` with a passage of the record's first gold document in the last place when none of its gold is among them,
    so that a question whose gold the search missed still teaches (supervised as DPR is, from the training file's
    gold_ids); as they are when the record names no gold document the index holds."""
    if any(h.doc_id in record.gold_ids for h in hits):
        return hits
    rows = sorted(row for row, _, _ in search.index.store.live_passages(record.gold_ids[:1]).values())
    return [*hits[:-1], stored_hit(search, rows[0])] if rows else hits


def train_on_gold(index: Index, records: list[QARecord], args: argparse.Namespace, sets: dict[str, list[QARecord]],
                  cloze: Sequence[ClozeExample] = (), teacher: SpanReader | None = None) -> dict[str, Any]:
    """Recall on `sets` after `len(records) / batch_size` steps of pdist towards a target on the gold passages only
    (of the query side, or with `args.passage_side` of both sides and then over the re-embedded corpus), with
    `cloze` inverse cloze examples (the corpus' own sentences) shuffled in, which add their own steps. With a
    `teacher`, the target is instead its relevance logits over every candidate, and every question teaches."""
    torch.manual_seed(args.seed)
    retriever = DualEncoder(index.manifest.encoder, shared=not args.separate_sides).to(args.device).train()
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=args.retriever_lr, weight_decay=0.0)
    examples: list[QARecord | ClozeExample] = [*records, *cloze]
    if cloze:  # mixed in, so both kinds train at every learning rate of the schedule
        random.Random(args.seed).shuffle(examples)
    steps = len(examples) // args.batch_size
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(args.warmup * steps), steps)
    taught = questions_taught = 0  # questions with gold among their candidates; examples whose loss ran
    # as rag-train joint --bf16: the compute autocast, the weights and the optimizer in float32
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16)
    with tempfile.TemporaryDirectory() as folder:
        search = TrainingIndex(index, Path(folder))
        for step in tqdm(range(steps), desc=f"{len(records)} questions" + (f", {len(cloze)} cloze" if cloze else ""), unit="step"):
            batch = examples[step * args.batch_size : (step + 1) * args.batch_size]
            with autocast:
                query = retriever([r.question for r in batch], "query")
                found = search.search(query.detach().float().cpu().numpy(), args.rerank or args.candidates)
                if args.rerank:
                    found = [rerank(retriever, q, row, args.candidates) for q, row in zip(query.detach(), found)]
                if args.candidates_from == "hybrid":
                    found = search.with_bm25([r.question for r in batch], found, args.candidates)
                found = [with_cloze_gold(r, row, search) if isinstance(r, ClozeExample)
                         else with_question_gold(r, row, search) if args.gold_in_candidates else row for r, row in zip(batch, found)]
                scores = passage_scores(query, found, search, retriever if args.passage_side else None, args.in_batch_negatives)
            # each example's candidates, or with in-batch negatives every example's, in passage_scores' column order
            columns = [[h for row in found for h in row]] * len(batch) if args.in_batch_negatives else found
            gold = torch.tensor([[h.row == r.row if isinstance(r, ClozeExample) else h.doc_id in r.gold_ids for h in row]
                                 for r, row in zip(batch, columns)], device=scores.device)
            has_gold = gold.any(-1)
            taught += sum(bool(g) for r, g in zip(batch, has_gold) if not isinstance(r, ClozeExample))
            questions_taught += len(batch) if teacher is not None else int(has_gold.sum())
            loss = None
            if teacher is not None:
                # a reader's judgment of every candidate, as joint training's teacher gives one (no gold needed)
                relevance = [[span.relevance for span in spans] for spans in teacher.read([r.question for r in batch], found)]
                loss = pdist_loss(scores, torch.tensor(relevance, device=scores.device), args.tau)
            elif has_gold.any():
                # log-probabilities of a perfect teacher: equal on the gold passages, nothing elsewhere
                loss = pdist_loss(scores[has_gold], torch.where(gold, 0.0, -1e4)[has_gold], args.tau)
            if loss is not None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(retriever.parameters(), 1.0)
            optimizer.step()  # skips the parameters without gradients, as rag-train joint's does
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        stats: dict[str, Any] = {"steps": steps, "cloze_examples": len(cloze), "questions": len(records),
                                 "questions_with_gold_in_candidates": taught, "examples_taught": questions_taught}
        if args.passage_side:
            stats["refresh"] = search.refresh(retriever, progress=True)
        return stats | {"after": recall_of_sets(search if args.passage_side else index, retriever, sets)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--questions", type=int, nargs="+", default=[400, 2000, 8000, 32000],
                        help="training questions of each run (the first N of joint training's shuffled mix)")
    parser.add_argument("--batch-size", type=int, default=JointTrainingConfig.batch_size)
    parser.add_argument("--candidates", type=int, default=16, help="passages the loss ranks (--candidates of rag-train joint)")
    parser.add_argument("--candidates-from", choices=CANDIDATE_SOURCES, default=JointTrainingConfig.candidates_from,
                        help="the dense top alone, or fused with BM25's best (rag-train joint's --candidates-from)")
    parser.add_argument("--retriever-lr", type=float, default=1e-4)
    parser.add_argument("--rerank", type=int, default=0, metavar="L",
                        help="with --passage-side: over-retrieve L from the stale vectors and keep the --candidates best by the "
                             "current passage side, as rag-train joint --refresh rerank:L (default 0: the stale top candidates)")
    parser.add_argument("--cloze", type=int, default=0, metavar="N",
                        help="also train on N inverse cloze examples of the corpus (a passage's sentence asks for the rest of "
                             "it), shuffled in among the questions (default 0: none)")
    parser.add_argument("--gold-in-candidates", action="store_true",
                        help="put a question's gold passage (the training file's gold_ids) in the last candidate's place when the "
                             "search missed it, so every question teaches (default: such questions teach nothing, as in joint training)")
    parser.add_argument("--in-batch-negatives", action="store_true",
                        help="rank each question's gold among every candidate of its batch, not only its own (DPR's in-batch "
                             "negatives: passages of other articles, which only hard candidates never show)")
    parser.add_argument("--passage-side", action="store_true",
                        help="train both sides and re-embed the corpus before measuring (default: the query side only)")
    parser.add_argument("--separate-sides", action="store_true",
                        help="with --passage-side: a query and a passage encoder with weights of their own (both starting from the "
                             "index's), as DPR trains them (default: one encoder for both, as rag-train joint trains it)")
    parser.add_argument("--teacher", choices=("gold", "span-reader"), default="gold",
                        help="the target: all the mass on the gold passages (default, the ceiling of any teacher that only finds "
                             "the gold), or the shipped span reader's relevance logits over every candidate (a cross-encoder "
                             "trained on about 32,000 questions, whose softer target ranks the non-gold candidates too)")
    parser.add_argument("--tau", type=float, default=JointTrainingConfig.tau, help="temperature of p_ret = softmax(s / tau), as rag-train joint's --tau")
    parser.add_argument("--warmup", type=float, default=JointTrainingConfig.warmup, help="share of the steps the learning rate warms up over")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training order, as rag-train joint's --seed")
    parser.add_argument("--held-out-share", type=float, default=HELD_OUT_SHARE,
                        help="share of the training files' articles whose questions never train and are measured, to choose settings "
                             "on (default %(default)s; 0: train on all, as the runs before 2026-12-04 did)")
    parser.add_argument("--limit", type=int, default=500, help="questions per set (seeded sample, seed 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/retriever_ceiling.json; with another --limit, retriever_ceiling_limitN.json)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true",
                        help="train with bf16 autocast, as rag-train joint --bf16 (about 2x faster on a CPU with avx512_bf16); "
                             "the corpus is still re-embedded in float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the encoder trains and encodes")
    args = parser.parse_args()
    if not 0 <= args.held_out_share < 1:
        parser.error(f"--held-out-share is a share of the articles, from 0 to below 1; got {args.held_out_share}")
    if args.rerank and (not args.passage_side or args.rerank < args.candidates):
        parser.error("--rerank L needs --passage-side (the query side alone keeps the stored vectors fresh) and L >= --candidates")
    if args.separate_sides and not args.passage_side:
        parser.error("--separate-sides needs --passage-side: without it only the query side trains")
    if args.teacher != "gold" and (args.cloze or args.in_batch_negatives or args.gold_in_candidates):
        parser.error("--teacher span-reader scores each question's own candidates: drop --cloze, --in-batch-negatives and "
                     "--gold-in-candidates")
    if args.cloze and not args.passage_side:
        parser.error("--cloze needs --passage-side: a stored passage vector still holds the sentence its example asks with")
    out, info = results_out(parser, args, default_out(__file__)), machine_info()
    warn_of_emulated_bf16(parser.prog, args)
    torch.set_num_threads(args.threads)
    index = Index.open(args.index, readonly=True)
    try:
        check_candidate_source(index, args.candidates_from)
    except ValueError as exc:
        parser.error(str(exc))
    sets = held_out_sets(index, args.limit, args.held_out_share) if args.held_out_share else {}
    sets |= question_sets(args.limit)
    train = training_order(index, TRAIN, args.held_out_share, args.seed)[0][:max(args.questions)]
    result: dict[str, Any] = {"settings": {k: getattr(args, k) for k in ("batch_size", "candidates", "candidates_from", "teacher", "cloze", "gold_in_candidates", "in_batch_negatives", "rerank", "retriever_lr", "passage_side", "separate_sides", "tau", "warmup", "held_out_share", "limit", "seed", "bf16", "device")},
                              "sets": list(sets), "before": recall_of_sets(index, DualEncoder(index.manifest.encoder).to(args.device), sets), "runs": {}}
    log("before", json.dumps(result["before"]))
    cloze = cloze_examples(index, args.cloze, args.seed) if args.cloze else []
    teacher = SpanReader.from_pretrained(DEFAULT_READER, device=args.device) if args.teacher == "span-reader" else None
    for n in args.questions:
        result["runs"][str(n)] = train_on_gold(index, train[:n], args, sets, cloze, teacher)
        log(n, json.dumps(result["runs"][str(n)]))
        write_result(out, result, info)


if __name__ == "__main__":
    main()
