"""Drift losses: how far the corrected stale embeddings h(g') are from the fresh embeddings g.

All functions take the corrector's output ``corrected`` (n, d) and the fresh embeddings ``fresh`` (n, d), which the
caller passes detached: the gradient of a drift loss only ever reaches the corrector.

- ``mse``: mean over rows of ||h(g') - g||² (the paper's loss).
- ``cosine``: mean over rows of 1 - cos(h(g'), g), for models compared by cosine similarity.
- ``score_loss``: mean over (query, row) of (<q, h(g')> - <q, g>)², the error where retrieval actually looks.
- ``listwise_loss``: KL(softmax(<q, g>/τ) || softmax(<q, h(g')>/τ)) over the rows of the batch, per query: it asks the
  corrected scores to *rank* the batch the way the fresh scores do, which is all hard-negative sampling needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from haystack_corrector.scoring import similarity_scores

DRIFT_LOSSES = ("mse", "cosine")


def mse(corrected: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    return (corrected - fresh).pow(2).sum(dim=-1).mean()


def cosine(corrected: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(corrected, fresh, dim=-1)).mean()


def drift_loss(name: str, corrected: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """The embedding-level drift loss called ``name`` (one of :data:`DRIFT_LOSSES`)."""
    if name == "mse":
        return mse(corrected, fresh)
    if name == "cosine":
        return cosine(corrected, fresh)
    raise ValueError(f"Unknown loss {name!r}; expected one of {', '.join(repr(n) for n in DRIFT_LOSSES)}")


def _scores(queries: torch.Tensor, targets: torch.Tensor, normalize: bool) -> torch.Tensor:
    return similarity_scores(queries, targets, normalize=normalize)


def score_loss(
    corrected: torch.Tensor, fresh: torch.Tensor, queries: torch.Tensor, *, normalize: bool = False
) -> torch.Tensor:
    """Mean squared error between corrected and fresh query-target scores."""
    return (_scores(queries, corrected, normalize) - _scores(queries, fresh, normalize)).pow(2).mean()


def listwise_loss(
    corrected: torch.Tensor,
    fresh: torch.Tensor,
    queries: torch.Tensor,
    *,
    temperature: float = 0.05,
    normalize: bool = False,
) -> torch.Tensor:
    """Mean over queries of KL(softmax(fresh scores / τ) || softmax(corrected scores / τ)) over the batch's rows.

    ``corrected`` and ``fresh`` are (n, d) rows shared by every query, or (Q, m, d): each query's own rows.
    """
    target = F.log_softmax(_scores(queries, fresh, normalize) / temperature, dim=-1)
    predicted = F.log_softmax(_scores(queries, corrected, normalize) / temperature, dim=-1)
    return F.kl_div(predicted, target, log_target=True, reduction="batchmean")
