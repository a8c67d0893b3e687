"""Sharded exact search on torch.distributed: each rank holds a contiguous shard of the cache (and the same corrector).

``sharded_search`` is collective: every rank calls it with its own queries. Queries (and their exclusions) are
all-gathered, each rank computes the top-k of every query over its shard, the candidates are all-gathered and merged,
and each rank gets back the results of its own queries, with global row indices. The result is the same as one
process searching the whole cache (up to ties). Works on gloo (CPU) and NCCL (GPU) process groups.

Memory per rank: rows_per_rank x dim x bytes per value (2 for float16) for the shard, plus the gathered queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from haystack_corrector._validation import ArrayLike, as_float_matrix, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over the union of all ranks' shards for this rank's queries.

    Args:
        local_store: this rank's shard (rows ``row_offset`` .. ``row_offset + len(local_store) - 1`` of the cache).
        row_offset: global index of the shard's first row (see :func:`shard_bounds`).
        query_embeddings: this rank's (B, d) queries (B may differ across ranks, and may be 0).
        exclude: per-query collections of GLOBAL row indices never to return.

    Returns:
        ``(scores, global_rows)`` of shape (B, top_k), best first.
    """
    top_k = check_positive_int(top_k, "top_k")
    queries = as_float_matrix(query_embeddings, "query_embeddings", dim=local_store.dim, allow_empty=True)
    excluded = [sorted(int(r) for r in rows) for rows in (exclude or [[] for _ in range(queries.shape[0])])]
    if len(excluded) != queries.shape[0]:
        raise ValueError(f"exclude must have one collection per query: got {len(excluded)} for {queries.shape[0]}")
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    )
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
    scores, local_rows = local_store._search(stacked, k_local, local_excluded, corrected, partial=True)
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
