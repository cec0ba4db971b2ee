"""Benchmark: few-shot learning of new tasks (issue 7), one table.

For each task: accuracy (EM for nq-open) of the reader zero-shot, with the K training shots in its prompt
(in-context learning, `rag-eval fewshot --icl K`), and after training each method on the same K shots
(`rag-train fewshot --method M`, then `rag-eval fewshot --adapter DIR`); inference cost per example (ms and
tokens processed) and training time. Every run is a subprocess whose exact command is stored in
`results/fewshot.json`, rewritten after each run (a long benchmark can be read part-way, and a rerun
skips what is done). The val split is a fixed seeded sample of `--limit` examples (the same for every
method); the shots are seeded with `--seed`, the same for training and for in-context learning.
In-context prompts are cut to `--max-prompt-tokens` (shots_in_prompt says how many shots fitted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, log, machine_info, run_rag_eval
from trainer.fewshot_tasks import load_task

TASKS = ["sst2", "superglue-copa", "superglue-rte", "superglue-cb", "nq-open", "superglue-wic", "superglue-boolq", "trec"]
METHODS = ["lora", "ia3", "prompt", "full", "lora+query"]  # lora+query: LoRA and the query encoder (QA tasks only)
SHOTS = {"nq-open": 64}  # the 64-shot NQ; the others take --shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--shots", type=int, default=32, help="training examples per task (nq-open: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shots and of training")
    parser.add_argument("--limit", type=int, default=50, help="val examples per task (fixed seeded sample)")
    parser.add_argument("--steps", type=int, default=24, help="training steps per method")
    parser.add_argument("--batch-size", type=int, default=4, help="training examples per step")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="longest in-context prompt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--work", type=Path, default=None, help="folder for the adapters (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fewshot.json")
    args = parser.parse_args()

    result = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    result.update(machine=machine_info(), settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    bin_dir = Path(sys.executable).parent
    work = args.work or Path(tempfile.mkdtemp(prefix="fewshot-bench-"))
    common = ["--limit", str(args.limit), "--threads", str(args.threads)]

    def run(key: str, command: list[str], program: str) -> dict:
        if key in result["runs"]:
            return result["runs"][key]
        log("run", key, " ".join(command))
        summary, typed, seconds = run_rag_eval(command, env, program)
        result["runs"][key] = {"command": typed, "seconds": seconds, "summary": summary}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        log(key, json.dumps(summary))
        return result["runs"][key]

    for task in args.tasks:
        shots = SHOTS.get(task, args.shots)
        evaluate = [str(bin_dir / "rag-eval"), "fewshot", "--task", task, *common]
        run(f"{task} zero-shot", evaluate, "rag-eval")
        run(f"{task} icl", [*evaluate, "--icl", str(shots), "--seed", str(args.seed), "--max-prompt-tokens", str(args.max_prompt_tokens)],
            "rag-eval")
        for method in args.methods:
            if method == "lora+query" and not load_task(task).is_qa:
                continue
            out = work / f"{task}-{method}-{shots}-{args.seed}"
            train = [str(bin_dir / "rag-train"), "fewshot", "--task", task, "--shots", str(shots), "--seed", str(args.seed),
                     "--method", method.removesuffix("+query"), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                     "--threads", str(args.threads), "--out", str(out)] + (["--train-query-encoder"] if method.endswith("+query") else [])
            if f"{task} {method}" not in result["runs"] and f"{task} {method} train" in result["runs"] and not out.is_dir():
                del result["runs"][f"{task} {method} train"]  # its adapter is gone (a temporary folder): train again
            run(f"{task} {method} train", train, "rag-train")
            run(f"{task} {method}", [*evaluate, "--adapter", str(out)], "rag-eval")
    print(table(result))


def table(result: dict) -> str:
    """One row per (task, way), grouped by task: the score, cost per example and training time."""
    lines = ["| task | way | n | accuracy / EM | F1 | ms / example | tokens / example | shots in prompt | train s | adapter bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ways = ["zero-shot", "icl", *METHODS]
    tasks = list(dict.fromkeys(key.rsplit(" ", 1)[0] for key in result["runs"] if not key.endswith(" train")))
    for task, way in ((t, w) for t in tasks for w in ways if f"{t} {w}" in result["runs"]):
        s = result["runs"][f"{task} {way}"]["summary"]
        trained = result["runs"].get(f"{task} {way} train", {}).get("summary", {})
        score = s.get("accuracy", s.get("em"))
        f1 = f"{s['f1']:.3f}" if "f1" in s else "-"
        lines.append(f"| {task} | {way} | {s['n']} | {score:.3f} | {f1} | {s['ms_per_example']:.0f} | {s['tokens_per_example']:.0f} | "
                     f"{s.get('shots_in_prompt', '-')} | {trained.get('train_seconds', '-')} | {trained.get('saved_bytes', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
