"""The dense (FAISS) index: kinds, updates, persistence, the torch exact-search path, and dense kinds in an Index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_documents
from indexer.dense import DenseIndex, TorchExactSearch
from indexer.encoder import TextEncoder
from indexer.encoder import encoder_input
from indexer.index import Index, build_index
from indexer.manifest import IndexFolderError
from indexer.records import Document

DIM = 32


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


CORPUS = unit_vectors(400, seed=1)
IDS = np.arange(1000, 1400, dtype=np.int64)


def make(kind: str, device: str = "cpu") -> DenseIndex:
    training = CORPUS if kind in ("ivf", "ivfpq") else None
    index = DenseIndex.create(DIM, kind, device, training)
    index.add(IDS, CORPUS)
    return index


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_add_then_search_finds_each_vector_under_its_id(kind: str) -> None:
    index = make(kind)
    assert index.ntotal == len(IDS)
    scores, ids = index.search(CORPUS[:20], 5)
    assert ids.shape == scores.shape == (20, 5)
    if kind == "ivfpq":  # lossy codes: the vector itself is among the best few
        assert np.mean([IDS[i] in ids[i] for i in range(20)]) >= 0.8
    else:
        np.testing.assert_array_equal(ids[:, 0], IDS[:20])
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_removed_ids_are_never_returned(kind: str) -> None:
    index = make(kind)
    gone = IDS[:50]
    index.remove(gone)
    assert index.ntotal == len(IDS) - 50
    _, ids = index.search(CORPUS[:50], 10)
    assert not np.isin(ids, gone).any()
    # Removing unknown ids, or nothing, is harmless.
    index.remove(np.array([5, 6], dtype=np.int64))
    index.remove(np.array([], dtype=np.int64))
    assert index.ntotal == len(IDS) - 50
    # The rest is still found.
    _, ids = index.search(CORPUS[50:60], 5)
    if kind != "ivfpq":
        np.testing.assert_array_equal(ids[:, 0], IDS[50:60])


def test_hnsw_cannot_remove_and_says_so() -> None:
    index = make("hnsw")
    with pytest.raises(ValueError, match="read-only"):
        index.remove(IDS[:3])
    assert index.ntotal == len(IDS)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_trained_kinds_need_training_vectors(kind: str) -> None:
    with pytest.raises(ValueError, match="trained"):
        DenseIndex.create(DIM, kind)
    with pytest.raises(ValueError, match="trained"):
        DenseIndex.create(DIM, kind, training_vectors=np.zeros((0, DIM), np.float32))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dense index kind"):
        DenseIndex.create(DIM, "lsh")


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_save_and_load_give_the_same_results(tmp_path: Path, kind: str) -> None:
    index = make(kind)
    if kind != "hnsw":
        index.remove(IDS[::7])
    path = tmp_path / "dense.faiss"
    index.save(path)
    assert path.is_file() and not (tmp_path / "dense.faiss.tmp").exists()
    loaded = DenseIndex.load(path, kind)
    assert loaded.ntotal == index.ntotal
    queries = unit_vectors(15, seed=9)
    s1, i1 = index.search(queries, 8)
    s2, i2 = loaded.search(queries, 8)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_empty_index_and_short_results_are_padded() -> None:
    empty = DenseIndex.create(DIM, "flat")
    scores, ids = empty.search(unit_vectors(2), 3)
    assert ids.shape == (2, 3) and np.all(ids == -1) and np.all(np.isneginf(scores))
    small = DenseIndex.create(DIM, "flat")
    small.add(IDS[:2], CORPUS[:2])
    scores, ids = small.search(CORPUS[:1], 5)
    assert sorted(ids[0, :2]) == sorted(IDS[:2]) and np.all(ids[0, 2:] == -1) and np.all(np.isneginf(scores[0, 2:]))


def test_clone_is_independent() -> None:
    index = make("flat")
    copy = index.clone()
    copy.remove(IDS[:10])
    assert index.ntotal == len(IDS) and copy.ntotal == len(IDS) - 10
    _, ids = index.search(CORPUS[:1], 1)
    assert ids[0, 0] == IDS[0]


def test_torch_exact_search_matches_faiss_flat() -> None:
    index = make("flat")
    index.remove(IDS[3:40:3])  # ids and vectors no longer in insertion order
    queries = unit_vectors(25, seed=5)
    for k in (1, 10, 500):  # 500 > ntotal: padded like FAISS
        f_scores, f_ids = index.search(queries, k)
        exact = TorchExactSearch.from_faiss(index.index, "cpu")
        t_scores, t_ids = exact.search(queries, k)
        np.testing.assert_array_equal(t_ids, f_ids)
        finite = np.isfinite(f_scores)
        np.testing.assert_array_equal(np.isfinite(t_scores), finite)
        np.testing.assert_allclose(t_scores[finite], f_scores[finite], atol=1e-5)


def test_torch_exact_search_from_arrays() -> None:
    exact = TorchExactSearch(IDS[:50], CORPUS[:50], device="cpu")
    scores, ids = exact.search(CORPUS[:5], 3)
    np.testing.assert_array_equal(ids[:, 0], IDS[:5])
    brute = CORPUS[:5] @ CORPUS[:50].T
    np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :3], atol=1e-5)


def test_device_other_than_cpu_uses_torch_and_follows_updates() -> None:
    # "cpu:0" is not "cpu", so search takes the torch (GPU) path, on the CPU.
    on_device = make("flat", device="cpu:0")
    reference = make("flat", device="cpu")
    assert on_device.device == "cpu:0"
    queries = unit_vectors(10, seed=3)
    for step in range(3):  # the cached torch copy must follow adds and removes
        s1, i1 = on_device.search(queries, 7)
        s2, i2 = reference.search(queries, 7)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, atol=1e-5)
        for index in (on_device, reference):
            index.remove(i2[:, 0])
            index.add(np.array([5000 + step]), queries[step : step + 1])


def test_device_cpu_gives_exact_brute_force_results() -> None:
    index = DenseIndex.create(DIM, "flat", device="cpu")
    assert index.device == "cpu"
    index.add(IDS[:30], CORPUS[:30])
    queries = unit_vectors(4, seed=11)
    scores, ids = index.search(queries, 5)
    brute = queries @ CORPUS[:30].T
    order = np.argsort(-brute, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, IDS[:30][order])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, axis=1), atol=1e-5)


# -- dense kinds inside an Index -------------------------------------------------------------
def exact_query(doc: Document) -> str:
    """A query whose vector equals the (single) passage vector of doc."""
    return encoder_input(doc.title, doc.text)


def test_hnsw_index_builds_searches_and_refuses_updates(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    docs = make_documents(30)
    build_index(tmp_path / "idx", docs, tiny_encoder, dense="hnsw")
    with Index.open(tmp_path / "idx", tiny_encoder) as index:
        hits = index.search(exact_query(docs[4]), k=3, mode="dense")
        assert hits[0].doc_id == "doc-4"
        assert index.search("topic9", k=1, mode="sparse")[0].doc_id == "doc-9"
        generation = index.generation
        with pytest.raises(IndexFolderError, match="read-only"):
            index.upsert([Document("new", "New", "a brand new document")])
        with pytest.raises(IndexFolderError, match="read-only"):
            index.delete(["doc-1"])
        assert index.generation == generation
        assert index.document("new") is None and index.document("doc-1") is not None
    with Index.open(tmp_path / "idx", tiny_encoder) as index:
        assert index.stats()["passages"] == 30 and index.generation == generation


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_trained_index_upsert_and_delete_work(tmp_path: Path, tiny_encoder: TextEncoder, kind: str) -> None:
    docs = make_documents(60)
    build_index(tmp_path / "idx", docs, tiny_encoder, dense=kind)
    with Index.open(tmp_path / "idx", tiny_encoder) as index:
        changed = Document("doc-3", "Changed", "zeppelin airship quartz")
        added = Document("extra", "Extra", "walrus tusk harbour")
        report = index.upsert([changed, added])
        assert (report.documents_updated, report.documents_added) == (1, 1)
        for doc in (changed, added):
            hits = index.search(exact_query(doc), k=10, mode="dense")  # ivfpq codes are lossy
            assert doc.id in [h.doc_id for h in hits]
            assert index.search(doc.text.split()[0], k=1, mode="sparse")[0].doc_id == doc.id
        index.delete(["doc-5", "extra"])
        assert index.stats()["documents"] == 60 - 1
        assert index._snapshot.dense.ntotal == 59
        hits = index.search_many([exact_query(docs[5]), exact_query(added)], k=60, mode="dense")
        assert all(h.doc_id not in ("doc-5", "extra") for hs in hits for h in hs)
    with Index.open(tmp_path / "idx", tiny_encoder) as index:  # and it persists
        assert index._snapshot.dense.ntotal == 59
        assert index.document("doc-5") is None and index.document("doc-3").text == changed.text


def test_an_ivfpq_index_refuses_a_change_too_small_to_train_on_and_stays_writable(tmp_path: Path, tiny_encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="needs at least 2; this change would leave it with 1"):
        build_index(tmp_path / "one", make_documents(1), tiny_encoder, dense="ivfpq")
    assert not (tmp_path / "one").exists()
    build_index(tmp_path / "idx", [], tiny_encoder, dense="ivfpq")  # e.g. every record skipped as bad
    with Index.open(tmp_path / "idx", tiny_encoder) as index:
        with pytest.raises(ValueError, match="--dense flat"):
            index.upsert(make_documents(1))
        assert index.generation == 0 and index.document("doc-0") is None
    with Index.open(tmp_path / "idx", tiny_encoder) as index:  # nothing was committed that cannot be published
        index.upsert(make_documents(2))
        assert index.search(exact_query(make_documents(2)[1]), k=2, mode="dense")[0].doc_id in ("doc-0", "doc-1")
