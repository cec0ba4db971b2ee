"""Integration: the shipped span reader (rag/readers/span-minilm) is the default, loads offline, and answers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.models import DEFAULT_READER, SPAN_READER
from rag.span_reader import SpanReader, is_span_reader
from trainer.qa_data import ContextPassage as P


@pytest.fixture(scope="module")
def shipped() -> SpanReader:
    return SpanReader.from_pretrained(SPAN_READER, device="cpu")


def test_the_shipped_reader_is_the_default_and_documents_its_training() -> None:
    assert DEFAULT_READER == SPAN_READER and is_span_reader(SPAN_READER)
    folder = Path(SPAN_READER)
    record = json.loads((folder / "training.json").read_text())
    config = json.loads((folder / "span_reader.json").read_text())
    # The saved defaults are the ones chosen on the held-out training questions.
    assert (config["k"], config["scoring"]) == (record["chosen"]["k"], record["chosen"]["scoring"])
    assert "python -m trainer.span_training" in (folder / "TRAINING.md").read_text()


def test_the_shipped_reader_finds_answers(shipped: SpanReader) -> None:
    passages = [P("Berlin", "Berlin is the capital and largest city of Germany."),
                P("Paris", "Paris is the capital and most populous city of France, with 2.1 million residents."),
                P("Eiffel Tower", "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.")]
    answers = shipped.answer(["What is the capital of France?", "When was the Eiffel Tower completed?",
                              "What is the largest city of Germany?"], [passages] * 3)
    # Each answer names the passage it was read from, the one that states it, and where in it.
    assert [(a.text, a.passage) for a in answers] == [("Paris", 1), ("1889", 2), ("Berlin", 0)]
    assert all(passages[a.passage].text[a.start : a.end] == a.text for a in answers)
