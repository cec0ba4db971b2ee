"""Kill -9 a real `rag-serve run` during a stream of upserts, restart it: every acknowledged upsert
is there, the index opens, and its store, FAISS and tantivy parts agree."""
from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import httpx

from conftest import ServerProcess, make_documents
from indexer.encoder import TextEncoder
from indexer.index import Index, build_index

TOKEN = "fault-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_BASE = 10


def step_documents(step: int) -> list[dict[str, str]]:
    """Step n adds s{n} and, for n > 0, rewrites s{n-1} to its second version."""
    docs = [{"id": f"s{step}", "title": f"Stream {step}", "text": f"streamword{step} first version of step {step}"}]
    if step:
        docs.append({"id": f"s{step - 1}", "title": f"Stream {step - 1}", "text": f"streamword{step - 1} second version"})
    return docs


def test_kill_9_during_upserts_loses_nothing_acknowledged(tmp_path: Path, tiny_encoder: TextEncoder,
                                                          tiny_reader_path: str) -> None:
    path = tmp_path / "idx"
    build_index(path, make_documents(N_BASE), tiny_encoder)
    with ServerProcess(path, tiny_reader_path, "--token", TOKEN) as server:
        acked: list[int] = []
        kill_after = random.Random(0).randint(6, 12)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            step = 0
            while True:
                if len(acked) == kill_after:
                    # Kill at a random moment of the next upsert: the client sends one right away.
                    threading.Timer(random.uniform(0.0, 0.15), os.kill, (server.process.pid, signal.SIGKILL)).start()
                try:
                    response = client.post("/documents", json={"documents": step_documents(step)}, headers=AUTH)
                except httpx.TransportError:
                    break  # the server died with this upsert unacknowledged
                assert response.status_code == 200, response.text
                acked.append(step)
                step += 1
        assert server.process.wait(30) == -signal.SIGKILL

    with ServerProcess(path, tiny_reader_path, "--token", TOKEN) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in acked:
                doc = client.get(f"/documents/s{n}")
                assert doc.status_code == 200, f"acknowledged s{n} is missing"
                if n < acked[-1]:
                    assert "second version" in doc.json()["text"], f"the acknowledged rewrite of s{n} is missing"
            stats = client.get("/stats").json()
            # The upsert in flight at the kill either committed whole or not at all.
            assert stats["documents"] in (N_BASE + len(acked), N_BASE + len(acked) + 1)
            hits = client.post("/ask", json={"question": f"streamword{acked[-1]}", "k": 1, "mode": "sparse"}).json()
            assert hits["passages"][0]["doc_id"] == f"s{acked[-1]}"
            # The restarted server takes writes again.
            assert client.post("/documents", json={"documents": step_documents(step + 1)}, headers=AUTH).status_code == 200
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down

    with Index.open(path, tiny_encoder) as index:
        live = {p.row for p in index.store.iter_passages(index.generation)}
        dense, sparse = index._snapshot.dense, index._snapshot.sparse
        assert dense.ntotal == len(live) == sparse.num_docs - 1  # tantivy also holds a generation marker
        _, ids = dense.search(index.encoder(["anything"]), len(live) + 5)
        assert set(ids[0][ids[0] >= 0].tolist()) == live
        found = index.search_many([f"streamword{n}" for n in acked], k=1, mode="sparse")
        assert [hits[0].doc_id for hits in found] == [f"s{n}" for n in acked]
