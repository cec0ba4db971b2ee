"""bench/retrieval_misses.py sorts recall@5's misses into near misses, far misses and confusions within an article."""
from __future__ import annotations

from pathlib import Path

from bench.retrieval_misses import miss_kinds
from indexer.index import Index
from indexer.records import SearchHit
from trainer.qa_data import QARecord


def hit(doc: int, title: int | None = None) -> SearchHit:
    return SearchHit(f"doc-{doc}#0", f"doc-{doc}", f"Title {doc if title is None else title}", "text", 0.0, doc)


def test_misses_are_sorted_by_where_the_gold_is_and_what_took_its_place(topic_index: Path) -> None:
    index = Index.open(topic_index, readonly=True)  # document i's title is "Title i"
    records = [QARecord(f"q{i}", "which topic?", ["x"], ["doc-3"]) for i in range(4)]
    others = [hit(d) for d in (10, 11, 12, 13, 14, 15, 16, 17)]
    found = [
        [hit(3), *others],                               # a hit at 5
        [*others[:6], hit(3)],                           # gold 7th: a near miss, a wrong topic on top
        [hit(9, title=3), *others[:4]],                  # gold beyond 20, its article's other paragraph first
        [*others[:2], hit(9, title=3), *others[2:7]],    # gold beyond 20, its article in the top 5 but not first
    ]
    assert miss_kinds(index, records, found) == {"n": 4, "hit_at_5": 1, "miss_gold_at_6_to_20": 1, "miss_gold_beyond_20": 2,
                                                 "miss_same_article_in_top_5": 2, "miss_same_article_first": 1}
