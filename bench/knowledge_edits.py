"""Benchmark: knowledge edits through the edit memory, each run a `rag-eval edits` subprocess.

The issue's runs, on the whole-corpus index (a scratch copy; the index itself is not changed):
- `counterfact-1000`: 1,000 cases of counterfact-test (seeded sample, seed 0), all edits applied at once;
- `zsre-1k`: every zsre-1k case with a new answer (998 of 1,000; two records have an empty one) applied at
  once, the cases of fold 1/2 evaluated: fold 0/2 trains the shipped scope classifier (trainer/scope_training.py);
- `counterfact-10000`: 200 of those cases evaluated with 9,800 more counterfact-test edits in the memory
  (10,000 in all; 200 evaluated to keep the run short: the answering, not the memory, is what costs);
- `counterfact-sequential`: the same 1,000 cases applied 100 at a time, each round evaluated before the next;
- `counterfact-portability`: the 404 counterfact-test cases that have a two-hop portability probe
  (data/editing/counterfact-test-portability.jsonl.gz, made by trainer/edit_portability.py), all applied at once.
Each run's exact command is stored beside its JSON summary in `results/knowledge_edits.json`, rewritten
after every run. The weight-editing baseline on the same cases is bench/weight_editing.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, RESULTS_DIR, check_out, log, machine_info, run_rag_eval, run_stamp
from trainer.shared_data import SHARED_DATA

EDITS_DIR = SHARED_DATA / "editing"
PORTABILITY = Path(__file__).resolve().parent.parent / "data" / "editing" / "counterfact-test-portability.jsonl.gz"
COUNTERFACT = ["--edits", str(EDITS_DIR / "counterfact-test.jsonl.gz"), "--limit", "1000", "--seed", "0"]
RUNS = {
    "counterfact-1000": COUNTERFACT,
    "zsre-1k": ["--edits", str(EDITS_DIR / "zsre-1k.jsonl.gz"), "--on-error", "skip", "--fold", "1/2", "--extra-edits", "all"],
    "counterfact-10000": [*COUNTERFACT[:-4], "--limit", "200", "--seed", "0", "--extra-edits", "9800"],
    "counterfact-sequential": [*COUNTERFACT, "--batch", "100"],
    "counterfact-portability": ["--edits", str(PORTABILITY)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="index to copy (default %(default)s)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--scope", default="auto", help="scope decider of every run: auto, classifier or similarity")
    parser.add_argument("--two-hop", default="auto", choices=["auto", "none"], help="two-hop reading of every run (default auto)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "knowledge_edits.json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    parser.add_argument("--predictions", type=Path, default=Path("runs/knowledge_edits"),
                        help="folder for each run's per-case rows (default %(default)s; large, not committed)")
    args = parser.parse_args()
    args.out = check_out(args.out)

    result = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    result["machine"] = machine_info()
    result["scope_classifier"] = classifier_info()
    result["two_hop_detector"] = two_hop_info() if args.two_hop == "auto" else None
    result["answer_type_classifier"] = answer_type_info()
    environment = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    rag_eval = str(Path(sys.executable).with_name("rag-eval"))
    args.predictions.mkdir(parents=True, exist_ok=True)
    for name in args.runs:
        variant = args.scope if args.two_hop == "auto" else f"{args.scope}-no-two-hop"
        rows = args.predictions / f"{name}-{variant}.jsonl"
        rows.unlink(missing_ok=True)  # this run's rows replace an earlier run's (rag-eval writes only a new file)
        command = [rag_eval, "edits", "--index", str(args.index), *RUNS[name], "--scope", args.scope, "--two-hop", args.two_hop,
                   "--threads", str(args.threads), "--predictions", str(rows)]
        log("run", name, shlex.join(command))
        summary, typed, seconds = run_rag_eval(command, environment)
        key = name if variant == "auto" else f"{name} ({variant})"
        # Per run too: runs kept from an earlier invocation may have used another classifier or threshold, machine or command.
        result["runs"][key] = {"command": typed, "seconds": seconds, "summary": summary, "scope_classifier": result["scope_classifier"],
                               "two_hop_detector": result["two_hop_detector"], "answer_type_classifier": result["answer_type_classifier"],
                               **run_stamp(result["machine"])}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        log(name, json.dumps(summary))
    print(table(result))


def classifier_info() -> dict:
    """Which shipped scope classifier the runs used: its config and a digest of its weights."""
    from rag.editing import SCOPE_CLASSIFIER

    folder = Path(SCOPE_CLASSIFIER)
    digest = hashlib.sha1()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(path.read_bytes())
    config = folder / "scope_config.json"
    return {"folder": str(folder), "config": json.loads(config.read_text()) if config.is_file() else None, "weights_sha1": digest.hexdigest()}


def two_hop_info() -> dict:
    """Which shipped two-hop detector the runs used: its thresholds and a digest of its file."""
    from rag.two_hop import SHIPPED, TwoHopDetector

    detector = TwoHopDetector.load(SHIPPED)
    return {"file": str(SHIPPED), "threshold": detector.threshold, "relation_threshold": detector.relation_threshold,
            "sha1": hashlib.sha1(SHIPPED.read_bytes()).hexdigest()}


def answer_type_info() -> dict:
    """Which shipped answer-type classifier the runs used (it keeps edits to questions asking their kind of answer)."""
    from rag.answer_type import SHIPPED, AnswerTypeClassifier

    return {"file": str(SHIPPED), "threshold": AnswerTypeClassifier.load(SHIPPED).threshold, "sha1": hashlib.sha1(SHIPPED.read_bytes()).hexdigest()}


def table(result: dict) -> str:
    """The runs as a markdown table."""
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["| run | scope | n | edits in memory | reliability | generality | locality (unrelated) | portability | edit p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, run in result["runs"].items():
        s = run["summary"]
        lines.append(f"| {key.split()[0]} | {s['scope']} | {s['n']} | {s['edits_in_memory']:,} | {cell(s['reliability'])} | "
                     f"{cell(s['generality'])} | {cell(s['locality'])} ({cell(s.get('locality_unrelated'))}) | {cell(s['portability'])} | "
                     f"{s['edit_latency_p50_ms']:.1f} / {s['edit_latency_p99_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
