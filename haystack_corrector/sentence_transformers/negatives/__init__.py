"""Negative sources: where a training step's hard negatives come from (one file each).

- :class:`SampledNegatives` (``"corrector"``, ``"stale"``): sampled every step from the corrected or raw cache.
- :class:`StaticNegatives` (``"static"``): mined once, before training, with the initial model.
- :class:`RefreshedNegatives` (``"refresh"``, and ``"corrector"`` with ``refresh_every``): the cache re-encoded with
  the current model every N optimiser steps.
- :class:`RerankedNegatives` (``"rerank"``, the loss's default): the best rows of the corrected (or raw) cache
  re-encoded with the current model, the best by fresh score kept.

Each source owns its :class:`Costs`: corpus re-encodes and target texts it ran through the model itself.
"""

from haystack_corrector.sentence_transformers.negatives.refresh import RefreshedNegatives
from haystack_corrector.sentence_transformers.negatives.rerank import RerankedNegatives
from haystack_corrector.sentence_transformers.negatives.sampled import SampledNegatives
from haystack_corrector.sentence_transformers.negatives.source import Costs, NegativeSource
from haystack_corrector.sentence_transformers.negatives.static import StaticNegatives

__all__ = [
    "Costs",
    "NegativeSource",
    "RefreshedNegatives",
    "RerankedNegatives",
    "SampledNegatives",
    "StaticNegatives",
]
