"""Benchmark: answer quality and latency of the readers, each through `rag-eval qa` (one question at a time).

The issue's table: 500-question samples (seed 0) of squad-open-dev and of the nq-open-test records with
gold_ids, over the whole shared corpus, for every configuration asked for (`--configs`):
- `span`: the shipped span reader at its own k (the default reader);
- `untrained`: SmolLM2-135M-Instruct as it comes, k=5;
- `untrained-closed`: the same, closed book (k=0);
- `span-closed`: the span reader closed book (no passage, so no answer: EM 0 by construction, listed for completeness).
Each run is a subprocess `rag-eval qa ...` whose exact command is stored beside its JSON output in
`results/reader_quality.json` (rewritten after every run, so a long run can be read part-way).
The untrained reader is slow on this CPU (a 700-token prompt per question): `--limit` takes a smaller
sample for it where time is short, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_INDEX, QA_DIR, RESULTS_DIR, log, machine_info, results_out, run_rag_eval, run_stamp

SETS = {"squad-open-dev": (QA_DIR / "squad-open-dev.jsonl.gz", []),
        "nq-open-test-gold": (QA_DIR / "nq-open-test.jsonl.gz", ["--with-gold-ids"])}
CONFIGS = {
    "span": [],
    "span-closed": ["--k", "0"],
    "untrained": ["--reader", "SmolLM2-135M-Instruct", "--k", "5"],
    "untrained-closed": ["--reader", "SmolLM2-135M-Instruct", "--k", "0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="whole-corpus index (default %(default)s)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--limit", type=int, default=500, help="questions per set (seeded sample, seed 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/reader_quality.json; with another --limit, beside it)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (OMP_NUM_THREADS)")
    args = parser.parse_args()
    args.out = results_out(parser, args, RESULTS_DIR / "reader_quality.json")

    result = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    result["machine"] = machine_info()
    environment = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    rag_eval = str(Path(sys.executable).with_name("rag-eval"))
    for config in args.configs:
        for name in args.sets:
            path, extra = SETS[name]
            command = [rag_eval, "qa", "--index", str(args.index), "--qa", str(path), *extra, "--limit", str(args.limit),
                       "--seed", "0", *CONFIGS[config]]
            log("run", config, name, shlex.join(command))
            summary, typed, seconds = run_rag_eval(command, environment)
            # Per run too: the file keeps runs of earlier invocations, whose top-level machine this overwrites.
            result["runs"][f"{config} {name}"] = {"command": typed, "seconds": seconds, "summary": summary, **run_stamp(result["machine"])}
            args.out.write_text(json.dumps(result, indent=2) + "\n")
            log(config, name, json.dumps(summary))
    print(table(result))


def table(result: dict) -> str:
    """The runs as a markdown table."""
    lines = ["| reader | set | n | EM | F1 | recall@5 | p50 ms |", "|---|---|---|---|---|---|---|"]
    for key, run in result["runs"].items():
        s = run["summary"]
        recall = "-" if s.get("recall@5") is None else f"{s['recall@5']:.3f}"
        lines.append(f"| {key.split()[0]} | {key.split()[1]} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {recall} | {s['latency_p50_ms']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
