"""Negative sources: where a training step's hard negatives come from (one file each), named as the harness's arms.

- :class:`RerankedNegatives` (``"corrector+rerank:L"``, the loss's default with L = num_negatives + 2; ``"rerank:L"``
  with ``candidates="stale"``): the best rows of the corrected (or raw) cache re-encoded with the current model, the
  best by fresh score kept.
- :class:`SampledNegatives` (``"corrector"``, ``"stale"``): sampled every step from the corrected or raw cache, with
  ``mine_hard_negatives``' window, filters and strategies.
- :class:`RefreshedNegatives` (``"refresh:N"``, ``"corrector+refresh:N"``): the cache re-encoded with the current
  model every N optimiser steps.
- :class:`StaticNegatives` (``"static"``): mined once, before training, with the initial model.
- :class:`InBatchNegatives` (``"inbatch"``): none; exactly the wrapped loss.

Each source owns its :class:`Costs`: corpus re-encodes and target texts it ran through the model itself.
"""

from __future__ import annotations

from typing import Any

from haystack_corrector.sentence_transformers.negatives.refresh import RefreshedNegatives
from haystack_corrector.sentence_transformers.negatives.rerank import RerankedNegatives
from haystack_corrector.sentence_transformers.negatives.sampled import SampledNegatives
from haystack_corrector.sentence_transformers.negatives.source import (
    MISSING,
    Costs,
    InBatchNegatives,
    NegativeSource,
)
from haystack_corrector.sentence_transformers.negatives.static import StaticNegatives

NAMES = "corrector+rerank:L, rerank:L, corrector, stale, refresh:N, corrector+refresh:N[:reset], static, inbatch"


def parse_negatives(name: str, **sampling: Any) -> NegativeSource:
    """The source an arm name stands for: ``"corrector+rerank:3"`` is ``RerankedNegatives(depth=3)``, and so on
    (:data:`NAMES`); ``"corrector+rerank"`` leaves the depth to its default rule. ``sampling``: options of
    :class:`SampledNegatives` for the names that sample (refused by the others)."""
    if not isinstance(name, str):
        raise TypeError(f"negatives must be a NegativeSource or one of its names ({NAMES}), got {type(name).__name__}")
    text = name.strip()
    head, _, value = text.partition(":")
    if sampling and (text == "inbatch" or head in ("rerank", "corrector+rerank")):
        raise ValueError(
            f"{', '.join(sorted(sampling))} applies to the sources that sample among the cache's scores (corrector, "
            f"stale, refresh:N, static), not to {text!r}: drop it"
        )
    if text in ("inbatch", "static", "stale", "corrector"):
        if text == "inbatch":
            return InBatchNegatives()
        if text == "static":
            return StaticNegatives(**sampling)
        return SampledNegatives(corrected=text == "corrector", **sampling)
    if head in ("rerank", "corrector+rerank") and (value.isdigit() or (head == "corrector+rerank" and not value)):
        depth = int(value) if value else None
        return RerankedNegatives(depth, candidates="corrected" if head == "corrector+rerank" else "stale")
    if head in ("refresh", "corrector+refresh"):
        steps, _, after = value.partition(":")
        if steps.isdigit() and (after == "" or (after == "reset" and head == "corrector+refresh")):
            return RefreshedNegatives(int(steps), corrected=head == "corrector+refresh", after_refresh=after or None)
    hint = ""
    if text == "rerank":
        hint = " ('rerank' meant corrected re-ranking in earlier versions: it is 'corrector+rerank' now)"
    elif text == "refresh":
        hint = " (give the steps between re-encodes: 'refresh:N')"
    raise ValueError(f"Unknown negatives {name!r}{hint}; expected a NegativeSource or one of: {NAMES}")


__all__ = [
    "MISSING",
    "NAMES",
    "Costs",
    "InBatchNegatives",
    "NegativeSource",
    "RefreshedNegatives",
    "RerankedNegatives",
    "SampledNegatives",
    "StaticNegatives",
    "parse_negatives",
]
