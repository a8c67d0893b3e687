"""SampledNegatives: every step, sample from the corrected cache (the paper, arm ``corrector``) or the raw one
(``stale``), with the window, filters and strategy of sentence-transformers' ``mine_hard_negatives``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector._validation import check_bool, check_choice, check_float, check_non_negative_int
from haystack_corrector.sampler import SAMPLING_STRATEGIES, HardNegativeSampler
from haystack_corrector.sentence_transformers.negatives.source import NegativeSource

logger = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.05


class SampledNegatives(NegativeSource):
    """Negatives chosen among the cache's scores, as ``mine_hard_negatives`` chooses them.

    Args:
        corrected: score the cache through the corrector (the arm ``corrector``) or as stored (``stale``).
        sampling_strategy: ``"top"`` (the best), ``"random"`` (uniform in the window) or ``"gumbel"`` (a sample
            from softmax(score / ``temperature``)).
        temperature: for ``"gumbel"`` only (default 0.05); refused with another strategy.
        range_max: consider the ``range_max`` best non-positive rows (default: ``range_min + num_negatives`` for
            ``"top"`` without filters, else ``range_min + 10 * num_negatives``).
        max_score, min_score: drop candidates scoring above / below.
        absolute_margin: drop candidates with ``score + absolute_margin > `` the lowest positive's score (>= 0).
        relative_margin: drop candidates scoring above ``p - |p| * relative_margin`` (in [0, 1)).
        fill_missing: when the window and filters leave an anchor fewer than ``num_negatives`` candidates, fill the
            gap with random rows that pass the filters (True), or (default, like ``mine_hard_negatives``) skip that
            anchor's extra negatives for the step: the loss counts and logs it.
    """

    def __init__(
        self,
        corrected: bool = True,
        *,
        sampling_strategy: str = "top",
        temperature: float | None = None,
        range_max: int | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        fill_missing: bool = False,
    ) -> None:
        super().__init__()
        self.corrected = check_bool(corrected, "corrected")
        self.sampling_strategy = check_choice(sampling_strategy, "sampling_strategy", SAMPLING_STRATEGIES)
        if temperature is not None and sampling_strategy != "gumbel":
            raise ValueError(
                f"temperature applies to sampling_strategy='gumbel' only, not {sampling_strategy!r}: drop it or "
                "sample with 'gumbel'"
            )
        self.temperature = check_float(temperature, "temperature", minimum=0.0, strict=True, optional=True)
        self.range_max = None if range_max is None else check_non_negative_int(range_max, "range_max")
        self.max_score = check_float(max_score, "max_score", optional=True)
        self.min_score = check_float(min_score, "min_score", optional=True)
        if self.max_score is not None and self.min_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score ({self.min_score}) must not exceed max_score ({self.max_score})")
        self.absolute_margin = check_float(absolute_margin, "absolute_margin", minimum=0.0, optional=True)
        self.relative_margin = check_float(relative_margin, "relative_margin", minimum=0.0, optional=True)
        if self.relative_margin is not None and self.relative_margin >= 1:
            raise ValueError(
                f"relative_margin must be in [0, 1) (0.05: a negative at most 95% as similar as the positive), "
                f"got {relative_margin}"
            )
        self.fill_missing = check_bool(fill_missing, "fill_missing")
        self.warmup_steps = 0
        self._last_corrected = False
        self.sampler: HardNegativeSampler | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return "corrector" if self.corrected else "stale"

    @property
    def searches_corrected(self) -> bool:
        return self.corrected

    @property
    def draws_random(self) -> bool:
        return self.sampling_strategy != "top" or self.fill_missing

    @property
    def last_corrected(self) -> bool:
        return self._last_corrected

    def bind(self, loss: Any) -> None:
        super().bind(loss)
        self.warmup_steps = loss.corrector_warmup_steps
        self.sampler = HardNegativeSampler(
            loss.store,
            num_negatives=loss.num_negatives,
            sampling_strategy=self.sampling_strategy,
            temperature=DEFAULT_TEMPERATURE if self.temperature is None else self.temperature,
            range_min=loss.range_min,
            range_max=self.range_max,
            absolute_margin=self.absolute_margin,
            relative_margin=self.relative_margin,
            max_score=self.max_score,
            min_score=self.min_score,
            corrected=self.corrected,
            max_view_age=loss.max_view_age,
            view_rescore_depth=loss.view_rescore_depth,
            exclude_text_copies=False,  # the loss's relevance index already counts every copy of a positive's text
            fill_missing=self.fill_missing,
        )
        self.sampler.generator = loss.generator  # one random stream per loss, seeded once
        self.sampler.raise_when_unfillable = False  # a data condition: the loss skips the anchor, never raises

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        assert self.sampler is not None, "bind() first"
        self._last_corrected = self.corrected and step >= self.warmup_steps
        self.sampler.corrected = self._last_corrected
        with torch.no_grad():
            return self.sampler.sample(anchors, exclude)

    @property
    def stats(self) -> dict[str, int]:
        return self.sampler.stats if self.sampler is not None else {}

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"corrected": self.corrected, "sampling_strategy": self.sampling_strategy}
        if self.sampling_strategy == "gumbel":
            config["temperature"] = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        for key in ("range_max", "max_score", "min_score", "absolute_margin", "relative_margin"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        if self.fill_missing:
            config["fill_missing"] = True
        return config
