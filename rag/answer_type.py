"""What kind of answer a question asks for: a person, a place, a number or date, ... (TREC's six coarse classes).

An edit that states a question answers only questions that ask for the same kind of thing. "How tall is the
Eiffel Tower?" names the subject of "Where is the Eiffel Tower?", and a scope decider, which reads subjects more
than relations, puts it in that edit's scope; the kinds of answer they ask for (a number, a place) say it is not.
rag/editing.py drops such a pair from the scope when both questions' kinds are confident and differ.

A softmax regression over vectors of the index's encoder: the whole question's (which the edit router computes
anyway) and those of its first one and first two words, where English puts the wh-phrase ("How tall", "When
was"). Trained by trainer/answer_type_training.py on TREC's training questions, with a confidence threshold set
on paraphrase pairs of the edit training data; shipped as SHIPPED (a JSON file with its weights and how it was made).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rag.json_model import load_for_encoder, read_json_model

KIND = "answer-type-classifier"
SHIPPED = Path(__file__).resolve().parent / "classifiers" / "answer-type-minilm.json"
HEAD_WORDS = (1, 2)  # the leading words embedded beside the whole question
MAX_KNOWN = 100_000  # texts whose kinds are kept (edits' questions recur with every question near them)

Encode = Callable[[list[str]], np.ndarray]

NUMBER_KIND = "NUM"  # TREC's class of numbers, dates, sizes and spans of time
# What an answer to a NUM question ("When", "How many", "How old") states: a digit (any script's), a number word, a
# date or a span of time, an era. Only a miss costs: a NUM question would leave an edit that does answer it.
NUMBER_WORDS = re.compile(
    r"\d|[〇一二三四五六七八九十百千万億]|\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"(?:thir|four|fif|six|seven|eigh|nine)teen(?:th)?|(?:twen|thir|for|fif|six|seven|eigh|nine)t(?:y|ieth)|"
    r"(?:hundred|thousand|million|billion|trillion|dozen|score)s?|half|once|twice|first|second|third|"
    r"(?:four|fif|six|seven|eigh|nin|ten|eleven|twelf|hundred|thousand|million)th|"
    r"(?:second|minute|hour|day|night|week|fortnight|month|year|decade|century|centurie|millenni(?:um|a)|age|era|"
    r"epoch|period|dynasty|reign|war|revolution|renaissance|percent|noon|midnight|eve)s?|bc|ad|bce|ce|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday|january|february|march|april|may|june|july|august|"
    r"september|october|november|december|spring|summer|autumn|fall|winter)\b",
    flags=re.IGNORECASE)


# A wh-word naming a unit of time asks for a date: "In what year ...", "On which date ...", "What century ...". The
# classifier, trained on TREC, where few questions open with a preposition, is unsure of them ("In what year": None).
# Not the unit as part of a compound ("What day-care ...", "Which Day-Lewis film", "What day school", "What date palm").
TIME_QUESTION = re.compile(r"^\W*+(?:(?:in|on|at|by|during|since|until|from|to|after|before|of)\s++)?(?:what|which)\s++"
                           r"(?:year|date|month|day|century|decade)s?(?![\w-])(?!\s++(?:school|care|camp|trip|job|palm|group)s?\b)",
                           re.IGNORECASE)


def states_number(answer: str) -> bool:
    """Whether `answer` could answer a question that asks for a number or a date ("1972", "March", "twelve")."""
    return bool(NUMBER_WORDS.search(answer))


def question_heads(questions: Sequence[str], words: int) -> list[str]:
    """Each question's first `words` words (the whole question when it has fewer)."""
    return [" ".join(q.split()[:words]) or q for q in questions]


@dataclass
class AnswerTypeClassifier:
    """P(kind | question) = softmax(features . weights + bias); a kind only when its probability is at least `threshold`."""

    labels: list[str]
    weights: np.ndarray  # ((1 + len(HEAD_WORDS)) * dim, len(labels)) float32
    bias: np.ndarray  # (len(labels),) float32
    threshold: float
    encoder: str  # the encoder whose (normalised) vectors it reads
    training: dict[str, Any] = field(default_factory=dict)  # how it was made and what it scored

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32).reshape(-1)
        if self.weights.ndim != 2 or self.weights.shape[1] != len(self.labels) or self.bias.shape[0] != len(self.labels):
            raise ValueError(f"answer-type weights of shape {self.weights.shape} and bias {self.bias.shape} do not fit {len(self.labels)} labels")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold is a probability, from 0 to 1; got {self.threshold}")
        self._known: dict[str, str | None] = {}

    @staticmethod
    def features(questions: Sequence[str], encode: Encode, vectors: np.ndarray | None = None) -> np.ndarray:
        """The classifier's input for each question: its vector (`vectors` when already computed) beside those of its heads."""
        questions = list(questions)
        whole = encode(questions) if vectors is None else np.asarray(vectors, dtype=np.float32)
        heads = encode([h for n in HEAD_WORDS for h in question_heads(questions, n)])
        return np.concatenate([whole, *np.split(heads, len(HEAD_WORDS))], axis=1).astype(np.float32)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """P(kind) for each row of `features` (n, features): an (n, labels) float32 array."""
        if features.ndim != 2 or features.shape[1] != self.weights.shape[0]:
            raise ValueError(f"the answer-type classifier reads {self.weights.shape[0]} features of {self.encoder}, got shape {features.shape}")
        logits = features @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def decide(self, probabilities: np.ndarray) -> list[str | None]:
        """The confident kind of each row, else None."""
        return [self.labels[int(p.argmax())] if p.max() >= self.threshold else None for p in probabilities]

    def kinds(self, questions: Sequence[str], encode: Encode, vectors: np.ndarray | None = None) -> list[str | None]:
        """The kind each question asks for, None where the classifier is not confident; texts seen before are not
        encoded again. A question whose wh-word names a unit of time (`TIME_QUESTION`) asks for a number or date
        whatever the classifier would say."""
        known = {q: self._known[q] for q in questions if q in self._known}
        known |= {q: NUMBER_KIND for q in questions if TIME_QUESTION.match(q)}
        todo = [i for i, q in enumerate(questions) if q not in known]
        if todo:
            given = None if vectors is None else np.asarray(vectors)[todo]
            found = self.decide(self.probabilities(self.features([questions[i] for i in todo], encode, given)))
            known.update(zip((questions[i] for i in todo), found))
            if len(self._known) + len(todo) > MAX_KNOWN:
                self._known = {}  # a new dict, not clear(): another thread may be reading the old one
            self._known.update(known)
        return [known[q] for q in questions]

    def save(self, path: str | Path) -> None:
        """Write the JSON file `load` reads."""
        payload = {"kind": KIND, **{k: v for k, v in asdict(self).items() if k not in ("weights", "bias")},
                   "weights": np.round(self.weights, 7).tolist(), "bias": np.round(self.bias, 7).tolist()}
        Path(path).write_text(json.dumps(payload) + "\n")

    @classmethod
    def load(cls, path: str | Path = SHIPPED) -> AnswerTypeClassifier:
        """Read a file written by `save` (default: the shipped classifier); ValueError when it is not one."""
        raw = read_json_model(path, KIND, "answer-type classifier", ("labels", "weights", "bias", "threshold", "encoder"), "rag-train answer-type")
        return cls(**{k: raw[k] for k in ("labels", "weights", "bias", "threshold", "encoder", "training") if k in raw})


def load_answer_types(encoder: str, path: str | Path = SHIPPED, dim: int | None = None) -> AnswerTypeClassifier | None:
    """The classifier at `path` when it reads vectors of `encoder` (the index's); None when there is none or it reads another's.
    With `dim` (the encoder's), ValueError for a file whose weights do not fit it: it would fail every question near an edit."""
    classifier = load_for_encoder(path, AnswerTypeClassifier.load, encoder)
    features = (1 + len(HEAD_WORDS)) * dim if dim is not None else None
    if classifier is not None and features is not None and classifier.weights.shape[0] != features:
        raise ValueError(f"answer-type classifier {path} has {classifier.weights.shape[0]} weights a label for {encoder}'s "
                         f"{features} features ({dim}-d vectors of a question and its heads): a damaged file? Retrain it "
                         "with `rag-train answer-type`")
    return classifier
