"""Benchmark: few-shot learning of new tasks (issue 7), one table.

For each task: accuracy (EM for nq-open) of the reader zero-shot, with the K training shots in its prompt
(in-context learning, `rag-eval fewshot --icl K`), and after training each method on the same K shots
(`rag-train fewshot --method M`, then `rag-eval fewshot --adapter DIR`); inference cost per example (ms and
tokens processed) and training time. Every run is a subprocess whose exact command is stored in
`results/fewshot.json`, rewritten after each run (a long benchmark can be read part-way, and a rerun
skips what is done). A run is keyed by its task, its way and the settings its figures depend on (seed, shots,
limit, steps, batch size, prompt length), so invocations with other settings add runs beside it; each run keeps
the bench command, machine and time of the invocation that made it. The val split is a fixed seeded sample of
`--limit` examples (the same for every method); the shots are seeded with `--seed`, the same for training and
for in-context learning.
In-context prompts are cut to `--max-prompt-tokens` (shots_in_prompt says how many shots fitted).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, check_out, log, machine_info, run_rag_eval, run_stamp
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

    args.out = check_out(args.out)
    result = upgrade(json.loads(args.out.read_text())) if args.out.is_file() else {"runs": {}}
    settings = vars(args)
    info = machine_info()
    environment = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    bin_dir = Path(sys.executable).parent
    work = args.work or Path(tempfile.mkdtemp(prefix="fewshot-bench-"))
    common = ["--limit", str(args.limit), "--threads", str(args.threads)]

    def run(task: str, way: str, command: list[str], program: str) -> dict:
        key = run_key(task, way, settings)
        if key in result["runs"]:
            return result["runs"][key]
        log("run", key, shlex.join(command))
        summary, typed, seconds = run_rag_eval(command, environment, program)
        result["runs"][key] = {"command": typed, "seconds": seconds, "summary": summary, **run_stamp(info)}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        log(key, json.dumps(summary))
        return result["runs"][key]

    for task in args.tasks:
        shots = SHOTS.get(task, args.shots)
        evaluate = [str(bin_dir / "rag-eval"), "fewshot", "--task", task, *common]
        run(task, "zero-shot", evaluate, "rag-eval")
        run(task, "icl", [*evaluate, "--icl", str(shots), "--seed", str(args.seed), "--max-prompt-tokens", str(args.max_prompt_tokens)],
            "rag-eval")
        for method in args.methods:
            if method == "lora+query" and not load_task(task).is_qa:
                continue
            out = work / f"{task}-{method}-{shots}-{args.seed}-{args.steps}-{args.batch_size}"
            train = [str(bin_dir / "rag-train"), "fewshot", "--task", task, "--shots", str(shots), "--seed", str(args.seed),
                     "--method", method.removesuffix("+query"), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                     "--threads", str(args.threads), "--out", str(out)] + (["--train-query-encoder"] if method.endswith("+query") else [])
            trained = run_key(task, f"{method} train", settings)
            if run_key(task, method, settings) not in result["runs"] and trained in result["runs"] and not out.is_dir():
                del result["runs"][trained]  # its adapter is gone (a temporary folder): train again
            run(task, f"{method} train", train, "rag-train")
            run(task, method, [*evaluate, "--adapter", str(out)], "rag-eval")
    print(table(result, settings))


def depends_on(task: str, way: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the figures of one run depend on; `way` is "zero-shot", "icl", a method or a method + " train"."""
    shots = SHOTS.get(task, settings["shots"])
    training = {"shots": shots, "seed": settings["seed"], "steps": settings["steps"], "batch_size": settings["batch_size"]}
    if way == "zero-shot":
        return {"limit": settings["limit"]}
    if way == "icl":
        return {"limit": settings["limit"], "shots": shots, "seed": settings["seed"], "max_prompt_tokens": settings["max_prompt_tokens"]}
    if way.endswith(" train"):
        return training
    return {"limit": settings["limit"], **training}


def run_key(task: str, way: str, settings: dict[str, Any]) -> str:
    """A run's key in the result file, e.g. "sst2 lora (limit=40 shots=32 seed=0 steps=24 batch_size=4)"."""
    return f"{task} {way} ({' '.join(f'{k}={v}' for k, v in depends_on(task, way, settings).items())})"


def upgrade(result: dict) -> dict:
    """A result file written before runs were keyed by their settings: its keys were "{task} {way}", and the
    settings and machine of its last invocation were recorded once for all runs. Rekey its runs with those
    settings and keep that record aside."""
    if "settings" not in result:
        return result
    old = result.pop("settings")
    result["runs"] = {run_key(*key.split(" ", 1), old): run for key, run in result["runs"].items()}
    result["before_per_run_records"] = {"settings": old, "machine": result.pop("machine", None)}
    return result


def table(result: dict, settings: dict[str, Any]) -> str:
    """One row per (task, way) run with these settings, grouped by task: the score, cost per example and training time."""
    lines = ["| task | way | n | accuracy / EM | F1 | ms / example | tokens / example | shots in prompt | train s | adapter bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ways = ["zero-shot", "icl", *METHODS]
    tasks = list(dict.fromkeys(key.split(" ", 1)[0] for key in result["runs"]))
    for task, way in ((t, w) for t in tasks for w in ways if run_key(t, w, settings) in result["runs"]):
        s = result["runs"][run_key(task, way, settings)]["summary"]
        trained = result["runs"].get(run_key(task, f"{way} train", settings), {}).get("summary", {})
        score = s.get("accuracy", s.get("em"))
        f1 = f"{s['f1']:.3f}" if "f1" in s else "-"
        lines.append(f"| {task} | {way} | {s['n']} | {score:.3f} | {f1} | {s['ms_per_example']:.0f} | {s['tokens_per_example']:.0f} | "
                     f"{s.get('shots_in_prompt', '-')} | {trained.get('train_seconds', '-')} | {trained.get('saved_bytes', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
