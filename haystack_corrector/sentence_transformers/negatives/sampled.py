"""SampledNegatives: every step, sample from the corrected cache (the paper) or from the raw, stale cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.sentence_transformers.negatives.source import NegativeSource


class SampledNegatives(NegativeSource):
    """Args:
    sampler: the sampler (its ``corrected`` flag is set here, step by step).
    corrected: score the cache through the corrector (``"corrector"``) or as stored (``"stale"``).
    warmup_steps: for this many first optimiser steps sample from the stale cache while the corrector learns.
    """

    def __init__(self, sampler: HardNegativeSampler, corrected: bool, warmup_steps: int = 0) -> None:
        super().__init__(sampler)
        self.name = "corrector" if corrected else "stale"
        self.use_corrector = corrected
        self.warmup_steps = warmup_steps
        self._corrected = False

    @property
    def corrected(self) -> bool:
        return self._corrected

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        self._corrected = self.use_corrector and step >= self.warmup_steps
        self.sampler.corrected = self._corrected
        with torch.no_grad():
            return self.sampler.sample(anchors, exclude)
