"""Synthetic drift: a stale cache g', a nonlinear "fine-tuned encoder" drift g = normalise(g' + MLP(g')), and queries.

Used by the tests and ``benchmarks/corrector_fidelity.py`` to check that a corrector fitted on a few rows recovers the
fresh ranking on rows and queries it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SyntheticDrift", "make_synthetic_drift"]


@dataclass
class SyntheticDrift:
    stale: torch.Tensor  # (N, d) unit rows: the cache g'
    fresh: torch.Tensor  # (N, d) unit rows: g after drift
    queries: torch.Tensor  # (Q, d) unit queries from the *current* query encoder


def make_synthetic_drift(
    num_rows: int = 5000,
    dim: int = 32,
    num_queries: int = 200,
    strength: float = 0.5,
    hidden: int = 64,
    query_noise: float = 0.5,
    seed: int = 0,
) -> SyntheticDrift:
    """Rows g' on the unit sphere; fresh g = normalise(g' + strength * W2 tanh(W1 g')); queries near fresh rows."""
    generator = torch.Generator().manual_seed(seed)
    stale = F.normalize(torch.randn(num_rows, dim, generator=generator), dim=-1)
    w1 = torch.randn(dim, hidden, generator=generator) / dim**0.5 * 2.0
    w2 = torch.randn(hidden, dim, generator=generator) / hidden**0.5
    fresh = F.normalize(stale + strength * torch.tanh(stale @ w1) @ w2, dim=-1)
    anchors = torch.randint(num_rows, (num_queries,), generator=generator)
    noise = torch.randn(num_queries, dim, generator=generator) * query_noise / dim**0.5
    queries = F.normalize(fresh[anchors] + noise, dim=-1)
    return SyntheticDrift(stale=stale, fresh=fresh, queries=queries)
