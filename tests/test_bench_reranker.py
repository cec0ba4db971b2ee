"""bench/reranker_ceiling.py: an untrained reranker keeps the dense order, training towards the gold moves it, and
settings that cannot measure recall@5 are refused before anything loads."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from bench import reranker_ceiling
from indexer.index import Index
from trainer.qa_data import QARecord


def settings(**changes: object) -> argparse.Namespace:
    values = dict(seed=0, max_length=64, lr=1e-4, head_lr=1e-2, batch_size=2, warmup=0.1, candidates=4, tau=0.05,
                  device="cpu", bf16=False)
    return argparse.Namespace(**{**values, **changes})


def topic_questions(n: int) -> list[QARecord]:
    return [QARecord(f"q{i}", f"which topic is number {i}?", [f"topic{i}"], [f"doc-{i}"]) for i in range(n)]


def test_an_untrained_reranker_keeps_the_dense_order_and_training_moves_it(topic_index: Path) -> None:
    index = Index.open(topic_index, readonly=True)
    model = reranker_ceiling.CrossEncoder(index.manifest.encoder, 64).eval()
    records = topic_questions(8)
    untrained = reranker_ceiling.reranked_recall(
        index, records, 5, lambda q, hits: reranker_ceiling.dense_scores(hits, 0.05, "cpu") + model(q, hits))
    assert untrained["reranked"] == untrained["dense"]

    trained, stats = reranker_ceiling.train_on_gold(index, topic_questions(8), settings())
    assert stats["steps"] == 4 and 0 < stats["questions_with_gold_in_candidates"] <= 8
    assert float(trained.head.weight.detach().abs().sum()) > 0  # the head left zero: its corrections now reorder
    hits = index.search_many(["which topic is number 3?"], k=4, mode="dense")[0]
    with torch.inference_mode():
        assert not torch.equal(trained("which topic is number 3?", hits), torch.zeros(4))


@pytest.mark.parametrize("option, message", [(["--depth", "4"], "--depth must be at least 5"),
                                             (["--candidates", "0"], "--candidates must be at least 1")])
def test_settings_that_cannot_measure_are_refused(option: list[str], message: str, topic_index: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["reranker_ceiling.py", "--index", str(topic_index), *option])
    with pytest.raises(SystemExit) as stopped:
        reranker_ceiling.main()
    assert stopped.value.code == 2 and message in capsys.readouterr().err
