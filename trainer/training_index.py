"""The passages a joint run searches and scores, with vectors the trainer controls.

`TrainingIndex` is the dense (and BM25) search over a read-only index whose vectors a refresh replaces with
re-embedded generations; `passage_scores` gives the retriever's scores s_k of each question's candidates, against
the stored vectors (query-side training) or the passages embedded now (both sides); `rerank` keeps a stale index's
candidates fresh (`--refresh rerank:L`). rag-train joint (trainer/joint_training.py) and the retriever benches share
them, so both rank alike.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from indexer.dense import DenseIndex
from indexer.encoder import encoder_input
from indexer.fusion import reciprocal_rank_fusion
from indexer.index import HYBRID_DEPTH, Index
from indexer.records import SearchHit
from indexer.sparse import SparseIndex
from rag.retriever import DualEncoder
from trainer.distributed_search import ShardedDenseSearch, shard_of, world

CANDIDATE_SOURCES = ("dense", "hybrid")


class TrainingIndex:
    """Dense search over the passages of an index (opened read-only) with vectors the trainer controls.

    Generation 0 is the index's own vectors; each refresh re-embeds every passage into a new flat FAISS
    file `RUN_DIR/index/dense-G-RofN.faiss` (written atomically by DenseIndex.save) and then swaps it in
    by one assignment, so a search sees one generation or the next, never a mixture. In a distributed
    run each rank holds (and re-embeds) its shard only and searches are collective
    (trainer/distributed_search.py). `search_many` has the signature of `Index.search_many`, so a
    `Pipeline` (and `rag-eval qa`'s evaluate_qa) can search it.
    """

    def __init__(self, index: Index, folder: Path, generation: int = 0, device: torch.device | None = None) -> None:
        self.index = index
        self.folder = folder
        self.generation = generation
        self.checkpointed = generation  # the generation the latest checkpoint names: its file must stay
        self.rank, self.world_size = world()
        self.size = index.store.counts(index.generation)["passages"]
        if not self.size:
            raise ValueError(f"{index.path}: the index has no passages to train on")
        if generation:
            shard = DenseIndex.load(generation_file(folder, generation, self.rank, self.world_size), "flat")
        else:
            shard = DenseIndex.create(index.manifest.dim, "flat")
            for rows, vectors in index.store.iter_vectors(index.generation, index.manifest.dim):
                mine = shard_of(rows, self.rank, self.world_size)
                shard.add(rows[mine], vectors[mine])
        # Collectives travel on the rank's GPU under NCCL, on the CPU under gloo.
        self.comm_device = device if device is not None and device.type == "cuda" else None
        self.dense = ShardedDenseSearch(shard, self.comm_device)

    @property
    def sparse(self) -> SparseIndex | None:
        """The index's BM25 part (None when built without one): hybrid search fuses it, as `Index.sparse` does."""
        return self.index.sparse

    def search(self, vectors: np.ndarray, k: int) -> list[list[SearchHit]]:
        """The k nearest passages of each query vector (inner product), best first."""
        scores, ids = self.dense.search(vectors, k)
        stored = self.index.store.passages({int(i) for row in ids for i in row if i >= 0}, self.index.generation)
        return [[stored[int(i)].hit(float(s)) for i, s in zip(row_ids, row_scores) if i >= 0] for row_ids, row_scores in zip(ids, scores)]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "dense",
                    query_vectors: np.ndarray | None = None) -> list[list[SearchHit]]:
        """`Index.search_many` for a pipeline with a trained query encoder (vectors required): dense, or hybrid as the
        index ranks it (the fusion of the dense and BM25 top HYBRID_DEPTH, cut to k), so the system as served is measured."""
        if mode not in ("dense", "hybrid") or query_vectors is None:
            raise ValueError("training retrieval is dense or hybrid, with the trained query encoder's vectors")
        if mode == "dense":
            return self.search(query_vectors, k)
        depth = max(k, HYBRID_DEPTH)
        return [row[:k] for row in self.with_bm25(queries, self.search(query_vectors, depth), depth)]

    def with_bm25(self, questions: Sequence[str], found: Sequence[Sequence[SearchHit]], k: int) -> list[list[SearchHit]]:
        """Each question's dense hits fused with BM25's best k by reciprocal rank fusion, cut to k, each hit scored by
        the fusion, as the index's hybrid search ranks: the hybrid candidates. Needs an index with its sparse part."""
        fused_rows = []
        for dense, sparse in zip(found, self.index.search_many(questions, k, mode="sparse")):
            hits = {h.row: h for h in [*sparse, *dense]}
            fused = reciprocal_rank_fusion([[h.row for h in dense], [h.row for h in sparse]], k)
            fused_rows.append([replace(hits[row], score=score) for row, score in fused])
        return fused_rows

    def stored_vectors(self, rows: Sequence[int]) -> np.ndarray:
        """The index's own vectors of store rows, in order: the frozen passage side of query-side training."""
        ids, vectors = self.index.store.vectors(rows, self.index.generation, self.index.manifest.dim)
        position = {int(r): i for i, r in enumerate(ids)}
        return vectors[[position[int(r)] for r in rows]]

    def refresh(self, encoder: DualEncoder, progress: bool = False) -> dict[str, Any]:
        """Re-embed every passage (of this rank's shard) with the current passage side into generation + 1,
        persist it, swap it in."""
        start = time.perf_counter()
        passages = [p for p in self.index.store.iter_passages(self.index.generation) if p.row % self.world_size == self.rank]
        passages.sort(key=lambda p: -len(p.title) - len(p.text))  # rows carry their ids: by length, batches pad little
        texts = [encoder_input(p.title, p.text) for p in passages]
        bar = tqdm(total=len(texts), desc="refresh", unit="passage", disable=not progress, mininterval=1.0)
        parts = [np.zeros((0, self.index.manifest.dim), np.float32)]
        with evaluating(encoder):
            for begin in range(0, len(texts), 256):
                parts.append(encoder.encode(texts[begin : begin + 256], "passage"))
                bar.update(len(parts[-1]))
        bar.close()
        shard = DenseIndex.create(self.index.manifest.dim, "flat")
        shard.add(np.array([p.row for p in passages], dtype=np.int64), np.concatenate(parts))
        self.folder.mkdir(parents=True, exist_ok=True)
        shard.save(generation_file(self.folder, self.generation + 1, self.rank, self.world_size))
        self.dense, self.generation = ShardedDenseSearch(shard, self.comm_device), self.generation + 1
        if self.generation - 1 not in (0, self.checkpointed):  # else one full copy per refresh piles up between checkpoints
            generation_file(self.folder, self.generation - 1, self.rank, self.world_size).unlink(missing_ok=True)
        seconds = time.perf_counter() - start
        return {"generation": self.generation, "passages": len(passages), "seconds": seconds,
                "passages_per_second": round(len(passages) / seconds, 1)}

    def drop_older(self, keep: int) -> None:
        """Delete this rank's generation files before `keep` (a checkpoint names `keep`, so they can no longer be needed)."""
        self.checkpointed = keep
        for path in self.folder.glob(f"dense-*-{self.rank}of{self.world_size}.faiss"):
            if int(path.stem.split("-")[1]) < keep:
                path.unlink()


def generation_file(folder: Path, generation: int, rank: int = 0, world_size: int = 1) -> Path:
    """Where a TrainingIndex keeps one rank's shard of a generation's re-embedded vectors."""
    return folder / f"dense-{generation}-{rank}of{world_size}.faiss"


def check_candidate_source(index: Index, candidates_from: str) -> None:
    """ValueError when `index` cannot give candidates from `candidates_from`: hybrid needs its sparse (BM25) part."""
    if candidates_from == "hybrid" and index.sparse is None:
        raise ValueError(f"--candidates-from hybrid fuses BM25's best, but {index.path} has no sparse part (built with "
                         "--no-sparse): rebuild it with one or use --candidates-from dense")


def passage_scores(query: torch.Tensor, found: Sequence[Sequence[SearchHit]], search_index: TrainingIndex,
                   passage_encoder: DualEncoder | None, in_batch: bool = False) -> torch.Tensor:
    """s_k (B, K) in float32: each query vector against its K found passages, embedded now by `passage_encoder`'s
    passage side (differentiable in it), or without one the index's stored vectors (query-side training). With
    `in_batch`, (B, B*K): each query against every question's passages, row-major (its own at columns b*K to b*K+K-1),
    the in-batch negatives of DPR, at no extra encoding."""
    rows = [h for row in found for h in row]
    if passage_encoder is not None:
        passages = passage_encoder([encoder_input(h.title, h.text) for h in rows], "passage")
    else:
        passages = torch.from_numpy(search_index.stored_vectors([h.row for h in rows])).to(query.device)
    # In float32 even under bf16 autocast: its 8-bit mantissa rounds a cosine near 0.7 to steps of 0.004, 0.08 once
    # divided by tau, which would tie close candidates.
    with torch.autocast(query.device.type, enabled=False):
        query, passages = query.float(), passages.float()
        if in_batch:
            return query @ passages.T
        return torch.einsum("bd,bkd->bk", query, passages.view(len(found), len(found[0]), -1))


def hide_own_elsewhere(scores: torch.Tensor, found: Sequence[Sequence[SearchHit]]) -> torch.Tensor:
    """In-batch scores (B, B*K) with each question's own candidates hidden where they recur among another question's
    (score -1e4, out of p_ret's softmax): the teacher scores a passage in its own question's block only, and the same
    passage must not come back as that question's negative."""
    rows = [h.row for row in found for h in row]
    k, own = len(found[0]), [{h.row for h in row} for row in found]
    hidden = torch.tensor([[j // k != b and row in own[b] for j, row in enumerate(rows)] for b in range(len(found))],
                          device=scores.device)
    return scores.masked_fill(hidden, -1e4)


def rerank(encoder: DualEncoder, query: torch.Tensor, candidates: Sequence[SearchHit], keep: int) -> list[SearchHit]:
    """The `keep` best of one query vector's over-retrieved candidates, by `encoder`'s current passage side (re-embedded
    now, without gradient): the rerank:L refresh, which keeps a stale index's candidates fresh."""
    with evaluating(encoder):
        fresh = torch.from_numpy(encoder.encode([encoder_input(h.title, h.text) for h in candidates], "passage"))
    with torch.autocast(query.device.type, enabled=False):  # float32 scores, as passage_scores gives them
        order = (fresh.to(query.device) @ query.float()).argsort(descending=True)[:keep]
    return [candidates[i] for i in order.tolist()]


@contextmanager
def evaluating(*models: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients inside the block; training mode again after it."""
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for model in models:
            model.train()
