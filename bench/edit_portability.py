"""Benchmark: why portability fails, and how far reading the edit could take it (issue 5).

On the two-hop probes of data/editing/counterfact-test-portability.jsonl.gz (see trainer/edit_portability.py),
all of their edits in the memory of a scratch copy of the index:
- routing: the share of probes the scope decider sends to their own edit (the rest are answered as if there
  were no edit, which cannot be right: the probe's answer follows from the edit only);
- reading, with routing assumed right (an oracle: each probe is given its own edit), for each reader
  (the shipped span reader and the generative SmolLM2): the share of probes answered correctly when the
  reader reads the edit's fact alone, and the edit's fact before the top-k passages retrieved for the
  question followed by the edit's new answer (so that passages about the new target, its capital for
  instance, come up).
The shipped pipeline gives an in-scope question the answer its edit states, the first hop; `rag-eval edits`
measures that (`python bench/knowledge_edits.py --runs counterfact-portability`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, RESULTS_DIR, log, machine_info
from bench.knowledge_edits import PORTABILITY

READERS = ("span", "generative")


@dataclass(frozen=True)
class Context:
    """A passage as the readers take it."""

    title: str
    text: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="index to copy (default %(default)s)")
    parser.add_argument("--edits", type=Path, default=PORTABILITY, help="canonical edit file with portability probes")
    parser.add_argument("--limit", type=int, default=100, help="probes read by each reader (the first N; routing uses all)")
    parser.add_argument("--k", type=int, default=3, help="passages after the edit's fact")
    parser.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "edit_portability.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from indexer.index import Index
    from rag.editing import load_scope, match_edits
    from rag.models import SPAN_READER
    from rag.reader import DecoderReader
    from rag.span_reader import SpanReader
    from trainer.edit_cases import read_cases
    from trainer.edit_eval import index_copy
    from trainer.qa_metrics import contains_answer

    torch.set_num_threads(args.threads)
    cases = [c for c in read_cases(args.edits) if c.portability is not None]
    probes = [c.portability.question for c in cases]
    result: dict = {"command": " ".join(["python", *sys.argv]), "machine": machine_info(), "probes": len(cases), "limit": args.limit}
    with index_copy(args.index) as copy:
        index = Index.open(copy)
        edits = [index.memory.add(c.fact, question=c.question, answer=c.target_new, subject=c.subject) for c in cases]
        matches = match_edits(index.memory, load_scope("auto"), probes, index.encoder(probes))
        result["routed_to_own_edit"] = sum(m is not None and m.edit.id == e.id for m, e in zip(matches, edits)) / len(cases)
        result["routed_elsewhere"] = sum(m is not None and m.edit.id != e.id for m, e in zip(matches, edits)) / len(cases)
        log("routing", json.dumps({k: result[k] for k in ("routed_to_own_edit", "routed_elsewhere")}))
        chosen = cases[: args.limit]
        passages = index.search_many([f"{c.portability.question} {c.target_new}" for c in chosen], k=args.k, mode="hybrid")
        result["reading"] = {}
        for reader in args.readers:
            model = SpanReader.from_pretrained(SPAN_READER, device="cpu") if reader == "span" else DecoderReader(device="cpu")
            for variant, contexts in (("edit fact", [[] for _ in chosen]), ("edit fact + passages", passages)):
                started = time.perf_counter()
                answers = model.generate(
                    probes[: args.limit],
                    [[Context("Edit", c.fact), *(Context(h.title, h.text) for h in hits)] for c, hits in zip(chosen, contexts)])
                right = [contains_answer(a, [c.portability.answer]) for a, c in zip(answers, chosen)]
                row = {"portability": sum(right) / len(chosen), "n": len(chosen), "seconds": round(time.perf_counter() - started, 1),
                       "examples": [{"question": c.portability.question, "expected": c.portability.answer, "answer": a}
                                    for c, a in list(zip(chosen, answers))[:5]]}
                result["reading"][f"{reader}: {variant}"] = row
                log(reader, variant, row["portability"])
                args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each piece: a long run can be read part-way


if __name__ == "__main__":
    main()
