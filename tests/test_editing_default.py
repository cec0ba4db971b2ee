"""Integration: with the real default models, a two-hop question about an edited subject is read beyond the edit."""
from __future__ import annotations

from pathlib import Path

from indexer.encoder import TextEncoder
from indexer.index import build_index
from indexer.records import Document
from rag.pipeline import Pipeline

PLACES = [
    Document("iraq", "Iraq", "Iraq is a country in Western Asia. Its capital and largest city is Baghdad."),
    Document("norway", "Norway", "Norway is a Nordic country in Northern Europe. Its capital and largest city is Oslo."),
    Document("kenya", "Kenya", "Kenya is a country in East Africa. Its capital and largest city is Nairobi."),
]


def test_two_hop_question_takes_the_second_hop_from_the_edits_answer(tmp_path: Path) -> None:
    build_index(tmp_path / "idx", PLACES, TextEncoder(device="cpu"))
    pipeline = Pipeline.load(tmp_path / "idx", device="cpu", writable=True)  # the shipped span reader, scope classifier, detector
    assert pipeline.two_hop is not None
    question = "What is the capital of the country Kim Myhr is a citizen of?"
    edit = pipeline.index.memory.add("Kim Myhr, who has a citizenship from Iraq.", question="Kim Myhr, who has a citizenship from",
                                     answer="Iraq", subject="Kim Myhr")
    answer = pipeline.ask(question, k=3, mode="hybrid")  # asked as "What is the capital of Iraq?"
    assert answer.edit == edit and answer.passages[0].doc_id == "iraq" and answer.text == "Baghdad"
    assert pipeline.ask("Kim Myhr, who has a citizenship from", k=3).text == "Iraq"  # the edit's own question: its answer
    unrelated = pipeline.ask("What is the capital of Kenya?", k=3)
    assert unrelated.edit is None
    assert Pipeline.load(tmp_path / "idx", device="cpu", two_hop="none").two_hop is None
    # Its relation threshold is a probability of the scope classifier: a cosine-threshold decider goes without it.
    assert Pipeline.load(tmp_path / "idx", device="cpu", scope="similarity").two_hop is None
