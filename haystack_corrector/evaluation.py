"""Fidelity metrics: how close a corrected (or stale) cache is to the fresh one, in embedding and in ranking terms."""

from __future__ import annotations

import torch


def relative_error(estimate: torch.Tensor, fresh: torch.Tensor) -> float:
    """Mean over rows of ||estimate - fresh||² / ||fresh||² (staleness when ``estimate`` is the stale cache)."""
    if estimate.shape != fresh.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but fresh has {tuple(fresh.shape)}")
    estimate, fresh = estimate.float(), fresh.float()
    denominator = fresh.pow(2).sum(dim=-1).clamp_min(1e-12)
    return float(((estimate - fresh).pow(2).sum(dim=-1) / denominator).mean())


def overlap_at_k(ranking: torch.Tensor, reference: torch.Tensor, k: int) -> float:
    """Mean over queries of |top-k(ranking) ∩ top-k(reference)| / k, for (B, >=k) tensors of row indices."""
    if ranking.ndim != 2 or reference.ndim != 2 or ranking.shape[0] != reference.shape[0]:
        raise ValueError(
            f"rankings must be (B, n) with the same B, got {tuple(ranking.shape)} and {tuple(reference.shape)}"
        )
    if k <= 0 or k > min(ranking.shape[1], reference.shape[1]):
        raise ValueError(f"k must be in 1..{min(ranking.shape[1], reference.shape[1])}, got {k}")
    total = 0
    for mine, theirs in zip(ranking[:, :k].tolist(), reference[:, :k].tolist()):
        total += len(set(mine) & set(theirs))
    return total / (k * ranking.shape[0])
