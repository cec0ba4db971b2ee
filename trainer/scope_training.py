"""Training of the scope classifier (rag/scope_classifier.py) and calibration of the similarity baseline.

Pairs (edit fact, question, in scope?) are made by trainer/scope_data.py from counterfact-train (with
nq-open-train questions as extra negatives) and, separately, from one fold of zsre-1k, whose edits are
questions ("What is the product made by UniFirst?") where CounterFact's are cloze prompts; its pairs are
repeated so that its few hundred cases weigh against CounterFact's 10,000. Validation pairs are made the same way from counterfact-val
(with nq-open-dev). The classifier is trained with binary cross-entropy, positives weighted by
negatives/positives so that both classes count equally, AdamW with linear warm-up and decay.

Two decisions are chosen, each by balanced accuracy (the mean of the in-scope and out-of-scope accuracies,
so the mix of pair kinds does not decide the threshold):
- `threshold`: the classifier's probability threshold, on the validation pairs;
- `similarity_threshold`: the cosine of question and edit key (MiniLM, as the edit memory embeds them) that
  best separates the TRAINING pairs; the validation pairs then measure it as they measure the classifier.
Both are saved in the classifier's config (the edit router, rag/editing.py, reads them).

The output folder gets the classifier, `metrics.jsonl` (loss per step), `training.json` and `TRAINING.md`
(command, data, steps, time, machine, validation figures).

Run: `python -m trainer.scope_training --out DIR [--steps N ...]`
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from indexer.encoder import DEFAULT_ENCODER, TextEncoder
from rag.command_line import (add_optimizer_options, add_run_options, check_counts, check_new_folder, check_warmup, config_from_args,
                              finite_float, RunFolder, new_run_folder, run_command, typed_command)
from rag.answer_type import SHIPPED as ANSWER_TYPES, AnswerTypeClassifier
from rag.scope_classifier import ScopeClassifier
from trainer.classifier_metrics import auc, best_threshold
from trainer.edit_cases import in_fold, parse_fold, read_cases
from trainer.fit import cycling, fit
from trainer.machine import machine
from trainer.qa_data import read_qa, sample
from trainer.scope_data import KINDS, CachedEncoder, ScopeDataConfig, ScopePair, build_pairs, check_not_evaluation_only, summary
from trainer.shared_data import SHARED_DATA


@dataclass
class ScopeTrainingConfig:
    """Everything a scope-classifier training run depends on; saved with the run."""

    out: Path
    train: Path = SHARED_DATA / "editing" / "counterfact-train.jsonl.gz"
    val: Path = SHARED_DATA / "editing" / "counterfact-val.jsonl.gz"
    nq_train: Path | None = SHARED_DATA / "qa" / "nq-open-train.jsonl.gz"  # question-form negatives for training
    nq_val: Path | None = SHARED_DATA / "qa" / "nq-open-dev.jsonl.gz"  # ... and for validation (a different file)
    also_train: Path | None = SHARED_DATA / "editing" / "zsre-1k.jsonl.gz"  # more edit cases, in another phrasing
    also_train_fold: str | None = "0/2"  # the fold of them that trains (rag-eval edits --fold measures the others)
    also_train_repeat: int = 4  # times their pairs are repeated
    encoder: str = DEFAULT_ENCODER  # both the classifier's starting point and the similarity baseline's embedder
    cases: int | None = None  # a seeded sample of the training cases (None: all)
    val_cases: int | None = None
    near_depth: int = 8
    near_per_question: int = 1
    relation_paraphrase: int = 1
    other_relation: int = 2
    nq_per_case: float = 0.5
    # Other-relation negatives of cases without a relation group (zsRE) must ask for another kind of answer by it.
    answer_types: Path | None = ANSWER_TYPES
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 64
    val_every: int = 250  # steps between quick validation checks (0: only at the end)
    val_quick: int = 1000  # validation pairs in a quick check
    seed: int = 0
    bf16: bool = False  # bf16 autocast while training (a CPU with avx512_bf16, or a GPU)
    threads: int = 0  # torch threads, 0 = torch's default
    device: str = "auto"
    command: list[str] = field(default_factory=lambda: typed_command("trainer.scope_training"))

    def data_config(self) -> ScopeDataConfig:
        return ScopeDataConfig(near_depth=self.near_depth, near_per_question=self.near_per_question,
                               relation_paraphrase=self.relation_paraphrase, other_relation=self.other_relation,
                               nq_per_case=self.nq_per_case, seed=self.seed)

    def check(self) -> None:
        """Raise ValueError on settings that cannot work, before anything slow starts."""
        check_counts(self, at_least_one=("steps", "batch_size", "also_train_repeat"),
                     at_least_zero=("val_every", "val_quick", "threads", "weight_decay"), positive=("lr",))
        for name in ("cases", "val_cases"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        check_warmup(self.warmup)
        self.data_config().check()
        for option, path in (("--train", self.train), ("--val", self.val), ("--nq-train", self.nq_train), ("--nq-val", self.nq_val)):
            if path is None:
                continue
            if not Path(path).is_file():
                raise ValueError(f"{option} file not found: {path}")
            check_not_evaluation_only(path)
        if self.also_train is not None:
            if not Path(self.also_train).is_file():
                raise ValueError(f"--also-train file not found: {self.also_train}")
            fold = parse_fold(self.also_train_fold) if self.also_train_fold else None
            check_not_evaluation_only(self.also_train, fold)
        if self.answer_types is not None:
            if not Path(self.answer_types).is_file():
                raise ValueError(f"--answer-types file not found: {self.answer_types} (train one with `rag-train answer-type`, "
                                 "or give --no-answer-types)")
            reads = AnswerTypeClassifier.load(self.answer_types).encoder
            if reads != self.encoder:
                raise ValueError(f"--answer-types {self.answer_types} reads vectors of {reads}, not of --encoder {self.encoder}: "
                                 "train one for it with `rag-train answer-type --encoder`, or give --no-answer-types")
        if Path(self.train).resolve() == Path(self.val).resolve():
            raise ValueError("--train and --val are the same file: validation must be held out")
        check_new_folder(self.out)


# -- metrics ---------------------------------------------------------------------------------------

def pair_metrics(scores: np.ndarray, pairs: Sequence[ScopePair], threshold: float) -> dict[str, Any]:
    """Accuracy, balanced accuracy and AUC of one decider over labelled pairs, and its accuracy per pair kind."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.array([p.label for p in pairs], dtype=bool)
    decided = scores >= threshold
    right = decided == labels
    by_kind = {}
    for kind in KINDS:
        rows = np.array([p.kind == kind for p in pairs], dtype=bool)
        if rows.any():
            by_kind[kind] = {"n": int(rows.sum()), "accuracy": round(float(right[rows].mean()), 4)}
    return {"n": len(pairs), "threshold": round(float(threshold), 4), "accuracy": round(float(right.mean()), 4),
            "balanced_accuracy": round(float((right[labels].mean() + right[~labels].mean()) / 2), 4),
            "auc": round(auc(scores, labels), 4), "by_kind": by_kind}


# -- training --------------------------------------------------------------------------------------

def scope_loss(model: ScopeClassifier, batch: Sequence[ScopePair], pos_weight: float) -> torch.Tensor:
    """Binary cross-entropy of the batch, positives weighted by `pos_weight`."""
    logits = model(**model.encode([p.edit_text for p in batch], [p.question for p in batch]))
    labels = torch.tensor([float(p.label) for p in batch], device=logits.device)
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=torch.tensor(pos_weight, device=logits.device))


def _read_pairs(config: ScopeTrainingConfig, encode: CachedEncoder, progress: bool) -> tuple[list[ScopePair], list[ScopePair], list[ScopePair]]:
    """Training, also-train (one fold, not yet repeated) and validation pairs, each mined among its own file's edits:
    an evaluation's memory holds one file's edits too."""
    also = [] if config.also_train is None else read_cases(config.also_train, on_error="skip")
    if also and config.also_train_fold:
        also = [c for c in also if in_fold(c, parse_fold(config.also_train_fold))]
    answer_types = None if config.answer_types is None else AnswerTypeClassifier.load(config.answer_types)
    nq_questions: dict[Path, list[str]] = {}  # train and also-train share one NQ file: read it once
    made = []
    for cases, nq_file, seed in ((sample(read_cases(config.train), config.cases, config.seed), config.nq_train, config.seed),
                                 (also, config.nq_train, config.seed + 2),
                                 (sample(read_cases(config.val), config.val_cases, config.seed), config.nq_val, config.seed + 1)):
        if nq_file is not None and cases and nq_file not in nq_questions:
            nq_questions[nq_file] = [r.question for r in read_qa(nq_file)]
        nq = nq_questions[nq_file] if nq_file is not None and cases else []
        made.append(build_pairs(cases, nq, encode, replace(config.data_config(), seed=seed), progress=progress,
                                answer_types=answer_types) if cases else [])
    return made[0], made[1], made[2]


def train_scope_classifier(config: ScopeTrainingConfig, progress: bool = True) -> dict[str, Any]:
    """Make the pairs, calibrate the similarity threshold, train, choose the threshold, save to `config.out`.

    Returns the run's record (also written to `training.json`). A run that does not finish leaves --out as it found it.
    """
    config.check()
    with new_run_folder(config.out) as run:
        return _train_scope_classifier(config, progress, run)


def _train_scope_classifier(config: ScopeTrainingConfig, progress: bool, run: RunFolder) -> dict[str, Any]:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = None if config.device == "auto" else config.device
    started = time.time()
    embedder = CachedEncoder(TextEncoder(config.encoder, device=device), progress=progress)
    train_pairs, also_pairs, val_pairs = _read_pairs(config, embedder, progress)
    train_pairs = train_pairs + also_pairs
    positives = sum(p.label for p in train_pairs)
    if not positives or positives == len(train_pairs):
        raise ValueError("the training pairs need both labels: give more cases")
    # The baseline's threshold from the training pairs; both deciders are then measured on the same validation pairs.
    train_similarity = embedder.similarity(train_pairs)
    similarity_threshold, _ = best_threshold(train_similarity, np.array([p.label for p in train_pairs]))
    similarity = {"train": pair_metrics(train_similarity, train_pairs, similarity_threshold),
                  "val": pair_metrics(embedder.similarity(val_pairs), val_pairs, similarity_threshold)}
    del embedder  # its encoder and ~50k vectors are not needed for training
    # Repeated only now, so that the similarity threshold above counts each pair once.
    train_pairs = train_pairs + also_pairs * (config.also_train_repeat - 1)
    random.Random(config.seed).shuffle(train_pairs)
    data_seconds = time.time() - started

    model = ScopeClassifier.from_encoder(config.encoder, device=device, seed=config.seed, max_length=config.max_length)
    model.train()
    # Over the pairs as trained, repeats included: positives weighted to count as much as negatives.
    positives = sum(p.label for p in train_pairs)
    pos_weight = (len(train_pairs) - positives) / positives
    quick = val_pairs[: config.val_quick]
    curve: list[dict[str, Any]] = []

    def check(step: int, running: float | None) -> None:
        if quick:
            scores = model.scores([p.edit_text for p in quick], [p.question for p in quick])
            curve.append({"step": step, "loss": running, "val_auc": round(auc(scores, np.array([p.label for p in quick])), 4)})
            log.write(json.dumps({"val_quick": curve[-1]}) + "\n")

    with open(config.out / "metrics.jsonl", "w") as log:
        # The pairs are already in a seeded random order: walked through, wrapping around.
        fitted = fit(model, cycling(train_pairs, config.batch_size), lambda batch: (scope_loss(model, batch, pos_weight), {}), log,
                     steps=config.steps, lr=config.lr, weight_decay=config.weight_decay, warmup=config.warmup, bf16=config.bf16,
                     desc="train scope classifier", progress=progress, check=check, check_every=config.val_every)
    running, train_seconds = fitted.final_loss, fitted.seconds

    val_started = time.time()
    scores = model.scores([p.edit_text for p in val_pairs], [p.question for p in val_pairs])
    threshold, _ = best_threshold(scores, np.array([p.label for p in val_pairs]))
    # A cut below (or above) every score is legal for best_threshold but may not be a probability: clip it.
    threshold = round(min(max(threshold, 0.0), 1.0), 4)
    similarity_threshold = round(min(max(similarity_threshold, -1.0), 1.0), 4)
    model.threshold = threshold
    model.config.similarity_threshold = similarity_threshold
    model.config.similarity_encoder = config.encoder
    classifier = {"val": pair_metrics(scores, val_pairs, threshold), "val_at_0.5": pair_metrics(scores, val_pairs, 0.5)}
    model.save_pretrained(config.out)
    run.saved = True
    record = {
        "command": config.command,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "command"},
        "data": {"train": summary(train_pairs), "also_train": summary(also_pairs), "val": summary(val_pairs)},
        "pos_weight": round(pos_weight, 4),
        "pairs_seen": config.steps * config.batch_size,
        "epochs": round(config.steps * config.batch_size / len(train_pairs), 3),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "val_seconds": round(time.time() - val_started, 1),
        "final_loss": running,
        "val_curve": curve,
        "threshold": threshold,
        "similarity_threshold": similarity_threshold,
        "classifier": classifier,
        "similarity": similarity,
        "machine": machine() | {"device": str(model.device), "bf16": config.bf16},
    }
    (config.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (config.out / "TRAINING.md").write_text(training_markdown(record))
    return record


def training_markdown(record: dict[str, Any]) -> str:
    """A short human-readable account of a run, from its record."""
    cfg, data = record["config"], record["data"]
    clf, sim = record["classifier"]["val"], record["similarity"]["val"]
    lines = [
        "# How this scope classifier was trained", "",
        f"Command: `{' '.join(record['command'])}`", "",
        f"- Data: {data['train']['pairs']} training pairs ({data['train']['positives']} in scope) from {cfg['train']}"
        f"{' (sample of ' + str(cfg['cases']) + ' cases)' if cfg['cases'] else ''} and fold {cfg['also_train_fold']} of "
        f"{cfg['also_train']} ({data['also_train']['pairs']} pairs, repeated {cfg['also_train_repeat']} times) with NQ "
        f"questions from {cfg['nq_train']}; "
        f"{data['val']['pairs']} validation pairs ({data['val']['positives']} in scope) from {cfg['val']} with NQ questions "
        f"from {cfg['nq_val']}. Kinds: train {data['train']['by_kind']}; val {data['val']['by_kind']}. Nearest other edits "
        f"searched {cfg['near_depth']} deep (MiniLM cosine of question and edit key), {cfg['near_per_question']} negative(s) a "
        f"question. Other-relation negatives of cases whose wordings no relation group holds (zsRE's): another case's "
        f"wording unlike theirs{' asking for another kind of answer by ' + Path(cfg['answer_types']).name if cfg.get('answer_types') else ''}. "
        f"Not trained or tuned on counterfact-test (evaluation only) or on the other folds of "
        f"{Path(cfg['also_train'] or '-').name} (held out: `rag-eval edits --fold`).",
        f"- Steps: {cfg['steps']} x {cfg['batch_size']} pairs ({record['epochs']} epochs), lr {cfg['lr']} (warm-up "
        f"{cfg['warmup']}, linear decay), AdamW (weight decay {cfg['weight_decay']}), BCE with positives weighted "
        f"{record['pos_weight']}, max length {cfg['max_length']}, bf16 autocast {cfg['bf16']}, from {cfg['encoder']}, seed {cfg['seed']}.",
        f"- Time: pairs and embeddings {record['data_seconds']} s, training {record['train_seconds']} s, validation "
        f"{record['val_seconds']} s.",
        f"- Machine: {record['machine']['cpu']} ({record['machine']['cpus']} CPUs, {record['machine']['torch_threads']} torch "
        f"threads, device {record['machine']['device']}, GPU {record['machine']['cuda']}), torch {record['machine']['torch']}.",
        f"- Final loss (smoothed): {record['final_loss']:.3f}.",
        "",
        "Thresholds, each chosen by balanced accuracy: the classifier's on the validation pairs (so its validation "
        "figures are slightly optimistic), the similarity baseline's on the training pairs.",
        "",
        "| decider (validation pairs) | threshold | accuracy | balanced accuracy | AUC | "
        + " | ".join(clf["by_kind"]) + " |",
        "|---|---|---|---|---|" + "---|" * len(clf["by_kind"]),
    ]
    for name, m in (("classifier", clf), ("classifier at 0.5", record["classifier"]["val_at_0.5"]), ("similarity (MiniLM cosine)", sim)):
        lines.append(f"| {name} | {m['threshold']} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | {m['auc']:.3f} | "
                     + " | ".join(f"{m['by_kind'][k]['accuracy']:.3f}" for k in clf["by_kind"]) + " |")
    lines += ["", "Per-kind columns are the share of that kind's pairs decided right (in scope for question, "
              "paraphrase and relation-paraphrase, out of scope for the rest)."]
    if record["val_curve"]:
        lines += ["", "Quick validation checks (AUC): " + ", ".join(f"step {c['step']}: {c['val_auc']:.3f}" for c in record["val_curve"])]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------------

def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.scope_training` (and of `rag-train scope`, which takes them as a parent)."""
    d = ScopeTrainingConfig(out=Path())
    parser = argparse.ArgumentParser(prog="python -m trainer.scope_training", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     add_help=add_help,
                                     description="Train the edit scope classifier (a cross-encoder on the MiniLM encoder) on "
                                                 "CounterFact and zsRE pairs, and calibrate the similarity-threshold baseline.")
    add = parser.add_argument
    add("--out", required=True, type=Path, help="output folder (new or empty): the scope classifier")
    add("--train", type=Path, default=d.train, help="edit cases to train on (never counterfact-test)")
    add("--val", type=Path, default=d.val, help="edit cases the thresholds are chosen and measured on")
    add("--also-train", type=Path, default=d.also_train, help="more edit cases to train on (zsRE: questions, not cloze prompts)")
    add("--also-train-fold", default=d.also_train_fold,
        help="I/N: train on fold I of N of --also-train only (by a hash of the case id); the others stay held out")
    add("--also-train-repeat", type=int, default=d.also_train_repeat, help="times the --also-train pairs are repeated")
    add("--no-also-train", action="store_true", help="train on --train alone")
    add("--nq-train", type=Path, default=d.nq_train, help="QA file whose questions are extra negatives for training")
    add("--nq-val", type=Path, default=d.nq_val, help="QA file whose questions are extra negatives for validation")
    add("--no-nq", action="store_true", help="no NQ questions at all")
    add("--encoder", default=d.encoder, help="encoder to start from; also embeds for the similarity baseline")
    add("--cases", type=int, default=None, help="a seeded sample of N training cases (default: all)")
    add("--val-cases", type=int, default=None, help="a seeded sample of N validation cases (default: all)")
    add("--near-depth", type=int, default=d.near_depth, help="nearest other edits considered per question")
    add("--near-per-question", type=int, default=d.near_per_question, help="near-edit negatives per question")
    add("--relation-paraphrase", type=int, default=d.relation_paraphrase, help="same-relation template positives per case")
    add("--other-relation", type=int, default=d.other_relation, help="other-relation template negatives per case")
    add("--nq-per-case", type=finite_float, default=d.nq_per_case, help="NQ questions per case")
    add("--answer-types", type=Path, default=d.answer_types,
        help="answer-type classifier: zsRE-style cases take other-relation negatives only of another kind of answer")
    add("--no-answer-types", action="store_true", help="other-relation negatives of zsRE-style cases of any kind of answer")
    add_optimizer_options(parser, d, "pairs")
    add("--weight-decay", type=finite_float, default=d.weight_decay, help="AdamW weight decay")
    add("--max-length", type=int, default=d.max_length, help="tokens per (edit, question) pair")
    add("--val-every", type=int, default=d.val_every, help="steps between quick validation checks (0: none)")
    add("--val-quick", type=int, default=d.val_quick, help="validation pairs in a quick check")
    add_run_options(parser, d, "seed of the pairs, their order and the head")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    defaults = ScopeTrainingConfig(out=Path())
    for switch, options in (("no_nq", ("nq_train", "nq_val", "nq_per_case")),
                            ("no_also_train", ("also_train", "also_train_fold", "also_train_repeat")),
                            ("no_answer_types", ("answer_types",))):
        given = [name for name in options if getattr(args, name) != getattr(defaults, name)]
        if getattr(args, switch) and given:  # one of them would be ignored without a word
            raise ValueError(f"--{switch.replace('_', '-')} leaves out what --{given[0].replace('_', '-')} names: give one of them")
    config = config_from_args(ScopeTrainingConfig, args, nq_train=None if args.no_nq else args.nq_train,
                              nq_val=None if args.no_nq else args.nq_val,
                              also_train=None if args.no_also_train else args.also_train,
                              answer_types=None if args.no_answer_types else args.answer_types)
    record = train_scope_classifier(config)
    clf, sim = record["classifier"]["val"], record["similarity"]["val"]
    print(json.dumps({"out": str(args.out), "train_seconds": record["train_seconds"], "threshold": record["threshold"],
                      "similarity_threshold": record["similarity_threshold"],
                      "val": {"classifier": {k: clf[k] for k in ("accuracy", "balanced_accuracy", "auc")},
                              "similarity": {k: sim[k] for k in ("accuracy", "balanced_accuracy", "auc")}}}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m trainer.scope_training`."""
    return run_command("python -m trainer.scope_training", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
