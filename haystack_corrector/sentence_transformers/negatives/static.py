"""StaticNegatives: mined once from the initial cache with the initial model, then reused (``mine_hard_negatives``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.sentence_transformers.negatives.source import Encode, NegativeSource

logger = logging.getLogger(__name__)


class StaticNegatives(NegativeSource):
    """Negatives per anchor text, chosen before training by the sampler on the stale cache.

    Args:
        sampler: the sampler (used once, uncorrected).
        encode: the initial model's no-grad encoder.
        anchors: ``{anchor key: (anchor text, rows never to sample)}`` for every anchor of the training dataset.
    """

    name = "static"

    def __init__(self, sampler: HardNegativeSampler, encode: Encode, anchors: dict[Any, tuple[str, set[int]]]) -> None:
        super().__init__(sampler)
        if not anchors:
            raise ValueError("negatives='static' needs train_dataset: its anchors are mined once, before training")
        keys = list(anchors)
        embeddings = encode([anchors[key][0] for key in keys])
        sampler.corrected = False
        self.table: dict[Any, list[int]] = {}
        for start in range(0, len(keys), 256):
            chunk = keys[start : start + 256]
            rows = sampler.sample(embeddings[start : start + 256], [anchors[key][1] for key in chunk])
            self.table.update({key: row for key, row in zip(chunk, rows.tolist())})
        logger.info("Mined %d static negatives for each of %d anchors", sampler.num_negatives, len(self.table))

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        missing = sum(1 for key in anchor_keys if key not in self.table)
        if missing:
            raise ValueError(
                f"{missing} anchors of this batch are not in the train_dataset the static negatives were mined for"
            )
        return torch.tensor([self.table[key] for key in anchor_keys], dtype=torch.int64)
