"""Reciprocal rank fusion and the tantivy BM25 index."""
from __future__ import annotations

from pathlib import Path

import pytest

from indexer.fusion import reciprocal_rank_fusion
from indexer.sparse import SparseIndex
from indexer.store import StoredPassage


# -- reciprocal rank fusion ---------------------------------------------------------------------
def test_rrf_matches_hand_computed_scores() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=10)
    expected = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 63}
    assert [item for item, _ in fused] == [1, 3, 2, 4]
    for item, score in fused:
        assert score == pytest.approx(expected[item], rel=1e-12)


def test_rrf_k0_changes_the_scores() -> None:
    fused = dict(reciprocal_rank_fusion([[7, 8], [8]], k=5, k0=1))
    assert fused[7] == pytest.approx(1 / 2)
    assert fused[8] == pytest.approx(1 / 3 + 1 / 2)


def test_rrf_weights_scale_each_ranking() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=10, weights=[2.0, 1.0])
    expected = {1: 2 / 61 + 1 / 62, 2: 2 / 62, 3: 2 / 63 + 1 / 61, 4: 1 / 63}
    assert dict(fused) == pytest.approx(expected, rel=1e-12)
    assert [item for item, _ in fused] == sorted(expected, key=lambda i: -expected[i])
    # A heavy second ranking flips the order of the two lists' leaders.
    flipped = reciprocal_rank_fusion([[10, 20], [20, 10]], k=2, weights=[1.0, 3.0])
    assert [item for item, _ in flipped] == [20, 10]


def test_rrf_ties_are_broken_by_id_and_top_k_is_kept() -> None:
    assert [i for i, _ in reciprocal_rank_fusion([[6, 5], [5, 6]], k=5)] == [5, 6]
    assert [i for i, _ in reciprocal_rank_fusion([[9], [8]], k=5)] == [8, 9]
    assert [i for i, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=2)] == [1, 3]
    assert reciprocal_rank_fusion([[], []], k=3) == []


def test_rrf_needs_one_weight_per_ranking() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[1], [2]], k=2, weights=[1.0])


# -- sparse (BM25) index ------------------------------------------------------------------------
def passage(row: int, title: str, text: str) -> StoredPassage:
    return StoredPassage(row=row, id=f"d{row}#0", doc_id=f"d{row}", title=title, text=text)


CORPUS = [
    passage(1, "Rock music", "AC/DC is a rock band; their best album sold millions."),
    passage(2, "Cooking", "Boil the pasta, then add the tomato sauce and basil."),
    passage(3, "Astronomy", "Saturn has rings made of ice and rock fragments."),
    passage(4, "Gardening", "Tomatoes need sun, water and well drained soil."),
]


@pytest.fixture()
def sparse(tmp_path: Path) -> SparseIndex:
    index = SparseIndex(tmp_path / "sparse")
    index.apply([], CORPUS, generation=1)
    return index


def test_bm25_ranks_the_passage_with_the_query_word_first(sparse: SparseIndex) -> None:
    hits = sparse.search(sparse.searcher(), "pasta sauce", 10)
    assert hits and hits[0][0] == 2
    assert all(score > 0 for _, score in hits)
    # Stemming: "tomatoes" finds "tomato" too; both passages, nothing else.
    assert {row for row, _ in sparse.search(sparse.searcher(), "tomatoes", 10)} == {2, 4}
    # The word in the title counts as well as in the text.
    assert sparse.search(sparse.searcher(), "astronomy", 10)[0][0] == 3
    # k limits the hits, best first.
    two = sparse.search(sparse.searcher(), "rock tomato", 2)
    assert len(two) == 2 and two[0][1] >= two[1][1]


@pytest.mark.parametrize(
    "query",
    ['AC/DC: "best" AND (x', 'title:"rock', "rock~2 +band -best", "[a TO z]", "a* OR NOT (", "^^ \\ {}", "IN [a b"],
)
def test_query_syntax_characters_are_plain_words(sparse: SparseIndex, query: str) -> None:
    hits = sparse.search(sparse.searcher(), query, 10)
    assert isinstance(hits, list)
    if "best" in query or "rock" in query:
        assert hits and hits[0][0] == 1  # "-best" is the word best, not a negation


def test_query_operators_are_not_operators(sparse: SparseIndex) -> None:
    # Upper-case AND would make both words required (no passage has both); as plain words either matches.
    rows = {row for row, _ in sparse.search(sparse.searcher(), "saturn AND basil", 10)}
    assert {2, 3} <= rows
    assert sparse.search(sparse.searcher(), "NOT", 10) == []


@pytest.mark.parametrize("query", ["", "   ", "!!!", "?.,;:-", "___", "\t\n"])
def test_empty_or_punctuation_query_returns_nothing(sparse: SparseIndex, query: str) -> None:
    assert sparse.search(sparse.searcher(), query, 10) == []


def test_generation_marker_round_trips_through_apply(tmp_path: Path) -> None:
    index = SparseIndex(tmp_path / "s")
    assert index.generation() == 0
    index.apply([], CORPUS, generation=3)
    assert index.generation() == 3
    index.apply([2], [passage(5, "Cooking again", "Pasta with pesto")], generation=4)
    assert index.generation() == 4
    # The marker is not a passage: a match-all search sees the passages plus exactly one marker.
    searcher = index.searcher()
    assert searcher.num_docs == len(CORPUS) - 1 + 1 + 1
    # Removal and addition landed in the same commit as the marker.
    rows = {row for row, _ in index.search(searcher, "pasta", 10)}
    assert rows == {5}
    # Another opener of the folder reads the same generation and contents.
    again = SparseIndex(tmp_path / "s")
    assert again.generation() == 4
    assert {row for row, _ in again.search(again.searcher(), "pasta", 10)} == {5}
    # An apply with nothing to change still moves the marker.
    index.apply([], [], generation=9)
    assert again.generation() == 9 and index.generation(index.searcher()) == 9


def test_a_searcher_keeps_its_snapshot_after_later_commits(sparse: SparseIndex) -> None:
    before = sparse.searcher()
    sparse.apply([2], [], generation=2)
    assert [row for row, _ in sparse.search(before, "pasta", 10)] == [2]
    assert sparse.generation(before) == 1
    assert sparse.search(sparse.searcher(), "pasta", 10) == []
    assert sparse.generation() == 2
