"""Which edit, if any, a question is about: the scope decision of SERAC over the index's edit memory.

For each question the memory returns its nearest active edits (dense search, `CANDIDATES` deep); a
scope decider scores each (edit, question) pair and the best pair at or above its threshold wins, among
the edits the question can be about: an edit that states its subject only of questions that name it.
Two deciders: `SimilarityScope` (the cosine of question and edit key, threshold calibrated on
the training pairs) and `ClassifierScope` (a cross-encoder trained on CounterFact and zsRE pairs, shipped in
rag/classifiers/scope-minilm). A question in an edit's scope is answered with the edit's stated answer,
or by the reader from the edit's fact alone; a question no edit claims is answered exactly as without edits.

A two-hop question ("What is the capital of the country X is a citizen of?", rag/two_hop.py) that names an
edit's subject, or that the decider puts in an edit's scope, asks beyond that edit: its answer follows from
the edit's answer but is not it. Its match says so (`beyond`), and the pipeline asks it again with the edit's
answer in place of its first hop ("What is the capital of Iraq?"), or reads it with the edit in view.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from indexer.chunking import chunk_tokens
from indexer.edit_memory import Edit, EditMemory, question_key
from indexer.encoder import DEFAULT_ENCODER, same_encoder
from indexer.names import subject_spans
from indexer.records import Document
from rag.answer_type import NUMBER_KIND, states_number
from rag.scope_classifier import CONFIG_FILE, SHIPPED, ScopeClassifier, is_scope_classifier
from rag.two_hop import TwoHopDetector, resolve_first_hop, split_first_hop

if TYPE_CHECKING:  # transformers is slow to import
    from transformers import PreTrainedTokenizerBase

SCOPE_CLASSIFIER = str(SHIPPED)
SCOPE_KINDS = ("auto", "classifier", "similarity", "none")
CANDIDATES = 8  # nearest edits scored per question
# Used only when no trained classifier folder (whose config records the calibrated value) is at hand.
SIMILARITY_THRESHOLD = 0.75


@dataclass(frozen=True)
class EditMatch:
    """The edit a question is about, with the decider's score for the pair. `beyond`: the question asks for
    something that follows from the edit's answer (a second hop), not for the answer itself; `resolved`: then
    the question with its first hop replaced by the edit's answer, None where it cannot be rewritten (it has no
    first hop phrase, or the edit states only a fact)."""

    edit: Edit
    score: float
    beyond: bool = False
    resolved: str | None = None


# A window of a long fact, in the index encoder's tokens: well inside what each reader reads of a passage beside its
# question (the span reader 256 tokens in all, question and title too; the generative readers 192 of their own
# tokens, which the same text takes a few more of).
FACT_WINDOW_TOKENS = 128


@dataclass(frozen=True)
class EditPassage:
    """An edit as the reader reads it: a passage that takes precedence over the corpus."""

    title: str
    text: str

    @classmethod
    def of(cls, edit: Edit) -> EditPassage:
        """The whole edit as one passage."""
        return cls(f"Edit {edit.id}" + (f": {edit.subject}" if edit.subject else ""), edit.fact)

    @classmethod
    def windows(cls, edit: Edit, tokenizer: PreTrainedTokenizerBase | None) -> list[EditPassage]:
        """The edit as passages a reader reads whole: one, or for a fact longer than FACT_WINDOW_TOKENS tokens of
        `tokenizer` (the index encoder's), overlapping windows of it. Read as one passage, the end of a long fact
        was cut off unread. Without a fast tokenizer, the whole edit as one passage."""
        whole = cls.of(edit)
        if not getattr(tokenizer, "is_fast", False):
            return [whole]
        chunks = chunk_tokens(Document(edit.id, whole.title, edit.fact), tokenizer, FACT_WINDOW_TOKENS, FACT_WINDOW_TOKENS // 4)
        return [cls(whole.title, chunk.text) for chunk in chunks]


class Scope(Protocol):
    """Scores (edit, question) pairs; a pair is in scope when its score is at least `threshold`, or
    `subject_threshold` for an edit that states its subject (which the question then names), or
    `question_subject_threshold` for such an edit whose own question is asked as a question."""

    name: str
    threshold: float
    subject_threshold: float
    question_subject_threshold: float

    def limit(self, edit: Edit) -> float:
        """The score `edit` needs for a question to be in its scope."""
        ...

    def scores(self, questions: Sequence[str], candidates: Sequence[Sequence[tuple[Edit, float]]]) -> list[list[float]]: ...


class SimilarityScope:
    """In scope when the cosine of the question and the edit's key reaches the threshold."""

    name = "similarity"

    def __init__(self, threshold: float = SIMILARITY_THRESHOLD) -> None:
        self.threshold = threshold
        self.subject_threshold = threshold
        self.question_subject_threshold = threshold

    def limit(self, edit: Edit) -> float:
        return self.threshold

    def scores(self, questions: Sequence[str], candidates: Sequence[Sequence[tuple[Edit, float]]]) -> list[list[float]]:
        return [[similarity for _, similarity in found] for found in candidates]


class ClassifierScope:
    """In scope when the trained cross-encoder's probability for (edit fact, question) reaches its threshold
    (its `subject_threshold` for an edit that states its subject, `question_subject_threshold` when that edit's
    question is a question)."""

    name = "classifier"

    def __init__(self, classifier: ScopeClassifier) -> None:
        self.classifier = classifier
        self.threshold = float(classifier.threshold)
        subject, question = classifier.config.subject_threshold, classifier.config.question_subject_threshold
        self.subject_threshold = self.threshold if subject is None else float(subject)
        self.question_subject_threshold = self.subject_threshold if question is None else float(question)

    def limit(self, edit: Edit) -> float:
        if not edit.subject:
            return self.threshold
        return self.question_subject_threshold if asks_question(edit) else self.subject_threshold

    def scores(self, questions: Sequence[str], candidates: Sequence[Sequence[tuple[Edit, float]]]) -> list[list[float]]:
        pairs = [(edit.fact, q) for q, found in zip(questions, candidates) for edit, _ in found]
        if not pairs:
            return [[] for _ in questions]
        flat = self.classifier.scores([e for e, _ in pairs], [q for _, q in pairs]).tolist()
        out, start = [], 0
        for found in candidates:
            out.append(flat[start : start + len(found)])
            start += len(found)
        return out


def load_scope(kind: str = "auto", classifier_path: str | Path = SCOPE_CLASSIFIER, device: str | None = None,
               encoder: str | None = None) -> Scope | None:
    """The decider `kind` names: auto (the shipped classifier when present, else similarity), classifier,
    similarity, or none (edits are ignored). `encoder`, the index's, must be the one the similarity threshold was
    chosen for (ValueError otherwise): another encoder's cosines have a scale of their own."""
    if kind not in SCOPE_KINDS:
        raise ValueError(f"unknown scope decider {kind!r}: choose one of {', '.join(SCOPE_KINDS)}")
    if kind == "none":
        return None
    found = is_scope_classifier(classifier_path)
    if kind == "similarity" or (kind == "auto" and not found):
        config = json.loads((Path(classifier_path) / CONFIG_FILE).read_text()) if found else {}
        threshold = float(config.get("similarity_threshold") or SIMILARITY_THRESHOLD)
        chosen_for = config.get("similarity_encoder") or DEFAULT_ENCODER
        if encoder is not None and not same_encoder(encoder, chosen_for):
            raise ValueError(f"the similarity scope's threshold {threshold} is a cosine of {chosen_for}'s vectors, and this index "
                             f"encodes with {encoder}: another encoder's cosines do not compare with it. Use the scope "
                             "classifier (--scope classifier), which reads each edit and question itself")
        return SimilarityScope(threshold)
    if not found:
        raise ValueError(f"{classifier_path} is not a scope classifier folder (no {CONFIG_FILE}): train one with `rag-train scope`")
    return ClassifierScope(ScopeClassifier.from_pretrained(classifier_path, device=device))


def asks_question(edit: Edit) -> bool:
    """Whether the edit's question is asked as one ("Which show is X in?"), not as a statement to complete."""
    return (edit.question or "").rstrip().endswith("?")


# A wh-word first, or after a preposition: "when did ...", "in what year ...", "for how long ...". Not later: CounterFact's
# statements to complete say "Jozef Tomko, who has the position of". Possessive (++, *+): linear on any input.
WH_OPENING = re.compile(r"^\W*+(?:(?:in|on|at|by|for|from|during|since|until|to|of|after|before)\s++)?"
                        r"(?:what|which|who|whom|whose|when|where|why|how)\b", re.IGNORECASE)


def asked_as_question(text: str) -> bool:
    """Whether `text` asks a question, ending in "?" or opening with a wh-word ("when did the apollo program end",
    as NQ's questions come), rather than being a statement to complete ("Ferdinand de Saussure was born in", or one
    that opens with a clause: "When Sedat Alp was killed, the locals held a")."""
    return text.rstrip().endswith("?") or (WH_OPENING.match(text) is not None and "," not in text)


def names_subject(question: str, subject: str | None) -> bool:
    """Whether `question` names `subject`: as whole words, ignoring case and accents, with a possessive ending
    or (a common noun's) plural one (indexer.names.subject_pattern)."""
    return bool(subject_spans(question, subject))


def about_subject(question: str, edit: Edit) -> bool:
    """Whether `question` can be about `edit`: it names the edit's subject, or the edit states none. An edit
    about Nicolas Chopin says nothing of Frédéric Chopin, however alike the questions read to a decider."""
    return not edit.subject or names_subject(question, edit.subject)


AnswerKinds = Callable[..., list[str | None]]  # (questions, vectors=None) -> the kind each asks for, None where unsure


def asks_otherwise(question: str, kind: str | None, edit_kind: str | None, edit_answer: str | None = None) -> bool:
    """Whether `question`, asking for `kind`, asks for something else than the edit's question (`edit_kind`): both
    known, and different. "How tall is the Eiffel Tower?" (a number) is not in the scope of "Where is it?" (a place).
    Where the edit's kind is unsure, its stated answer still says what it is not: a question asking for a number or
    a date ("When did the Apollo program end?") is not in the scope of an edit whose answer states none ("European
    Space Agency"). Only a question asked as one (`asked_as_question`) is held to that: a statement to complete that
    opens with an unrelated sentence of numbers ('2069." Ildjarn, created in') reads to the classifier as asking for a
    number."""
    if kind is None:
        return False
    if edit_kind is not None:
        return kind != edit_kind
    return kind == NUMBER_KIND and asked_as_question(question) and edit_answer is not None and not states_number(edit_answer)


def match_edits(memory: EditMemory, scope: Scope, questions: Sequence[str], query_vectors: np.ndarray,
                candidates: int = CANDIDATES, two_hop: TwoHopDetector | None = None,
                exclude: Sequence[Edit | None] | None = None, answer_kinds: AnswerKinds | None = None) -> list[EditMatch | None]:
    """For each question, the in-scope edit with the best score, or None. A question that is an edit's own
    question (up to case, spacing and end punctuation) is always in its scope; otherwise an edit that states
    its subject is in scope only of questions that name it (`about_subject`). With `two_hop`, a two-hop
    question is matched to the best edit that either is in its scope or has its subject named in it with a
    score of at least the detector's `relation_threshold` (the first hop is the edit's relation); `beyond`
    unless the edit claims it in scope and the question's wording has no first hop through the edit's subject
    (`split_first_hop`), and `resolved` when the edit also states the answer to put in its place. `exclude`:
    for each question, an edit it is never matched to (None: none). With `answer_kinds`, a question is out of the
    scope of an edit whose question asks for another kind of answer (`asks_otherwise`)."""
    found = memory.search(query_vectors, candidates)
    chained = two_hop.is_two_hop(query_vectors) if two_hop is not None and len(questions) else np.zeros(len(questions), bool)
    left_out = [e.id if e is not None else None for e in exclude] if exclude is not None else [None] * len(questions)
    matches: list[EditMatch | None] = []
    all_scores = scope.scores(questions, found)
    # The kind of answer asked for (rag/answer_type.py), only where it can change a decision: by questions with an edit
    # that states a question in scope by score, and by those edits' questions. Most questions are about no edit.
    asked: list[str | None] = [None] * len(questions)
    stated: dict[str, str | None] = {}
    if answer_kinds is not None:
        gated = [i for i, (question, pairs, scores) in enumerate(zip(questions, found, all_scores))
                 if any(e.question is not None and scores[j] >= scope.limit(e) and about_subject(question, e) for j, (e, _) in enumerate(pairs))]
        if gated:
            for i, kind in zip(gated, answer_kinds([questions[i] for i in gated], vectors=query_vectors[gated])):
                asked[i] = kind
            edit_questions = sorted({e.question for i in gated for e, _ in found[i] if e.question is not None})
            stated = dict(zip(edit_questions, answer_kinds(edit_questions)))
    for question, pairs, scores, chain, skip, kind in zip(questions, found, all_scores, chained, left_out, asked):
        # An edit's own question is in its scope by definition, whatever a learned decider says of it.
        key = question_key(question)
        own = [i for i, (e, _) in enumerate(pairs) if e.id != skip and e.question is not None and question_key(e.question) == key]
        if own:
            matches.append(EditMatch(pairs[own[0]][0], scores[own[0]]))
            continue
        in_scope = [scores[i] >= scope.limit(e) and not asks_otherwise(question, kind, stated.get(e.question or ""), e.answer)
                    for i, (e, _) in enumerate(pairs)]
        # The two-hop path needs a stated subject: about_subject has then checked that the question names it.
        usable = [i for i, (e, _) in enumerate(pairs) if e.id != skip and about_subject(question, e)
                  and (in_scope[i] or (chain and e.subject and scores[i] >= two_hop.relation_threshold))]
        best = max(usable, key=scores.__getitem__, default=None)
        if best is None:
            matches.append(None)
            continue
        edit = pairs[best][0]
        # Whether there is a first hop is a matter of the question's wording, not of what the edit states: a
        # fact-only edit's two-hop question is still beyond it (read with its fact), only not rewritten.
        first_hop = bool(chain) and split_first_hop(question, edit.subject) is not None
        # A question in the edit's scope that has no first hop was taken for two-hop wrongly (some CounterFact
        # paraphrases open with an unrelated sentence): it asks for the edit's answer.
        beyond = bool(chain) and (not in_scope[best] or first_hop)
        resolved = resolve_first_hop(question, edit.subject, edit.answer) if first_hop and edit.answer else None
        matches.append(EditMatch(edit, scores[best], beyond=beyond, resolved=resolved))
    return matches
