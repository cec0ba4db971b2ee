"""The Index: build, search, upsert, delete, atomic failures, reopening, snapshots and read-only openers."""
from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

import indexer.index as index_module
from conftest import make_documents
from indexer.dense import DenseIndex
from indexer.encoder import TextEncoder
from indexer.encoder import encoder_input
from indexer.index import Index, build_index
from indexer.manifest import IndexFolderError
from indexer.records import MAX_META_DEPTH, MAX_TITLE_CHARS, Document, SearchHit
from indexer.store import DOCUMENT_PASSAGES_SQL, DOCUMENT_SQL

N_DOCS = 12
QUERIES = ["topic3", "topic7 alpha", "bravo charlie", "Title 5", "kilo lima mike"]


def exact_query(doc: Document) -> str:
    """For a one-passage document, a query whose vector is the passage's vector."""
    return encoder_input(doc.title, doc.text)


def results(index: Index, queries=QUERIES, k: int = 5) -> dict:
    """Every mode's results for some queries, as comparable values."""
    return {
        (mode, q): [(h.id, round(h.score, 5)) for h in index.search(q, k=k, mode=mode)]
        for mode in ("dense", "sparse", "hybrid")
        for q in queries
    }


def doc_ids(hits: list[SearchHit]) -> set[str]:
    return {h.doc_id for h in hits}


@pytest.fixture()
def built(tmp_path: Path, tiny_encoder: TextEncoder) -> Path:
    path = tmp_path / "idx"
    build_index(path, make_documents(N_DOCS), tiny_encoder)
    return path


@pytest.fixture()
def index(built: Path, tiny_encoder: TextEncoder):
    with Index.open(built, tiny_encoder) as opened:
        yield opened


# -- build and search ----------------------------------------------------------------------------
def test_build_creates_a_folder_that_opens_with_counts(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    path = tmp_path / "idx"
    docs = make_documents(5) + [Document("long", "Long", " ".join(f"w{i}" for i in range(220)))]
    report = build_index(path, docs, tiny_encoder, chunk_words=100)
    assert report.documents_added == 6 and report.generation == 1
    assert report.passages_encoded == 5 + 2  # 220 words: 100 + 120 (the 20-word tail is merged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder left behind
    with Index.open(path, tiny_encoder) as index:
        stats = index.stats()
        assert stats["documents"] == 6 and stats["passages"] == 7 and stats["deleted"] == 0
        assert stats["dim"] == tiny_encoder.dim and stats["encoder"] == tiny_encoder.name
        assert stats["generation"] == 1 == index.generation and stats["bytes"] > 0
        assert index.document("long").passage_ids == ["long#0", "long#1"]
        assert index.document("doc-2").meta == {"source": "test"}
    with pytest.raises(IndexFolderError, match="already exists"):
        build_index(path, make_documents(2), tiny_encoder)


def test_a_failed_build_leaves_no_folder(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    docs = make_documents(3) + [Document("bad", "Bad", "   ")]
    with pytest.raises(ValueError, match="no text"):
        build_index(tmp_path / "idx", docs, tiny_encoder)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_search_modes_return_hits_with_passage_ids(index: Index, mode: str) -> None:
    hits = index.search("topic7 alpha bravo", k=4, mode=mode)
    assert 1 <= len(hits) <= 4
    for hit in hits:
        assert isinstance(hit, SearchHit)
        assert re.fullmatch(r"doc-\d+#\d+", hit.id) and hit.id.startswith(hit.doc_id + "#")
        stored = index.document(hit.doc_id)
        assert hit.title == stored.title and hit.text in stored.text and hit.id in stored.passage_ids
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.id for h in hits}) == len(hits)
    if mode != "dense":  # sparse and hybrid put the passage with the unique word first
        assert index.search("topic7", k=4, mode=mode)[0].id == "doc-7#0"


def test_sparse_finds_the_document_with_a_unique_word(index: Index) -> None:
    for i in (0, 5, 11):
        hits = index.search(f"topic{i}", k=5, mode="sparse")
        assert [h.id for h in hits] == [f"doc-{i}#0"]


def test_dense_finds_a_passage_from_its_own_text(index: Index) -> None:
    docs = make_documents(N_DOCS)
    found = index.search_many([exact_query(d) for d in docs], k=1, mode="dense")
    assert [hits[0].doc_id for hits in found] == [d.id for d in docs]
    assert all(hits[0].score == pytest.approx(1.0, abs=1e-4) for hits in found)


def test_bad_search_arguments_are_refused(index: Index) -> None:
    with pytest.raises(ValueError, match="mode"):
        index.search("topic1", mode="bm25")
    with pytest.raises(ValueError, match="k must"):
        index.search("topic1", k=0)
    with pytest.raises(ValueError, match="empty query"):
        index.search("   ")
    with pytest.raises(ValueError, match="empty query"):
        index.search("\x00")
    assert index.search("?!", mode="sparse") == []


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_a_k_beyond_the_index_returns_every_passage_without_asking_for_memory(index: Index, mode: str) -> None:
    # Unbounded, FAISS and tantivy set aside room for k results: tens of GB here, a crash of the whole process.
    hits = index.search("topic1 alpha", k=4_000_000_000, mode=mode)
    assert 0 < len(hits) <= N_DOCS and hits == index.search("topic1 alpha", k=N_DOCS, mode=mode)


# -- upsert ----------------------------------------------------------------------------------------
def windows(*parts: str) -> str:
    return " ".join(parts)


W0 = "aa0 aa1 aa2 aa3 aa4 aa5 aa6 aa7 aa8 aa9"
W1 = "bb0 bb1 bb2 bb3 bb4 bb5 bb6 bb7 bb8 bb9"
W2_OLD = "cc0 cc1 cc2 oldword cc4 cc5 cc6 cc7 cc8 cc9"
W2_NEW = "cc0 cc1 cc2 newword cc4 cc5 cc6 cc7 cc8 cc9"


@pytest.fixture()
def windowed(tmp_path: Path, tiny_encoder: TextEncoder):
    path = tmp_path / "win"
    build_index(path, make_documents(4) + [Document("multi", "Multi", windows(W0, W1, W2_OLD))], tiny_encoder,
                chunk_words=10)
    with Index.open(path, tiny_encoder) as index:
        assert index.document("multi").passage_ids == ["multi#0", "multi#1", "multi#2"]
        yield index


def test_upsert_of_a_changed_document_replaces_its_text(windowed: Index) -> None:
    passages_before = windowed.stats()["passages"]
    report = windowed.upsert([Document("multi", "Multi", windows(W0, W1, W2_NEW))])
    assert report.documents_updated == 1 and report.documents_added == 0
    assert report.passages_encoded == 1  # only the last window changed
    assert report.generation == 2 == windowed.generation
    hits = windowed.search("newword", k=5, mode="sparse")
    assert [h.id for h in hits] == ["multi#2"] and "newword" in hits[0].text
    # The word only the old version had is gone, from every mode.
    assert windowed.search("oldword", k=5, mode="sparse") == []
    for mode in ("dense", "hybrid"):
        assert all("oldword" not in h.text for h in windowed.search("oldword", k=20, mode=mode))
    dense = windowed.search(encoder_input("Multi", W2_NEW), k=1, mode="dense")
    assert dense[0].id == "multi#2" and dense[0].score == pytest.approx(1.0, abs=1e-4)
    stored = windowed.document("multi")
    assert stored.text == windows(W0, W1, W2_NEW) and stored.version == 2
    assert stored.passage_ids == ["multi#0", "multi#1", "multi#2"]
    stats = windowed.stats()
    assert stats["passages"] == passages_before and stats["documents"] == 5


def test_identical_reupsert_changes_nothing_not_even_the_generation(windowed: Index) -> None:
    queries = ["oldword", "aa3", "topic1"]
    before, stats = results(windowed, queries), windowed.stats()
    report = windowed.upsert([Document("multi", "Multi", windows(W0, W1, W2_OLD)), *make_documents(2)])
    assert report.documents_unchanged == 3
    assert report.documents_updated == report.documents_added == report.passages_encoded == 0
    assert report.passages_removed == 0
    assert report.generation == stats["generation"] == windowed.generation == windowed.store.generation == 1
    assert results(windowed, queries) == before
    assert windowed.stats() == stats
    assert windowed.document("multi").version == 1
    assert windowed.upsert([]).generation == 1


def test_a_partly_changed_upsert_bumps_the_generation_once(windowed: Index) -> None:
    report = windowed.upsert([*make_documents(2), Document("multi", "Multi", windows(W0, W1, W2_NEW))])
    assert report.documents_unchanged == 2 and report.documents_updated == 1
    assert report.generation == 2 == windowed.generation == windowed.store.generation


def test_moved_passages_reuse_their_vectors(windowed: Index) -> None:
    # A window inserted in front shifts every passage id; only the new window is new text.
    report = windowed.upsert([Document("multi", "Multi", windows("zz0 zz1 zz2 zz3 zz4 zz5 zz6 zz7 zz8 zz9", W0, W1, W2_OLD))])
    assert report.passages_encoded == 1 and report.passages_reused == 3
    hit = windowed.search(encoder_input("Multi", W2_OLD), k=1, mode="dense")[0]
    assert hit.id == "multi#3" and hit.score == pytest.approx(1.0, abs=1e-4)
    assert windowed.document("multi").passage_ids == ["multi#0", "multi#1", "multi#2", "multi#3"]


def test_a_title_change_reencodes_every_passage(windowed: Index) -> None:
    report = windowed.upsert([Document("multi", "Renamed", windows(W0, W1, W2_OLD))])
    assert report.passages_encoded == 3
    assert {h.title for h in windowed.search("renamed", k=5, mode="sparse")} == {"Renamed"}
    assert windowed.search("renamed", k=5, mode="sparse")[0].doc_id == "multi"


def test_a_shorter_document_loses_its_tail_passages(windowed: Index) -> None:
    passages_before = windowed.stats()["passages"]
    report = windowed.upsert([Document("multi", "Multi", W0)])
    assert report.passages_encoded == 0 and report.passages_removed == 2
    assert windowed.document("multi").passage_ids == ["multi#0"]
    assert windowed.search("bb5", k=5, mode="sparse") == []
    assert windowed.stats()["passages"] == passages_before - 2


def test_upsert_of_a_new_document_adds_it(index: Index) -> None:
    new = Document("new-doc", "Walrus", "the walrus lives on arctic ice floes")
    report = index.upsert([new])
    assert report.documents_added == 1 and report.passages_encoded == 1
    assert index.stats()["documents"] == N_DOCS + 1 and index.stats()["passages"] == N_DOCS + 1
    assert [h.id for h in index.search("walrus", mode="sparse")] == ["new-doc#0"]
    assert index.search(exact_query(new), k=1, mode="dense")[0].id == "new-doc#0"
    assert index.search("walrus arctic", k=3, mode="hybrid")[0].id == "new-doc#0"
    assert index.document("new-doc").text == new.text


# -- delete ----------------------------------------------------------------------------------------
def test_delete_removes_a_document_from_every_mode(index: Index) -> None:
    doc3 = make_documents(N_DOCS)[3]
    report = index.delete(["doc-3"])
    assert report.documents_deleted == 1 and report.passages_removed == 1 and report.generation == 2
    assert index.document("doc-3") is None
    assert index.search("topic3", k=5, mode="sparse") == []
    for mode in ("dense", "hybrid"):
        assert "doc-3" not in doc_ids(index.search(exact_query(doc3), k=50, mode=mode))
        assert "doc-3" not in doc_ids(index.search("topic3", k=50, mode=mode))
    stats = index.stats()
    assert stats["documents"] == N_DOCS - 1 and stats["passages"] == N_DOCS - 1 and stats["deleted"] == 1
    # Each generation counts its own: generation 1 had deleted nothing (a snapshot of it says so).
    assert index.store.counts(1) == {"passages": N_DOCS, "documents": N_DOCS, "deleted": 0}
    # A deleted id can come back.
    index.upsert([doc3])
    assert [h.id for h in index.search("topic3", mode="sparse")] == ["doc-3#0"]
    assert index.document("doc-3").version >= 1


def test_delete_takes_a_list_of_ids_not_a_string(index: Index) -> None:
    with pytest.raises(TypeError, match=r"delete\(\['doc-1'\]\)"):
        index.delete("doc-1")
    assert index.document("doc-1") is not None
    generation = index.generation
    assert index.delete([]).generation == generation and index.delete(iter(["doc-1"])).generation == generation + 1


def test_search_many_takes_a_list_or_an_iterator_of_queries_and_one_vector_per_query(index: Index, tiny_encoder: TextEncoder) -> None:
    """A string is a sequence of its characters and a generator can be read once: neither may search for the wrong
    questions, nor a vector be paired with another query's BM25 results."""
    with pytest.raises(TypeError, match=r"search_many\(\['alpha'\]\)"):
        index.search_many("alpha", k=2)
    expected = index.search_many(["alpha", "bravo"], k=2)
    assert index.search_many(q for q in ["alpha", "bravo"]) == index.search_many(["alpha", "bravo"]) and len(expected) == 2
    for mode in ("dense", "hybrid"):
        with pytest.raises(ValueError, match=r"shape \(3, 32\) for 1 queries"):
            index.search_many(["alpha"], k=2, mode=mode, query_vectors=tiny_encoder(["a", "b", "c"]))
    with pytest.raises(ValueError, match="the query is not valid Unicode"):
        index.search("alpha \ud800")
    with pytest.raises(ValueError, match="k must be an integer of at least 1, got 2.5"):
        index.search("alpha", k=2.5)


def test_an_index_without_bm25_searches_dense_by_default(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    build_index(tmp_path / "ns", make_documents(6), tiny_encoder, sparse=False)
    with Index.open(tmp_path / "ns", tiny_encoder) as index:
        assert index.default_mode == "dense" and index.search("alpha", k=2) == index.search("alpha", k=2, mode="dense")


def test_close_releases_bm25_and_the_edit_memory(built: Path, tiny_encoder: TextEncoder) -> None:
    """Each open BM25 searcher keeps a tantivy reader thread until it is freed: an Index kept after close() held one
    for ever. A closed Index no longer opens its edit log again behind the caller's back."""
    def tantivy_threads() -> int:
        count = 0
        for task in Path("/proc/self/task").iterdir():
            try:
                count += "tantivy" in (task / "comm").read_text()
            except FileNotFoundError:  # a thread that ended as it was listed
                pass
        return count

    before, kept = tantivy_threads(), []
    for _ in range(5):
        with Index.open(built, tiny_encoder, readonly=True) as index:
            index.search("alpha", k=2)
        kept.append(index)
    gc.collect()  # the searchers are left in reference cycles, which the collector frees
    deadline = time.monotonic() + 5.0  # and their threads end on their own time
    while tantivy_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tantivy_threads() <= before
    with pytest.raises(RuntimeError, match="was closed"):
        kept[0].memory.add("The sky is green.")


@pytest.mark.parametrize("ids", [["nope"], ["doc-1", "nope"], ["doc-1", "doc-2", "missing-a", "missing-b"]])
def test_deleting_unknown_ids_raises_and_changes_nothing(index: Index, ids: list[str]) -> None:
    generation, before = index.generation, results(index)
    with pytest.raises(KeyError, match="nope|missing"):
        index.delete(ids)
    assert index.generation == generation and index.store.generation == generation
    assert index.document("doc-1") is not None and index.document("doc-2") is not None
    assert results(index) == before
    assert index.delete(["doc-1"]).generation == generation + 1  # and the index still takes changes


def test_deleted_document_stays_deleted_after_reopen(built: Path, tiny_encoder: TextEncoder) -> None:
    with Index.open(built, tiny_encoder) as index:
        index.delete(["doc-4", "doc-6"])
    with Index.open(built, tiny_encoder) as index:
        assert index.document("doc-4") is None and index.document("doc-6") is None
        assert index.search("topic4", mode="sparse") == [] and index.stats()["documents"] == N_DOCS - 2
        assert index._snapshot.dense.ntotal == N_DOCS - 2


# -- a bad document aborts the whole change ------------------------------------------------------
def nested(levels: int) -> list:
    """A list `levels` lists deep: [[...[]...]]."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


BAD = {
    "empty text": Document("bad", "Bad", "   "),
    "text of control characters": Document("bad", "Bad", "\x00\u200b\x01"),
    "hash in id": Document("bad#1", "Bad", "text with a bad id"),
    "empty id": Document(" ", "Bad", "text without an id"),
    "dot id": Document(".", "Bad", "an id no URL path can name"),
    "control character in id": Document("a\x1fb", "Bad", "an id no URL path can carry"),
    "bytes title": Document("bad", b"Bad", "a title served back as b'Bad'"),  # type: ignore[arg-type]
    "no metadata dict": Document("bad", "Bad", "metadata of None", None),  # type: ignore[arg-type]
    "non-string metadata key": Document("bad", "Bad", "a key JSON cannot write", {1: "a"}),  # type: ignore[dict-item]
    "duplicate id": Document("doc-2", "Again", "doc-2 a second time in one call"),
    "long title": Document("bad", "T" * (MAX_TITLE_CHARS + 1), "a title each passage would carry"),
    "deep metadata": Document("bad", "Bad", "metadata no JSON serialiser writes back", {"m": nested(MAX_META_DEPTH + 1)}),
}


def test_a_title_or_metadata_the_index_could_not_serve_back_is_refused_by_what_is_wrong(index: Index) -> None:
    """A title rides with every passage and deep metadata cannot be read back as JSON: each limit is named, and a
    document at the limits is taken."""
    for doc, message in [(BAD["long title"], "a title of 1,001 characters; at most 1,000"),
                         (BAD["deep metadata"], "metadata nested more than 32 levels deep")]:
        with pytest.raises(ValueError, match=message):
            index.upsert([doc])
    at_limits = Document("limits", "T" * MAX_TITLE_CHARS, "a document at both limits", {"m": nested(MAX_META_DEPTH), "n": 1})
    assert index.upsert([at_limits]).documents_added == 1
    assert index.document("limits").meta["m"] == nested(MAX_META_DEPTH)


class ShortEncoder:
    """An encoder that returns one vector fewer than it is given texts (a broken custom encoder)."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim

    def __call__(self, texts: list[str]):
        return self.inner(texts)[:-1]


def test_an_encoder_that_returns_too_few_vectors_writes_nothing(built: Path, tiny_encoder: TextEncoder) -> None:
    with Index.open(built, tiny_encoder) as index:
        generation, before = index.generation, results(index)
    with Index.open(built, ShortEncoder(tiny_encoder)) as index:
        with pytest.raises(ValueError, match=r"the encoder returned vectors of shape \(1, \d+\) for 2 passages.*nothing was written"):
            index.upsert([Document("a", "A", "first new text"), Document("b", "B", "second new text")])
    with Index.open(built, tiny_encoder) as index:
        assert index.generation == generation and results(index) == before and index.document("a") is None


@pytest.mark.parametrize("small_batches", [False, True], ids=["one-batch", "batches-written"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_a_bad_document_leaves_the_index_exactly_as_before(
    built: Path, tiny_encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch, bad: str, small_batches: bool
) -> None:
    if small_batches:  # the good documents before the bad one have already been written in the transaction
        monkeypatch.setattr(index_module, "UPSERT_BATCH", 2)
    with Index.open(built, tiny_encoder) as index:
        generation, stats, before = index.generation, index.stats(), results(index)
        docs = [
            Document("added", "Added", "zebra crossing"),
            Document("doc-2", "Changed", "changed text quokka"),
            Document("doc-9", "Changed", "changed text wombat"),
            BAD[bad],
            Document("after", "After", "platypus after the bad one"),
        ]
        with pytest.raises(ValueError):
            index.upsert(docs)
        assert index.generation == generation and index.store.generation == generation
        assert index.stats() == stats
        assert results(index) == before
        assert index.document("added") is None and index.document("doc-2").text == make_documents(3)[2].text
        for word in ("zebra", "quokka", "wombat", "platypus"):
            assert index.search(word, mode="sparse") == []
        # The writer is not left locked or mid-transaction.
        assert index.upsert([Document("later", "Later", "kangaroo")]).generation == generation + 1
    with Index.open(built, tiny_encoder) as index:
        assert index.document("added") is None and index.document("later") is not None
        assert index.search("quokka", mode="sparse") == []


# -- reopening -------------------------------------------------------------------------------------
def test_reopen_gives_the_same_results(built: Path, tiny_encoder: TextEncoder) -> None:
    with Index.open(built, tiny_encoder) as index:
        index.upsert([Document("doc-1", "T", "replacement text emu"), Document("x", "X", "brand new ibis")])
        index.delete(["doc-8"])
        before, stats = results(index, QUERIES + ["emu", "ibis"]), index.stats()
    with Index.open(built, tiny_encoder) as index:
        assert results(index, QUERIES + ["emu", "ibis"]) == before
        assert {k: v for k, v in index.stats().items() if k != "bytes"} == {k: v for k, v in stats.items() if k != "bytes"}
    with Index.open(built, tiny_encoder, readonly=True) as index:
        assert results(index, QUERIES + ["emu", "ibis"]) == before


def test_a_reader_opening_while_a_writer_saves_the_dense_file_sees_every_change(built: Path, tiny_encoder: TextEncoder,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "DENSE_CHECKPOINT_FRACTION", 1e9)  # dense.faiss falls behind the store
    replaced = Document("doc-3", "Title 3", "a new text about zebras")
    with Index.open(built, tiny_encoder) as writer:
        writer.upsert([replaced])
        writer.delete(["doc-5"])
        monkeypatch.setattr(index_module, "DENSE_CHECKPOINT_FRACTION", 0.0)  # the next change saves dense.faiss
        load = DenseIndex.load

        def load_then_write(*args, **kwargs) -> DenseIndex:
            """The reader has the lagging file; the writer saves a newer one before the reader reads on."""
            loaded = load(*args, **kwargs)
            monkeypatch.setattr(DenseIndex, "load", load)
            writer.upsert([Document("late", "", "written while the reader was opening")])
            return loaded

        monkeypatch.setattr(DenseIndex, "load", load_then_write)
        with Index.open(built, tiny_encoder, readonly=True) as reader:
            assert reader.search(exact_query(replaced), k=1, mode="dense")[0].text == replaced.text
            assert "doc-5" not in doc_ids(reader.search("topic5", k=N_DOCS, mode="dense"))


@pytest.fixture(scope="module")
def wider_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_path: str) -> TextEncoder:
    folder = tmp_path_factory.mktemp("wider-encoder")
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_path)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return TextEncoder(str(folder), device="cpu")


@pytest.mark.parametrize("readonly", [False, True])
def test_opening_with_another_encoder_is_refused(built: Path, tiny_encoder_path: str, wider_encoder: TextEncoder,
                                                 tmp_path: Path, readonly: bool) -> None:
    with pytest.raises(IndexFolderError, match="encoder"):
        Index.open(built, wider_encoder, readonly=readonly)
    # The same weights in another folder are another encoder as far as the index knows; another path to its own
    # folder (a link, or a relative path as indexes built before names were absolute kept) is the same.
    copy = shutil.copytree(tiny_encoder_path, tmp_path / "copy")
    with pytest.raises(IndexFolderError, match="encoder"):
        Index.open(built, TextEncoder(str(copy), device="cpu"), readonly=readonly)
    alias = tmp_path / "alias"
    alias.symlink_to(tiny_encoder_path)
    Index.open(built, TextEncoder(str(alias), device="cpu"), readonly=readonly).close()


def test_an_index_opens_in_the_precision_it_was_encoded_in(built: Path, tiny_encoder_path: str) -> None:
    """Manifests from before encoder_dtype read as float32; another precision is refused, an unknown one is a clear error."""
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest.pop("encoder_dtype") == "float32"
    (built / "manifest.json").write_text(json.dumps(manifest))
    assert Index.open(built, readonly=True).encoder.dtype == "float32"
    with pytest.raises(IndexFolderError, match="encoded in float32, not bfloat16"):
        Index.open(built, TextEncoder(tiny_encoder_path, device="cpu", dtype="bfloat16"))
    (built / "manifest.json").write_text(json.dumps(manifest | {"encoder_dtype": "float8"}))
    with pytest.raises(IndexFolderError, match="float8"):
        Index.open(built, readonly=True).encoder


def test_another_format_version_is_refused(built: Path, tiny_encoder: TextEncoder) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["format_version"] = manifest["format_version"] + 1
    (built / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFolderError, match="format version"):
        Index.open(built, tiny_encoder)
    with pytest.raises(IndexFolderError, match="format version"):
        Index.open(built, tiny_encoder, readonly=True)


def test_a_manifest_of_the_wrong_shape_is_refused_by_what_is_wrong(built: Path, tiny_encoder: TextEncoder) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    without_encoder = {k: v for k, v in manifest.items() if k != "encoder"}
    for bad, problem in [([], "a JSON list, not an object"), (without_encoder, "encoder is null, not a string"),
                         (manifest | {"dim": "abc"}, 'dim is "abc", not an integer'), (manifest | {"sparse": "yes"}, 'sparse is "yes"')]:
        (built / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(IndexFolderError, match=f"unreadable manifest \\({problem}"):
            Index.open(built, readonly=True)


def test_not_an_index_folder_is_refused(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    with pytest.raises(IndexFolderError, match="no such index folder"):
        Index.open(tmp_path / "missing", tiny_encoder)
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexFolderError, match="not an index folder"):
        Index.open(tmp_path / "plain", tiny_encoder)
    assert list((tmp_path / "plain").iterdir()) == []  # nothing was created there
    (tmp_path / "file.jsonl").write_text("{}")
    with pytest.raises(IndexFolderError, match="file.jsonl is a file, not an index folder"):
        Index.open(tmp_path / "file.jsonl", tiny_encoder)


# -- snapshots, read-only openers, the dense checkpoint ------------------------------------------
TAG = re.compile(r"\bver(\d+)\b")


def versioned(doc: int, version: int) -> Document:
    """Three 5-word windows, each carrying the version tag and the shared word 'common'."""
    text = " ".join(f"ver{version} common d{doc}w{j} d{doc}x{j} ver{version}" for j in range(3))
    return Document(f"v-{doc}", f"Versioned {doc}", text)


def writes(steps: int, docs: int) -> list[tuple[str, int, int]]:
    """The writer's changes: (upsert|delete, document, version), one generation each."""
    return [("delete" if step % 5 == 0 else "upsert", step % docs, step) for step in range(1, steps + 1)]


def test_searches_during_writes_see_one_version_of_each_document(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    path = tmp_path / "snap"
    n_docs, changes = 6, writes(20, 6)
    build_index(path, [versioned(d, 0) for d in range(n_docs)], tiny_encoder, chunk_words=5)
    # What each generation holds: document -> version tag.
    expected = {1: {f"v-{d}": "0" for d in range(n_docs)}}
    for gen, (verb, doc, version) in enumerate(changes, start=2):
        state = dict(expected[gen - 1])
        if verb == "delete":
            state.pop(f"v-{doc}")
        else:
            state[f"v-{doc}"] = str(version)
        expected[gen] = state
    index = Index.open(path, tiny_encoder)
    stop = threading.Event()
    errors: list[BaseException] = []
    problems: list[str] = []
    exact_checks = [0]

    def reader() -> None:
        while not stop.is_set():
            for mode in ("sparse", "dense", "hybrid"):
                try:
                    gen_before = index.generation
                    hits = index.search("common ver0 d1w1", k=200, mode=mode)
                    gen_after = index.generation
                except BaseException as exc:  # noqa: BLE001 - any error is a failure
                    errors.append(exc)
                    return
                by_doc: dict[str, list[SearchHit]] = {}
                for h in hits:
                    by_doc.setdefault(h.doc_id, []).append(h)
                seen: dict[str, str] = {}
                for doc, doc_hits in by_doc.items():
                    tags = {TAG.search(h.text).group(1) for h in doc_hits}
                    if len(tags) != 1:
                        problems.append(f"{mode}: {doc} mixes versions {sorted(tags)}")
                    if sorted(h.id for h in doc_hits) != [f"{doc}#{j}" for j in range(3)]:
                        problems.append(f"{mode}: {doc} has passages {sorted(h.id for h in doc_hits)}")
                    seen[doc] = min(tags)
                if gen_before == gen_after:  # the search read that generation: all of it, nothing else
                    exact_checks[0] += 1
                    if seen != expected[gen_before]:
                        problems.append(f"{mode} at generation {gen_before}: saw {seen}, expected {expected[gen_before]}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for verb, doc, version in changes:
            if verb == "delete":
                index.delete([f"v-{doc}"])
            else:
                index.upsert([versioned(doc, version)])
    finally:
        stop.set()
        thread.join(timeout=60)
    index.close()
    assert not errors, f"a search failed during writes: {errors[0]!r}"
    assert not problems, problems[:5]
    assert exact_checks[0] > 0


def test_token_chunks_longer_than_the_encoder_reads_are_refused(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """The rest of each passage would be in BM25 and the reader's view but never in its vector."""
    too_long = tiny_encoder.max_length + 1
    with pytest.raises(IndexFolderError, match=f"--chunk-tokens {too_long} is over the {tiny_encoder.max_length} tokens the encoder reads"):
        Index.create(tmp_path / "too-long", tiny_encoder, chunk_tokens=too_long)
    assert not (tmp_path / "too-long").exists()


def test_token_chunking_keeps_whole_documents_while_questions_are_encoded(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """A fast tokenizer's truncation is a setting of the object: a writer chunking by tokens beside searches on
    another thread (whose encoding truncates) must still chunk every document whole."""
    index = Index.create(tmp_path / "tokens", tiny_encoder, chunk_tokens=32)
    stop = threading.Event()
    errors: list[BaseException] = []

    def asker() -> None:  # questions encoded as the server's pipeline encodes them, with the index's encoder
        while not stop.is_set():
            try:
                index.encoder(["alpha bravo charlie?"] * 8)
            except BaseException as exc:  # noqa: BLE001 - any error is a failure
                errors.append(exc)
                return

    thread = threading.Thread(target=asker, daemon=True)
    thread.start()
    try:
        index.upsert([Document(f"long-{n}", "Long", " ".join(f"w{n}x{i}" for i in range(400))) for n in range(200)])
        for n in range(200):
            rows = sorted(row for row, _, _ in index.store.live_passages([f"long-{n}"]).values())
            stored = index.store.passages(rows, index.generation)
            texts = [stored[row].text for row in rows]
            assert " ".join(texts).split()[-1] == f"w{n}x399", f"document {n} lost its end"
    finally:
        stop.set()
        thread.join(timeout=60)
        index.close()
    assert not errors, f"a search failed during writes: {errors[0]!r}"


def test_a_readonly_opener_keeps_its_generation(built: Path, tiny_encoder: TextEncoder) -> None:
    docs = make_documents(N_DOCS)
    reader = Index.open(built, tiny_encoder, readonly=True)
    old_generation, before = reader.generation, results(reader, QUERIES + ["topic2", exact_query(docs[2])])
    with Index.open(built, tiny_encoder) as writer:
        writer.upsert([Document("doc-1", "New", "capybara replaces the old text"), Document("fresh", "F", "axolotl")])
        writer.delete(["doc-2"])
        new_generation = writer.generation
    assert new_generation == old_generation + 2
    # The old opener still serves its generation, in every mode.
    assert reader.generation == old_generation
    assert results(reader, QUERIES + ["topic2", exact_query(docs[2])]) == before
    assert reader.document("doc-2") is not None and reader.document("fresh") is None
    assert reader.document("doc-1").text == docs[1].text
    assert reader.search("capybara", mode="sparse") == [] and reader.search("axolotl", mode="sparse") == []
    with pytest.raises(IndexFolderError, match="read-only"):
        reader.upsert([Document("y", "Y", "nope")])
    reader.close()
    # A new read-only opener sees the new generation.
    with Index.open(built, tiny_encoder, readonly=True) as fresh:
        assert fresh.generation == new_generation
        assert fresh.document("doc-2") is None and fresh.search("topic2", mode="sparse") == []
        assert [h.id for h in fresh.search("capybara", mode="sparse")] == ["doc-1#0"]
        assert fresh.search(exact_query(Document("fresh", "F", "axolotl")), k=1, mode="dense")[0].id == "fresh#0"
        assert "doc-2" not in doc_ids(fresh.search(exact_query(docs[2]), k=50, mode="dense"))


def test_a_writer_follows_what_another_process_committed(built: Path, tiny_encoder: TextEncoder) -> None:
    """The server holds a writable index; `rag-index upsert` changes it from another process (here another connection)."""
    docs = make_documents(N_DOCS)
    added = Document("fresh", "F", "axolotl")
    with Index.open(built, tiny_encoder) as served, Index.open(built, tiny_encoder) as other:
        assert served.search("capybara", mode="sparse") == []
        other.upsert([Document("doc-1", "New", "capybara replaces the old text"), added])
        other.delete(["doc-2"])
        assert served.generation == other.generation
        assert [h.id for h in served.search("capybara", mode="sparse")] == ["doc-1#0"]
        assert served.search(exact_query(added), k=1, mode="dense")[0].id == "fresh#0"
        assert "doc-2" not in doc_ids(served.search(exact_query(docs[2]), k=50, mode="hybrid"))
        assert served.document("doc-2") is None and served.stats()["documents"] == N_DOCS
        served.upsert([Document("own", "O", "quokka")])  # its own next write builds on both
        assert {"own", "fresh", "doc-1"} <= doc_ids(served.search("quokka axolotl capybara", k=5, mode="sparse"))
        assert served.search(exact_query(added), k=1, mode="dense")[0].id == "fresh#0"


@pytest.fixture()
def ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as in a terminal. A shell without job control starts its background jobs (`cmd &`
    in a script) with SIGINT ignored, and Python then leaves it ignored: a suite run that way would see no Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python


def test_ctrl_c_after_a_change_commits_waits_until_it_is_published(tmp_path: Path, tiny_encoder: TextEncoder,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   ctrl_c_raises: None) -> None:
    """Stopped between commit and publish, a change was durable but unseen by readers, and the command said it was not
    made. Ctrl-C (or SIGTERM) there now lands once the change is whole and visible; one before the commit undoes it."""
    build_index(tmp_path / "idx", make_documents(6), tiny_encoder)
    publish = Index._publish_derived

    def ctrl_c_while_publishing(self: Index, gen: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # delivered here, were it not held
        publish(self, gen)

    with Index.open(tmp_path / "idx", tiny_encoder) as index:
        monkeypatch.setattr(Index, "_publish_derived", ctrl_c_while_publishing)  # opening for writing publishes too
        with pytest.raises(KeyboardInterrupt):
            index.upsert([Document("new", "N", "axolotl")])
        with pytest.raises(KeyboardInterrupt):
            index.delete(["doc-1"])
    monkeypatch.undo()
    with Index.open(tmp_path / "idx", tiny_encoder, readonly=True) as reader:
        assert [h.doc_id for h in reader.search("axolotl", mode="sparse")] == ["new"]
        assert reader.document("doc-1") is None and reader.stats()["documents"] == 6


def test_a_second_writer_says_it_waits(built: Path, tiny_encoder: TextEncoder, capsys: pytest.CaptureFixture[str]) -> None:
    """Another process's write can take minutes: a writer waiting for it says so instead of looking hung."""
    with open(built / index_module.LOCK_FILE, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        threading.Timer(0.3, fcntl.flock, (other, fcntl.LOCK_UN)).start()
        with Index.open(built, tiny_encoder) as index:
            index.upsert([Document("late", "L", "okapi")])
    assert f"waiting for another process writing to {built}" in capsys.readouterr().err


def test_a_writer_gives_up_after_its_wait_and_changes_nothing(built: Path, tiny_encoder: TextEncoder,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "WRITE_WAIT_SECONDS", 0.3)  # ten minutes in use
    with open(built / index_module.LOCK_FILE, "a") as other, Index.open(built, tiny_encoder) as index:
        before = index.stats()
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(IndexFolderError, match="another process is writing to this index; try again later"):
            index.upsert([Document("late", "L", "okapi")])
        assert 0.3 <= time.monotonic() - started < 5  # the wait set above, not another
        with pytest.raises(IndexFolderError, match="another process is writing"):
            index.delete(["doc-1"])
        fcntl.flock(other, fcntl.LOCK_UN)
        assert index.stats() == before
        index.upsert([Document("late", "L", "okapi")])  # the lock freed, the same write goes through
        assert index.stats()["documents"] == before["documents"] + 1


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fraction", [1e9, None], ids=["never-checkpoint", "default"])
def test_a_stale_dense_file_is_caught_up_on_open(tmp_path: Path, tiny_encoder: TextEncoder,
                                                 monkeypatch: pytest.MonkeyPatch, fraction: float | None) -> None:
    path = tmp_path / "idx"
    docs = make_documents(60)
    build_index(path, docs, tiny_encoder)
    saved = file_digest(path / "dense.faiss")
    if fraction is not None:
        monkeypatch.setattr(index_module, "DENSE_CHECKPOINT_FRACTION", fraction)
    new = Document("late", "Late", "a late passage about narwhals")
    changed = Document("doc-5", "Changed", "doc five was rewritten about pelicans")
    with Index.open(path, tiny_encoder) as index:
        index.upsert([new])
        index.upsert([changed])
        index.delete(["doc-7"])
    if fraction is not None:
        assert file_digest(path / "dense.faiss") == saved  # the FAISS file is older than the store
    for readonly in (True, False, True):
        with Index.open(path, tiny_encoder, readonly=readonly) as index:
            assert index.generation == 4
            found = index.search_many([exact_query(new), exact_query(changed)], k=1, mode="dense")
            assert [hits[0].id for hits in found] == ["late#0", "doc-5#0"]
            assert all(hits[0].score == pytest.approx(1.0, abs=1e-4) for hits in found)
            everything = index.search_many([exact_query(docs[5]), exact_query(docs[7])], k=100, mode="dense")
            assert all("doc-7" not in doc_ids(hits) for hits in everything)
            assert all(h.text != docs[5].text for hits in everything for h in hits)
            assert index._snapshot.dense.ntotal == index.stats()["passages"] == 60


def test_a_lost_dense_file_is_rebuilt_from_the_store(built: Path, tiny_encoder: TextEncoder) -> None:
    docs = make_documents(N_DOCS)
    (built / "dense.faiss").unlink()
    for readonly in (True, False, True):
        with Index.open(built, tiny_encoder, readonly=readonly) as index:
            assert index.search(exact_query(docs[4]), k=1, mode="dense")[0].doc_id == "doc-4"
            assert len(index.search("topic1", k=50, mode="dense")) == N_DOCS
    with Index.open(built, tiny_encoder) as index:  # a writer saves what it rebuilt: the whole index, not a part
        index.upsert([Document("late", "Late", "narwhals")])
    with Index.open(built, tiny_encoder, readonly=True) as index:
        assert len(index.search("topic1", k=50, mode="dense")) == N_DOCS + 1


# -- read-only openers write nothing ---------------------------------------------------------------
# SQLite's own coordination files: a WAL reader must create or map them to read safely beside a writer.
SQLITE_WAL_FILES = {"passages.sqlite-wal", "passages.sqlite-shm"}


def folder_state(path: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and subfolder under `path` but SQLite's WAL files: (mtime ns, size, content digest)."""
    state = {}
    for p in sorted(path.rglob("*")):
        if p.name not in SQLITE_WAL_FILES:
            st = p.stat()
            state[str(p.relative_to(path))] = (st.st_mtime_ns, st.st_size, file_digest(p) if p.is_file() else "")
    return state


def age(path: Path) -> None:
    """Set every mtime under `path` to long ago, so any later write shows whatever the clock's resolution."""
    for p in path.rglob("*"):
        os.utime(p, ns=(10**18, 10**18))


def test_a_readonly_open_leaves_the_folder_unchanged(built: Path, tiny_encoder: TextEncoder) -> None:
    age(built)
    before = folder_state(built)
    with Index.open(built, tiny_encoder, readonly=True) as index:
        for mode in ("dense", "sparse", "hybrid"):
            assert index.search("topic3", k=3, mode=mode)
        assert index.document("doc-3") is not None and index.stats()["documents"] == N_DOCS
    assert folder_state(built) == before
    assert (built / "passages.sqlite-wal").stat().st_size == 0  # and no data went to SQLite's log


def test_a_readonly_open_without_a_sparse_folder_names_it_and_creates_none(built: Path, tiny_encoder: TextEncoder) -> None:
    # Readers take the BM25 commit for the generation every part has reached: without it they saw generation 0, an
    # empty index, and said nothing.
    shutil.rmtree(built / "sparse")
    age(built)
    before = folder_state(built)
    with pytest.raises(IndexFolderError, match="its BM25 part \\(sparse/\\) is missing: open the index for writing once"):
        Index.open(built, tiny_encoder, readonly=True)
    assert folder_state(built) == before
    # A writer rebuilds the sparse index from the store.
    with Index.open(built, tiny_encoder) as index:
        assert [h.doc_id for h in index.search("topic3", k=1, mode="sparse")] == ["doc-3"]


def test_an_hnsw_index_without_its_sparse_folder_is_repaired_by_a_writer(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    """HNSW cannot remove vectors, so catching its dense part up to an older sparse commit rebuilds it from the store."""
    path = tmp_path / "hnsw"
    build_index(path, make_documents(N_DOCS), tiny_encoder, dense="hnsw")
    shutil.rmtree(path / "sparse")
    with Index.open(path, tiny_encoder) as index:
        assert [h.doc_id for h in index.search("topic3", k=1, mode="sparse")] == ["doc-3"]
        assert len(index.search("topic3", k=N_DOCS, mode="dense")) == N_DOCS
    with Index.open(path, tiny_encoder, readonly=True) as index:
        assert [h.doc_id for h in index.search("topic3", k=1, mode="hybrid")] == ["doc-3"]


@pytest.mark.parametrize("damaged", ["dense.faiss", "sparse/meta.json"])
def test_an_open_that_fails_leaves_no_file_open(built: Path, tiny_encoder: TextEncoder, damaged: str) -> None:
    """A caller that retries an open which fails (a damaged FAISS or BM25 file) must not pile up open files."""
    def open_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).startswith(str(built.resolve())))

    (built / damaged).write_bytes(b"not what it should be")
    before, failures = open_files(), []
    for readonly in (False, True, False):
        with pytest.raises(Exception) as failure:  # FAISS's RuntimeError, tantivy's ValueError
            Index.open(built, tiny_encoder, readonly=readonly)
        failures.append(failure.value)  # kept, as a retry loop may keep them: their frames still name the index
    assert open_files() == before


# -- document lookups ------------------------------------------------------------------------------
def query_plans(index: Index) -> str:
    """SQLite's plans for the two queries of `Index.document`."""
    steps = []
    for sql in (DOCUMENT_SQL, DOCUMENT_PASSAGES_SQL):
        steps += [row[-1] for row in index.store.db.execute(f"EXPLAIN QUERY PLAN {sql}", {"id": "doc-1", "gen": 1})]
    return " | ".join(steps)


def test_document_lookups_search_the_doc_id_indexes(index: Index) -> None:
    plans = query_plans(index)
    assert "SCAN" not in plans, plans
    assert "USING INDEX documents_by_doc" in plans and "USING INDEX passages_by_doc" in plans, plans
    assert index.document("doc-1").passage_ids == ["doc-1#0"]


def test_an_older_folder_gets_the_doc_id_indexes_when_opened_for_writing(built: Path, tiny_encoder: TextEncoder) -> None:
    # Folders made before these indexes had only a partial one that such lookups cannot use.
    with sqlite3.connect(built / "passages.sqlite") as db:
        db.executescript("DROP INDEX passages_by_doc; DROP INDEX documents_by_doc; "
                         "CREATE INDEX passages_doc ON passages(doc_id) WHERE deleted_gen IS NULL;")
    with Index.open(built, tiny_encoder, readonly=True) as reader:
        assert "SCAN" in query_plans(reader)  # a read-only opener changes nothing
    with Index.open(built, tiny_encoder) as writer:
        assert "SCAN" not in query_plans(writer)
        indexes = {name for (name,) in writer.store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "passages_doc" not in indexes
