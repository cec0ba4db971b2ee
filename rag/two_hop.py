"""Two-hop questions: does a question ask for something reached through another fact, and which?

"What is the capital of the country Kim Myhr is a citizen of?" asks first for Kim Myhr's country, then for
its capital. When an edit changed the first hop (Kim Myhr's citizenship), the edit's stated answer (the
country) is not the answer: the question asks beyond the edit. rag/editing.py routes such questions to
their edit; rag/pipeline.py answers them as `resolve_first_hop` rewrites them ("What is the capital of
Iraq?"), or, where it cannot, reads them with the edit in view.

A logistic regression over the question's vector from the index's encoder, which the edit router computes
anyway: the decision costs one dot product. Trained by trainer/two_hop_training.py on two-hop questions
composed from CounterFact edits' relations and on one-hop questions; shipped as SHIPPED (a JSON file with
its weights, thresholds and how it was trained). `relation_threshold` is the scope classifier's score an
(edit, two-hop question) pair needs for the question's first hop to be the edit's relation: an edit of
someone's citizenship says nothing of "the capital of the country where they were born".
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.names import subject_spans
from rag.json_model import load_for_encoder, read_json_model

KIND = "two-hop-detector"
SHIPPED = Path(__file__).resolve().parent / "classifiers" / "two-hop-minilm.json"


@dataclass
class TwoHopDetector:
    """P(two-hop) = sigmoid(vector . weights + bias); two-hop when at least `threshold`."""

    weights: np.ndarray  # (dim,) float32
    bias: float
    threshold: float
    relation_threshold: float
    encoder: str  # the encoder whose (normalised) vectors it reads
    training: dict[str, Any] = field(default_factory=dict)  # how it was made and what it scored

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        for name in ("threshold", "relation_threshold"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name} is a probability, from 0 to 1; got {getattr(self, name)}")

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """P(two-hop) for each row of `vectors` (n, dim): a float32 array."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"the two-hop detector reads {self.dim}-d vectors of {self.encoder}, got shape {vectors.shape}")
        return (1.0 / (1.0 + np.exp(-(vectors @ self.weights + self.bias)))).astype(np.float32)

    def is_two_hop(self, vectors: np.ndarray) -> np.ndarray:
        """The decision for each row: a bool array."""
        return self.scores(vectors) >= self.threshold

    def save(self, path: str | Path) -> None:
        """Write the JSON file `load` reads."""
        payload = {"kind": KIND, **asdict(self), "weights": [round(float(w), 7) for w in self.weights]}
        Path(path).write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path = SHIPPED) -> TwoHopDetector:
        """Read a file written by `save` (default: the shipped detector); ValueError when it is not one."""
        raw = read_json_model(path, KIND, "two-hop detector", ("weights", "bias", "threshold", "relation_threshold", "encoder"), "rag-train two-hop")
        return cls(**{k: raw[k] for k in ("weights", "bias", "threshold", "relation_threshold", "encoder", "training") if k in raw})


# "the town of Gospić", "the nation of Poland": the subject named with what kind of place it is, not a first hop
# through it ("the capital of Poland", "the twin city of Ostrava").
APPOSITION = re.compile(r"the\s+(?:town|city|village|country|nation|state|province|region|county|district|island|"
                        r"municipality|commune|kingdom|republic|empire|borough|parish|prefecture)\s+of\s*", flags=re.IGNORECASE)
# A second hop that names its object ("What is the name of the state in which X is located?") asks for the
# first hop itself: there is no further fact to reach.
IDENTITY_HOP = re.compile(r"\b(?:name|names|title)\s+of\s*$", flags=re.IGNORECASE)


def split_first_hop(question: str, subject: str | None) -> tuple[str, str] | None:
    """`question` around its first hop through `subject`: the text before and after the noun phrase that asks
    for it ("What is the capital of " and "?" in "What is the capital of the country Kim Myhr is a citizen of?"),
    or None where it has none. Whether a question has a first hop is a matter of its wording alone.

    The first hop is taken to be the noun phrase that opens with the last "the" before the subject in its
    sentence (not one that is part of the subject's own name, as in "the Eiffel Tower", nor one that only says what
    kind of place the subject is, as in "the town of Gospić": `APPOSITION`) and runs to the end
    of the subject's clause (",", ";", "?" or the end). Where the subject occurs more than once, the last
    occurrence that has such a phrase is used. None when there is no subject, no such phrase, nothing of the
    sentence would be left before it, or what is left only names the phrase ("What is the name of the state in
    which X is located?" asks for the first hop itself). "Which country is the town of Gospić in?" has none: it asks
    the question of an edit of where Gospić is."""
    question = unicodedata.normalize("NFC", question)  # the positions subject_spans gives
    for at, after in reversed(subject_spans(question, subject)):
        sentence = max(question.rfind(mark, 0, at) for mark in ".!?") + 1
        opens = [sentence + m.start() for m in re.finditer(r"\bthe\b", question[sentence:at], flags=re.IGNORECASE)
                 if question[sentence + m.end() : at].strip()]
        if opens and APPOSITION.fullmatch(question[opens[-1] : at]):
            opens.pop()  # "the town of Gospić" only names the subject: a first hop may open before it
        if IDENTITY_HOP.search(question[: opens[-1]] if opens else ""):
            return None
        if not opens or not question[sentence : opens[-1]].strip():
            continue
        stop = re.search(r"[,;?]", question[after:])
        end = after + stop.start() if stop else len(question)
        return question[: opens[-1]], question[end:]
    return None


def resolve_first_hop(question: str, subject: str | None, answer: str) -> str | None:
    """`question` with its first hop replaced by `answer`: "What is the capital of the country Kim Myhr is a
    citizen of?" with Kim Myhr's edited citizenship Iraq gives "What is the capital of Iraq?". None where the
    question has no first hop (`split_first_hop`)."""
    around = split_first_hop(question, subject)
    return None if around is None else f"{around[0]}{answer}{around[1]}"


def load_two_hop(encoder: str, path: str | Path = SHIPPED, dim: int | None = None) -> TwoHopDetector | None:
    """The detector at `path` when it reads vectors of `encoder` (the index's); None when there is none or it reads another's.
    With `dim` (the encoder's), ValueError for a file whose weights do not fit it: it would fail every question near an edit."""
    detector = load_for_encoder(path, TwoHopDetector.load, encoder)
    if detector is not None and dim is not None and detector.dim != dim:
        raise ValueError(f"two-hop detector {path} has {detector.dim} weights for {encoder}'s {dim}-d vectors: a damaged "
                         "file? Retrain it with `rag-train two-hop`")
    return detector
