"""bench/retriever_ceiling.py checks its settings against the index before anything slow starts, and builds its
inverse cloze examples from the corpus."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import retriever_ceiling
from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from indexer.records import Document
from rag.span_reader import SpanReader
from trainer.training_index import TrainingIndex
from trainer.qa_data import QARecord


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


def test_a_question_whose_gold_the_search_missed_gets_it_in_the_last_place(topic_index: Path, tmp_path: Path) -> None:
    search = TrainingIndex(Index.open(topic_index, readonly=True), tmp_path / "training")
    hits = search.search(np.ones((1, search.index.manifest.dim), np.float32), 4)[0]
    missed = next(f"doc-{i}" for i in range(20) if f"doc-{i}" not in {h.doc_id for h in hits})
    placed = retriever_ceiling.with_question_gold(QARecord("q", "?", ["a"], [missed]), list(hits), search)
    assert [h.row for h in placed[:3]] == [h.row for h in hits[:3]] and placed[3].doc_id == missed
    found = QARecord("q", "?", ["a"], [hits[2].doc_id])
    assert retriever_ceiling.with_question_gold(found, list(hits), search) == hits
    assert retriever_ceiling.with_question_gold(QARecord("q", "?", ["a"], ["not-in-the-index"]), list(hits), search) == hits


@pytest.mark.parametrize("option", [["--cloze", "10"], ["--separate-sides"]])
def test_options_that_train_the_passage_side_need_it(option: list[str], topic_index: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["retriever_ceiling.py", "--index", str(topic_index), *option])
    with pytest.raises(SystemExit) as stopped:
        retriever_ceiling.main()
    assert stopped.value.code == 2
    assert f"{option[0]} needs --passage-side" in capsys.readouterr().err


@pytest.mark.parametrize("dpr_options", [False, True])  # --in-batch-negatives and --gold-in-candidates, off or both on
def test_questions_and_cloze_examples_share_the_steps_and_the_corpus_is_re_embedded_after(dpr_options: bool, tmp_path: Path,
                                                                                         tiny_encoder: TextEncoder) -> None:
    sentences = ["Mills once lined both of its banks for several miles.", "It joins the sea at a wide and shallow bay.",
                 "The town grew up around the old stone bridge.", "Boats carried grain down to the harbour every week."]
    docs = [Document(f"d{i}", f"River {i}", f"topic{i} rises in the hills. " + " ".join(sentences[i:] + sentences[:i]), {})
            for i in range(4)]
    build_index(tmp_path / "idx", docs, tiny_encoder)
    index = Index.open(tmp_path / "idx", readonly=True)
    records = [QARecord(f"q{i}", f"where does topic{i} rise?", ["hills"], [f"d{i}"]) for i in range(4)]
    args = argparse.Namespace(seed=0, retriever_lr=1e-3, batch_size=2, warmup=0.0, bf16=False, device="cpu", rerank=0,
                              candidates=3, candidates_from="hybrid", passage_side=True, separate_sides=True, tau=0.05,
                              in_batch_negatives=dpr_options, gold_in_candidates=dpr_options)
    result = retriever_ceiling.train_on_gold(index, records, args, {"rivers": records}, retriever_ceiling.cloze_examples(index, 2, 0))
    assert (result["steps"], result["cloze_examples"], result["questions"]) == (3, 2, 4)
    assert result["refresh"]["passages"] == 4
    assert set(result["after"]["rivers"]) == {"n", "recall@1", "recall@5", "recall@20"} and result["after"]["rivers"]["n"] == 4


def test_a_span_reader_teacher_teaches_every_question_the_gold_target_only_those_with_gold(
        topic_index: Path, tmp_path: Path, tiny_encoder_path: str) -> None:
    index = Index.open(topic_index, readonly=True)
    # Gold documents the index does not hold: the gold-only target has nothing to put its mass on.
    records = [QARecord(f"q{i}", f"which topic is number {i}?", [f"topic{i}"], [f"gone-{i}"]) for i in range(4)]
    args = argparse.Namespace(seed=0, retriever_lr=1e-3, batch_size=2, warmup=0.0, bf16=False, device="cpu", rerank=0,
                              candidates=3, candidates_from="dense", passage_side=False, separate_sides=False, tau=0.05,
                              in_batch_negatives=False, gold_in_candidates=False)
    gold_only = retriever_ceiling.train_on_gold(index, records, args, {"topics": records})
    assert (gold_only["questions_with_gold_in_candidates"], gold_only["examples_taught"]) == (0, 0)
    SpanReader.from_encoder(tiny_encoder_path, device="cpu", seed=0, max_length=64).save_pretrained(tmp_path / "span")
    taught = retriever_ceiling.train_on_gold(index, records, args, {"topics": records},
                                             teacher=SpanReader.from_pretrained(tmp_path / "span"))
    assert (taught["questions_with_gold_in_candidates"], taught["examples_taught"]) == (0, 4)


def test_a_span_reader_teacher_ranks_only_its_own_candidates(topic_index: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["retriever_ceiling.py", "--index", str(topic_index), "--teacher", "span-reader",
                                      "--in-batch-negatives"])
    with pytest.raises(SystemExit) as stopped:
        retriever_ceiling.main()
    assert stopped.value.code == 2 and "--teacher span-reader scores each question's own candidates" in capsys.readouterr().err
