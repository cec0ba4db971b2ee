"""Where a question names a subject (indexer/names.py): the spacing between a subject's words is any whitespace."""
from __future__ import annotations

import pytest

from indexer.names import subject_spans


@pytest.mark.parametrize("question", [
    "Where is the Eiffel  Tower located?",  # two spaces
    "Where is the Eiffel\u00a0Tower located?",  # a no-break space
    "Where is the Eiffel\nTower located?",  # a line break
    "Where is the eiffel \t TOWER's top?",  # with the rest of the rules: any case, a possessive ending
])
def test_any_whitespace_between_a_subjects_words_names_it(question: str) -> None:
    [(start, end)] = subject_spans(question, "Eiffel Tower")
    assert question[start:end].split()[0].casefold() == "eiffel"


@pytest.mark.parametrize("question, subject, named", [
    ("Where is the EiffelTower?", "Eiffel Tower", False),  # whitespace between words is needed, not optional
    ("Where is the Eiffel Towers?", "Eiffel Tower", False),  # a proper name has no plural
    ("Are Houston\u00a0 toads threatened?", "Houston toad", True),  # a common noun's plural
    ("Where is Cafe\u0301  Procope?", "Café\u00a0Procope", True),  # decomposed accent, odd spacing on both sides
    # Scripts without spaces between words: the letters around a name are its sentence's, not part of it.
    ("東京タワーの高さは何メートルですか?", "東京タワー", True),
    ("How tall is 東京タワー?", "東京タワー", True),
    ("서울은 어느 나라의 수도입니까?", "서울", True),
    ("Who designed 東京タワー's antenna?", "東京タワー", True),
    ("Where is Tokyo Towerの?", "Tokyo Tower", True),  # a spaced name followed by a script without spaces
    ("Where is Tokyo Towers?", "Tokyo Tower", False),  # ... but still bounded by its own script's letters
    ("東京都の人口は?", "京都", True),  # no word boundaries to go by: the scope decider tells them apart
    ("人々はどこに住んでいますか?", "人", True),  # the iteration mark 々 is a letter of the script
])
def test_the_other_rules_are_kept(question: str, subject: str, named: bool) -> None:
    assert bool(subject_spans(question, subject)) is named
