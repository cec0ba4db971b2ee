"""Diagnostic: does the reader, as the retriever's teacher, prefer the gold passage?

Joint training's pdist/emdr2 losses move the retriever towards the passages under which the reader finds the
answer most likely. That raises recall only if those are the gold passages. For a seeded sample of training
questions with gold_ids (squad-open-train and nq-open-train, what `rag-train joint` trains on), the top
`--candidates` passages of the index's own encoder are each scored alone by the untrained reader
(log p(answer | question, passage), as the trainer scores them), and among the questions whose gold is in the
candidates we count how often the gold is the retriever's first and the reader's first, and the mass each puts
on the gold: the retriever's softmax(s / tau) and the pdist target softmax(log p / T). `--adapter` scores with a
trained reader instead (a joint run's export/reader, or rag-train reader's --out): the teacher a retriever meets after `--reader-first` steps.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.common import DEFAULT_INDEX, QA_DIR, default_out, log, machine_info, results_out, write_result
from indexer.index import Index
from rag.models import GENERATIVE_READER
from rag.reader import DecoderReader
from trainer.joint_losses import retriever_log_probs
from trainer.joint_training import JointTrainingConfig
from trainer.qa_data import read_qa, sample, with_answers

TRAIN = {"squad-open-train": QA_DIR / "squad-open-train.jsonl.gz", "nq-open-train": QA_DIR / "nq-open-train.jsonl.gz"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index, only read (default %(default)s)")
    parser.add_argument("--limit", type=int, default=60, help="questions per training file (seeded sample, seed 0; default %(default)s)")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--max-passage-tokens", type=int, default=JointTrainingConfig.max_passage_tokens,
                        help="rag-train joint's (default %(default)s)")
    parser.add_argument("--tau", type=float, default=JointTrainingConfig.tau,
                        help="the retriever's softmax temperature (rag-train joint's default, %(default)s)")
    parser.add_argument("--temperature", type=float, default=JointTrainingConfig.temperature,
                        help="T of the pdist target (rag-train joint's default, %(default)s)")
    parser.add_argument("--adapter", type=Path, default=None, help="the reader's LoRA adapter (default: the untrained reader)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/teacher_agreement.json; with another --limit, teacher_agreement_limitN.json)")
    args = parser.parse_args()
    out = results_out(parser, args, default_out(__file__))
    torch.set_num_threads(args.threads)
    info = machine_info()
    index = Index.open(args.index, readonly=True)
    reader = DecoderReader(GENERATIVE_READER, adapter=args.adapter, device="cpu", max_passage_tokens=args.max_passage_tokens)
    result: dict[str, Any] = {"settings": {k: getattr(args, k) for k in ("limit", "candidates", "max_passage_tokens", "tau", "temperature")}
                              | {"adapter": str(args.adapter) if args.adapter else None}}
    for name, path in TRAIN.items():
        # Blank answers left out after sampling: the sample stays the one measured before (an answer "" teaches nothing).
        records = with_answers(sample([r for r in read_qa(path) if r.gold_ids], args.limit, 0))
        found = index.search_many([r.question for r in records], k=args.candidates, mode="dense")
        rows = []
        for record, hits in tqdm(list(zip(records, found)), desc=name, unit="question"):
            gold_ids = set(record.gold_ids)
            gold = [i for i, h in enumerate(hits) if h.doc_id in gold_ids]
            if not gold:
                continue
            with torch.inference_mode():
                logp = reader.score(record.question, hits, record.answers[0]).float()
            # The two distributions rag-train joint's pdist compares: p_ret = softmax(s / tau) and its target.
            retriever = retriever_log_probs(torch.tensor([h.score for h in hits]), args.tau).exp().numpy()
            teacher = torch.softmax(logp / args.temperature, dim=-1).numpy()
            rows.append({"gold_rank": gold[0] + 1, "retriever_first_is_gold": 0 in gold,
                         "reader_first_is_gold": int(logp.argmax()) in gold,
                         "retriever_gold_mass": float(retriever[gold].sum()), "teacher_gold_mass": float(teacher[gold].sum())})
        mean = lambda key: round(float(np.mean([r[key] for r in rows])), 3) if rows else None
        result[name] = {"questions": len(records), "gold_in_candidates": len(rows),
                        "gold_below_rank_3": sum(r["gold_rank"] > 3 for r in rows),
                        "retriever_first_is_gold": mean("retriever_first_is_gold"), "reader_first_is_gold": mean("reader_first_is_gold"),
                        "retriever_gold_mass": mean("retriever_gold_mass"), "teacher_gold_mass": mean("teacher_gold_mass")}
        log(name, json.dumps(result[name]))
        write_result(out, result, info)


if __name__ == "__main__":
    main()
