"""`rag-eval fewshot`: how well the reader does a task's split zero-shot, with k shots in its prompt
(in-context learning), or with an adapter trained by `rag-train fewshot`, and what each example costs.

Classification and multiple choice are answered by rank classification (`rag.rank_classification`)
and scored by accuracy; QA by greedy generation (with retrieved passages when retrieval is on) and
scored by EM and F1; an adapter trained with `--train-query-encoder` retrieves with its own query encoder.
Cost per example: wall-clock milliseconds (retrieval and reading, batched, on
this process's torch threads) and tokens the model processed (prompt tokens, once per example when its
choices share the prompt's key/value cache and else once per choice; the choices' tokens; a prompt-tuning
adapter's virtual tokens; generated tokens).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rag.adapters import adapter_kind, query_encoder_folder, virtual_tokens
from rag.command_line import check_counts, run_command
from rag.models import GENERATIVE_READER
from rag.rank_classification import rank_classify
from rag.reader import DecoderReader
from rag.retriever import DualEncoder
from trainer.fewshot_prompts import DEFAULT_INDEX, fitting_prompt_ids, open_index, retrieve
from trainer.fewshot_tasks import Example, load_task
from trainer.fewshot_training import read_record
from trainer.qa_data import sample
from trainer.qa_metrics import exact_match, f1_score

QA_BATCH = 4  # questions generated together


@dataclass
class FewShotEvalConfig:
    """One `rag-eval fewshot` run: the task and split, the way (zero-shot, --icl K or --adapter DIR), retrieval, limits."""

    task: str
    split: str = "val"
    adapter: Path | None = None  # a peft adapter folder or a whole model folder (method full)
    icl: int = 0  # shots in the prompt
    seed: int = 0  # seed of the in-context shots: the sample `rag-train fewshot --seed` trains on when K is its --shots
    limit: int | None = None  # a fixed seeded (0) sample of the split, the same for every method
    retrieval: bool | None = None  # None: the adapter's setting, else the task's
    index: Path | None = None
    k: int = 3
    reader: str | None = None  # None: the adapter's base, else SmolLM2-135M-Instruct
    max_prompt_tokens: int = 2048  # in-context shots that do not fit are left out (shots_in_prompt says how many stayed)
    batch_tokens: int = 8192
    threads: int = 0
    device: str = "cpu"


def load_reader(config: FewShotEvalConfig) -> tuple[DecoderReader, dict[str, Any]]:
    """The reader to evaluate and the adapter's fewshot.json ({} without one). A folder with a whole model
    (method full) is the reader itself; a peft adapter goes over its recorded base model."""
    if config.adapter is None:
        return DecoderReader(config.reader or GENERATIVE_READER, device=config.device), {}
    record = read_record(config.adapter)
    if (config.adapter / "config.json").is_file() and not (config.adapter / "adapter_config.json").is_file():
        return DecoderReader(str(config.adapter), device=config.device), record
    adapter_kind(config.adapter)  # a folder whose adapter_config.json peft cannot read is refused with a message
    return DecoderReader(config.reader or record.get("reader", GENERATIVE_READER), adapter=config.adapter, device=config.device), record


def evaluate_fewshot(config: FewShotEvalConfig) -> dict[str, Any]:
    """The `rag-eval fewshot` JSON object: {n, accuracy} or {n, em, f1}, plus cost and what was measured."""
    if config.adapter is not None and config.icl:
        raise ValueError("give --adapter or --icl, not both")
    if config.threads:
        torch.set_num_threads(config.threads)
    task = load_task(config.task)
    examples = sample(task.load(config.split), config.limit, 0)
    reader, record = load_reader(config)
    retrieval = record.get("retrieval", task.retrieval) if config.retrieval is None else config.retrieval
    index = open_index(task, retrieval, config.index or (Path(record["index"]) if retrieval and record.get("index") else None))
    shots = task.shots(config.icl, config.seed, "--icl") if config.icl else []
    own_encoder = query_encoder_folder(config.adapter) if retrieval and config.adapter is not None else None
    query_encoder = DualEncoder(str(own_encoder)) if own_encoder is not None else None
    if index is not None and query_encoder is None:
        _ = index.encoder  # loaded now, not inside the time measured per example
    started = time.perf_counter()
    passages = retrieve(index, examples, config.k if retrieval else 0, query_encoder)
    prompts, used = zip(*(fitting_prompt_ids(reader, task, e, p, shots, config.max_prompt_tokens) for e, p in zip(examples, passages)))
    extra = virtual_tokens(reader.model)
    if task.is_qa:
        scores, tokens = _answer(reader, examples, list(prompts), extra)
    else:
        scores, tokens = _classify(reader, examples, list(prompts), config.batch_tokens, extra)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {"n": len(examples), **scores,
                               "ms_per_example": round(seconds * 1e3 / len(examples), 1),
                               "tokens_per_example": round(tokens / len(examples), 1),
                               "task": task.name, "split": config.split, "limit": config.limit,
                               "method": record.get("method", "adapter") if config.adapter else ("icl" if config.icl else "zero-shot"),
                               "retrieval": bool(retrieval), "threads": torch.get_num_threads()}
    if config.icl:
        summary.update(icl=config.icl, seed=config.seed, shots_in_prompt=round(sum(used) / len(used), 1))
    return summary


def _classify(reader: DecoderReader, examples: Sequence[Example], prompts: list[list[int]], batch_tokens: int,
              extra: int) -> tuple[dict[str, float], int]:
    rankings = rank_classify(reader, prompts, [e.choices for e in examples], max_tokens=batch_tokens)
    correct = sum(r.best == e.label for r, e in zip(rankings, examples))
    tokens = sum(r.tokens + extra * len(e.choices) for r, e in zip(rankings, examples))
    return {"accuracy": correct / len(examples)}, tokens


def _answer(reader: DecoderReader, examples: Sequence[Example], prompts: list[list[int]], extra: int) -> tuple[dict[str, float], int]:
    em = f1 = 0.0
    tokens = 0
    for start in range(0, len(examples), QA_BATCH):
        part = prompts[start : start + QA_BATCH]
        for example, prompt, answer in zip(examples[start : start + QA_BATCH], part, reader.complete(part)):
            em += exact_match(answer, example.answers)
            f1 += f1_score(answer, example.answers)
            tokens += len(prompt) + extra + len(reader.answer_ids(answer))
    return {"em": em / len(examples), "f1": f1 / len(examples)}, tokens


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.fewshot_eval` (and of `rag-eval fewshot`, which takes them as a parent)."""
    d = FewShotEvalConfig(task="")
    parser = argparse.ArgumentParser(prog="python -m trainer.fewshot_eval", add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Evaluate the reader on a few-shot task: zero-shot, with --icl K shots in the prompt, "
                                                 "or with --adapter DIR from `rag-train fewshot`. Prints one JSON object: {n, accuracy} "
                                                 "(classification) or {n, em, f1} (QA), with ms_per_example and tokens_per_example.")
    add = parser.add_argument
    add("--task", required=True, help="a built-in task (superglue-boolq/-rte/-cb/-copa/-wic, sst2, trec, nq-open) or a task folder")
    add("--split", default=d.split, help="split to evaluate")
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--adapter", type=Path, default=None, help="a folder written by `rag-train fewshot` (an adapter, or a model)")
    way.add_argument("--icl", type=int, default=d.icl, metavar="K", help="in-context learning: K training examples in the prompt")
    add("--seed", type=int, default=d.seed, help="seed of the --icl shots (the sample `rag-train fewshot --seed` trains on when K is its --shots)")
    add("--limit", type=int, default=None, help="evaluate a fixed seeded sample of N examples of the split")
    add("--retrieval", action=argparse.BooleanOptionalAction, default=None,
        help="QA: retrieved passages in the prompt (default: the adapter's setting, else the task's)")
    add("--index", type=Path, default=None, help=f"index to retrieve from (None: the adapter's, else {DEFAULT_INDEX})")
    add("--k", type=int, default=d.k, help="passages per question with --retrieval")
    add("--reader", default=None, help="base causal LM (default: the adapter's, else SmolLM2-135M-Instruct)")
    add("--max-prompt-tokens", type=int, default=d.max_prompt_tokens, help="longest prompt: in-context shots beyond it are left out")
    add("--batch-tokens", type=int, default=d.batch_tokens, help="padded tokens per forward pass when ranking choices")
    add("--threads", type=int, default=d.threads, help="torch threads (0: torch's choice)")
    add("--device", default=d.device, help="cpu, cuda or auto")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    check_counts(args, at_least_one=("k", "max_prompt_tokens", "batch_tokens") + (("limit",) if args.limit is not None else ()),
                 at_least_zero=("icl", "threads"))
    config = FewShotEvalConfig(task=args.task, split=args.split, adapter=args.adapter, icl=args.icl, seed=args.seed, limit=args.limit,
                               retrieval=args.retrieval, index=args.index, k=args.k, reader=args.reader,
                               max_prompt_tokens=args.max_prompt_tokens, batch_tokens=args.batch_tokens, threads=args.threads,
                               device=args.device)
    print(json.dumps(evaluate_fewshot(config)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("python -m trainer.fewshot_eval", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
