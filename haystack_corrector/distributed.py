"""Sharded exact search on torch.distributed: each rank scans a contiguous shard of the cache with the same corrector.

``sharded_search`` is collective: every rank calls it with its own queries. Queries (and their exclusions) are
all-gathered, each rank computes the top-k of every query over its shard, the candidates are all-gathered and merged,
and each rank gets back the results of its own queries, with global row indices. The result is the same as one
process searching the whole cache (up to ties). Works on gloo (CPU) and NCCL (GPU) process groups.

``ShardedCacheStore`` wraps it as a store: every rank opens the same (memory-mapped) cache, scans only its shard, and
keeps its corrector identical to the other ranks' (broadcast at creation, gradients averaged at every corrector step).
The sampler, ``CorrectorTrainer`` and the sentence-transformers loss use it like any store; the loss switches to it by
itself when training runs under DDP.

Memory per rank: rows_per_rank x dim x bytes per value (2 for float16) for the shard, plus the gathered queries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from haystack_corrector._validation import ArrayLike, as_float_matrix, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrected_search import search_store
from haystack_corrector.corrector import Corrector

__all__ = ["ShardedCacheStore", "is_distributed", "shard_bounds", "sharded_search"]


def is_distributed(group: Any = None) -> bool:
    """True inside an initialised torch.distributed group of more than one process (e.g. under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _collective_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_bounds(num_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """The contiguous [start, end) rows of ``rank``'s shard (sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _gather_padded(tensor: torch.Tensor, group: Any, pad_value: float | int) -> list[torch.Tensor]:
    """all_gather of tensors whose first dimension (and second, if any) differs across ranks."""
    world = dist.get_world_size(group)
    shape = torch.tensor(list(tensor.shape), dtype=torch.int64, device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    biggest = torch.stack(shapes).max(dim=0).values.tolist()
    padded = torch.full(biggest, pad_value, dtype=tensor.dtype, device=tensor.device)
    padded[tuple(slice(0, size) for size in tensor.shape)] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return [g[tuple(slice(0, size) for size in s.tolist())] for g, s in zip(gathered, shapes)]


def sharded_search(
    local_store: CorrectedCacheStore,
    row_offset: int,
    query_embeddings: ArrayLike,
    top_k: int,
    exclude: Iterable[Iterable[int]] | None = None,
    corrected: bool = True,
    group: Any = None,
    max_view_age: int | None = None,
    scan_dtype: torch.dtype | None = None,
    view_rescore_depth: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the union of all ranks' shards for this rank's queries.

    Args:
        local_store: this rank's shard (rows ``row_offset`` .. ``row_offset + len(local_store) - 1`` of the cache).
        row_offset: global index of the shard's first row (see :func:`shard_bounds`).
        query_embeddings: this rank's (B, d) queries (B may differ across ranks, and may be 0).
        exclude: per-query collections of GLOBAL row indices never to return.
        max_view_age, scan_dtype, view_rescore_depth: as in :meth:`CorrectedCacheStore.search`, for the local
            shard's scan and materialised view (each shard re-scores its own candidates).

    Returns:
        ``(scores, global_rows)`` of shape (B, top_k), best first.
    """
    top_k = check_positive_int(top_k, "top_k")
    queries = as_float_matrix(query_embeddings, "query_embeddings", dim=local_store.dim, allow_empty=True)
    excluded = [sorted(int(r) for r in rows) for rows in (exclude or [[] for _ in range(queries.shape[0])])]
    if len(excluded) != queries.shape[0]:
        raise ValueError(f"exclude must have one collection per query: got {len(excluded)} for {queries.shape[0]}")
    device = _collective_device(group)
    width = max((len(rows) for rows in excluded), default=0)
    exclusion = torch.full((queries.shape[0], width), -1, dtype=torch.int64)
    for position, rows in enumerate(excluded):
        exclusion[position, : len(rows)] = torch.tensor(rows, dtype=torch.int64)
    all_queries = _gather_padded(queries.to(device), group, 0.0)
    all_exclusions = _gather_padded(exclusion.to(device), group, -1)
    sizes = [q.shape[0] for q in all_queries]
    total = torch.tensor([len(local_store)], dtype=torch.int64, device=device)
    dist.all_reduce(total, group=group)
    stacked = torch.cat(all_queries).cpu()
    if stacked.shape[0] == 0:
        return torch.empty((0, top_k)), torch.empty((0, top_k), dtype=torch.int64)
    # Widths differ across ranks (each pads its own exclusions), so read the blocks one by one.
    local_excluded: list[set[int]] = []
    end = row_offset + len(local_store)
    for block in all_exclusions:
        for query_rows in block.cpu().tolist():
            if int(total) - sum(1 for r in query_rows if r >= 0) < top_k:
                raise ValueError(f"top_k={top_k} is larger than the rows left after exclusions for a query")
            local_excluded.append({r - row_offset for r in query_rows if row_offset <= r < end})
    k_local = min(top_k, len(local_store))
    scores, local_rows = search_store(
        local_store,
        stacked,
        k_local,
        local_excluded,
        corrected,
        partial=True,
        max_view_age=max_view_age,
        scan_dtype=scan_dtype,
        view_rescore_depth=view_rescore_depth,
    )
    global_rows = torch.where(local_rows >= 0, local_rows + row_offset, local_rows)
    gathered_scores = _gather_padded(scores.to(device), group, -float("inf"))
    gathered_rows = _gather_padded(global_rows.to(device), group, -1)
    merged_scores = torch.cat([s.cpu() for s in gathered_scores], dim=1)
    merged_rows = torch.cat([r.cpu() for r in gathered_rows], dim=1)
    best, order = torch.topk(merged_scores, top_k, dim=1)
    best_rows = torch.gather(merged_rows, 1, order)
    rank = dist.get_rank(group)
    start = sum(sizes[:rank])
    return best[start : start + sizes[rank]], best_rows[start : start + sizes[rank]]


class ShardedCacheStore(CorrectedCacheStore):
    """One rank's handle on a cache searched collectively by all ranks of a torch.distributed group.

    Every rank builds it from the same cache (best memory-mapped, ``CorrectedCacheStore.load(path, mmap=True)``, so
    each process only reads the pages of its own shard; on several machines, each needs the saved cache directory).
    Rank r scans rows :func:`shard_bounds` (N, world_size, r). The corrector is shared with ``store`` and broadcast
    from the group's first rank at creation; :class:`~haystack_corrector.CorrectorTrainer` averages its gradients
    over the ranks at every step, so all ranks keep the same corrector and the union of the shards is searched with
    one corrector.

    Collective: creation, :meth:`search`, setting :attr:`corrector`, :meth:`materialize` and every
    ``CorrectorTrainer.observe`` on it must be called by all ranks, in the same order. Reads of single rows
    (``stale_embeddings``, ``corrected_embeddings``, ``texts``, ``ids``) are local.

    Args:
        store: the whole cache (same rows on every rank).
        group: the process group (default: the global group).
    """

    def __init__(self, store: CorrectedCacheStore, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedCacheStore needs an initialised torch.distributed process group (run under torchrun, or call "
                "torch.distributed.init_process_group first)"
            )
        if isinstance(store, ShardedCacheStore) or not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a plain CorrectedCacheStore, got {type(store).__name__}")
        # A second handle on the same rows, ids, texts and corrector: shared, not copied or re-checked.
        self._assemble(store.rows, store.corrector, store.similarity)
        self.encoder = store.encoder
        self.group = group
        self.world_size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self._check_same_cache()
        start, end = shard_bounds(len(store), self.world_size, self.rank)
        if end <= start:
            raise ValueError(f"The cache has {len(store)} rows, fewer than the {self.world_size} ranks")
        self.row_offset = start
        self.local = store.shard(start, end)  # shares the storage and the corrector object
        self._broadcast_corrector()

    def _check_same_cache(self) -> None:
        mine = torch.tensor([len(self), self.dim, ("cosine", "dot").index(self.similarity)], dtype=torch.int64)
        device = _collective_device(self.group)
        gathered = [torch.zeros_like(mine).to(device) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine.to(device), group=self.group)
        for rank, theirs in enumerate(gathered):
            if not torch.equal(theirs.cpu(), mine):
                raise ValueError(
                    f"Rank {rank} opened a different cache (rows, dim, similarity {theirs.tolist()} vs {mine.tolist()} "
                    f"here): every rank must open the same cache"
                )

    def _broadcast_corrector(self) -> None:
        device = _collective_device(self.group)
        source = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        with torch.no_grad():
            for tensor in [*self._corrector.parameters(), *self._corrector.buffers()]:
                data = tensor.detach().to(device).clone()
                dist.broadcast(data, src=source, group=self.group)
                tensor.copy_(data.to(tensor.device))

    is_collective = True  # every rank must call search(), materialize() and each corrector step together

    def reduce_corrector_gradients(self) -> None:
        """Replace the corrector's gradients by their mean over the ranks (collective; called by CorrectorTrainer)."""
        parameters = list(self._corrector.parameters())
        device = _collective_device(self.group)
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device) for p in parameters]
        )
        dist.all_reduce(flat, group=self.group)
        flat /= self.world_size
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            parameter.grad = flat[offset : offset + size].view_as(parameter).to(parameter.device).clone()
            offset += size

    # ------------------------------------------------------------------------------------------- corrector
    @property
    def corrector(self) -> Corrector:
        return self._corrector

    @corrector.setter
    def corrector(self, corrector: Corrector) -> None:
        """Collective: every rank sets its corrector; the first rank's weights are broadcast to the others."""
        self._corrector = self._check_corrector(corrector, self.dim)
        self.local.corrector = self._corrector
        self._broadcast_corrector()

    # ------------------------------------------------------------------------------------------- views
    @property
    def has_view(self) -> bool:
        return self.local.has_view

    @property
    def is_materialized(self) -> bool:
        return self.local.is_materialized

    @property
    def view_age(self) -> int | None:
        return self.local.view_age

    def materialize(
        self, path: str | os.PathLike[str] | None = None, overwrite: bool = False, dtype: str | None = None
    ) -> None:
        """Materialise this rank's shard of the corrected view (in memory, or in ``<path stem>.rank<r><suffix>``).

        ``overwrite`` and ``dtype`` as in :meth:`CorrectedCacheStore.materialize`, for this rank's file and view.
        """
        if path is not None:
            path = Path(path)
            path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")
        self.local.materialize(path, overwrite=overwrite, dtype=dtype)

    def replace_embeddings(self, embeddings: ArrayLike) -> None:
        """Swap in a newly encoded cache of all N rows (e.g. a periodic re-encode on every rank)."""
        super().replace_embeddings(embeddings)
        start, end = shard_bounds(len(self), self.world_size, self.rank)
        self.local = self.shard(start, end)

    def build_pool(self, index_type: str = "flat", **options: Any) -> None:
        raise NotImplementedError("Pool mode is not sharded: build the pool on a plain CorrectedCacheStore")

    # ------------------------------------------------------------------------------------------- search
    def search(
        self,
        query_embeddings: ArrayLike,
        top_k: int,
        exclude: Iterable[Iterable[int]] | None = None,
        corrected: bool = True,
        pool_size: int | None = None,
        max_view_age: int | None = None,
        scan_dtype: torch.dtype | None = None,
        view_rescore_depth: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Collective exact top-k over all ranks' shards for this rank's queries (global row indices)."""
        if pool_size is not None:
            raise NotImplementedError("Pool mode is not sharded: search a plain CorrectedCacheStore with pool_size")
        return sharded_search(
            self.local,
            self.row_offset,
            query_embeddings,
            top_k,
            exclude=exclude,
            corrected=corrected,
            group=self.group,
            max_view_age=max_view_age,
            scan_dtype=scan_dtype,
            view_rescore_depth=view_rescore_depth,
        )

    def __repr__(self) -> str:
        return (
            f"ShardedCacheStore(rank {self.rank} of {self.world_size}: rows {self.row_offset}.."
            f"{self.row_offset + len(self.local) - 1} of {len(self)}, dim={self.dim}, similarity={self.similarity!r})"
        )
