"""HardNegativeSampler: pick k hard negatives per query from a (corrected) cache, never a positive.

Argument names and filter semantics follow sentence-transformers' ``mine_hard_negatives`` so its users feel at home:

1. Candidates are the ``range_max`` best-scoring rows of the query that are not its positives.
2. ``absolute_margin`` drops candidates with ``score + absolute_margin > min positive score``; ``relative_margin``
   drops ``score > p - |p| * relative_margin`` (p = the query's lowest positive score); ``max_score`` drops
   ``score > max_score`` (too similar to the anchor); ``min_score`` drops ``score < min_score`` (too dissimilar).
3. The ``range_min`` best of the remaining candidates are skipped (likely false negatives).
4. ``sampling_strategy`` picks ``num_negatives`` of the rest: ``"top"`` the best, ``"gumbel"`` a sample without replacement from
   softmax(score / temperature) (Gumbel-top-k), ``"random"`` a uniform sample.

When the filters leave fewer than ``num_negatives`` candidates, ``fill_missing=False`` marks the gap with
:data:`MISSING` (-1) and counts the query in ``stats["short_queries"]`` (``mine_hard_negatives`` drops such samples;
the loss and ``haystack-corrector mine`` skip them). ``fill_missing=True`` (the default here, for callers that need
every slot) fills it with uniformly random rows from outside the window that are not positives and pass the score
filters (a row the window rejected, by a filter or as one of the ``range_min`` likely false negatives, never comes
back through the fill); fills are counted in :attr:`HardNegativeSampler.stats` and logged once per call. When not
even that is enough, :meth:`sample` raises ``ValueError`` and counts the query in ``stats["unfillable_queries"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from haystack_corrector._validation import (
    ArrayLike,
    as_float_matrix,
    as_row_sets,
    check_choice,
    check_float,
    check_non_negative_int,
    check_positive_int,
    describe,
)
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.scoring import similarity_scores

logger = logging.getLogger(__name__)

__all__ = ["MISSING", "SAMPLING_STRATEGIES", "HardNegativeSampler"]

SAMPLING_STRATEGIES = ("top", "gumbel", "random")
MISSING = -1  # with fill_missing=False: a negative the window and filters could not provide
_DEFAULT_WINDOW_FACTOR = 10


class HardNegativeSampler:
    """Sample hard negatives for a batch of queries from a :class:`CorrectedCacheStore`.

    Args:
        store: the cache to sample from.
        num_negatives: negatives per query.
        sampling_strategy: ``"top"``, ``"gumbel"`` or ``"random"`` (see the module docstring).
        temperature: softmax temperature τ for ``"gumbel"``.
        range_min: skip this many best candidates (after the score filters).
        range_max: consider only the ``range_max`` best non-positive rows. Default: ``range_min + num_negatives`` for
            ``"top"`` without filters (as in sentence-transformers), else ``range_min + 10 * num_negatives``, so that
            sampling and filtering have room to choose.
        absolute_margin, relative_margin, max_score, min_score: score filters (module docstring).
        corrected: score against the corrected cache h(g') (True) or the stale cache g' (False, the ablation).
        seed: seed of the sampler's own random generator (``None``: non-deterministic).
        max_view_age: for corrected sampling, tolerate a materialised corrected view up to this many corrector
            updates old and re-materialise it only then (``CorrectedCacheStore.search(max_view_age=...)``); call
            ``store.materialize(path)`` first to keep the view in a memory-mapped file. None (default): every search
            is exact for the current corrector.
        view_rescore_depth: with ``max_view_age``, re-score each query's ``view_rescore_depth`` best rows of the
            view with the current corrector before choosing (``CorrectedCacheStore.search(view_rescore_depth=...)``):
            an older view then only has to hold the right candidates, not rank them. None (default): the view's
            ranking. At least the sampler's window is re-scored either way when set.
        exclude_text_copies: also never sample a row whose text is identical to a positive's
            (:meth:`CorrectedCacheStore.with_text_copies`; needs ``store.texts``): a copy of the positive is a false
            negative. Default True.
        fill_missing: fill what the window and filters cannot provide with random rows (True, default) or leave
            :data:`MISSING` there (False).

    Example:
        >>> import torch
        >>> from haystack_corrector import CorrectedCacheStore, HardNegativeSampler
        >>> store = CorrectedCacheStore(torch.randn(100, 16))
        >>> sampler = HardNegativeSampler(store, num_negatives=3, sampling_strategy="gumbel", range_max=20, seed=0)
        >>> sampler.sample(torch.randn(2, 16), positives=[[0], [1, 2]]).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        store: CorrectedCacheStore,
        num_negatives: int = 4,
        sampling_strategy: str = "top",
        temperature: float = 0.05,
        range_min: int = 0,
        range_max: int | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        corrected: bool = True,
        seed: int | None = None,
        max_view_age: int | None = None,
        exclude_text_copies: bool = True,
        view_rescore_depth: int | None = None,
        fill_missing: bool = True,
    ) -> None:
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        self.store = store
        self.num_negatives = check_positive_int(num_negatives, "num_negatives")
        self.sampling_strategy = check_choice(sampling_strategy, "sampling_strategy", SAMPLING_STRATEGIES)
        self.temperature = check_float(temperature, "temperature", minimum=0.0, strict=True)
        self.range_min = range_min = check_non_negative_int(range_min, "range_min")
        if range_max is not None:
            check_non_negative_int(range_max, "range_max")
            if range_min >= range_max:
                raise ValueError(
                    f"range_min must be smaller than range_max, got range_min={range_min}, range_max={range_max}"
                )
            if self.num_negatives > range_max - range_min:
                raise ValueError(
                    f"num_negatives={self.num_negatives} does not fit the window: only {range_max - range_min} "
                    f"candidates remain between range_min={range_min} and range_max={range_max}"
                )
        self.range_max = range_max
        self.absolute_margin = check_float(absolute_margin, "absolute_margin", optional=True)
        self.relative_margin = check_float(relative_margin, "relative_margin", optional=True)
        self.max_score = check_float(max_score, "max_score", optional=True)
        self.min_score = check_float(min_score, "min_score", optional=True)
        if self.max_score is not None and self.min_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score ({self.min_score}) must not exceed max_score ({self.max_score})")
        if not isinstance(corrected, bool):
            raise TypeError(f"corrected must be a bool, got {describe(corrected)}")
        self.corrected = corrected
        if not isinstance(exclude_text_copies, bool):
            raise TypeError(f"exclude_text_copies must be a bool, got {describe(exclude_text_copies)}")
        self.exclude_text_copies = exclude_text_copies
        if not isinstance(fill_missing, bool):
            raise TypeError(f"fill_missing must be a bool, got {describe(fill_missing)}")
        self.fill_missing = fill_missing
        # A training loss must not raise mid-run for a data condition: it sets this False and skips the query.
        self.raise_when_unfillable = True
        self.seed = seed
        self.max_view_age = None if max_view_age is None else check_non_negative_int(max_view_age, "max_view_age")
        self.view_rescore_depth = (
            None if view_rescore_depth is None else check_positive_int(view_rescore_depth, "view_rescore_depth")
        )
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self.stats: dict[str, int] = {
            "calls": 0,
            "queries": 0,
            "filled_queries": 0,
            "filled_negatives": 0,
            "skipped_absolute_margin": 0,
            "skipped_relative_margin": 0,
            "skipped_max_score": 0,
            "skipped_min_score": 0,
            "unfillable_queries": 0,
            "short_queries": 0,
            "missing_negatives": 0,
        }

    @property
    def has_filters(self) -> bool:
        return any(
            value is not None for value in (self.absolute_margin, self.relative_margin, self.max_score, self.min_score)
        )

    @property
    def window(self) -> int:
        """How many best non-positive rows are considered (``range_max`` or its default)."""
        if self.range_max is not None:
            return self.range_max
        if self.sampling_strategy == "top" and not self.has_filters:
            return self.range_min + self.num_negatives
        return self.range_min + _DEFAULT_WINDOW_FACTOR * self.num_negatives

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_negatives": self.num_negatives,
            "sampling_strategy": self.sampling_strategy,
            "temperature": self.temperature,
            "range_min": self.range_min,
            "range_max": self.range_max,
            "absolute_margin": self.absolute_margin,
            "relative_margin": self.relative_margin,
            "max_score": self.max_score,
            "min_score": self.min_score,
            "corrected": self.corrected,
            "seed": self.seed,
            "max_view_age": self.max_view_age,
            "view_rescore_depth": self.view_rescore_depth,
            "exclude_text_copies": self.exclude_text_copies,
            "fill_missing": self.fill_missing,
        }

    def sample(self, query_embeddings: ArrayLike, positives: Iterable[Iterable[int]]) -> torch.Tensor:
        """``num_negatives`` distinct non-positive row indices per query, as an int64 tensor (B, num_negatives).

        With ``exclude_text_copies`` (default), rows whose text equals a positive's count as positives too.
        """
        store = self.store
        queries = as_float_matrix(query_embeddings, "query_embeddings", dim=store.dim)
        positive_sets = as_row_sets(positives, "positives", num_queries=queries.shape[0], num_rows=len(store))
        if self.exclude_text_copies:
            positive_sets = [store.with_text_copies(rows) for rows in positive_sets]
        most_positives = max(len(rows) for rows in positive_sets)
        if self.num_negatives > len(store) - most_positives:
            raise ValueError(
                f"num_negatives={self.num_negatives} is larger than the rows that are not positives "
                f"({len(store) - most_positives} of {len(store)} for the query with the most positives)"
            )
        depth = min(self.window, len(store) - most_positives)
        scores, rows = store.search(
            queries,
            depth,
            exclude=positive_sets,
            corrected=self.corrected,
            max_view_age=self.max_view_age,
            view_rescore_depth=self.view_rescore_depth,
        )
        lowest = self._lowest_positive_scores(queries, positive_sets) if self._needs_lowest else None
        valid = self._apply_filters(scores, lowest)
        if self.range_min:
            valid &= valid.cumsum(dim=1) > self.range_min
        chosen, chosen_valid = self._choose(scores, valid)
        negatives = torch.gather(rows, 1, chosen)
        return self._fill(queries, negatives, chosen_valid, rows, positive_sets, lowest)

    # ---------------------------------------------------------------------------------------------------- steps
    @property
    def _needs_lowest(self) -> bool:
        return self.absolute_margin is not None or self.relative_margin is not None

    def _filter_masks(self, scores: torch.Tensor, lowest: torch.Tensor | None) -> list[tuple[str, torch.Tensor]]:
        """(stats key, rejected mask) of each score filter, in the order they apply. ``lowest``: (B, 1) or None."""
        masks = []
        if lowest is not None and self.absolute_margin is not None:
            masks.append(("skipped_absolute_margin", scores + self.absolute_margin > lowest))
        if lowest is not None and self.relative_margin is not None:
            masks.append(("skipped_relative_margin", scores > lowest - lowest.abs() * self.relative_margin))
        if self.max_score is not None:
            masks.append(("skipped_max_score", scores > self.max_score))
        if self.min_score is not None:
            masks.append(("skipped_min_score", scores < self.min_score))
        return masks

    def _apply_filters(self, scores: torch.Tensor, lowest: torch.Tensor | None) -> torch.Tensor:
        valid = torch.ones_like(scores, dtype=torch.bool)
        for key, rejected in self._filter_masks(scores, None if lowest is None else lowest.unsqueeze(1)):
            removed = valid & rejected
            self.stats[key] += int(removed.sum())
            valid &= ~removed
        return valid

    def _score_rows(self, queries: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """(B, len(rows)) scores of these rows for each query, by the sampler's (corrected or stale) embeddings."""
        getter = self.store.corrected_embeddings if self.corrected else self.store.stale_embeddings
        return similarity_scores(queries, getter(rows), normalize=self.store.similarity == "cosine")

    def _lowest_positive_scores(self, queries: torch.Tensor, positive_sets: list[set[int]]) -> torch.Tensor:
        """Per query, the score of its lowest-scoring positive (+inf when it has none: no margin applies)."""
        lowest = torch.full((queries.shape[0],), torch.inf)
        flat = sorted({row for rows in positive_sets for row in rows})
        if not flat:
            return lowest
        all_scores = self._score_rows(queries, flat)
        column = {row: position for position, row in enumerate(flat)}
        for query, rows in enumerate(positive_sets):
            if rows:
                lowest[query] = all_scores[query, [column[row] for row in rows]].min()
        return lowest

    def _choose(self, scores: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(self.num_negatives, scores.shape[1])
        if self.sampling_strategy == "top":
            # Candidates are sorted best first: keep the first valid ones in order.
            keys = -torch.arange(scores.shape[1], dtype=torch.float32).expand_as(scores).clone()
        elif self.sampling_strategy == "gumbel":
            uniform = torch.rand(scores.shape, generator=self.generator).clamp_(1e-20, 1.0)
            keys = scores / self.temperature - torch.log(-torch.log(uniform))
        else:
            keys = torch.rand(scores.shape, generator=self.generator)
        keys[~valid] = -torch.inf
        _, chosen = torch.topk(keys, k, dim=1)
        return chosen, torch.gather(valid, 1, chosen)

    def _fill(
        self,
        queries: torch.Tensor,
        negatives: torch.Tensor,
        chosen_valid: torch.Tensor,
        window_rows: torch.Tensor,
        positive_sets: list[set[int]],
        lowest: torch.Tensor | None,
    ) -> torch.Tensor:
        """Complete each query's negatives with random rows that are neither positives nor rejected.

        Every row of the query's window that was not chosen was rejected (by a score filter, or by ``range_min`` as a
        likely false negative), so fill rows come from outside the window, and must pass the same score filters.
        """
        result = torch.empty((negatives.shape[0], self.num_negatives), dtype=torch.int64)
        filled_queries = filled = short = 0
        for query in range(negatives.shape[0]):
            kept = negatives[query][chosen_valid[query]].tolist()
            missing = self.num_negatives - len(kept)
            if missing and not self.fill_missing:
                kept += [MISSING] * missing
                short += 1
                self.stats["missing_negatives"] += missing
            elif missing:
                forbidden = positive_sets[query] | set(window_rows[query].tolist())
                query_lowest = None if lowest is None else lowest[query : query + 1].view(1, 1)
                fill = self._fill_rows(queries[query : query + 1], missing, forbidden, query_lowest, query)
                kept += fill + [MISSING] * (missing - len(fill))  # (short only when it may not raise)
                short += len(fill) < missing
                filled_queries += 1
                filled += len(fill)
            result[query] = torch.tensor(kept, dtype=torch.int64)
        self.stats["short_queries"] += short
        self.stats["calls"] += 1
        self.stats["queries"] += negatives.shape[0]
        self.stats["filled_queries"] += filled_queries
        self.stats["filled_negatives"] += filled
        if filled:
            logger.info(
                "Filled %d of %d negatives (%.1f%%) for %d of %d queries with random rows outside the window that "
                "pass the filters: the window (range_min=%d, range_max=%d) and filters left too few candidates. "
                "Consider widening range_max or loosening absolute_margin/relative_margin/max_score/min_score.",
                filled,
                negatives.shape[0] * self.num_negatives,
                100.0 * filled / (negatives.shape[0] * self.num_negatives),
                filled_queries,
                negatives.shape[0],
                self.range_min,
                self.window,
            )
        return result

    def _passing(self, query: torch.Tensor, rows: list[int], lowest: torch.Tensor | None) -> list[int]:
        """The rows that no score filter rejects for this query (all of them without filters)."""
        if not rows or not self.has_filters:
            return rows
        scores = self._score_rows(query, rows)
        rejected = torch.zeros_like(scores, dtype=torch.bool)
        for _, mask in self._filter_masks(scores, lowest):
            rejected |= mask
        return [row for row, bad in zip(rows, rejected[0].tolist()) if not bad]

    def _fill_rows(
        self, query: torch.Tensor, count: int, forbidden: set[int], lowest: torch.Tensor | None, position: int
    ) -> list[int]:
        num_rows = len(self.store)
        picked: list[int] = []
        taken = set(forbidden)
        # Rejection sampling is cheap while most rows are allowed; fall back to a full permutation otherwise.
        for _ in range(8):
            draws = []
            for row in torch.randint(num_rows, (2 * count + 8,), generator=self.generator).tolist():
                if row not in taken:
                    taken.add(row)
                    draws.append(row)
            picked += self._passing(query, draws, lowest)[: count - len(picked)]
            if len(picked) == count:
                return picked
        order = [row for row in torch.randperm(num_rows, generator=self.generator).tolist() if row not in taken]
        for start in range(0, len(order), 4096):
            picked += self._passing(query, order[start : start + 4096], lowest)[: count - len(picked)]
            if len(picked) == count:
                return picked
        self.stats["unfillable_queries"] += 1
        if not self.raise_when_unfillable:
            return picked
        raise ValueError(
            f"Cannot sample {self.num_negatives} negatives for query {position}: only {self.num_negatives - count + len(picked)} "
            f"rows of {num_rows} are neither positives nor rejected by range_min={self.range_min} and the score "
            f"filters (absolute_margin={self.absolute_margin}, relative_margin={self.relative_margin}, "
            f"max_score={self.max_score}, min_score={self.min_score}). Loosen the filters or lower num_negatives"
        )
