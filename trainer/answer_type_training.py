"""Training of the answer-type classifier (rag/answer_type.py) and of its confidence threshold.

A softmax regression (L2, L-BFGS, full batch) over TREC's training questions (`fewshot/trec/train`, coarse labels:
ABBR, DESC, ENTY, HUM, LOC, NUM), each embedded as the edit router embeds questions (the index's encoder, MiniLM)
and by its first one and two words; a seeded tenth is held out to report accuracy on.

The threshold decides when a kind is confident enough to keep a question out of an edit's scope. It is the lowest
on a grid at which at most --max-paraphrase-conflicts of the edit training data's paraphrase pairs (an edit's
question and a paraphrase of it, which must stay in scope) get two confident, different kinds: counterfact-train
prompts and the training fold of zsre-1k (rag-train scope's). The other zsre-1k fold is measured for the record,
with its questions paired to another edit's question put to the same subject ("conflicts_other": how often the gate
would act on a question about another relation).

Run: `rag-train answer-type --out FILE` (or `python -m trainer.answer_type_training --out FILE`); `--out
rag/classifiers/answer-type-minilm.json` replaces the shipped classifier.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from indexer.encoder import DEFAULT_ENCODER, TextEncoder
from rag.answer_type import AnswerTypeClassifier
from rag.command_line import check_counts, check_out_file, finite_float, run_command, typed_command
from trainer.edit_cases import EditCase, in_fold, parse_fold, read_cases
from trainer.fewshot_tasks import read_records
from trainer.scope_data import check_not_evaluation_only
from trainer.shared_data import SHARED_DATA

THRESHOLDS = np.round(np.arange(0.5, 0.995, 0.01), 2)


def fit(features: np.ndarray, labels: np.ndarray, classes: int, weight_decay: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression weights (features, classes) and bias (classes,), by L-BFGS on the cross-entropy plus an L2 term."""
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    weights = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weights + bias, y) + weight_decay * weights.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach().numpy(), bias.detach().numpy()


def conflicts(classifier: AnswerTypeClassifier, first: np.ndarray, second: np.ndarray, threshold: float) -> float:
    """The share of pairs (rows of two probability arrays) whose kinds are both confident at `threshold` and differ."""
    sure = (first.max(axis=1) >= threshold) & (second.max(axis=1) >= threshold)
    return float((sure & (first.argmax(axis=1) != second.argmax(axis=1))).mean()) if len(first) else 0.0


def other_subject_questions(cases: Sequence[EditCase], rng: random.Random) -> list[tuple[str, str]]:
    """(an edit's question, another edit's question put to the first one's subject) for cases whose question names
    their subject, each paired with a case of another wording: a question about another relation of the same subject."""
    named = [c for c in cases if c.subject and c.subject in c.question]
    pairs = []
    for case in named:
        other = rng.choice(named)
        template = other.question.replace(other.subject or "", "{}", 1)
        if template != case.question.replace(case.subject or "", "{}", 1):
            pairs.append((case.question, template.replace("{}", case.subject or "")))
    return pairs


def read_trec(path: Path) -> list[dict[str, str]]:
    """The {question, label} records of a TREC file; ValueError naming file:line for a record of another shape, and
    for a file with fewer than two labels (nothing to tell apart)."""
    records = []
    for where, raw in read_records(path, "TREC file"):
        if not all(isinstance(raw.get(k), str) and raw[k].strip() for k in ("question", "label")):
            raise ValueError(f"{where}: not a TREC record: it needs \"question\" and \"label\", both non-empty text")
        records.append({"question": raw["question"], "label": raw["label"]})
    if len({r["label"] for r in records}) < 2:
        raise ValueError(f"{path}: the records need at least two labels to tell apart")
    return records


def train(args: argparse.Namespace) -> AnswerTypeClassifier:
    """Train, calibrate and return the classifier (its `training` holds the record)."""
    for path in (args.trec, args.counterfact):
        check_not_evaluation_only(path)
    fold = parse_fold(args.zsre_fold)
    check_not_evaluation_only(args.zsre, fold)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    trec = read_trec(args.trec)
    labels = sorted({r["label"] for r in trec})
    order = list(range(len(trec)))
    rng.shuffle(order)
    held = set(order[: len(order) // 10])
    encoder = TextEncoder(args.encoder)
    x = AnswerTypeClassifier.features([r["question"] for r in trec], encoder)
    y = np.array([labels.index(r["label"]) for r in trec])
    train_rows, dev_rows = [i for i in order if i not in held], sorted(held)
    weights, bias = fit(x[train_rows], y[train_rows], len(labels), args.weight_decay, args.steps)
    classifier = AnswerTypeClassifier(labels, weights, bias, 0.5, args.encoder)
    accuracy = float((classifier.probabilities(x[dev_rows]).argmax(axis=1) == y[dev_rows]).mean())

    cases = read_cases(args.counterfact, "counterfact")
    counterfact = rng.sample(cases, min(args.counterfact_cases, len(cases)))  # all of a smaller file
    zsre = read_cases(args.zsre, "zsre", on_error="skip")
    taught = [c for c in zsre if in_fold(c, fold)]
    measured = [c for c in zsre if not in_fold(c, fold)]

    def probabilities(texts: Sequence[str]) -> np.ndarray:
        return classifier.probabilities(AnswerTypeClassifier.features(list(texts), encoder))

    paraphrases = [(c.question, p) for c in [*counterfact, *taught] for p in c.paraphrases]
    own, rephrased = probabilities([a for a, _ in paraphrases]), probabilities([b for _, b in paraphrases])
    classifier.threshold = float(next((t for t in THRESHOLDS if conflicts(classifier, own, rephrased, t) <= args.max_paraphrase_conflicts),
                                      THRESHOLDS[-1]))
    held_pairs = [(c.question, p) for c in measured for p in c.paraphrases]
    other_pairs = other_subject_questions(measured, rng)
    figures = {}
    for name, pairs in (("paraphrases", held_pairs), ("other_relation", other_pairs)):
        first, second = probabilities([a for a, _ in pairs]), probabilities([b for _, b in pairs])
        figures[name] = {"pairs": len(pairs), "conflicts": round(conflicts(classifier, first, second, classifier.threshold), 4)}
    classifier.training = {
        "command": " ".join(typed_command("trainer.answer_type_training")),
        "data": {"trec": str(args.trec), "questions": len(trec), "held_out": len(dev_rows),
                 "threshold_pairs": {"counterfact": str(args.counterfact), "counterfact_cases": len(counterfact),
                                     "zsre": str(args.zsre), "zsre_fold": args.zsre_fold, "zsre_cases": len(taught), "pairs": len(paraphrases)}},
        "settings": {"weight_decay": args.weight_decay, "steps": args.steps, "seed": args.seed,
                     "max_paraphrase_conflicts": args.max_paraphrase_conflicts},
        "trec_held_out_accuracy": round(accuracy, 4),
        "threshold_paraphrase_conflicts": round(conflicts(classifier, own, rephrased, classifier.threshold), 4),
        "zsre_measured_folds": figures,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return classifier


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.answer_type_training` (and of `rag-train answer-type`, which takes them as a parent)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.answer_type_training", description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="classifier file to write; rag/classifiers/answer-type-minilm.json replaces the shipped one")
    parser.add_argument("--trec", type=Path, default=SHARED_DATA / "fewshot/trec/train.jsonl.gz", help="TREC training questions")
    parser.add_argument("--counterfact", type=Path, default=SHARED_DATA / "editing/counterfact-train.jsonl.gz")
    parser.add_argument("--counterfact-cases", type=int, default=2000, help="counterfact-train cases whose paraphrases set the threshold")
    parser.add_argument("--zsre", type=Path, default=SHARED_DATA / "editing/zsre-1k.jsonl.gz")
    parser.add_argument("--zsre-fold", default="0/2", help="the fold of --zsre that sets the threshold (rag-train scope's); the others are measured")
    parser.add_argument("--max-paraphrase-conflicts", type=finite_float, default=0.002,
                        help="share of paraphrase pairs the threshold may give two different confident kinds (default %(default)s)")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="the index encoder whose vectors the classifier reads")
    parser.add_argument("--weight-decay", type=finite_float, default=3e-4)
    parser.add_argument("--steps", type=int, default=500, help="L-BFGS iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    check_counts(args, at_least_one=("counterfact_cases", "steps", "threads"), at_least_zero=("weight_decay",))
    check_out_file(args.out, "answer-type.json")
    if not 0.0 <= args.max_paraphrase_conflicts < 1.0:
        raise ValueError(f"--max-paraphrase-conflicts is a share, from 0 to below 1; got {args.max_paraphrase_conflicts}")
    torch.set_num_threads(args.threads)
    try:
        classifier = train(args)
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    classifier.save(args.out)
    summary: dict[str, Any] = {"out": str(args.out), "threshold": classifier.threshold,
                               **{k: classifier.training[k] for k in ("trec_held_out_accuracy", "threshold_paraphrase_conflicts", "zsre_measured_folds")}}
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m trainer.answer_type_training`."""
    return run_command("python -m trainer.answer_type_training", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
