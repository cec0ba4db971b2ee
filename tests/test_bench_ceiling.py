"""bench/retriever_ceiling.py checks its settings against the index before anything slow starts, and builds its
inverse cloze examples from the corpus."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bench import retriever_ceiling
from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from indexer.records import Document
from trainer.joint_training import TrainingIndex


def test_hybrid_candidates_need_a_sparse_part(tmp_path: Path, tiny_encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    dense_only = tmp_path / "dense-only"
    build_index(dense_only, make_documents(6), tiny_encoder, sparse=False)
    monkeypatch.setattr(sys, "argv", ["retriever_ceiling.py", "--index", str(dense_only), "--candidates-from", "hybrid"])
    with pytest.raises(SystemExit) as stopped:
        retriever_ceiling.main()
    assert stopped.value.code == 2
    assert "has no sparse part (built with --no-sparse)" in capsys.readouterr().err


def test_an_inverse_cloze_example_asks_for_its_passage_without_its_sentence(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    sentences = ["The river Elm rises in the northern hills above the town.", "Short one.",
                 "Mills once lined both of its banks for several miles.", "It joins the sea at a wide and shallow bay."]
    docs = [Document(f"d{i}", f"River {i}", " ".join(sentences[i:] + sentences[:i]), {}) for i in range(4)]
    docs.append(Document("one-sentence", "Lake", "A lake lies to the west of the hills and feeds the river.", {}))
    build_index(tmp_path / "idx", docs, tiny_encoder)
    index = Index.open(tmp_path / "idx", readonly=True)
    examples = retriever_ceiling.cloze_examples(index, 10, seed=0)
    assert len(examples) == 4  # the one-sentence passage gives none
    rows = {p.row: p for p in index.store.iter_passages(index.generation)}
    for example in examples:
        assert len(example.question.split()) >= 6 and example.question in rows[example.row].text
        assert example.question not in example.rest
        assert sorted([example.question, *retriever_ceiling.SENTENCE_END.split(example.rest)]) == sorted(
            retriever_ceiling.SENTENCE_END.split(rows[example.row].text))

    search = TrainingIndex(index, tmp_path / "training")
    example = examples[0]
    others = [h for h in search.search(np.ones((1, index.manifest.dim), np.float32), 5)[0] if h.row != example.row][:3]
    placed = retriever_ceiling.with_cloze_gold(example, list(others), search)
    assert [h.row for h in placed[:2]] == [h.row for h in others[:2]] and placed[2].row == example.row
    assert placed[2].text == example.rest


def test_cloze_examples_need_the_passage_side(topic_index: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["retriever_ceiling.py", "--index", str(topic_index), "--cloze", "10"])
    with pytest.raises(SystemExit) as stopped:
        retriever_ceiling.main()
    assert stopped.value.code == 2
    assert "--cloze needs --passage-side" in capsys.readouterr().err
