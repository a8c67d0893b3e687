"""Exact blocked top-k: score rows a block at a time and keep a running top-k, so memory is bounded by the block.

``blocked_topk`` is the only top-k scan in the package: the cache store feeds it stale, corrected or materialised
blocks, and the sharded search runs it on each rank's shard. Per-query exclusions are applied as ``-inf`` scores
inside each block.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from haystack_corrector.scoring import dot_scores, normalize_rows


@torch.no_grad()
def blocked_topk(
    queries: torch.Tensor,
    blocks: Iterable[tuple[int, int, torch.Tensor]],
    top_k: int,
    excluded: list[set[int]],
    *,
    normalize: bool,
    partial: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``top_k`` rows per query over ``blocks`` of ``(start, end, float32 rows[start:end])``, best first.

    ``partial=True`` (shards): fewer allowed rows than ``top_k`` give ``-inf`` scores and row ``-1`` instead of an
    error. Returns ``(scores, rows)`` on CPU. Non-finite scores (a diverged corrector) raise ``ValueError``.
    """
    device = queries.device
    queries = normalize_rows(queries, normalize)
    pairs = sorted((row, query) for query, rows in enumerate(excluded) for row in rows)
    pair_rows = torch.tensor([row for row, _ in pairs], dtype=torch.int64)
    pair_queries = torch.tensor([query for _, query in pairs], dtype=torch.int64)
    best_scores = torch.empty((queries.shape[0], 0), device=device)
    best_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=device)
    for start, end, block in blocks:
        scores = dot_scores(queries, normalize_rows(block, normalize))
        if len(pairs):
            lo = int(torch.searchsorted(pair_rows, start))
            hi = int(torch.searchsorted(pair_rows, end))
            if hi > lo:
                scores[pair_queries[lo:hi].to(device), (pair_rows[lo:hi] - start).to(device)] = -torch.inf
        rows = torch.arange(start, end, device=device).expand(queries.shape[0], -1)
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_rows = torch.cat([best_rows, rows], dim=1)
        keep = min(top_k, merged_scores.shape[1])
        best_scores, position = torch.topk(merged_scores, keep, dim=1)
        best_rows = torch.gather(merged_rows, 1, position)
    if partial:
        missing = best_scores == -torch.inf
        best_rows[missing] = -1
        if torch.isnan(best_scores).any() or (best_scores == torch.inf).any():
            raise ValueError("The corrector produced non-finite scores; it has diverged (check its learning rate)")
    elif not torch.isfinite(best_scores).all():
        raise ValueError(
            "The corrector produced non-finite scores; it has diverged (check its learning rate) or the queries "
            "are degenerate"
        )
    return best_scores.cpu(), best_rows.cpu()
