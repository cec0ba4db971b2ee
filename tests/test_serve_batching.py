"""The micro-batcher on the real pipeline (tiny models): batch sizes, grouping, failures, a full queue."""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Sequence

import pytest

from conftest import make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index
from rag.pipeline import Answer, Pipeline
from rag.reader import DecoderReader
from serve.batching import MicroBatcher, Overloaded


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_reader_path: str) -> Pipeline:
    path = tmp_path_factory.mktemp("batching") / "idx"
    build_index(path, make_documents(8), tiny_encoder)
    return Pipeline(Index.open(path, tiny_encoder, readonly=True), DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=3))


class Recorder:
    """Calls the pipeline and remembers each call's (batch size, k, mode)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, questions: Sequence[str], k: int, mode: str, adapter: str | None) -> list[Answer]:
        self.calls.append((len(questions), k, mode))
        return self.pipeline.ask_many(questions, k=k, mode=mode, adapter=adapter)


async def ask_all(batcher: MicroBatcher, requests: list[tuple[str, int, str]]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.ask(q, k, m) for q, k, m in requests), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_questions_are_batched_by_k_and_mode(pipeline: Pipeline) -> None:
    recorder = Recorder(pipeline)
    requests = [(f"topic{i}?", 1 + i % 2, "dense" if i % 2 else "hybrid") for i in range(10)]
    results = asyncio.run(ask_all(MicroBatcher(recorder, max_batch=4, max_wait_ms=200), requests))
    assert all(size <= 4 for size, _, _ in recorder.calls)
    assert sum(size for size, _, _ in recorder.calls) == 10
    assert len(recorder.calls) < 10, "nothing was batched"
    for (question, k, mode), result in zip(requests, results):
        assert result.answer.question == question and len(result.answer.passages) == k
        assert (result.batch_size, k, mode) in recorder.calls
        assert result.answer.text == pipeline.ask(question, k=k, mode=mode).text


def test_max_batch_one_answers_one_at_a_time(pipeline: Pipeline) -> None:
    recorder = Recorder(pipeline)
    results = asyncio.run(ask_all(MicroBatcher(recorder, max_batch=1), [(f"topic{i}?", 2, "hybrid") for i in range(4)]))
    assert recorder.calls == [(1, 2, "hybrid")] * 4 and all(r.batch_size == 1 for r in results)


def test_a_failing_batch_fails_only_its_questions(tiny_reader_path: str, caplog: pytest.LogCaptureFixture) -> None:
    """A pipeline without an index cannot answer k > 0: those clients get the error, k = 0 still works. A ValueError that
    is not an adapter's is the server's own to look into: logged with its traceback (a shape error looks the same)."""
    closed_book = Pipeline(None, DecoderReader(tiny_reader_path, device="cpu", max_new_tokens=2))
    batcher = MicroBatcher(lambda qs, k, mode, adapter: closed_book.ask_many(qs, k=k, mode=mode, adapter=adapter), max_batch=8, max_wait_ms=100)
    results = asyncio.run(ask_all(batcher, [("a?", 3, "hybrid"), ("b?", 0, "hybrid"), ("c?", 3, "hybrid")]))
    assert isinstance(results[0], ValueError) and isinstance(results[2], ValueError)
    assert results[1].answer.passages == []
    assert [r.exc_info is not None for r in caplog.records if r.levelno == logging.ERROR] == [True]


def test_a_full_queue_refuses_and_stop_fails_the_waiting(pipeline: Pipeline) -> None:
    async def scenario() -> list:
        batcher = MicroBatcher(Recorder(pipeline), max_queue=1)  # never started: questions only queue
        waiting = asyncio.ensure_future(batcher.ask("first?", 1, "hybrid"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="already waiting"):
            await batcher.ask("second?", 1, "hybrid")
        await batcher.stop()
        return await asyncio.gather(waiting, return_exceptions=True)

    [refused] = asyncio.run(scenario())
    assert isinstance(refused, Overloaded) and "shutting down" in str(refused)


def test_stop_fails_the_batch_being_answered_too(pipeline: Pipeline) -> None:
    """Questions taken off the queue into a batch are not left waiting forever when the server stops mid-batch."""
    answering, release = threading.Event(), threading.Event()

    def slow(questions: list[str], k: int, mode: str, adapter: str | None) -> list:
        answering.set()
        release.wait(30)
        return pipeline.ask_many(questions, k=k, mode=mode, adapter=adapter)

    async def scenario() -> list:
        batcher = MicroBatcher(slow, max_batch=4, max_wait_ms=0)
        batcher.start()
        asking = [asyncio.ensure_future(batcher.ask(q, 1, "hybrid")) for q in ("first?", "second?")]
        while not answering.is_set():  # until the collector has taken them into a batch
            await asyncio.sleep(0.01)
        assert batcher.pending == 0
        await batcher.stop()
        release.set()
        return await asyncio.wait_for(asyncio.gather(*asking, return_exceptions=True), 10)

    results = asyncio.run(scenario())
    assert all(isinstance(r, Overloaded) and "shutting down" in str(r) for r in results), results


def test_bad_settings_are_refused(pipeline: Pipeline) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(pipeline), max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(Recorder(pipeline), max_wait_ms=-1)
