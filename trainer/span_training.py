"""Training of the extractive span reader (rag/span_reader.py), as DPR's reader is trained.

The data comes from a file made with the index by `python -m trainer.span_data` (examples: a question,
a positive passage with the answer located in it, retrieved negatives; and held-out dev questions with
their retrieved passages), so training needs neither the index nor FAISS. The loss is, per passage,
cross-entropy of the start and end token (the answer span on the positive, [CLS] = "no answer here" on
negatives), plus, per question, cross-entropy of the relevance logits with the positive as target, so
scores compare across passages. Settings (k at inference, scoring) are chosen on the dev questions.
The output folder gets the reader, `metrics.jsonl` (the loss per step), `training.json` and
`TRAINING.md` (commands, data, steps, time, machine, dev results).

Run: `python -m trainer.span_training --data data.jsonl.gz --out DIR [...]`
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from indexer.encoder import DEFAULT_ENCODER
from rag.command_line import (add_optimizer_options, add_run_options, check_counts, check_new_folder, check_warmup, config_from_args,
                              finite_float, RunFolder, new_run_folder, run_command, typed_command)
from rag.span_reader import SCORINGS, EncodedPairs, PassageSpan, SpanReader, choose_answer, is_span_reader
from trainer.fit import cycling, fit
from trainer.machine import machine
from trainer.qa_metrics import exact_match, f1_score
from trainer.span_data import DevQuestion, SpanExample, read_span_data

# Logit given to tokens that can never be a start or end (question, title, padding); finite, so no NaN.
MASKED_LOGIT = -1e4
DEV_KS = (1, 2, 3, 5, 8, 10)
CHECKPOINT = "checkpoint"  # in --out, every --dev-every steps; removed once the run ends
CHECKPOINT_STEP = "step.json"  # written last: a checkpoint without it is not whole


@dataclass
class SpanTrainingConfig:
    """Everything a span-reader training run depends on; saved with the run."""

    data: Path  # made by `python -m trainer.span_data`
    out: Path
    encoder: str = DEFAULT_ENCODER
    init: Path | None = None  # continue from a saved span reader instead of a fresh head on `encoder`
    steps: int = 1000
    batch_size: int = 4  # questions per step; each brings 1 positive + its negatives
    lr: float = 1e-4
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 256
    max_answer_tokens: int = 15
    dev_every: int = 250  # steps between checkpoints and quick dev checks (0: only at the end)
    dev_quick: int = 100  # dev questions per file in the quick checks (top-5 passages)
    seed: int = 0
    bf16: bool = False  # bf16 autocast while training (about 2x faster on a CPU with avx512_bf16, and on a GPU)
    threads: int = 0  # torch threads, 0 = torch's default
    device: str = "auto"
    command: list[str] = field(default_factory=lambda: typed_command("trainer.span_training"))

    def check(self) -> None:
        """Raise ValueError on settings that cannot work, before anything slow starts."""
        check_counts(self, at_least_one=("steps", "batch_size"), at_least_zero=("dev_every", "dev_quick", "threads", "weight_decay"),
                     positive=("lr",))
        check_warmup(self.warmup)
        if not Path(self.data).is_file():
            raise ValueError(f"span data file not found: {self.data} (python -m trainer.span_data makes one)")
        if self.init is not None and not is_span_reader(self.init):
            raise ValueError(f"--init {self.init} is not a span reader folder")
        check_new_folder(self.out)


# -- loss ------------------------------------------------------------------------------------------

def span_targets(reader: SpanReader, examples: Sequence[SpanExample]) -> tuple[EncodedPairs, torch.Tensor, torch.Tensor, int]:
    """Encoded pairs (each example's positive, then its negatives) and start/end token targets.

    Negatives point at [CLS] (0). A positive whose answer was cut off by truncation gets -100: its span
    loss is skipped, its relevance target stays. Returns (encoded, starts, ends, truncated answers).
    """
    questions, passages, answers = [], [], []
    for e in examples:
        for i, passage in enumerate((e.positive, *e.negatives)):
            questions.append(e.question)
            passages.append(passage)
            answers.append((e.answer_start, e.answer_end) if i == 0 else None)
    encoded = reader.encode_pairs(questions, passages)
    starts = torch.zeros(len(answers), dtype=torch.long)
    ends = torch.zeros(len(answers), dtype=torch.long)
    truncated = 0
    for row, answer in enumerate(answers):
        if answer is None:
            continue
        ctx = encoded.context[row]
        tok_start, tok_end = encoded.offsets[row, :, 0], encoded.offsets[row, :, 1]
        kept = ctx.nonzero().squeeze(-1)
        # The answer must end within the last passage token that survived truncation.
        if kept.numel() == 0 or int(tok_end[kept[-1]]) < answer[1]:
            starts[row] = ends[row] = -100
            truncated += 1
            continue
        starts[row] = int((ctx & (tok_end > answer[0])).nonzero()[0])
        ends[row] = int((ctx & (tok_start < answer[1])).nonzero()[-1])
    return encoded, starts, ends, truncated


def span_loss(reader: SpanReader, examples: Sequence[SpanExample]) -> tuple[torch.Tensor, dict[str, float]]:
    """Start/end cross-entropy over every passage plus relevance cross-entropy per question (positive first)."""
    if not examples:
        raise ValueError("span_loss needs at least one example")
    encoded, starts, ends, truncated = span_targets(reader, examples)
    start, end, relevance = reader(**encoded.model_inputs(reader.device))
    allowed = encoded.context.clone()
    allowed[:, 0] = True
    allowed = allowed.to(reader.device)
    start = start.masked_fill(~allowed, MASKED_LOGIT)
    end = end.masked_fill(~allowed, MASKED_LOGIT)
    if bool((starts >= 0).any()):
        loss_span = (torch.nn.functional.cross_entropy(start, starts.to(reader.device), ignore_index=-100)
                     + torch.nn.functional.cross_entropy(end, ends.to(reader.device), ignore_index=-100)) / 2
    else:  # every answer truncated away and no negative: nothing to learn spans from (mean over nothing is NaN)
        loss_span = start.sum() * 0.0
    # Questions may have fewer negatives than asked: one softmax per question over its own passages.
    losses, row = [], 0
    for e in examples:
        width = 1 + len(e.negatives)
        group = relevance[row : row + width]
        losses.append(torch.logsumexp(group, 0) - group[0])
        row += width
    loss_relevance = torch.stack(losses).mean()
    parts = {"span": loss_span.item(), "relevance": loss_relevance.item(), "truncated": truncated}
    return loss_span + loss_relevance, parts


# -- dev -------------------------------------------------------------------------------------------

def dev_sweep(reader: SpanReader, dev: dict[str, list[DevQuestion]], ks: Sequence[int], scorings: Sequence[str] = SCORINGS,
              limit: int | None = None) -> dict[str, Any]:
    """EM and F1 per file for every (k, scoring), reading each passage once (passages are read independently).

    Returns {"by_setting": {"k=K scoring=S": {file: {em, f1, n}, "mean_em": ..}}, "best": {k, scoring, mean_em}}.
    """
    spans: dict[str, list[list[PassageSpan]]] = {}
    for name, questions in dev.items():
        questions = questions[:limit] if limit else questions
        spans[name] = reader.read([q.record.question for q in questions], [q.passages[: max(ks)] for q in questions])
    by_setting: dict[str, Any] = {}
    best: dict[str, Any] = {}
    for k in ks:
        for scoring in scorings:
            row: dict[str, Any] = {}
            for name, questions in dev.items():
                found = spans[name]
                answers = [choose_answer(s[:k], q.passages[:k], scoring).text for s, q in zip(found, questions)]
                gold = [q.record.answers for q in questions[: len(found)]]
                row[name] = {"n": len(found), "em": _mean([exact_match(a, g) for a, g in zip(answers, gold)]),
                             "f1": _mean([f1_score(a, g) for a, g in zip(answers, gold)])}
            # Files weigh equally: each stands for one of the evaluation sets.
            row["mean_em"] = _mean([v["em"] for v in row.values()])
            by_setting[f"k={k} scoring={scoring}"] = row
            if not best or row["mean_em"] > best["mean_em"]:
                best = {"k": k, "scoring": scoring, "mean_em": row["mean_em"]}
    return {"by_setting": by_setting, "best": best}


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


# -- training --------------------------------------------------------------------------------------

def save_checkpoint(reader: SpanReader, out: Path, step: int) -> None:
    """The reader as of `step` in `out`/checkpoint, in place of the one before. Written beside it and swapped in, so that
    a run stopped while it writes keeps the checkpoint before (`step.json`, written last, says a checkpoint is whole)."""
    current, fresh, old = out / CHECKPOINT, out / f"{CHECKPOINT}.new", out / f"{CHECKPOINT}.old"
    for leftover in (fresh, old):  # of a save cut short
        if leftover.exists():
            shutil.rmtree(leftover)
    reader.save_pretrained(fresh)
    (fresh / CHECKPOINT_STEP).write_text(json.dumps({"step": step}) + "\n")
    if current.exists():
        current.rename(old)
    try:
        fresh.rename(current)
    finally:
        if not current.exists() and old.exists():  # stopped between the two renames: the one before stays
            old.rename(current)
    if old.exists():
        shutil.rmtree(old)


def save_final(reader: SpanReader, out: Path) -> None:
    """The trained reader in `out`, beside its checkpoint. A save cut short takes back what it wrote, so that the folder
    kept for `--init` holds the checkpoint and the logs, not half a reader."""
    before = set(out.iterdir())
    try:
        reader.save_pretrained(out)
    except BaseException:
        for written in set(out.iterdir()) - before:
            with suppress(OSError):  # never in place of the error that cut the save short
                if written.is_dir():
                    shutil.rmtree(written)
                else:
                    written.unlink()
        raise


def train_span_reader(config: SpanTrainingConfig, progress: bool = True) -> dict[str, Any]:
    """Train, checkpoint every `dev_every` steps, save to `config.out`, choose k and scoring on the dev questions.

    Returns the run's record (also written to `training.json`). A run that does not finish leaves --out as it found
    it, or, once a checkpoint is written, with the checkpoint (`new_run_folder`).
    """
    config.check()
    checkpoint = config.out / CHECKPOINT
    with new_run_folder(config.out, keep=f"{CHECKPOINT}/{CHECKPOINT_STEP}",
                        kept=f"the last checkpoint is kept in {checkpoint}: `rag-train span-reader --init` it, with a new --out, "
                             "to train on from there") as run:
        return _train_span_reader(config, progress, run)


def _train_span_reader(config: SpanTrainingConfig, progress: bool, run: RunFolder) -> dict[str, Any]:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.time()
    data = read_span_data(config.data)
    examples, dev = data.examples, data.dev
    if not examples:
        raise ValueError(f"{config.data} holds no training example")
    if config.batch_size > len(examples):  # each step would repeat them over and over (10^8 times: no step ever ended)
        raise ValueError(f"--batch-size {config.batch_size} is over the {len(examples)} training examples of {config.data}")
    data_seconds = time.time() - started

    device = None if config.device == "auto" else config.device
    if config.init is not None:
        reader = SpanReader.from_pretrained(config.init, device=device)
        reader.config.max_length, reader.config.max_answer_tokens = config.max_length, config.max_answer_tokens
    else:
        reader = SpanReader.from_encoder(config.encoder, device=device, seed=config.seed, max_length=config.max_length,
                                         max_answer_tokens=config.max_answer_tokens)
    reader.train()
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    batch_at = cycling([examples[i] for i in order], config.batch_size)
    curve: list[dict[str, Any]] = []
    truncated = 0

    def loss_of(batch: list[SpanExample]) -> tuple[torch.Tensor, dict[str, Any]]:
        nonlocal truncated
        loss, parts = span_loss(reader, batch)
        truncated += parts["truncated"]
        return loss, parts

    def check(step: int, running: float | None) -> None:
        save_checkpoint(reader, config.out, step)
        if config.dev_quick and dev:
            with torch.autocast(reader.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                quick = dev_sweep(reader, dev, ks=(5,), scorings=("joint",), limit=config.dev_quick)
            curve.append({"step": step, "loss": running, **quick["by_setting"]["k=5 scoring=joint"]})
            log.write(json.dumps({"step": step, "dev_quick": curve[-1]}) + "\n")

    with open(config.out / "metrics.jsonl", "w") as log:
        fitted = fit(reader, batch_at, loss_of, log, steps=config.steps, lr=config.lr, weight_decay=config.weight_decay,
                     warmup=config.warmup, bf16=config.bf16, desc="train span reader", progress=progress, check=check,
                     check_every=config.dev_every)
    running, train_seconds = fitted.final_loss, fitted.seconds
    if dev:  # the dev sweep takes minutes: a run stopped there keeps every step it trained
        save_checkpoint(reader, config.out, config.steps)

    dev_started = time.time()
    sweep = dev_sweep(reader, dev, ks=DEV_KS) if dev else {"by_setting": {}, "best": {}}
    if sweep["best"]:
        reader.config.scoring, reader.config.k = sweep["best"]["scoring"], sweep["best"]["k"]
    save_final(reader, config.out)
    run.saved = True
    shutil.rmtree(config.out / CHECKPOINT, ignore_errors=True)
    record = {
        "command": config.command,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "command"},
        "data": data.header,
        "examples": len(examples),
        "examples_seen": config.steps * config.batch_size,
        "epochs": round(config.steps * config.batch_size / len(examples), 3),
        "truncated_answers": truncated,
        "dev_questions": {name: len(qs) for name, qs in dev.items()},
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "dev_seconds": round(time.time() - dev_started, 1),
        "final_loss": running,
        "dev_curve": curve,
        "dev": sweep,
        "chosen": {"scoring": reader.config.scoring, "k": sweep["best"].get("k")},
        "machine": machine() | {"device": str(reader.device), "bf16": config.bf16},
    }
    (config.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    history = Path(config.init) / "TRAINING.md" if config.init is not None else None
    earlier = history.read_text() if history is not None and history.is_file() else ""
    (config.out / "TRAINING.md").write_text(training_markdown(record, earlier))
    return record


def training_markdown(record: dict[str, Any], earlier: str = "") -> str:
    """A short human-readable account of a run, from its record; `earlier`: the --init reader's own account."""
    cfg, best, data = record["config"], record["dev"]["best"], record["data"]
    made = data["config"]
    lines = [
        "# How this span reader was trained", "",
        f"Data: `{' '.join(data['command'])}`", "",
        f"Training: `{' '.join(record['command'])}`", "",
        f"- Data: {', '.join(made['train'])}; {record['examples']} examples (question, gold passage with the answer "
        f"located, up to {made['negatives']} retrieved negatives from the top {made['depth']}, {made['mode']} retrieval "
        f"over {made['index']}); " + (", ".join(f"{n} questions of {name}" for name, n in record["dev_questions"].items())
                                         or "no questions") + f" held out as dev (seed {made['seed']}).",
        f"- Steps: {cfg['steps']} x {cfg['batch_size']} questions ({record['epochs']} epochs), lr {cfg['lr']} "
        f"(warm-up {cfg['warmup']}, linear decay), AdamW weight decay {cfg['weight_decay']}, max length {cfg['max_length']}, "
        f"bf16 autocast {cfg['bf16']}"
        + (f", continued from {cfg['init']}." if cfg.get("init") else f", from {cfg['encoder']}."),
        f"- Time: data {record['data_seconds']} s, training {record['train_seconds']} s, dev sweep {record['dev_seconds']} s.",
        f"- Machine: {record['machine']['cpu']} ({record['machine']['cpus']} CPUs, {record['machine']['torch_threads']} torch "
        f"threads, device {record['machine']['device']}, GPU {record['machine']['cuda']}), torch {record['machine']['torch']}, "
        f"{record['machine']['platform']}.",
        f"- Final loss (smoothed): {record['final_loss']:.3f}." if record["final_loss"] is not None else "- Final loss: n/a.",
    ]
    if best:
        lines.append(f"- Dev choice: k={best['k']}, scoring {best['scoring']} (mean EM over files {best['mean_em']:.3f}).")
        files = list(record["dev_questions"])
        lines += ["", "| setting | " + " | ".join(files) + " | mean EM |", "|---|" + "---|" * (len(files) + 1)]
        for setting, row in record["dev"]["by_setting"].items():
            cells = [f"EM {row[n]['em']:.3f} / F1 {row[n]['f1']:.3f}" for n in files]
            lines.append(f"| {setting} | " + " | ".join(cells) + f" | {row['mean_em']:.3f} |")
    if record["dev_curve"]:
        lines += ["", "Quick dev checks (k=5, joint): " + ", ".join(
            f"step {c['step']}: mean EM {c['mean_em']:.3f}" for c in record["dev_curve"])]
    if earlier:
        # The reader this run continued: its history, one heading level down.
        lines += ["", "## Before this run: how the --init reader was trained", ""]
        lines += [("#" + line if line.startswith("#") else line) for line in earlier.strip().splitlines()]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------------

def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.span_training` (and of `rag-train span-reader`, which takes them as a parent)."""
    d = SpanTrainingConfig(data=Path(), out=Path())
    parser = argparse.ArgumentParser(prog="python -m trainer.span_training", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     add_help=add_help,
                                     description="Train the extractive span reader (a span head on the MiniLM encoder) "
                                                 "from a data file made by `python -m trainer.span_data`.")
    add = parser.add_argument
    add("--data", required=True, type=Path, help="span data file (.jsonl.gz) made by python -m trainer.span_data")
    add("--out", required=True, type=Path, help="output folder (new or empty): the span reader")
    add("--encoder", default=d.encoder, help="encoder to start from")
    add("--init", type=Path, default=None, help="continue training this span reader folder (default: a fresh head on --encoder)")
    add_optimizer_options(parser, d, "questions")
    add("--weight-decay", type=finite_float, default=d.weight_decay, help="AdamW weight decay")
    add("--max-length", type=int, default=d.max_length, help="tokens per question + passage")
    add("--max-answer-tokens", type=int, default=d.max_answer_tokens, help="longest answer in tokens")
    add("--dev-every", type=int, default=d.dev_every, help="steps between checkpoints and quick dev checks")
    add("--dev-quick", type=int, default=d.dev_quick, help="dev questions per file in the quick checks")
    add_run_options(parser, d, "seed of the example order and the head")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(SpanTrainingConfig, args)
    record = train_span_reader(config)
    print(json.dumps({"out": str(args.out), "train_seconds": record["train_seconds"], "chosen": record["chosen"],
                      "dev_best": record["dev"]["best"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m trainer.span_training`."""
    return run_command("python -m trainer.span_training", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
