"""Benchmark: how two-hop portability probes are routed, and how well each way of answering them does (issue 5).

On the two-hop probes of data/editing/counterfact-test-portability.jsonl.gz (see trainer/edit_portability.py),
all of their edits in the memory of a scratch copy of the index:
- routing: the share of probes the scope decider alone sends to their own edit, and the share the router with
  the shipped two-hop detector (rag/two_hop.py) sends to their own edit as asking beyond it;
- answering, with routing assumed right (an oracle: each probe is given its own edit), on the first `--limit`:
  each reader (the shipped span reader, the generative SmolLM2) reading the edit's fact alone, and the edit's
  fact before the top-k passages retrieved for the question followed by the edit's new answer; and the
  question asked again with the edit's answer in place of its first hop (`resolve_first_hop`: "What is the
  capital of Iraq?"), answered by the shipped pipeline as any question (what the pipeline now does).
End to end, with the router's own decisions: `python bench/knowledge_edits.py --runs counterfact-portability`.
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

from bench.common import DEFAULT_INDEX, default_out, log, machine_info, results_out, write_result
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
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/edit_portability.json; with another --limit, edit_portability_limitN.json)")
    args = parser.parse_args()
    out = results_out(parser, args, default_out(__file__))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from indexer.index import Index
    from rag.editing import load_scope, match_edits
    from rag.models import SPAN_READER
    from rag.pipeline import Pipeline
    from rag.reader import DecoderReader
    from rag.span_reader import SpanReader
    from rag.two_hop import load_two_hop, resolve_first_hop
    from trainer.edit_cases import read_cases
    from trainer.edit_eval import index_copy
    from trainer.qa_metrics import contains_answer

    torch.set_num_threads(args.threads)
    cases = [c for c in read_cases(args.edits) if c.portability is not None]
    probes = [c.portability.question for c in cases]
    info = machine_info()
    result: dict = {"probes": len(cases), "limit": args.limit}
    with index_copy(args.index) as copy:
        index = Index.open(copy)
        edits = [index.memory.add(c.fact, question=c.question, answer=c.target_new, subject=c.subject) for c in cases]
        scope, vectors = load_scope("auto"), index.encoder(probes)
        matches = match_edits(index.memory, scope, probes, vectors)
        result["routed_to_own_edit"] = sum(m is not None and m.edit.id == e.id for m, e in zip(matches, edits)) / len(cases)
        result["routed_elsewhere"] = sum(m is not None and m.edit.id != e.id for m, e in zip(matches, edits)) / len(cases)
        matches = match_edits(index.memory, scope, probes, vectors, two_hop=load_two_hop(index.manifest.encoder, dim=index.manifest.dim))
        result["two_hop_routed_beyond_own_edit"] = sum(m is not None and m.beyond and m.edit.id == e.id for m, e in zip(matches, edits)) / len(cases)
        result["two_hop_routed_elsewhere"] = sum(m is not None and m.edit.id != e.id for m, e in zip(matches, edits)) / len(cases)
        log("routing", json.dumps({k: v for k, v in result.items() if k.startswith(("routed", "two_hop"))}))
        chosen = cases[: args.limit]
        passages = index.search_many([f"{c.portability.question} {c.target_new}" for c in chosen], k=args.k, mode="hybrid")
        result["reading"] = {}
        started = time.perf_counter()
        asked = [resolve_first_hop(c.portability.question, c.subject, c.target_new) for c in chosen]
        plain = Pipeline(index, SpanReader.from_pretrained(SPAN_READER, device="cpu"))  # no scope: edits play no part
        answers = [a.text for a in plain.ask_many([q or c.portability.question for q, c in zip(asked, chosen)])]
        result["reading"]["first hop resolved, shipped pipeline"] = {
            "portability": sum(contains_answer(a, [c.portability.answer]) for a, c in zip(answers, chosen)) / len(chosen),
            "n": len(chosen), "resolved": sum(q is not None for q in asked) / len(chosen), "seconds": round(time.perf_counter() - started, 1),
            "examples": [{"question": q, "expected": c.portability.answer, "answer": a} for q, c, a in list(zip(asked, chosen, answers))[:5]]}
        log("first hop resolved", result["reading"]["first hop resolved, shipped pipeline"]["portability"])
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
                write_result(out, result, info)  # after each piece: a long run can be read part-way


if __name__ == "__main__":
    main()
