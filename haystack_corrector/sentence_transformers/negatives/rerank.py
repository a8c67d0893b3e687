"""RerankedNegatives: each anchor's best rows of the cache, re-encoded with the current model, best by fresh score.

With ``corrected=True`` (the loss's default, ``rerank_candidates="corrected"``) the candidates are the best rows of
the corrected cache, so the corrector chooses what is worth re-encoding; with ``corrected=False`` they are the best
rows of the raw cache (Atlas-style re-ranking, ``rerank_candidates="stale"``). :func:`rerank_options` holds the
loss's option rules for this mode. Either way the candidates' fresh embeddings
are handed to the corrector's drift step (:meth:`take_fresh_pairs`): L pairs per anchor per step on top of the targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.scoring import similarity_scores
from haystack_corrector.sentence_transformers.negatives.source import Encode, NegativeSource

# The default depth per negative: rerank_depth = 3 x (range_min + num_negatives). Measured with one negative per
# anchor (docs/results.md: 3 candidates), where it matched re-encoding the corpus on SciFact and CoSQA.
RERANK_CANDIDATES_PER_NEGATIVE = 3


def rerank_options(
    num_negatives: int,
    range_min: int,
    depth: int | None,
    candidates: str | None,
    **sampler_options: Any,
) -> tuple[int, str]:
    """The loss's ``rerank_depth`` and ``rerank_candidates`` for ``negatives="rerank"``, defaults filled in.

    Re-ranking keeps the best candidates by fresh score, so the sampler's choice among the cache's scores (a strategy
    other than ``"top"``, ``range_max``, the margins and score filters) does not apply: any of them given is an
    error, not a silent no-op. ``sampler_options`` are those arguments as the caller received them.
    """
    given = ", ".join(
        f"{name}={value!r}"
        for name, value in sampler_options.items()
        if value is not None and not (name == "sampling_strategy" and value == "top")
    )
    if given:
        raise ValueError(
            f"{given} applies to sampled negatives (negatives='corrector', 'stale' or 'refresh'), not to "
            "negatives='rerank' (the default), which keeps the best of its rerank_depth candidates by fresh "
            "score: pass negatives='corrector' to sample, or drop the option"
        )
    if depth is None:
        depth = RERANK_CANDIDATES_PER_NEGATIVE * (range_min + num_negatives)
    return depth, candidates or "corrected"


class RerankedNegatives(NegativeSource):
    """Args:
    sampler: gives the store, ``num_negatives`` and ``range_min`` (skipped best candidates by fresh score).
    encode: the current model's no-grad encoder.
    depth: candidates re-encoded per anchor.
    corrected: take the candidates from the corrected cache (True) or the raw one (False).
    warmup_steps: with ``corrected``, take them from the raw cache for this many first optimiser steps while the
        corrector learns.
    """

    def __init__(
        self, sampler: HardNegativeSampler, encode: Encode, depth: int, corrected: bool = False, warmup_steps: int = 0
    ) -> None:
        super().__init__(sampler)
        self.name = "rerank"
        self.encode = encode
        self.depth = depth
        self.use_corrector = corrected
        self.warmup_steps = warmup_steps
        self._corrected = False
        # (rows, fresh embeddings) of the last call's candidates: (B·L,) int64 and (B·L, dim) float32.
        self._fresh_pairs: tuple[Tensor, Tensor] | None = None

    @property
    def corrected(self) -> bool:
        """Whether the last candidates came from the corrected cache."""
        return self._corrected

    def take_fresh_pairs(self) -> tuple[Tensor, Tensor] | None:
        pairs, self._fresh_pairs = self._fresh_pairs, None
        return pairs

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        store, k, skip = self.store, self.sampler.num_negatives, self.sampler.range_min
        depth = min(self.depth, len(store) - max(len(rows) for rows in exclude))
        self._corrected = self.use_corrector and step >= self.warmup_steps
        with torch.no_grad():
            # The sampler's view options: at a large cache, corrected candidates come from the materialised view
            # (max_view_age) instead of applying the corrector to every row at every step.
            _, candidates = store.search(
                anchors,
                depth,
                exclude=exclude,
                corrected=self._corrected,
                max_view_age=self.sampler.max_view_age,
                view_rescore_depth=self.sampler.view_rescore_depth,
            )
        texts = store.texts or []
        flat = candidates.reshape(-1)
        fresh = self.encode([texts[row] for row in flat.tolist()])
        self.costs.target_forward_passes += flat.numel()
        self._fresh_pairs = (flat, fresh)  # (a row may be a candidate of several anchors: the loss keeps one)
        fresh = fresh.reshape(candidates.shape[0], depth, -1)
        scores = similarity_scores(anchors, fresh, normalize=store.similarity == "cosine")
        order = torch.argsort(scores, dim=1, descending=True)
        chosen = order[:, skip : skip + k] if order.shape[1] >= skip + k else order[:, :k]
        return torch.gather(candidates, 1, chosen)
