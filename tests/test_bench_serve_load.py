"""bench/serve_load.py counts throughput in a steady-state window and alternates which server goes first."""
from __future__ import annotations

import asyncio
import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import serve_load
from bench.common import RESULTS_DIR


def test_only_answers_ended_inside_the_window_count() -> None:
    answers = [(0.0, 2.0), (0.0, 3.0), (2.0, 5.0), (3.0, 7.0), (5.0, 11.0), (7.0, 12.5)]  # the window opens as the 2nd ends
    figures = serve_load.window_figures(answers, clients=2, window_start=3.0, window_end=11.0)
    assert figures["window_seconds"] == 8.0 and figures["answered_in_window"] == 3
    assert figures["throughput_qps"] == 0.375
    assert figures["mean_ms"] == round(13000 / 3, 1)  # latencies 3, 4 and 6 s
    assert figures["littles_law_qps"] == round(2 / (13 / 3), 4)


def test_a_window_that_never_opened_has_no_figures() -> None:
    figures = serve_load.window_figures([(0.0, 12.0)], clients=2, window_start=12.0, window_end=10.0)
    assert figures["window_seconds"] == 0.0 and figures["answered_in_window"] == 0
    assert figures["throughput_qps"] is None and figures["p95_ms"] is None


def test_the_window_opens_when_every_client_has_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow_answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"answer": "x"})

    monkeypatch.setattr(httpx, "AsyncClient", functools.partial(httpx.AsyncClient, transport=httpx.MockTransport(slow_answer)))
    phase = asyncio.run(serve_load.run_phase("http://test/", ["q"], clients=3, duration=0.5, max_requests=1000,
                                             drain_timeout=5, k=1, mode="dense"))
    assert phase["errors"] == 0
    assert 0.05 <= phase["window_s"][0] < phase["window_s"][1] == 0.5
    assert 0 < phase["answered_in_window"] < phase["answered"]  # the first answers and the drained ones are outside


class FakeServer:
    """Stands in for a `rag-serve run` child process."""

    def __init__(self, name: str, options: list[str]) -> None:
        self.name, self.options, self.url = name, options, "http://fake/"

    def rss_bytes(self, field: str = "VmRSS") -> int:
        return 2**20

    def stop(self) -> None:
        pass


def test_the_first_server_alternates_by_client_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[tuple[int, str]] = []
    servers: list[FakeServer] = []

    def fake_server(name: str, options: list[str]) -> FakeServer:
        servers.append(FakeServer(name, options))
        return servers[-1]

    def fake_measure(server: FakeServer, questions: list[str], clients: int, args: argparse.Namespace) -> dict[str, Any]:
        order.append((clients, server.name))
        qps = 2.0 if server.name == "on" else 1.0
        return {"clients": clients, "batching": server.name, "errors": 0, "throughput_qps": qps, "littles_law_qps": qps,
                "p95_ms": 100.0}

    out = RESULTS_DIR / "test_serve_load_order.json"  # never written: write_result is replaced
    monkeypatch.setattr(serve_load, "ServerUnderTest", fake_server)
    monkeypatch.setattr(serve_load, "measure", fake_measure)
    monkeypatch.setattr(serve_load, "read_qa", lambda name: [{"question": "q"}])
    monkeypatch.setattr(serve_load, "machine_info", lambda: {})
    monkeypatch.setattr(serve_load.httpx, "post", lambda *a, **kw: None)
    written: dict[str, Any] = {}
    monkeypatch.setattr(serve_load, "write_result", lambda path, results, info: written.update(results))
    monkeypatch.setattr(sys, "argv", ["serve_load.py", "--clients", "16", "64", "4", "--server-args", "--reader 'a b'",
                                      "--out", str(out)])
    serve_load.main()
    assert order == [(16, "on"), (16, "off"), (64, "off"), (64, "on"), (4, "on"), (4, "off")]
    assert [c["first"] for c in written["comparison"].values()] == ["on", "off", "on"]
    assert written["comparison"]["64"]["throughput_speedup"] == 2.0 and written["goal"]["met"] is True
    options = servers[0].options
    assert options[options.index("--reader") + 1] == "a b"  # a quoted server argument stays one argument
    assert json.dumps(written)  # serialisable as written
