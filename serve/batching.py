"""Micro-batching: concurrent questions share one retrieval call and one batched generation.

A request joins a queue and waits for its answer. A collector task takes the oldest request and
waits until it is `max_wait_ms` old or `max_batch` requests are queued, then hands the batch,
grouped by (k, mode, adapter), to `answer_many` in a worker thread, so the event loop never runs a model.
While a batch is being answered, new requests queue up and form the next batch. With
`max_batch=1` questions are answered one at a time (micro-batching off).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rag.adapters import AdapterError
from rag.pipeline import Answer

AnswerMany = Callable[[Sequence[str], int, str, str | None], list[Answer]]
BatchObserver = Callable[[int, float], None]
log = logging.getLogger("rag.serve")


class Overloaded(Exception):
    """More questions are waiting than the queue holds: the client should retry later."""


@dataclass
class Answered:
    """An answer, how long its question waited for a batch, and how many questions shared the batch."""

    answer: Answer
    queue_ms: float
    batch_size: int


@dataclass
class _Request:
    question: str
    k: int
    mode: str
    adapter: str | None
    future: asyncio.Future[Answered]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects concurrent questions into batches for `answer_many(questions, k, mode, adapter)`.

    `observe(batch_size, seconds)` is called after each batch (for metrics). Call `start` and
    `stop` from the event loop that will call `ask`.
    """

    def __init__(self, answer_many: AnswerMany, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, observe: BatchObserver | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.answer_many = answer_many
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.observe = observe
        self._pending: deque[_Request] = deque()
        self._taken: list[_Request] = []  # the batch being answered, off the queue
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Questions waiting for a batch (not counting the batch being answered)."""
        return len(self._pending)

    def start(self) -> None:
        """Start collecting; call from the running event loop."""
        # One model thread: batches run one after another, which is what makes them batches.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-ask")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="rag-batcher")

    async def stop(self) -> None:
        """Stop collecting and fail the questions still waiting, those of the batch being answered too."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for request in [*self._taken, *self._pending]:
            if not request.future.done():
                request.future.set_exception(Overloaded("the server is shutting down"))
        self._taken, self._pending = [], deque()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def ask(self, question: str, k: int, mode: str, adapter: str | None = None) -> Answered:
        """Queue a (validated) question and wait for its answer (`adapter`: a peft adapter folder to answer with)."""
        if len(self._pending) >= self.max_queue:
            raise Overloaded(f"{len(self._pending)} questions are already waiting: try again shortly")
        request = _Request(question, k, mode, adapter, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return await request.future

    async def _collect(self) -> None:
        while True:
            await self._arrived.wait()
            # Wait for company only while the oldest question is younger than max_wait.
            wait = self._pending[0].queued_at + self.max_wait - time.perf_counter()
            if wait > 0 and len(self._pending) < self.max_batch:
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            batch = self._taken = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            self._full.clear()
            if len(self._pending) >= self.max_batch:
                self._full.set()
            if not self._pending:
                self._arrived.clear()
            groups: dict[tuple[int, str, str | None], list[_Request]] = {}
            for request in batch:
                if not request.future.done():  # its client went away
                    groups.setdefault((request.k, request.mode, request.adapter), []).append(request)
            for (k, mode, adapter), group in groups.items():
                await self._answer(group, k, mode, adapter)
            self._taken = []

    async def _answer(self, group: list[_Request], k: int, mode: str, adapter: str | None) -> None:
        started = time.perf_counter()
        questions = [r.question for r in group]
        try:
            answers = await asyncio.get_running_loop().run_in_executor(self._executor, self.answer_many, questions, k, mode, adapter)
        except Exception as exc:  # the batch's clients get the error; the collector carries on
            if isinstance(exc, AdapterError):  # the adapter the questions named cannot serve (a 422): no fault of the server's
                log.info("a batch of %d was refused: %s", len(group), exc)
            else:
                log.exception("answering a batch of %d failed", len(group))
            for request in group:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        if self.observe is not None:
            self.observe(len(group), time.perf_counter() - started)
        for request, answer in zip(group, answers):
            if not request.future.done():
                request.future.set_result(Answered(answer, (started - request.queued_at) * 1e3, len(group)))
