"""Training pairs for the scope classifier (rag/scope_classifier.py): (edit text, question, in scope?).

Made from CounterFact edit cases (trainer/edit_cases.py). The edit text is the case's stated fact; the
edit's key (what the edit memory embeds and searches by) is its question. For each case:
- in scope (1): the case's own question ("question"), its paraphrases ("paraphrase"), and its subject in
  another question template of the same relation ("relation-paraphrase": "The native language of X is" for
  an edit made with "The mother tongue of X is"). CounterFact's paraphrases come from their own small set of
  phrasings while its neighbour prompts use the relation's question templates, so without these a model
  learns that a question in any template but the edit's own is out of scope, whatever its subject;
- out of scope (0):
  - "neighbor": its locality prompts (same relation, another subject: the answer must not change);
  - "near-edit": for each of those questions, some of its `near_depth` nearest OTHER edits by MiniLM cosine
    of question and edit key, i.e. the candidates the memory search would hand to the scope decision;
  - "other-relation": the edit's own subject in a question template of another relation (an edit about
    someone's mother tongue says nothing of where they were born), so that naming the subject is not taken
    for being in scope. CounterFact's real same-subject cases are nearly all the SAME relation (three edits
    of Wellington's twin city), i.e. conflicting edits in scope of each other's questions, so they cannot
    serve as negatives; the swapped templates can (see `relations` for how templates are grouped). A case
    whose template no relation group holds (zsRE's questions) takes another case's question wording unlike
    its own instead (`_other_questions`);
  - "nq": NQ-open questions, each paired with one of its nearest edits, so that real questions (zsRE's
    locality probes are NQ questions) are seen, not only CounterFact's cloze prompts.
A near-edit or nq negative is left out when the other edit's subject occurs in the question: that edit may
well be about it (two edits of one subject and relation), so the label would be a guess. Template swaps
("relation-paraphrase", "other-relation") need templates grouped by relation, which `relations` infers
from the cases themselves; "?"-questions among them are half the time cut after the "?".

Which files may be used: training pairs come from counterfact-train, one fold of zsre-1k and nq-open-train;
the validation pairs that choose thresholds from counterfact-val and nq-open-dev. counterfact-test and the
QA files marked evaluation-only in shared/data/SOURCES.md are refused. zsre-1k is training data by
SOURCES.md but also where the zsRE goal is measured, so only a fold of it may train (`in_fold`): the
other folds measure the classifier on edits it never saw (`rag-eval edits --fold`).
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from indexer.encoder import Encoder
from rag.answer_type import AnswerTypeClassifier
from rag.editing import names_subject
from trainer.edit_cases import EditCase, subject_as

LABELS = {"question": 1, "paraphrase": 1, "relation-paraphrase": 1, "neighbor": 0, "near-edit": 0, "other-relation": 0, "nq": 0}
KINDS = tuple(LABELS)
# File name starts of evaluation-only data (shared/data/SOURCES.md): never used to train or to choose settings.
EVALUATION_ONLY = ("counterfact-test", "nq-open-test", "squad-open-dev", "triviaqa", "webquestions", "efficientqa")
# Training data that is also where a goal is measured: only a fold of it may train.
MEASURED_BY_FOLD = ("zsre",)
# Template swaps use only templates with at least this many cases behind them (their links are then
# well attested) ...
MIN_TEMPLATE_CASES = 5
# ... joined into one relation when a case of one has a neighbour prompt in the other this many times ...
MIN_LINKS = 2
# ... and a group of more templates than this is several relations run together by generic templates
# ("{}, the": instrument, sport, position): it serves "other-relation" negatives but not positives.
MAX_RELATION_TEMPLATES = 15
# Another case's question wording serves a case without a relation group as an "other-relation" negative only when
# it reads less like the case's own wordings than this (MiniLM cosine, subject as PLACEHOLDER): on zsre-1k fold 0/2
# a case's question and its paraphrase score under 0.67 one time in ten, two random cases' over 0.69 one in twenty.
OTHER_TEMPLATE_MAX_COSINE = 0.7
PLACEHOLDER = "X"


def check_not_evaluation_only(path: str | Path, fold: tuple[int, int] | None = None) -> None:
    """Raise ValueError if `path` is an evaluation-only file, which must neither train nor tune anything, or a
    file where a goal is measured (zsre-1k) used whole rather than one fold of it (`fold`: I of N, N >= 2)."""
    name = Path(path).name.lower()
    if name.startswith(EVALUATION_ONLY):
        # The advice fits the kind of file refused: edit cases or questions.
        advice = ("train on counterfact-train (and nq-open-train), choose thresholds on counterfact-val (and nq-open-dev)"
                  if name.startswith("counterfact") else
                  "train on squad-open-train or nq-open-train, and choose settings on questions held out of them or on nq-open-dev")
        raise ValueError(f"{path} is evaluation-only data (shared/data/SOURCES.md): {advice}")
    if name.startswith(MEASURED_BY_FOLD) and (fold is None or fold[1] < 2):
        raise ValueError(f"{path} is where the zsRE figures are measured: train on one fold of it (e.g. 0/2) and "
                         "measure on the others (rag-eval edits --fold 1/2)")


@dataclass(frozen=True)
class ScopePair:
    """One labelled (edit, question) pair; `kind` says which rule made it (see KINDS)."""

    edit_text: str  # the edit's fact: what the classifier reads
    edit_key: str  # the edit's question: what the memory embeds (the similarity decision compares it)
    question: str
    label: int  # 1: the question is in the edit's scope
    kind: str
    case: str  # id of the case whose edit this is


@dataclass(frozen=True)
class ScopeDataConfig:
    """How many pairs of each kind a case brings; see the module docstring."""

    near_depth: int = 8  # nearest other edits considered per question (the router's candidates)
    near_per_question: int = 1  # of those, negatives made per question (drawn at random)
    relation_paraphrase: int = 1  # same-relation template positives per case
    other_relation: int = 2  # other-relation template negatives per case
    nq_per_case: float = 0.5  # NQ questions per case
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError on settings that cannot work."""
        if self.near_depth < 1:
            raise ValueError(f"--near-depth must be at least 1, got {self.near_depth}")
        if not 0 <= self.near_per_question <= self.near_depth:
            raise ValueError(f"--near-per-question must be from 0 to --near-depth ({self.near_depth}), got {self.near_per_question}")
        if min(self.relation_paraphrase, self.other_relation, self.nq_per_case) < 0:
            raise ValueError("--relation-paraphrase, --other-relation and --nq-per-case must be 0 or more")


class CachedEncoder:
    """Embeds each distinct text once (a case's question is also its edit's key), and keeps the vectors, so the
    similarity baseline is calibrated on the very vectors the pairs were mined with."""

    def __init__(self, encoder: Encoder, progress: bool = True) -> None:
        self.encoder = encoder
        self.progress = progress
        self.vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if missing:
            vectors = np.asarray(self.encoder(missing, progress=self.progress), dtype=np.float32)
            # Unit length, so inner products are cosines whatever the encoder's own normalisation.
            vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
            self.vectors.update(zip(missing, vectors))
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts])

    def similarity(self, pairs: Sequence[ScopePair]) -> np.ndarray:
        """Cosine of each pair's question and edit key: the similarity baseline's score."""
        questions, keys = self([p.question for p in pairs]), self([p.edit_key for p in pairs])
        return np.einsum("ij,ij->i", questions, keys)


def template(case: EditCase) -> str | None:
    """The case's question with its subject as `{}` ("The mother tongue of {} is"); None without a subject in it."""
    if "{" in case.question or "}" in case.question:
        return None
    return subject_as(case.question, case.subject, "{}")


def relations(cases: Sequence[EditCase]) -> dict[str, int]:
    """Question templates grouped by relation: template -> group number.

    CounterFact's neighbour prompt asks the case's relation of another subject, in one of the relation's
    templates. So a case's template and the template its neighbour prompt fits (the longest that fits:
    "{} is a" also fits "X's profession is a") are linked; templates linked at least MIN_LINKS times are
    joined, transitively. Only templates with MIN_TEMPLATE_CASES cases and at least one link are returned:
    an unlinked one might be a relation's odd phrasing, whose relation nothing tells.
    """
    counts = Counter(t for t in map(template, cases) if t is not None)
    templates = sorted(t for t, n in counts.items() if n >= MIN_TEMPLATE_CASES)
    patterns = {t: re.compile("^" + re.escape(t).replace(re.escape("{}"), "(.+)") + "$") for t in templates}
    links: Counter[tuple[str, str]] = Counter()
    for case in cases:
        own = template(case)
        if own not in patterns:
            continue
        for neighbor in case.neighbors:
            fits = [t for t in templates if patterns[t].match(neighbor.question)]
            other = max(fits, key=len, default=own)
            if other != own:
                links[min(own, other), max(own, other)] += 1
    parent = {t: t for t in templates}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for (a, b), n in sorted(links.items()):
        if n >= MIN_LINKS:
            parent[root(a)] = root(b)
    linked = {t for pair, n in links.items() if n >= MIN_LINKS for t in pair}
    numbers: dict[str, int] = {}
    return {t: numbers.setdefault(root(t), len(numbers)) for t in templates if t in linked}


def _short_question(question: str, rng: random.Random) -> str:
    """Half the time, a templated question cut after its "?" ("Where is X?" of "Where is X? It is located in"):
    closer to how people ask."""
    head, mark, _ = question.partition("?")
    return head + mark if mark and rng.random() < 0.5 else question


def nearest(queries: np.ndarray, keys: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices of the k keys nearest each query by inner product, best first: (len(queries), min(k, len(keys)))."""
    k = min(k, len(keys))
    keys_t = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.float32))
    out = np.zeros((len(queries), k), dtype=np.int64)
    # In chunks: 30,000 questions x 10,000 keys at once would be 1.2 GB of scores.
    for lo in range(0, len(queries), chunk):
        scores = torch.from_numpy(np.ascontiguousarray(queries[lo : lo + chunk], dtype=np.float32)) @ keys_t.T
        out[lo : lo + chunk] = scores.topk(k, dim=1).indices.numpy()
    return out


def _other_questions(cases: Sequence[EditCase], loose: Sequence[int], encode: CachedEncoder, count: int,
                     rng: random.Random, answer_types: AnswerTypeClassifier | None = None) -> list[tuple[int, str]]:
    """(case, another case's question put to its subject), up to `count` per case of `loose`, for cases whose relation
    no template group tells (zsRE: hundreds of question wordings, a few cases each). A wording that reads like the
    case's own question or its paraphrases (MiniLM cosine of the templates at OTHER_TEMPLATE_MAX_COSINE or more) is
    skipped: it likely asks the same relation in other words ("What was {}'s career?" for "...'s occupation?").
    With `answer_types`, only wordings asking for another kind of answer (its most likely TREC type) are used: the
    same kind is where rewordings of the case's own relation hide ("Which show is {} in?", "In which fictional work
    is {} a figure?" read unalike), and a classifier taught those as negatives rejects held-out paraphrases."""
    pool = sorted({t for t in map(template, cases) if t is not None})
    if not count or not loose or len(pool) < 2:
        return []

    def kind_of(texts: list[str]) -> np.ndarray:
        return answer_types.probabilities(answer_types.features(texts, encode)).argmax(axis=1)  # type: ignore[union-attr]

    owns = {i: [w for w in (subject_as(q, cases[i].subject, PLACEHOLDER) for q in (cases[i].question, *cases[i].paraphrases))
                if w is not None] for i in loose}
    pool_texts = [t.format(PLACEHOLDER) for t in pool]
    pool_vectors = encode(pool_texts)
    pool_kinds = kind_of(pool_texts) if answer_types is not None else None
    encode([w for own in owns.values() for w in own])  # at once: one progress bar, and the loop below reads the cache
    asked = [i for i, own in owns.items() if own]
    own_kinds = dict(zip(asked, kind_of([owns[i][0] for i in asked]))) if answer_types is not None else {}
    out = []
    for i in asked:
        c, own = cases[i], owns[i]
        closest = (pool_vectors @ encode(own).T).max(axis=1)
        unlike = closest < OTHER_TEMPLATE_MAX_COSINE
        if pool_kinds is not None:
            unlike &= pool_kinds != own_kinds[i]
        usable = [t for t, keep in zip(pool, unlike) if keep]
        out += [(i, t.format(c.subject)) for t in rng.sample(usable, min(count, len(usable)))]
    return out


def build_pairs(cases: Sequence[EditCase], nq_questions: Sequence[str], encode: CachedEncoder,
                config: ScopeDataConfig = ScopeDataConfig(), progress: bool = True,
                answer_types: AnswerTypeClassifier | None = None) -> list[ScopePair]:
    """Labelled pairs from edit cases and NQ questions, in a seeded order; `encode` embeds texts (normalised).
    `answer_types` narrows the other-relation negatives of cases without a relation group (`_other_questions`).

    Nearest edits are searched among `cases` only: build train and validation pairs from separate calls.
    """
    config.check()
    if not cases:
        raise ValueError("no edit cases to make scope pairs from")
    rng = random.Random(config.seed)
    keys = [c.question for c in cases]
    # Every question that gets near-edit negatives: (case index, text, its own kind).
    probes = [(i, q, kind) for i, c in enumerate(cases)
              for q, kind in [(c.question, "question"), *((p, "paraphrase") for p in c.paraphrases),
                              *((n.question, "neighbor") for n in c.neighbors)]]
    nq = rng.sample(list(nq_questions), min(len(nq_questions), round(config.nq_per_case * len(cases))))
    vectors = encode(keys + [q for _, q, _ in probes] + nq)
    key_vectors, probe_vectors, nq_vectors = np.split(vectors, [len(keys), len(keys) + len(probes)])

    pairs: list[ScopePair] = []

    def pair(edit: int, question: str, kind: str) -> None:
        c = cases[edit]
        pairs.append(ScopePair(c.fact, c.question, question, LABELS[kind], kind, c.id))

    def near_negatives(own: int | None, question: str, ranked: np.ndarray, count: int) -> list[int]:
        usable = [int(j) for j in ranked if j != own and not names_subject(question, cases[j].subject)
                  and keys[j].strip() != question.strip()]
        return rng.sample(usable, min(count, len(usable)))

    ranked = nearest(probe_vectors, key_vectors, config.near_depth + 1)  # +1: the case's own edit is usually first
    for (i, question, kind), row in zip(tqdm(probes, desc="scope pairs", unit="question", disable=not progress), ranked):
        pair(i, question, kind)  # own question and paraphrases: in scope; neighbours: out of scope
        for j in near_negatives(i, question, row[: config.near_depth + 1], config.near_per_question):
            pair(j, question, "near-edit")

    groups = relations(cases) if config.relation_paraphrase or config.other_relation else {}
    by_group: dict[int, list[str]] = defaultdict(list)
    for t, g in sorted(groups.items()):
        by_group[g].append(t)
    loose = []  # cases whose template no relation group holds
    for i, c in enumerate(cases):
        own = template(c)
        if own not in groups:
            loose.append(i)
            continue
        same = [t for t in by_group[groups[own]] if t != own] if len(by_group[groups[own]]) <= MAX_RELATION_TEMPLATES else []
        for t in rng.sample(same, min(config.relation_paraphrase, len(same))):
            pair(i, _short_question(t.format(c.subject), rng), "relation-paraphrase")
        others = [t for g, ts in sorted(by_group.items()) if g != groups[own] for t in ts]
        for t in rng.sample(others, min(config.other_relation, len(others))):
            pair(i, _short_question(t.format(c.subject), rng), "other-relation")
    for i, question in _other_questions(cases, loose, encode, config.other_relation, rng, answer_types):
        pair(i, question, "other-relation")

    for question, row in zip(nq, nearest(nq_vectors, key_vectors, config.near_depth) if nq else []):
        for j in near_negatives(None, question, row, 1):
            pair(j, question, "nq")

    rng.shuffle(pairs)
    return pairs


def summary(pairs: Sequence[ScopePair]) -> dict[str, Any]:
    """Counts of pairs by kind and label, for the training record."""
    kinds = Counter(p.kind for p in pairs)
    return {"pairs": len(pairs), "positives": sum(p.label for p in pairs), "by_kind": {k: kinds[k] for k in KINDS if kinds[k]}}
