"""bench/passage_truncation.py: the answer counts as seen only when it lies within the cut, in a live gold passage."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bench.passage_truncation import answer_in_gold
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from indexer.records import Document
from trainer.qa_data import QARecord

FILLER = " ".join(["the river runs past the old mill"] * 4)  # 28 words, none of them an answer below


def test_answer_counts_only_within_the_cut(tmp_path: Path, tiny_encoder: TextEncoder, tiny_reader_path: str) -> None:
    docs = [Document("early", "Early", f"Zanzibar lies here. {FILLER}", {}),
            Document("late", "Late", f"{FILLER} Timbuktu lies here.", {}),
            Document("absent", "Absent", FILLER, {})]
    build_index(tmp_path / "idx", docs, tiny_encoder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_reader_path)
    records = [QARecord("q1", "where?", ["Zanzibar"], ["early"]),
               QARecord("q2", "where?", ["timbuktu"], ["late"]),  # matched normalised, as rag-eval's recall
               QARecord("q3", "where?", ["Lima"], ["absent"]),
               QARecord("q4", "where?", ["Zanzibar"], ["not-in-the-index"])]  # no gold passage: not counted
    index = Index.open(tmp_path / "idx", readonly=True)
    try:
        found = answer_in_gold(index, tokenizer, records, [8, 1000])
    finally:
        index.close()
    assert found["records"] == 4 and found["with_gold_passage"] == 3
    # Zanzibar is in the first 8 tokens, Timbuktu only in the whole passage, Lima nowhere.
    assert found["answer_in_gold"] == {"whole": round(2 / 3, 3), "8": round(1 / 3, 3), "1000": round(2 / 3, 3)}
    assert found["gold_passage_tokens"][50] > 8
