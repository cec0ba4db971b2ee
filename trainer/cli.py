"""`rag-eval` (answer quality) and `rag-train` (training the system's models)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from indexer.manifest import Manifest
from rag.command_line import finite_float, check_counts, run_command
from rag.editing import SCOPE_KINDS
from rag.options import add_pipeline_arguments, pipeline_from_args
from trainer.edit_cases import FORMATS


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("rag-eval", _eval_parser().parse_args(argv))


def _eval_parser() -> argparse.ArgumentParser:
    from trainer import fewshot_eval

    parser = argparse.ArgumentParser(prog="rag-eval", description="Evaluate a pipeline; each command prints one JSON object.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    qa = commands.add_parser("qa", help="EM, F1, recall and latency on a QA file",
                             description="Answer every question of a QA file (JSON lines {id, question, answers, gold_ids?}) and print "
                                         "{n, em, f1, recall@1, recall@5, recall@20, answer_recall@5, source_gold, latency_p50_ms, "
                                         "latency_p95_ms, n_with_gold_ids} (recall over the n_with_gold_ids records that name their gold "
                                         "documents; source_gold: how often the passage a span reader read its answer from is a gold one).")
    add_pipeline_arguments(qa, index_required=False)
    qa.add_argument("--qa", required=True, type=Path, help="QA file, .jsonl or .jsonl.gz")
    qa.add_argument("--limit", type=int, default=None, help="evaluate a seeded random sample of N questions")
    qa.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    qa.add_argument("--with-gold-ids", action="store_true", help="keep only the records that have gold_ids (before --limit)")
    qa.add_argument("--batch-size", type=int, default=1, help="questions answered together (default 1: honest per-question latency)")
    qa.add_argument("--predictions", type=Path, default=None, help="also write one JSON line per question to this new file")
    qa.set_defaults(run=_qa)

    edits = commands.add_parser("edits", help="reliability, generality, locality, portability and latency of knowledge edits",
                                description="Apply the edits of an edit file to a scratch copy of the index (yours is not changed) and "
                                            "print {n, superseded, reliability, generality, locality, locality_unrelated, "
                                            "neighbors_naming_edited_subjects, portability, edit_latency_p50_ms, edit_latency_p99_ms, "
                                            "edits_in_memory, scope}. A case whose edit a later case of its round replaced (the same "
                                            "question) is counted in superseded, not in n.")
    # --scope none would ignore the very edits the command evaluates.
    add_pipeline_arguments(edits, scopes=[kind for kind in SCOPE_KINDS if kind != "none"])
    edits.add_argument("--edits", required=True, type=Path, help="edit cases, .jsonl or .jsonl.gz")
    edits.add_argument("--format", choices=FORMATS, default=None,
                       help="canonical, counterfact or zsre (default: from the fields of its first record, else its name; give it for a pipe)")
    edits.add_argument("--limit", type=int, default=None, help="evaluate a seeded random sample of N cases")
    edits.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    edits.add_argument("--batch", type=int, default=None, help="edits applied before each evaluation round (default: all at once)")
    edits.add_argument("--fold", default=None, metavar="I/N",
                       help="evaluate only fold I of N of the cases (by a hash of the case id), e.g. the fold a scope "
                            "classifier trained with --also-train-fold 0/2 never saw: 1/2")
    edits.add_argument("--extra-edits", type=_count_or_all, default=0, metavar="N|all",
                       help="first apply N more edits from the file (all: every other case), not evaluated (edits accumulated at scale)")
    edits.add_argument("--batch-size", type=int, default=16, help="questions answered together (default 16)")
    edits.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="a malformed record: stop (default) or skip it")
    edits.add_argument("--predictions", type=Path, default=None, help="also write one JSON line per case to this new file")
    edits.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: torch's own); 1 keeps an edit's encoding fast on a busy machine")
    edits.set_defaults(run=_edits)
    commands.add_parser("fewshot", parents=[fewshot_eval.build_parser(add_help=False)], help="accuracy or EM/F1 and cost on a few-shot task",
                        description=fewshot_eval.build_parser().description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return parser


def _count_or_all(text: str) -> int | str:
    """An --extra-edits value: a whole number, or "all"."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or all, got {text!r}") from None


def _check_predictions(path: Path | None) -> None:
    """Raise ValueError when --predictions could not be written, before the evaluation rather than after it: it must be
    a new file in a writable folder, or a device or pipe (/dev/null). A link to nothing counts as taken."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"--predictions {path} is a folder: give a file name")
    if path.is_file() or (path.is_symlink() and not path.exists()):  # anything, a corpus file too: only a new file is written
        raise ValueError(f"--predictions {path} exists: choose a new file name (or delete it first)")
    if not path.parent.is_dir():
        raise ValueError(f"--predictions {path}: no folder {path.parent}; create it first or choose another file")
    if not path.exists() and not os.access(path.parent, os.W_OK):
        raise ValueError(f"--predictions {path}: the folder {path.parent} is not writable; choose another")


def _write_rows(path: Path | None, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The summary on stdout, then the rows into --predictions `path`. A new file is written beside it and linked in
    whole, so that a run stopped meanwhile leaves no part of one, and a file made meanwhile (another run's) stays."""
    print(json.dumps(summary), flush=True)
    if path is None:
        return
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    if path.exists() and not path.is_file():  # a device or a pipe, as _check_predictions let through
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        return
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".part",
                                     delete=False) as fh:
        fh.writelines(lines)
    try:
        os.link(fh.name, path)  # never onto an existing file, unlike a rename
    except FileExistsError:
        raise ValueError(f"--predictions {path} was made by something else during this run: the rows were not written "
                         "(the summary above stands)") from None
    finally:
        os.unlink(fh.name)


def _qa(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate_qa
    from trainer.qa_data import read_qa, sample

    if args.index is None and args.k != 0:
        raise ValueError("--index is required unless --k 0 (closed book)")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_predictions(args.predictions)
    records = read_qa(args.qa)
    if args.with_gold_ids:
        records = [r for r in records if r.gold_ids]
        if not records:
            raise ValueError(f"{args.qa}: no record has gold_ids (drop --with-gold-ids)")
    records = sample(records, args.limit, args.seed)
    pipeline = pipeline_from_args(args)
    summary, rows = evaluate_qa(pipeline, records, k=args.k, mode=args.mode, batch_size=args.batch_size)
    _write_rows(args.predictions, summary, rows)
    return 0


def _edits(args: argparse.Namespace) -> int:
    check_counts(args, at_least_one=("batch_size",) + (("threads",) if args.threads is not None else ()),
                 at_least_zero=() if args.extra_edits == "all" else ("extra_edits",))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    _check_predictions(args.predictions)
    summary, rows = _evaluate_edits(args)
    _write_rows(args.predictions, summary, rows)
    return 0


def _evaluate_edits(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and rows of `rag-eval edits`: the chosen cases (--fold, --limit) and --extra-edits, on a scratch copy
    of --index."""
    from trainer.edit_cases import in_fold, parse_fold, read_cases
    from trainer.edit_eval import evaluate_edits, index_copy
    from trainer.qa_data import sample

    fold = parse_fold(args.fold) if args.fold else None
    cases = read_cases(args.edits, args.format, on_error=args.on_error, advice="--on-error skip leaves such records out")
    chosen = sample([c for c in cases if fold is None or in_fold(c, fold)], args.limit, args.seed)
    if not chosen:
        raise ValueError(f"--fold {args.fold}: no case of {args.edits} falls in that fold")
    ids = {c.id for c in chosen}
    others = [c for c in cases if c.id not in ids]
    if args.extra_edits == "all":
        args.extra_edits = len(others)
    if args.extra_edits > len(others):
        raise ValueError(f"--extra-edits {args.extra_edits}: the file has only {len(others)} cases besides the evaluated ones")
    extra = sample(others, args.extra_edits, args.seed) if args.extra_edits else []
    Manifest.read(args.index)  # an IndexFolderError naming the user's folder, not the scratch copy's
    with index_copy(args.index) as copy:
        args.index = copy
        pipeline = pipeline_from_args(args, writable=True)
        summary, rows = evaluate_edits(pipeline, chosen, batch=args.batch, extra=extra, k=args.k, mode=args.mode, batch_size=args.batch_size)
        pipeline.index.close()
    summary["scope"] = pipeline.scope.name
    return summary, rows


def main_train(argv: Sequence[str] | None = None) -> int:
    return run_command("rag-train", _train_parser().parse_args(argv))


def _train_parser() -> argparse.ArgumentParser:
    from trainer import answer_type_training, fewshot_training, joint_training, scope_training, span_data, span_training, two_hop_training

    parser = argparse.ArgumentParser(prog="rag-train", description="Train the system's models.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    commands.add_parser("span-data", parents=[span_data.build_parser(add_help=False)], help="make the span reader's training data with an index",
                        description="Make the span reader's training data (examples and held-out dev questions) with an index; "
                                    "the same as python -m trainer.span_data.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands.add_parser("span-reader", parents=[span_training.build_parser(add_help=False)], help="train the extractive span reader from a data file",
                        description="Train the extractive span reader from a data file made by `rag-train span-data`; needs no "
                                    "index (runs on a bare GPU machine); the same as python -m trainer.span_training.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands.add_parser("fewshot", parents=[fewshot_training.build_parser(add_help=False)], help="finetune the reader on a few examples of a task",
                        description=fewshot_training.build_parser().description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands.add_parser("scope", parents=[scope_training.build_parser(add_help=False)], help="train the edit scope classifier",
                        description="Train the edit scope classifier (which edit, if any, a question is about) on CounterFact and zsRE "
                                    "training pairs and calibrate the similarity-threshold baseline; the same as "
                                    "python -m trainer.scope_training.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands.add_parser("two-hop", parents=[two_hop_training.build_parser(add_help=False)], help="train the two-hop question detector",
                        description=two_hop_training.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands.add_parser("answer-type", parents=[answer_type_training.build_parser(add_help=False)],
                        help="train the answer-type classifier that keeps an edit to questions asking what it answers",
                        description=answer_type_training.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands.add_parser("joint", parents=[joint_training.build_parser(add_help=False)], help="joint retriever-reader training",
                        description="Train the retriever from the reader (loss emdr2, pdist, loop, adist or rag) while the reader trains "
                                    "on the retrieved passages; checkpoints resume exactly; exports an encoder and a reader. "
                                    "The same as python -m trainer.joint_training.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    reader = commands.add_parser(
        "reader", help="RAG-tune the generative reader (LoRA or full)",
        description="Supervised reader finetuning with retrieved passages: each question with its top-k passages (the gold "
                    "passage kept among them at a random position) and the short answer as the target. Holds out "
                    "--dev-size questions of the training files and reports `rag-eval qa` metrics on a seeded sample of "
                    "--dev-eval of them at the end.")
    reader.add_argument("--train", required=True, help="QA training files, comma-separated (never an evaluation-only file)")
    reader.add_argument("--index", required=True, type=Path, help="index to retrieve passages from")
    reader.add_argument("--out", required=True, type=Path, help="output folder: a peft adapter (lora) or a model (full)")
    reader.add_argument("--method", choices=("lora", "full"), default="lora", help="default lora")
    reader.add_argument("--reader", default=None, help="base causal LM, or the folder of an encoder-decoder model (T5, BART) to "
                                                        "train as a Fusion-in-Decoder reader (default: SmolLM2-135M-Instruct)")
    reader.add_argument("--k", type=int, default=3, help="passages per question (default 3)")
    reader.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    reader.add_argument("--batch-size", type=int, default=4, help="questions per forward pass (default 4)")
    reader.add_argument("--grad-accum", type=int, default=1, help="forward passes per step (default 1)")
    reader.add_argument("--lr", type=finite_float, default=5e-4, help="peak learning rate, linear warm-up and decay (default 5e-4)")
    reader.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (default 16)")
    reader.add_argument("--max-passage-tokens", type=int, default=160, help="passage truncation (default 160)")
    reader.add_argument("--dev-size", type=int, default=200, help="questions held out of the training files (default 200)")
    reader.add_argument("--dev-eval", type=int, default=100, help="held-out questions answered at the end, 0 = none (default 100)")
    reader.add_argument("--seed", type=int, default=0)
    reader.add_argument("--bf16", action="store_true", help="bf16 autocast (on a GPU)")
    reader.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    reader.set_defaults(run=_train_reader)
    return parser


def _train_reader(args: argparse.Namespace) -> int:
    from rag.models import GENERATIVE_READER
    from rag.pipeline import MAX_K
    from trainer.reader_training import ReaderTrainingConfig, train_reader

    check_counts(args, at_least_one=("k", "steps", "batch_size", "grad_accum", "lora_rank", "max_passage_tokens"),
                 at_least_zero=("dev_size", "dev_eval"), positive=("lr",))
    if args.k > MAX_K:  # the dev evaluation, like any question, reads at most this many
        raise ValueError(f"--k {args.k}: at most {MAX_K} passages per question")
    config = ReaderTrainingConfig(
        train=[Path(p) for p in args.train.split(",") if p], index=args.index, out=args.out, reader=args.reader or GENERATIVE_READER,
        method=args.method, k=args.k, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        lora_rank=args.lora_rank, max_passage_tokens=args.max_passage_tokens, dev_size=args.dev_size, dev_eval=args.dev_eval,
        seed=args.seed, bf16=args.bf16, device=args.device,
    )
    record = train_reader(config)
    print(json.dumps({"out": str(args.out), "train_seconds": record["train_seconds"], "dev": record["dev"]}))
    return 0
