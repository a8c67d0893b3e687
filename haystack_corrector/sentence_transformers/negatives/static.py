"""StaticNegatives: mined once from the initial cache with the initial model, then reused (the arm ``static``: what
``mine_hard_negatives`` gives before training)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.sentence_transformers.negatives.sampled import SampledNegatives

logger = logging.getLogger(__name__)


class StaticNegatives(SampledNegatives):
    """Negatives per anchor text, chosen before training on the raw cache; the loss needs ``train_dataset``.

    Args:
        **sampling: the options of :class:`SampledNegatives` (strategy, window, filters, ``fill_missing``).
    """

    def __init__(self, **sampling: Any) -> None:
        super().__init__(False, **sampling)
        self.table: dict[Any, list[int]] = {}

    @property
    def name(self) -> str:  # type: ignore[override]
        return "static"

    @property
    def encodes_texts(self) -> bool:
        return True

    def bind(self, loss: Any) -> None:
        super().bind(loss)
        anchors = loss.relevance.training_anchors()
        if not anchors:
            raise ValueError(
                "StaticNegatives needs the loss's train_dataset: its anchors are mined once, before training"
            )
        keys = list(anchors)
        embeddings = loss.encoder(loss.anchor_prompt)([anchors[key][0] for key in keys])
        assert self.sampler is not None
        self.sampler.corrected = False
        for start in range(0, len(keys), 256):
            chunk = keys[start : start + 256]
            rows = self.sampler.sample(embeddings[start : start + 256], [anchors[key][1] for key in chunk])
            self.table.update({key: row for key, row in zip(chunk, rows.tolist())})
        logger.info("Mined %d static negatives for each of %d anchors", loss.num_negatives, len(self.table))

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        missing = sum(1 for key in anchor_keys if key not in self.table)
        if missing:
            raise ValueError(
                f"{missing} anchors of this batch are not in the train_dataset the static negatives were mined for"
            )
        return torch.tensor([self.table[key] for key in anchor_keys], dtype=torch.int64)
