"""Training of the two-hop question detector (rag/two_hop.py) and of its relation threshold.

Questions, each embedded with the index's encoder (MiniLM, normalised, as the edit router embeds them):
- two-hop (1): a CounterFact edit's relation turned into a noun phrase about its subject by
  trainer/edit_portability.py's first hops ("the place where X died", "the place" sometimes "the country",
  "the city" or "the region"), asked a second hop of ("What language is spoken in the city where X died?"):
  the portability probes' two (capital, continent) and TRAIN_SECOND_HOPS;
- one-hop (0): the edit's own question, a paraphrase and a neighbour prompt ("question", "paraphrase",
  "neighbor"); the first hop asked as such ("What is the place where X died?": "first-hop"); the second hop
  asked of the new target itself ("What is the capital of Poland?": "second-hop"); NQ questions ("nq").
So the detector learns the composition, not the words "capital" or "the place where". The validation
questions also ask HELD_OUT_SECOND_HOPS, which training never sees ("held-out-two-hop" and
"held-out-second-hop" in the record): how far it carries to second hops it was not taught; they do not
choose the threshold.

A logistic regression (class-balanced BCE, AdamW, full batch) over counterfact-train questions (and
nq-open-train); its threshold has the best balanced accuracy on counterfact-val (and nq-open-dev) questions.

`relation_threshold`: on counterfact-val, each edit's two-hop question over its own relation and one over
another relation of the same subject ("the place where X was born" for an edit of where X died), scored by
the shipped scope classifier with the edit's fact. The router (rag/editing.py) needs that score for a
two-hop question naming an edit's subject. The classifier tells the two apart only loosely (AUC about 0.8:
it was not trained on two-hop questions), and no threshold does much better than any other by balanced
accuracy, so the threshold is the one keeping `--relation-recall` of the own-relation questions; the
record gives the share of other-relation questions it lets through too.

Caveat: the evaluation probes (data/editing/counterfact-test-portability.jsonl.gz) are made by the same
templates, on other subjects; free-form two-hop questions are not measured.

Run: `rag-train two-hop --out FILE` (or `python -m trainer.two_hop_training --out FILE`); `--out
rag/classifiers/two-hop-minilm.json` replaces the shipped detector.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from indexer.encoder import DEFAULT_ENCODER, TextEncoder
from rag.command_line import finite_float, check_counts, run_command, typed_command
from rag.scope_classifier import SHIPPED as SHIPPED_SCOPE, ScopeClassifier
from rag.two_hop import TwoHopDetector
from trainer.classifier_metrics import auc, best_threshold
from trainer.edit_cases import EditCase, read_cases
from trainer.edit_portability import FIRST_HOP, SECOND_HOP, first_hop_phrase
from trainer.qa_data import read_qa
from trainer.scope_data import check_not_evaluation_only
from trainer.shared_data import SHARED_DATA

PHRASES = [phrase for _, phrase in FIRST_HOP]
PORTABILITY_SECOND_HOPS = [template for _, _, template in SECOND_HOP]
TRAIN_SECOND_HOPS = PORTABILITY_SECOND_HOPS + [
    "What language is spoken in {}?", "What currency is used in {}?", "Who is the head of state of {}?",
    "What is the population of {}?", "What is the official language of {}?", "What time zone is {} in?",
    "Which country borders {}?", "What is the largest city in {}?", "Which river flows through {}?", "What is the flag of {} like?",
]
HELD_OUT_SECOND_HOPS = ["Who leads the government of {}?", "What is the national anthem of {}?", "Which sea is closest to {}?",
                        "What is the climate like in {}?"]
PLACE_WORDS = ["the place where", "the country where", "the city where", "the region where"]


@dataclass(frozen=True)
class Question:
    """One labelled question; `kind` says which rule made it."""

    text: str
    label: int  # 1: two-hop
    kind: str


def questions_of(cases: Sequence[EditCase], nq: Sequence[str], rng: random.Random, held_out: bool = False) -> list[Question]:
    """Labelled questions from edit cases and NQ questions (see the module docstring); `held_out` adds the
    held-out second hops' kinds (validation only)."""
    out = [Question(q, 0, "nq") for q in nq]
    for case in cases:
        out.append(Question(case.question, 0, "question"))
        if case.paraphrases:
            out.append(Question(rng.choice(case.paraphrases), 0, "paraphrase"))
        if case.neighbors:
            out.append(Question(rng.choice(case.neighbors).question, 0, "neighbor"))
        phrase = first_hop_phrase(case.question, case.subject or "")
        if phrase is None:
            continue
        phrase = phrase.replace("the place where", rng.choice(PLACE_WORDS), 1)
        second = rng.choice(TRAIN_SECOND_HOPS)
        out.append(Question(second.format(phrase), 1, "two-hop"))
        out.append(Question(f"What is {phrase}?", 0, "first-hop"))
        out.append(Question(second.format(case.target_new), 0, "second-hop"))
        if held_out:
            unseen = rng.choice(HELD_OUT_SECOND_HOPS)
            out.append(Question(unseen.format(phrase), 1, "held-out-two-hop"))
            out.append(Question(unseen.format(case.target_new), 0, "held-out-second-hop"))
    return out


def relation_pairs(cases: Sequence[EditCase], rng: random.Random) -> tuple[list[str], list[str], np.ndarray]:
    """(edit facts, two-hop questions, 1 when over the edit's own relation) for the cases with a place relation."""
    facts, questions, labels = [], [], []
    for case in cases:
        phrase = first_hop_phrase(case.question, case.subject or "")
        if phrase is None:
            continue
        own = next(p for p in PHRASES if p.format(case.subject) == phrase)
        other = rng.choice([p for p in PHRASES if p != own])
        second = rng.choice(PORTABILITY_SECOND_HOPS)
        for template, label in ((own, 1), (other, 0)):
            facts.append(case.fact)
            questions.append(second.format(template.format(case.subject)))
            labels.append(label)
    return facts, questions, np.asarray(labels)


def fit(vectors: np.ndarray, labels: np.ndarray, steps: int, lr: float, weight_decay: float, seed: int) -> tuple[np.ndarray, float]:
    """Logistic regression weights and bias, class-balanced."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(vectors), torch.from_numpy(labels.astype(np.float32))
    weights = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([weights, bias], lr=lr, weight_decay=weight_decay)
    pos_weight = (len(y) - y.sum()) / y.sum().clamp(min=1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weights + bias, y, pos_weight=pos_weight)
        loss.backward()
        optimizer.step()
    return weights.detach().numpy(), float(bias.item())


def by_kind(questions: Sequence[Question], decided: np.ndarray) -> dict[str, dict[str, float]]:
    """Per kind: how many questions and the share decided right."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter(q.kind for q in questions)
    for q, two_hop in zip(questions, decided):
        right[q.kind] += int(bool(two_hop) == bool(q.label))
    return {kind: {"n": total[kind], "accuracy": round(right[kind] / total[kind], 4)} for kind in sorted(total)}


def train(args: argparse.Namespace) -> TwoHopDetector:
    """Train, calibrate and return the detector (its `training` holds the record)."""
    for path in (args.train, args.val, args.nq_train, args.nq_val):
        check_not_evaluation_only(path)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    train_cases = read_cases(args.train, "counterfact")
    train_cases = rng.sample(train_cases, min(args.train_cases, len(train_cases)))
    val_cases = read_cases(args.val, "counterfact")
    nq_train = [r.question for r in read_qa(args.nq_train)]
    nq_train = rng.sample(nq_train, min(args.nq, len(nq_train)))
    nq_val = [r.question for r in read_qa(args.nq_val)]
    nq_val = rng.sample(nq_val, min(args.nq // 3, len(nq_val)))
    train_q, val_q = questions_of(train_cases, nq_train, rng), questions_of(val_cases, nq_val, rng, held_out=True)
    encoder = TextEncoder(args.encoder)
    x_train = encoder([q.text for q in train_q], progress=True)
    x_val = encoder([q.text for q in val_q], progress=True)
    data_seconds = time.perf_counter() - started
    y_train, y_val = np.array([q.label for q in train_q]), np.array([q.label for q in val_q])
    weights, bias = fit(x_train, y_train, args.steps, args.lr, args.weight_decay, args.seed)
    detector = TwoHopDetector(weights, bias, 0.5, 0.0, args.encoder)
    val_scores = detector.scores(x_val)
    taught = np.array([not q.kind.startswith("held-out") for q in val_q])
    detector.threshold, balanced = best_threshold(val_scores[taught], y_val[taught])

    scope = ScopeClassifier.from_pretrained(args.scope, device="cpu")
    facts, probes, same_relation = relation_pairs(val_cases, rng)
    relation_scores = scope.scores(facts, probes)
    detector.relation_threshold = float(np.quantile(relation_scores[same_relation == 1], 1.0 - args.relation_recall))
    detector.training = {
        "command": " ".join(typed_command("trainer.two_hop_training")),
        "data": {"train": {"file": str(args.train), "cases": len(train_cases), "nq": str(args.nq_train),
                           "by_kind": dict(Counter(q.kind for q in train_q))},
                 "val": {"file": str(args.val), "cases": len(val_cases), "nq": str(args.nq_val),
                         "by_kind": dict(Counter(q.kind for q in val_q))}},
        "settings": {"steps": args.steps, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed},
        "val": {"auc": round(auc(val_scores[taught], y_val[taught]), 4), "balanced_accuracy": round(balanced, 4),
                "train_balanced_accuracy": round(best_threshold(detector.scores(x_train), y_train)[1], 4),
                "by_kind": by_kind(val_q, val_scores >= detector.threshold)},
        "relation": {"pairs": len(probes), "scope_classifier": str(args.scope), "auc": round(auc(relation_scores, same_relation), 4),
                     "own_relation_kept": round(float((relation_scores[same_relation == 1] >= detector.relation_threshold).mean()), 4),
                     "other_relation_kept": round(float((relation_scores[same_relation == 0] >= detector.relation_threshold).mean()), 4)},
        "seconds": {"data": round(data_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "caveat": "probes of the same templates as data/editing/counterfact-test-portability.jsonl.gz; free-form two-hop questions unmeasured",
    }
    return detector


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The arguments of `python -m trainer.two_hop_training` (and of `rag-train two-hop`, which takes them as a parent)."""
    parser = argparse.ArgumentParser(prog="python -m trainer.two_hop_training", description=__doc__, add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="detector file to write; rag/classifiers/two-hop-minilm.json replaces the shipped one")
    parser.add_argument("--train", type=Path, default=SHARED_DATA / "editing/counterfact-train.jsonl.gz")
    parser.add_argument("--val", type=Path, default=SHARED_DATA / "editing/counterfact-val.jsonl.gz")
    parser.add_argument("--nq-train", type=Path, default=SHARED_DATA / "qa/nq-open-train.jsonl.gz")
    parser.add_argument("--nq-val", type=Path, default=SHARED_DATA / "qa/nq-open-dev.jsonl.gz")
    parser.add_argument("--train-cases", type=int, default=4000, help="counterfact-train cases sampled (seeded)")
    parser.add_argument("--nq", type=int, default=3000, help="NQ training questions (a third as many for validation)")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="the index encoder whose vectors the detector reads")
    parser.add_argument("--scope", type=Path, default=SHIPPED_SCOPE, help="scope classifier for the relation threshold")
    parser.add_argument("--relation-recall", type=finite_float, default=0.9,
                        help="share of own-relation two-hop questions the relation threshold keeps (default %(default)s)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=finite_float, default=0.05)
    parser.add_argument("--weight-decay", type=finite_float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    check_counts(args, at_least_one=("train_cases", "nq", "steps", "threads"))
    if not 0.0 < args.relation_recall <= 1.0:
        raise ValueError(f"--relation-recall is a share, above 0 and at most 1; got {args.relation_recall}")
    torch.set_num_threads(args.threads)
    try:
        detector = train(args)
    except OSError as exc:
        raise ValueError(str(exc)) from exc
    args.out.parent.mkdir(parents=True, exist_ok=True)
    detector.save(args.out)
    print(json.dumps({"out": str(args.out), "threshold": detector.threshold, "relation_threshold": detector.relation_threshold,
                      "val": detector.training["val"]["balanced_accuracy"], "relation": detector.training["relation"]}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m trainer.two_hop_training`."""
    return run_command("python -m trainer.two_hop_training", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
