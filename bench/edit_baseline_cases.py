"""Benchmark figure: the edit memory on the weight-editing baseline's own cases, from a knowledge-edit run's rows.

`bench/weight_editing.py` edits the first 20 cases of the edit-memory evaluation's sample, one at a time;
`bench/knowledge_edits.py` evaluates the whole sample with every edit in the memory and keeps each case's row
(`--predictions`, default runs/knowledge_edits/). This picks the rows of the baseline's case ids and summarises
them as `rag-eval edits` does, so the two systems are compared on the same cases. Nothing is re-run.

    python bench/edit_baseline_cases.py --rows runs/knowledge_edits/counterfact-1000-auto.jsonl \
        --baseline bench/results/weight_editing_counterfact-test.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, check_out, machine_info, write_result
from trainer.edit_eval import summarize

# Timing and memory size belong to the whole run, not to a subset of its cases.
RUN_WIDE = ("edit_latency_p50_ms", "edit_latency_p99_ms", "edits_in_memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=Path, required=True, help="a knowledge_edits.py run's per-case rows (jsonl)")
    parser.add_argument("--baseline", type=Path, required=True, help="a weight_editing.py result file: its cases are the ones summarised")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default bench/results/edit_memory_on_<baseline file name>)")
    args = parser.parse_args()
    out = check_out(args.out or RESULTS_DIR / f"edit_memory_on_{args.baseline.name}")

    ids = [str(case["id"]) for case in json.loads(args.baseline.read_text())["single"]["cases"]]
    rows = {str(row["id"]): row for row in map(json.loads, args.rows.read_text().splitlines())}
    missing = [i for i in ids if i not in rows]
    if missing:
        sys.exit(f"error: {args.rows} has no row for the baseline's cases {missing[:5]}: it comes from another sample "
                 "(rerun bench/knowledge_edits.py with the run that evaluates the baseline's edits file)")
    summary = {k: v for k, v in summarize([rows[i] for i in ids], [], 0).items() if k not in RUN_WIDE}
    write_result(out, {"rows": str(args.rows), "baseline": str(args.baseline), "case_ids": ids, "summary": summary}, machine_info())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
