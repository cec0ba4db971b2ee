"""SQuAD answer metrics: exact match and token F1 after normalisation, maximised over the gold answers."""
from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse white space (the SQuAD v1.1 script's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(answers: Sequence[str]) -> list[str]:
    """The normalised gold answers, leaving out those that normalise to nothing: "" (some TriviaQA and NQ records list
    one among their aliases) or "The" is no answer to an open question, and an empty prediction must not match it."""
    return [gold for gold in map(normalize_answer, answers) if gold]


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(pred in _golds(answers))


def _f1(pred: list[str], gold: list[str]) -> float:
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction against any gold answer."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, gold.split()) for gold in _golds(answers)), default=0.0)


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a normalised gold answer appears, on word boundaries, in the normalised text."""
    padded = f" {normalize_answer(text)} "
    return any(f" {gold} " in padded for gold in _golds(answers))
