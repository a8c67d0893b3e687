"""Slow, obviously-correct reference implementations the tests compare against."""

from __future__ import annotations

import math

import torch


def naive_scores(queries: torch.Tensor, targets: torch.Tensor, similarity: str) -> list[list[float]]:
    """Score every (query, target) pair one by one in float64."""
    out = []
    for q in queries.double().tolist():
        row = []
        for t in targets.double().tolist():
            dot = sum(a * b for a, b in zip(q, t))
            if similarity == "cosine":
                dot /= math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            row.append(dot)
        out.append(row)
    return out


def assert_topk_matches(scores, indices, oracle: list[list[float]], top_k: int, exclude=None, atol=1e-4) -> None:
    """Tie-aware: returned scores equal the oracle's sorted top-k, and each returned row really has its score."""
    for query, row_scores in enumerate(oracle):
        banned = set(exclude[query]) if exclude else set()
        allowed = sorted((s for r, s in enumerate(row_scores) if r not in banned), reverse=True)[:top_k]
        got_rows = indices[query].tolist()
        assert len(set(got_rows)) == top_k, "duplicate rows returned"
        assert not banned & set(got_rows), "an excluded row was returned"
        for position, row in enumerate(got_rows):
            assert abs(row_scores[row] - float(scores[query, position])) <= atol
            assert abs(allowed[position] - float(scores[query, position])) <= atol
        assert all(float(scores[query, i]) >= float(scores[query, i + 1]) - 1e-7 for i in range(top_k - 1))


def overlap_at_k(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    return sum(len(set(x[:k].tolist()) & set(y[:k].tolist())) for x, y in zip(a, b)) / (k * a.shape[0])
