"""Dense search over an index sharded across the ranks of a torch.distributed group (DDP training).

Each rank holds the passage vectors of its shard (`shard_of`: store row modulo world size). A search is collective: every rank
gathers all ranks' query vectors, searches its own shard for all of them, and the per-shard top-k
lists are gathered and merged, so each rank gets the global top-k of its own queries: the same
passages, in the same order, as one process searching the whole index. Works with gloo (CPU) and
NCCL (GPU; tensors then travel on the rank's CUDA device).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from indexer.dense import DenseIndex


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_distributed(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs.
    True when this call started it (the caller then ends it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world()[1] > 1:
        dist.barrier()


def shard_of(rows: np.ndarray, rank: int, size: int) -> np.ndarray:
    """The positions of the store `rows` that rank `rank` of `size` holds: those with row % size == rank, so a
    passage's shard depends on its row alone (not on the order rows are read in)."""
    return np.flatnonzero(np.asarray(rows) % size == rank)


class ShardedDenseSearch:
    """`DenseIndex.search` over the union of every rank's shard; every rank must call `search` together."""

    def __init__(self, shard: DenseIndex, device: torch.device | None = None) -> None:
        self.shard = shard
        self.rank, self.size = world()
        # NCCL moves CUDA tensors only; gloo moves CPU ones.
        self.device = device or torch.device("cpu")

    def _gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (first dimensions may differ), in rank order."""
        tensor = tensor.to(self.device)
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=self.device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return [part[: int(n.item())].cpu() for part, n in zip(parts, sizes)]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the global top-k for this rank's `queries`, each (n, k); as `DenseIndex.search`."""
        if self.size == 1:
            return _best(*self._candidates(np.asarray(queries, dtype=np.float32), k), k)
        every = self._gather(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)))
        counts = [len(q) for q in every]
        scores, ids = self._candidates(torch.cat(every).numpy(), k)
        all_scores = self._gather(torch.from_numpy(scores))
        all_ids = self._gather(torch.from_numpy(ids))
        begin = sum(counts[: self.rank])
        mine = slice(begin, begin + counts[self.rank])
        # Candidates of this rank's queries from every shard, side by side: (n, size * k).
        cand_scores = np.concatenate([s[mine].numpy() for s in all_scores], axis=1)
        cand_ids = np.concatenate([i[mine].numpy() for i in all_ids], axis=1)
        return _best(cand_scores, cand_ids, k)


    def _candidates(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's best 2k for each query, rescored exactly: FAISS's float32 kernels can score two equal
        vectors a last bit apart depending on where they are stored, and a sharding must not change the order."""
        _, ids = self.shard.search(queries, 2 * k)
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        for i, row in enumerate(ids):
            found = row >= 0
            stored = np.stack([self.shard.index.reconstruct(int(r)) for r in row[found]]) if found.any() else np.zeros((0, queries.shape[1]))
            scores[i, found] = (stored.astype(np.float64) @ queries[i].astype(np.float64)).astype(np.float32)
        return scores, ids


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates of each row: best score first, equal scores by id, so that the order never
    depends on which shard a passage is in (nor on how FAISS breaks ties)."""
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
