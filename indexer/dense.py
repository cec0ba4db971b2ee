"""Dense index: FAISS inner-product search over normalised vectors, ids = passage store rows.

Kinds: `flat` (exact, IndexIDMap2 over IndexFlatIP), `ivf` and `ivfpq` (trained on the corpus;
they carry ids natively because IndexIDMap2's removal assumes a sub-index that compacts, which IVF
does not), and `hnsw` (fast, but FAISS cannot remove from it, so such an index is read-only).
On a GPU, `flat` searches with one torch matmul instead; results match the CPU path.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import faiss
import numpy as np
import torch

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
UPDATABLE = ("flat", "ivf", "ivfpq")


class DenseIndex:
    """A FAISS index with explicit ids and small verbs: `add`, `remove`, `search`, `save`."""

    def __init__(self, index: faiss.Index, kind: str, device: str = "cpu") -> None:
        self.index = index
        self.kind = kind
        self.device = device
        self._on_device: TorchExactSearch | faiss.Index | None = None  # built lazily for device != "cpu"

    @classmethod
    def create(cls, dim: int, kind: str = "flat", device: str = "cpu", training_vectors: np.ndarray | None = None) -> DenseIndex:
        """An empty index. `ivf` and `ivfpq` learn their clusters from `training_vectors` (the corpus)."""
        if kind not in KINDS:
            raise ValueError(f"unknown dense index kind {kind!r}: choose one of {', '.join(KINDS)}")
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efSearch = 128
            index = faiss.IndexIDMap2(graph)
        else:
            if training_vectors is None or len(training_vectors) == 0:
                raise ValueError(f"a {kind} index is trained on the corpus: it cannot be built empty")
            index = _trained_ivf(dim, kind, np.ascontiguousarray(training_vectors, dtype=np.float32))
        return cls(index, kind, device)

    @classmethod
    def load(cls, path: str | Path, kind: str, device: str = "cpu") -> DenseIndex:
        return cls(faiss.read_index(str(path)), kind, device)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            self._on_device = None

    def remove(self, ids: np.ndarray) -> None:
        if self.kind not in UPDATABLE:
            raise ValueError(f"a {self.kind} index is read-only: rebuild with --dense flat, ivf or ivfpq to update it")
        if len(ids) and self.ntotal:
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))
            self._on_device = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k); missing results have id -1 and score -inf."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            return np.full((len(queries), max(k, 0)), -np.inf, np.float32), np.full((len(queries), max(k, 0)), -1, np.int64)
        searcher = self.index
        if self.device != "cpu":
            if self._on_device is None:
                self._on_device = self._device_searcher()
            searcher = self._on_device
        scores, ids = searcher.search(queries, k)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _device_searcher(self) -> TorchExactSearch | faiss.Index:
        """Flat: one torch matmul on the device. IVF: a FAISS GPU copy where FAISS has GPU support.
        HNSW (no FAISS GPU version) and FAISS builds without GPUs: the CPU index."""
        if self.kind == "flat":
            return TorchExactSearch.from_faiss(self.index, self.device)
        if self.kind in ("ivf", "ivfpq") and faiss.get_num_gpus() > 0:
            return faiss.index_cpu_to_all_gpus(self.index)
        return self.index

    def clone(self) -> DenseIndex:
        return DenseIndex(faiss.clone_index(self.index), self.kind, self.device)

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader or a crash sees the old file or the new one, never half of one."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


# Passages an index kind trains on before it can hold any: an ivfpq code book needs at least 2^1 points.
MIN_TRAINING_PASSAGES = {"flat": 0, "hnsw": 0, "ivf": 1, "ivfpq": 2}


def _trained_ivf(dim: int, kind: str, vectors: np.ndarray) -> faiss.Index:
    """nlist ~ 4 sqrt(n), bounded so that every list has 39+ training points, as FAISS advises."""
    n = len(vectors)
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        m = next(m for m in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % m == 0)  # 8-d subvectors for 384-d
        nbits = 8 if n >= 256 * 39 else max(1, int(math.log2(max(n // 39, 2))))
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = min(nlist, 16)
    return index


class TorchExactSearch:
    """Exact inner-product top-k with torch: the GPU path for flat indexes (also runs on CPU)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, device: str = "cpu") -> None:
        self.ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)
        self.vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32), device=device)
        self.device = device

    @classmethod
    def from_faiss(cls, index: faiss.IndexIDMap2, device: str) -> TorchExactSearch:
        n = index.ntotal
        ids = faiss.vector_to_array(index.id_map)
        vectors = index.index.reconstruct_n(0, n) if n else np.zeros((0, index.d), np.float32)
        return cls(ids, vectors, device)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32), device=self.device)
        scores = q @ self.vectors.T
        top = min(k, scores.shape[1])
        values, positions = scores.topk(top, dim=1)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        out_scores[:, :top] = values.cpu().numpy()
        out_ids[:, :top] = self.ids[positions].cpu().numpy()
        return out_scores, out_ids


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
