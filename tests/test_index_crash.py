"""SIGKILL a writer mid-change: the index reopens with every acknowledged change, and its parts agree.

The writer is tests/crash_writer.py, run in a child process (started from a fork server that has
already imported torch and transformers, so each kill costs a fraction of a second, not a Python
start-up). It prints `ACK <generation> <doc_id>` after each upsert returns; the parent kills it
after some acks, at a random moment inside a large upsert, or while it sleeps at a chosen point of
the write protocol (between the SQLite commit and the FAISS / tantivy updates, for instance).
"""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import tantivy

import crash_writer
import indexer.index as index_module
from conftest import make_documents
from indexer.chunking import chunk_document
from indexer.encoder import TextEncoder
from indexer.encoder import encoder_input
from indexer.index import Index, build_index
from indexer.records import Document
from indexer.sparse import SparseIndex

N_BASE = 20
BASE_GENERATION = 1
ROUND_TIMEOUT = 90.0


# What the fork server imports once, so that a writer starts in well under a second. (Modules from
# tests/ cannot be preloaded: the fork server does not see the test's sys.path; missing ones are skipped.)
PRELOAD = ["indexer.index", "indexer.encoder", "transformers.models.auto.modeling_auto",
           "transformers.models.auto.tokenization_auto", "transformers.models.bert.modeling_bert",
           "transformers.models.bert.tokenization_bert"]


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@pytest.fixture()
def base_index(tmp_path: Path, tiny_encoder: TextEncoder) -> Path:
    path = tmp_path / "idx"
    build_index(path, make_documents(N_BASE), tiny_encoder)
    return path


class Round:
    """One writer process and what it printed."""

    def __init__(self, ctx, path: Path, encoder_path: str, out: Path, **options) -> None:
        self.out = out
        out.write_text("")
        self.process = ctx.Process(target=crash_writer.run, args=(str(path), encoder_path),
                                   kwargs={"out": str(out), **options}, daemon=True)
        self.process.start()

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def wait_for(self, predicate, what: str) -> None:
        deadline = time.monotonic() + ROUND_TIMEOUT
        while not predicate(self.lines()):
            if not self.process.is_alive():
                pytest.fail(f"the writer exited (code {self.process.exitcode}) before {what}: {self.lines()[-5:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}: {self.lines()[-5:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(30)
        assert self.process.exitcode == -signal.SIGKILL

    def acks(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("ACK ")]


def expected_documents(generation: int) -> dict[str, Document]:
    docs = {d.id: d for d in make_documents(N_BASE)}
    docs.update(crash_writer.expected_documents(generation - BASE_GENERATION))
    return docs


def search_word(doc: Document) -> str:
    """A word only this document has: topic{i}, crash{n}v{version} or big{step}w{j}."""
    return doc.text.split()[0]


def check_index(index: Index, acked: int) -> int:
    """Everything acknowledged is there, exactly the committed stream prefix, and store, FAISS and tantivy agree."""
    gen = index.generation
    assert gen >= acked, f"generation {gen} is older than the last acknowledged one, {acked}"
    expected = expected_documents(gen)
    # The store: exactly the documents of generation `gen`, each as that generation wrote it.
    stats = index.stats()
    assert stats["documents"] == len(expected)
    for doc in expected.values():
        stored = index.document(doc.id)
        assert stored is not None, f"{doc.id} is missing at generation {gen}"
        assert (stored.title, stored.text) == (doc.title, doc.text), f"{doc.id} has the wrong version"
    assert index.document(f"c{gen - BASE_GENERATION}") is None  # nothing of the next step
    # The three parts hold the same passage rows.
    snap = index._snapshot
    store_rows = {p.row for p in index.store.iter_passages(gen)}
    assert stats["passages"] == len(store_rows)
    assert snap.dense.ntotal == len(store_rows)
    _, dense_ids = snap.dense.search(index.encoder(["any query"]), len(store_rows) + 5)
    assert set(dense_ids[0][dense_ids[0] >= 0].tolist()) == store_rows
    hits = snap.sparse.search(tantivy.Query.all_query(), len(store_rows) + 10).hits
    sparse_rows = snap.sparse.fast_field_values("row", [address for _, address in hits])
    assert sorted(sparse_rows) == sorted(store_rows | {-1})  # each row once, plus the generation marker
    assert index.sparse.generation(snap.sparse) == gen
    # Every document is found by BM25 (its unique first word) and by dense search (its first passage's text).
    docs = list(expected.values())
    sparse_hits = index.search_many([search_word(d) for d in docs], k=1, mode="sparse")
    for doc, found in zip(docs, sparse_hits):
        assert found and found[0].doc_id == doc.id, f"sparse search misses {doc.id}"
    firsts = [chunk_document(d, words=100)[0] for d in docs]
    dense_hits = index.search_many([encoder_input(p.title, p.text) for p in firsts], k=10, mode="dense")
    for passage, found in zip(firsts, dense_hits):
        assert any(h.id == passage.id and h.score == pytest.approx(1.0, abs=1e-4) for h in found), \
            f"dense search misses {passage.id}"
    return gen


def recover_and_check(path: Path, encoder: TextEncoder, acked: int) -> int:
    """A read-only opener (as `rag-index search` is) before any repair, then the repairing writer."""
    with Index.open(path, encoder, readonly=True) as reader:
        check_index(reader, acked)
    with Index.open(path, encoder) as writer:
        gen = check_index(writer, acked)
        assert gen == writer.store.generation
    return gen


def further_upserts_work(path: Path, encoder: TextEncoder, gen: int) -> None:
    with Index.open(path, encoder) as index:
        doc = Document("after-crash", "After", "okapi after the crash")
        assert index.upsert([doc]).generation == gen + 1
        assert [h.id for h in index.search("okapi", mode="sparse")] == ["after-crash#0"]
        assert index.search(encoder_input(doc.title, doc.text), k=1, mode="dense")[0].id == "after-crash#0"
        index.delete(["c0"])
    with Index.open(path, encoder) as index:
        assert index.generation == gen + 2 and index.document("c0") is None
        assert index.document("after-crash") is not None
        assert index._snapshot.dense.ntotal == index.stats()["passages"]


# -- kills ----------------------------------------------------------------------------------------
def test_kill_after_some_acks(forkserver, base_index: Path, tiny_encoder: TextEncoder, tiny_encoder_path: str,
                              tmp_path: Path) -> None:
    gen = BASE_GENERATION
    # Rounds on the same index, each going on from what the last one left; the FAISS file is rewritten
    # as usual, never (so a reopen replays every change from the store), or on every change.
    for n_acks, fraction in ((1, None), (3, 1e9), (7, 0.0)):
        writer = Round(forkserver, base_index, tiny_encoder_path, tmp_path / f"acks{n_acks}.log",
                       start=gen - BASE_GENERATION, checkpoint_fraction=fraction)
        writer.wait_for(lambda lines: sum(line.startswith("ACK ") for line in lines) >= n_acks, f"{n_acks} acks")
        writer.kill()
        acks = writer.acks()
        assert acks == list(range(gen + 1, gen + 1 + len(acks)))
        gen = recover_and_check(base_index, tiny_encoder, acked=acks[-1])
    further_upserts_work(base_index, tiny_encoder, gen)


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_at_a_random_moment_of_a_large_upsert(forkserver, base_index: Path, tiny_encoder: TextEncoder,
                                                   tiny_encoder_path: str, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    gen = BASE_GENERATION
    for round_ in range(2):
        start = gen - BASE_GENERATION
        large = next(step for step in range(start, start + 10) if crash_writer.is_large(step))
        writer = Round(forkserver, base_index, tiny_encoder_path, tmp_path / f"large{round_}.log", start=start,
                       checkpoint_fraction=rng.choice([None, 0.0, 1e9]))
        writer.wait_for(lambda lines: f"BEGIN {large}" in lines, f"the large step {large}")
        time.sleep(rng.uniform(0.0, 0.8))
        writer.kill()
        acks = writer.acks()
        gen = recover_and_check(base_index, tiny_encoder, acked=max(acks, default=BASE_GENERATION))
    further_upserts_work(base_index, tiny_encoder, gen)


@pytest.mark.parametrize("hook", crash_writer.HOOKS)
def test_kill_inside_the_write_protocol(forkserver, base_index: Path, tiny_encoder: TextEncoder,
                                        tiny_encoder_path: str, tmp_path: Path, hook: str) -> None:
    """Step 1 adds c1 and rewrites c0; the kill lands at a chosen point of its publication.
    The FAISS file is rewritten on every change, so it can be ahead of tantivy when the kill lands."""
    server = Index.open(base_index, tiny_encoder)  # a writer open all along, as the server is
    writer = Round(forkserver, base_index, tiny_encoder_path, tmp_path / "hook.log", start=0, hook=hook, hook_step=1,
                   checkpoint_fraction=0.0)
    writer.wait_for(lambda lines: any(line.startswith("HOOK ") for line in lines), f"the {hook} hook")
    writer.kill()
    acks = writer.acks()
    assert acks == [2]  # step 0 acknowledged, step 1 not
    committed = hook != "before-commit"
    # The open writer serves what was committed at its next read, finishing the dead writer's work: it used to stay
    # on the older generation until the next write, while a delete already found the newer one's documents.
    with server:
        assert check_index(server, acks[-1]) == (3 if committed else 2)
    gen = recover_and_check(base_index, tiny_encoder, acked=acks[-1])
    assert gen == (3 if committed else 2)
    with Index.open(base_index, tiny_encoder, readonly=True) as index:
        assert index.document("c0").meta == {"version": 1 if committed else 0}
        assert (index.document("c1") is not None) == committed
    further_upserts_work(base_index, tiny_encoder, gen)


def test_sparse_update_failure_after_commit(base_index: Path, tiny_encoder: TextEncoder,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process twin of the sparse-before kill: the commit stands, tantivy lags one generation;
    a read-only opener serves the older generation consistently, a writer repairs."""
    monkeypatch.setattr(index_module, "DENSE_CHECKPOINT_FRACTION", 0.0)
    old = make_documents(N_BASE)[4]
    new = Document("doc-4", "Four", "doc four rewritten about otters")
    original = SparseIndex.apply

    def failing_apply(self, *args, **kwargs):
        raise OSError("disk full")

    with Index.open(base_index, tiny_encoder) as index:
        monkeypatch.setattr(SparseIndex, "apply", failing_apply)
        with pytest.raises(OSError):
            index.upsert([new])
        monkeypatch.setattr(SparseIndex, "apply", original)
    with Index.open(base_index, tiny_encoder, readonly=True) as reader:
        assert reader.generation == BASE_GENERATION
        assert reader.document("doc-4").text == old.text
        assert [h.id for h in reader.search("topic4", mode="sparse")] == ["doc-4#0"]
        hits = reader.search(encoder_input(old.title, old.text), k=5, mode="dense")
        assert hits and hits[0].id == "doc-4#0" and hits[0].text == old.text
        assert reader._snapshot.dense.ntotal == N_BASE
    with Index.open(base_index, tiny_encoder) as writer:
        assert writer.generation == BASE_GENERATION + 1
        assert writer.document("doc-4").text == new.text
        assert writer.search("topic4", mode="sparse") == []
        assert [h.id for h in writer.search("otters", mode="sparse")] == ["doc-4#0"]
        assert writer.search(encoder_input(new.title, new.text), k=1, mode="dense")[0].text == new.text
