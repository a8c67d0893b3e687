"""RefreshedNegatives: the cache re-encoded with the current model every N optimiser steps (ANCE-style).

With ``corrected=False`` it is the quality reference (the arm ``refresh:N``); with ``corrected=True`` it is the hybrid
budget (``corrector+refresh:N``): the corrector samples between rare re-encodes, and after each the new cache is its
stale input: it keeps training (``after_refresh="keep"``) or restarts at the identity with a fresh optimiser
(``"reset"``, the arm ``corrector+refresh:N:reset``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from haystack_corrector._validation import check_choice, check_positive_int
from haystack_corrector.distinct_texts import distinct_texts, encode_distinct
from haystack_corrector.sentence_transformers.negatives.sampled import SampledNegatives

logger = logging.getLogger(__name__)


class RefreshedNegatives(SampledNegatives):
    """Args:
    every: optimiser steps between corpus re-encodes.
    corrected: sample through the corrector between re-encodes (the hybrid) or from the raw cache (the reference).
    after_refresh: with ``corrected``, ``"keep"`` (default) or ``"reset"`` the corrector after each re-encode.
    **sampling: the options of :class:`SampledNegatives` (strategy, window, filters, ``fill_missing``).
    """

    def __init__(self, every: int, corrected: bool = False, *, after_refresh: str | None = None, **sampling: Any):
        super().__init__(corrected, **sampling)
        self.every = check_positive_int(every, "every")
        if after_refresh is not None:
            check_choice(after_refresh, "after_refresh", ("keep", "reset"))
            if not corrected:
                raise ValueError("after_refresh applies to corrected=True (the corrector between re-encodes) only")
        self.after_refresh = after_refresh or "keep"
        self.last_refresh = -1  # optimiser step of the last re-encode (-1: the cache is still the initial one)
        self.encode: Any = None

    @property
    def name(self) -> str:  # type: ignore[override]
        if not self.corrected:
            return f"refresh:{self.every}"
        return f"corrector+refresh:{self.every}" + (":reset" if self.after_refresh == "reset" else "")

    @property
    def encodes_texts(self) -> bool:
        return True

    def bind(self, loss: Any) -> None:
        super().bind(loss)
        self.encode = loss.encoder(loss.negative_prompt)

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        if step > 0 and step % self.every == 0 and self.last_refresh != step:
            self.refresh(step)
        return super().negatives(anchors, exclude, step, anchor_keys)

    def refresh(self, step: int) -> None:
        store = self.store
        texts = list(store.texts or [])
        logger.info("Re-encoding the corpus (%d texts) at optimiser step %d", len(texts), step)
        store.replace_embeddings(encode_distinct(texts, self.encode))
        self.costs.corpus_encodes += 1
        self.costs.target_forward_passes += len(distinct_texts(texts)[0])  # each distinct text is encoded once
        if self.corrected and self.after_refresh == "reset":
            store.corrector.reset_to_identity()  # the new cache is fresh: nothing to correct yet
            self.loss.corrector_trainer.reset_optimizer()
        self.last_refresh = step

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_refresh": self.last_refresh}
        if self.last_refresh >= 0:  # the re-encoded cache: a resumed run samples from it, not from the initial one
            state["embeddings"] = self.store.stale_embeddings().float().contiguous()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_refresh = int(state.get("last_refresh", -1))
        if "embeddings" in state:
            self.store.replace_embeddings(state["embeddings"])

    def get_config_dict(self) -> dict[str, Any]:
        config = {"every": self.every, **super().get_config_dict()}
        if self.corrected:
            config["after_refresh"] = self.after_refresh
        return config
