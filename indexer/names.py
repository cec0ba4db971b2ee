"""Where a text names a subject: whole words, any case, accents ignored, possessive or plural endings.

An edit that states its subject is in scope only of questions that name it (rag/editing.py), a two-hop
question's first hop is found around its subject (rag/two_hop.py), and an edit whose fact and question both
leave its subject unnamed is most likely a typo in the subject (`unnamed_subject`).
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Iterable


def fold(text: str) -> str:
    """`text` in composed form (NFC) with accents dropped from accented letters ("Frédéric" to "Frederic") and
    curly apostrophes made straight, one character for one: positions in the result are positions in
    `unicodedata.normalize("NFC", text)`."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        parts = unicodedata.normalize("NFD", ch)
        # Only a letter plus combining marks loses the marks: a Hangul syllable also decomposes, into letters.
        out.append(parts[0] if len(parts) > 1 and all(unicodedata.combining(c) for c in parts[1:]) else ch)
    return "".join(out).replace("\u2019", "'")


# Scripts written without spaces between words (Thai, Lao, Tibetan, Myanmar, Khmer, Japanese kana, Chinese), and
# Hangul, whose particles join the noun ("서울은"): their letters next to a name belong to its sentence, not to it.
UNSPACED = ("\u0e00-\u0fff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3005-\u30ff\u3130-\u318f\u3400-\u4dbf"
            "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002fa1f")
# Bounds of a name: not next to a letter or digit of a spaced script.
SPACED_WORD = rf"[^\W{UNSPACED}]"


@functools.lru_cache(maxsize=65536)
def subject_pattern(subject: str) -> re.Pattern[str] | None:
    """The pattern of `subject` named in folded text: whole words, any case, any run of whitespace between words (two
    spaces, a no-break space, a line break), with a possessive ending ("Berge's", "Berges'"), and a plural one
    ("Houston toads") when its last word is a common noun (lowercase): "Williams" must not name "William". Letters of
    a script written without spaces (Chinese, Japanese, Thai...) do not bound a name: "東京タワーの高さは?" names
    東京タワー, and "Tokyo Towerの高さは?" Tokyo Tower; without word boundaries to go by, 京都 is also named in
    "東京都の人口は?", and the scope decider alone tells them apart. None for an empty subject."""
    words = fold(subject).split()
    if not words:
        return None
    ending = r"(?:'s|s'|es|s|')?" if words[-1].islower() else r"(?:'s|')?"
    name = r"\s+".join(map(re.escape, words))
    return re.compile(rf"(?<!{SPACED_WORD}){name}{ending}(?!{SPACED_WORD})", flags=re.IGNORECASE)


def subject_spans(question: str, subject: str | None) -> list[tuple[int, int]]:
    """Where `subject` is named in `question` (`subject_pattern`), first to last: (start, end) pairs in the
    question's composed form (NFC, which is the question itself unless it was typed decomposed)."""
    pattern = subject_pattern(subject) if subject else None
    return [m.span() for m in pattern.finditer(fold(question))] if pattern else []


def names_any(question: str, subjects: Iterable[str]) -> bool:
    """Whether `question` names any of `subjects` (folded once, for checking against many subjects)."""
    folded = fold(question)
    return any(pattern.search(folded) for pattern in map(subject_pattern, subjects) if pattern)


def unnamed_subject(fact: str, question: str | None, subject: str | None) -> str | None:
    """A warning when an edit's `subject` is named in neither its fact nor its question (a typo, most likely:
    only questions that name the subject can be in the edit's scope), else None."""
    if not subject or any(subject_spans(text, subject) for text in (fact, question) if text):
        return None
    return (f"the subject {subject!r} is named in neither the fact nor the question: only questions that name it "
            "(any case, accents ignored, plural or possessive allowed) can be in this edit's scope; if that is not "
            "what you meant, supersede the edit with the subject as the fact writes it")
