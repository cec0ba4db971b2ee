"""Sharded dense search: two gloo processes on the CPU find exactly what one process finds over the whole index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from indexer.dense import DenseIndex
from trainer.distributed_search import ShardedDenseSearch, shard_of, world

DIM, PASSAGES, K = 16, 101, 7
QUERIES = {0: 3, 1: 5}  # ranks ask different numbers of questions


def vectors(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def corpus() -> tuple[np.ndarray, np.ndarray]:
    """Store-like row ids (not 0..n-1) and their vectors; positions 51-60 repeat 0-9, so that equal scores
    come from both shards (odd positions are rank 1's, even ones rank 0's)."""
    v = vectors(0, PASSAGES)
    v[51:61] = v[0:10]
    return np.arange(1000, 1000 + 3 * PASSAGES, 3, dtype=np.int64), v


def queries(rank: int) -> np.ndarray:
    """Random questions, the first of them equal to a repeated passage (ties at the top)."""
    q = vectors(10 + rank, QUERIES[rank])
    q[0] = corpus()[1][rank]
    return q


def _rank(rank: int, size: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        torch.set_num_threads(1)
        rows, vecs = corpus()
        mine = shard_of(rows, rank, size)
        shard = DenseIndex.create(DIM, "flat")
        shard.add(rows[mine], vecs[mine])
        scores, ids = ShardedDenseSearch(shard).search(queries(rank), K)
        np.savez(f"{out}-{rank}.npz", scores=scores, ids=ids, world=np.array(world()))
    finally:
        dist.destroy_process_group()


def test_shards_split_every_row_once() -> None:
    rows = np.arange(100, 111)
    parts = [shard_of(rows, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11)) and [len(p) for p in parts] == [3, 4, 4]
    assert rows[parts[1]].tolist() == [100, 103, 106, 109]  # by row id, wherever it sits
    assert world() == (0, 1)


def test_two_gloo_ranks_find_what_one_process_finds(tmp_path: Path) -> None:
    mp.start_processes(_rank, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "result")), nprocs=2, join=True,
                       start_method="spawn")
    rows, vecs = corpus()
    whole = DenseIndex.create(DIM, "flat")
    whole.add(rows, vecs)
    for rank in (0, 1):
        got = np.load(tmp_path / f"result-{rank}.npz")
        assert got["world"].tolist() == [rank, 2]
        scores, ids = ShardedDenseSearch(whole).search(queries(rank), K)  # one process
        assert got["ids"].tolist() == ids.tolist()
        assert ids[0, :2].tolist() == [1000 + 3 * rank, 1000 + 3 * (51 + rank)]  # the tie, by row id
        assert np.allclose(got["scores"], scores, atol=1e-6)
