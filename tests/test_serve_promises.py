"""README promises about the server that the other serve tests leave open: a write the index refuses is a 409 that
says why, and one that meets another process's write waits for it, then 409s past the deadline; a full question queue
is a 503 with `Retry-After: 1`; `rag-serve run` takes its token from $RAG_SERVE_TOKEN, and `--no-batching` answers
questions one at a time."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

import indexer.index as index_module
from conftest import ServerProcess, hold_answers, make_documents
from indexer.encoder import TextEncoder
from indexer.index import LOCK_FILE, Index, build_index
from rag.pipeline import Pipeline
from rag.reader import DecoderReader
from serve.app import ServeSettings, create_app
from serve.cli import TOKEN_ENV

TOKEN = "env-token"
N_DOCS = 8
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_reader_path: str) -> Pipeline:
    return served_pipeline(tmp_path_factory.mktemp("serve-promises") / "idx", tiny_encoder, tiny_reader_path)


def served_pipeline(path: Path, encoder: TextEncoder, reader_path: str, dense: str = "flat") -> Pipeline:
    """A new index of make_documents(N_DOCS) at `path`, opened for writing as the server needs."""
    build_index(path, make_documents(N_DOCS), encoder, dense=dense)
    return Pipeline(Index.open(path, encoder), DecoderReader(reader_path, device="cpu", max_new_tokens=2))


@contextmanager
def another_process_writing(index: Path) -> Iterator[Callable[[], None]]:
    """Another process holding the index's write lock as `rag-index upsert` does (flock on write.lock), until the
    function this yields is called or the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(index / LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.stdin.close
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(10)


def start_upsert(client: TestClient, doc_id: str, replies: list[httpx.Response]) -> threading.Thread:
    """POST /documents with one new document in a thread of its own; its response goes to `replies`."""
    thread = threading.Thread(target=lambda: replies.append(
        client.post("/documents", json={"documents": [{"id": doc_id, "text": "okapi savanna"}]})))
    thread.start()
    return thread


# -- 409: the index refuses the write ----------------------------------------------------------------

def test_a_write_the_index_refuses_gets_a_409_that_says_why(tmp_path: Path, tiny_encoder: TextEncoder,
                                                            tiny_reader_path: str) -> None:
    """An HNSW index cannot change its vectors, so its folder refuses upserts and deletes; questions still work."""
    refusing = served_pipeline(tmp_path / "hnsw", tiny_encoder, tiny_reader_path, dense="hnsw")
    with TestClient(create_app(refusing)) as client:
        for method, url, body in (("POST", "/documents", {"documents": [{"id": "new", "text": "a new document"}]}),
                                  ("DELETE", "/documents/doc-1", None)):
            response = client.request(method, url, json=body)
            assert response.status_code == 409, (method, response.text)
            error = response.json()["error"]
            assert "hnsw index is read-only" in error and "rebuild with --dense flat" in error, error
        assert client.get("/documents/new").status_code == 404 and client.get("/documents/doc-1").status_code == 200
        assert client.post("/ask", json={"question": "what is topic1?", "k": 1}).status_code == 200
    refusing.index.close()


def test_a_write_waits_for_another_process_writing(tmp_path: Path, tiny_encoder: TextEncoder, tiny_reader_path: str) -> None:
    """While another process writes, the server's write waits for it (no 409 at once) and questions are still
    answered; once the other write is over, the server's goes through."""
    served = served_pipeline(tmp_path / "idx", tiny_encoder, tiny_reader_path)
    replies: list[httpx.Response] = []
    # The other process lets go before the server shuts down: the server waits for its write to finish.
    with TestClient(create_app(served)) as client, another_process_writing(served.index.path) as other_write_over:
        writer = start_upsert(client, "late", replies)
        writer.join(1.0)
        assert writer.is_alive(), f"the write did not wait for the other process: {replies[0].text if replies else ''}"
        assert client.post("/ask", json={"question": "what is topic1?", "k": 1}).status_code == 200
        other_write_over()
        writer.join(30)
        assert replies and replies[0].status_code == 200, replies[0].text if replies else "no reply"
        assert replies[0].json()["documents_added"] == 1
        assert client.get("/documents/late").json()["text"] == "okapi savanna"
    served.index.close()


def test_a_write_that_waits_past_the_deadline_gets_a_409(tmp_path: Path, tiny_encoder: TextEncoder, tiny_reader_path: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """README: the server's writes wait for another writer "up to 10 minutes, then 409"; nothing is written."""
    monkeypatch.setattr(index_module, "WRITE_WAIT_SECONDS", 0.5)  # ten minutes in use
    served = served_pipeline(tmp_path / "idx", tiny_encoder, tiny_reader_path)
    replies: list[httpx.Response] = []
    with TestClient(create_app(served)) as client:
        with another_process_writing(served.index.path):
            started = time.monotonic()
            writer = start_upsert(client, "late", replies)
            writer.join(30)  # were there no deadline, the write would wait until the other process lets go below
            waited = time.monotonic() - started
            assert not writer.is_alive(), "the write waited on past its deadline"
        assert replies[0].status_code == 409, replies[0].text
        assert "another process is writing to this index; try again later" in replies[0].json()["error"]
        assert 0.5 <= waited < 10  # the deadline set above, not another
        assert client.get("/documents/late").status_code == 404
    served.index.close()


# -- 503: too many questions waiting -----------------------------------------------------------------

def test_a_full_queue_gets_a_503_with_retry_after(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """One question being answered (held there, as test_serve_api's shutdown test does), one waiting: with
    --max-queue 1 the next is refused at once, and the two taken are still answered."""
    release, answering = hold_answers(pipeline, monkeypatch)
    settings = ServeSettings(max_queue=1, max_batch=1, max_wait_ms=0)
    replies: dict[str, httpx.Response] = {}

    def ask(name: str, client: TestClient) -> threading.Thread:
        thread = threading.Thread(target=lambda: replies.__setitem__(
            name, client.post("/ask", json={"question": f"what is {name}?", "k": 1})))
        thread.start()
        return thread

    with TestClient(create_app(pipeline, settings)) as client:
        askers: list[threading.Thread] = []
        try:
            askers.append(ask("first", client))
            assert answering.wait(30), "the first question never reached the reader"
            askers.append(ask("second", client))
            deadline = time.monotonic() + 30
            while client.get("/health").json()["queued"] < 1:  # the second is waiting for the reader
                assert time.monotonic() < deadline, "the second question never queued"
                time.sleep(0.01)
            third = ask("third", client)
            askers.append(third)
            third.join(10)  # refused at once; were it queued, it would wait for the release below
            assert not third.is_alive(), "the third question was queued past --max-queue, not refused"
        finally:
            release.set()
            for thread in askers:
                thread.join(60)
    refused = replies["third"]
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    assert "already waiting" in refused.json()["error"]
    assert replies["first"].status_code == 200 and replies["second"].status_code == 200


# -- `rag-serve run`: $RAG_SERVE_TOKEN and --no-batching -----------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def cli_server(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: TextEncoder, tiny_reader_path: str) -> Iterator[ServerProcess]:
    """Started before the first test of the module, so that its start (seconds of imports) overlaps the others."""
    path = tmp_path_factory.mktemp("serve-cli") / "idx"
    build_index(path, make_documents(N_DOCS), tiny_encoder)
    # a long batching window: concurrent questions would share a batch, were batching on
    with ServerProcess(path, tiny_reader_path, "--no-batching", "--max-wait-ms", "300", env={TOKEN_ENV: TOKEN}) as server:
        yield server


@pytest.fixture
def served_by_cli(cli_server: ServerProcess) -> str:
    return cli_server.url


def test_rag_serve_run_takes_its_token_from_the_environment(served_by_cli: str) -> None:
    doc = {"documents": [{"id": "guarded", "text": "needs the token from the environment"}]}
    with httpx.Client(base_url=served_by_cli, timeout=30) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.post("/documents", json=doc, headers=headers)
            assert response.status_code == 401, response.text
            assert "Authorization: Bearer" in response.json()["error"]
            assert client.delete("/documents/doc-1", headers=headers).status_code == 401
        assert client.get("/documents/guarded").status_code == 404  # nothing was written
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/documents", json=doc, headers=auth).status_code == 200
        assert client.get("/documents/guarded").status_code == 200  # reads need no token
        assert client.delete("/documents/guarded", headers=auth).status_code == 200


def test_rag_serve_run_no_batching_answers_one_at_a_time(served_by_cli: str) -> None:
    n = 6
    results: dict[int, httpx.Response] = {}
    start = threading.Barrier(n, timeout=30)

    def one(i: int) -> None:
        with httpx.Client(base_url=served_by_cli, timeout=60) as client:
            start.wait()
            results[i] = client.post("/ask", json={"question": f"what is topic{i}?", "k": 1})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == n and all(r.status_code == 200 for r in results.values()), results
    assert [r.json()["batch_size"] for r in results.values()] == [1] * n
    assert httpx.get(f"{served_by_cli}health", timeout=30).json()["max_batch"] == 1
