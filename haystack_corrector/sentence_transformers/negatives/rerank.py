"""RerankedNegatives: the best rows of the raw cache, re-encoded with the current model, best by fresh score (Atlas)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.scoring import similarity_scores
from haystack_corrector.sentence_transformers.negatives.source import Encode, NegativeSource


class RerankedNegatives(NegativeSource):
    """Args:
    sampler: gives the store, ``num_negatives`` and ``range_min`` (skipped best candidates by fresh score).
    encode: the current model's no-grad encoder.
    depth: candidates re-encoded per anchor.
    """

    name = "rerank"

    def __init__(self, sampler: HardNegativeSampler, encode: Encode, depth: int) -> None:
        super().__init__(sampler)
        self.encode = encode
        self.depth = depth

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        store, k, skip = self.store, self.sampler.num_negatives, self.sampler.range_min
        depth = min(self.depth, len(store) - max(len(rows) for rows in exclude))
        _, candidates = store.search(anchors, depth, exclude=exclude, corrected=False)
        texts = store.texts or []
        flat = candidates.reshape(-1)
        fresh = self.encode([texts[row] for row in flat.tolist()]).reshape(candidates.shape[0], depth, -1)
        self.costs.target_forward_passes += flat.numel()
        scores = similarity_scores(anchors, fresh, normalize=store.similarity == "cosine")
        order = torch.argsort(scores, dim=1, descending=True)
        chosen = order[:, skip : skip + k] if order.shape[1] >= skip + k else order[:, :k]
        return torch.gather(candidates, 1, chosen)
