"""RefreshedNegatives: the cache re-encoded with the current model every N optimiser steps (ANCE-style).

With ``corrected=False`` it is the quality reference (``negatives="refresh"``); with ``corrected=True`` it is the
hybrid budget (``negatives="corrector"`` with ``refresh_every``): the corrector samples between rare re-encodes, and
after each the new cache is its stale input: it keeps training (``after_refresh="keep"``) or restarts at the
identity with a fresh optimiser (``"reset"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from haystack_corrector.distinct_texts import distinct_texts, encode_distinct
from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.sentence_transformers.negatives.sampled import SampledNegatives
from haystack_corrector.sentence_transformers.negatives.source import Encode

logger = logging.getLogger(__name__)


class RefreshedNegatives(SampledNegatives):
    def __init__(
        self,
        sampler: HardNegativeSampler,
        encode: Encode,
        refresh_every: int,
        corrected: bool = False,
        after_refresh: str = "keep",
        corrector_trainer: Any = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(sampler, corrected=corrected, warmup_steps=warmup_steps)
        self.name = "corrector" if corrected else "refresh"
        self.encode = encode
        self.refresh_every = refresh_every
        self.after_refresh = after_refresh
        self.corrector_trainer = corrector_trainer
        self.last_refresh = -1  # optimiser step of the last re-encode (-1: the cache is still the initial one)

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        if step > 0 and step % self.refresh_every == 0 and self.last_refresh != step:
            self.refresh(step)
        return super().negatives(anchors, exclude, step, anchor_keys)

    def refresh(self, step: int) -> None:
        store = self.store
        texts = list(store.texts or [])
        logger.info("Re-encoding the corpus (%d texts) at optimiser step %d", len(texts), step)
        store.replace_embeddings(encode_distinct(texts, self.encode))
        self.costs.corpus_encodes += 1
        self.costs.target_forward_passes += len(distinct_texts(texts)[0])  # each distinct text is encoded once
        if self.use_corrector and self.after_refresh == "reset":
            store.corrector.reset_to_identity()  # the new cache is fresh: nothing to correct yet
            self.corrector_trainer.reset_optimizer()
        self.last_refresh = step

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["last_refresh"] = self.last_refresh
        if self.last_refresh >= 0:  # the re-encoded cache: a resumed run samples from it, not from the initial one
            state["embeddings"] = self.store.stale_embeddings().float().contiguous()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_refresh = int(state.get("last_refresh", -1))
        if "embeddings" in state:
            self.store.replace_embeddings(state["embeddings"])
