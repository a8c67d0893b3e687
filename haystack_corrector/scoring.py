"""Query-target scoring: the one place that decides what "similarity" means (cosine or dot product).

Every caller — the cache's scan, the sampler's margin filters, the trainer's neighbourhoods and listwise term, the
drift losses, the loss's re-ranking baseline — scores through these functions, so cosine is always "L2-normalise both
sides, then dot product" and a change here changes it everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITIES = ("cosine", "dot")


def normalize_rows(vectors: torch.Tensor, normalize: bool) -> torch.Tensor:
    """L2-normalise the last dimension when scoring by cosine (``normalize=True``); otherwise return as is."""
    return F.normalize(vectors, dim=-1) if normalize else vectors


def dot_scores(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, d) queries against (N, d) shared targets -> (B, N), or against (B, M, d) per-query targets -> (B, M)."""
    if targets.dim() == 3:
        return torch.einsum("bd,bmd->bm", queries, targets)
    return queries @ targets.T


def similarity_scores(queries: torch.Tensor, targets: torch.Tensor, *, normalize: bool) -> torch.Tensor:
    """Scores of ``targets`` for each query: cosine when ``normalize`` is True, else the dot product."""
    return dot_scores(normalize_rows(queries, normalize), normalize_rows(targets, normalize))
