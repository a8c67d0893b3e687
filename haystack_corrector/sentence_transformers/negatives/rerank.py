"""RerankedNegatives: each anchor's best rows of the cache, re-encoded with the current model, best by fresh score.

With ``candidates="corrected"`` (the loss's default, the arm ``corrector+rerank:L``) the candidates are the best rows
of the corrected cache, so the corrector chooses what is worth re-encoding; with ``candidates="stale"`` they are the
best rows of the raw cache (Atlas-style re-ranking, the arm ``rerank:L``). Either way the candidates' fresh
embeddings are handed to the corrector's drift step (:meth:`take_fresh_pairs`): L pairs per anchor per step on top of
the targets. Its cost is L no-grad encodes per anchor per step, whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from haystack_corrector._validation import check_choice, check_positive_int
from haystack_corrector.scoring import similarity_scores
from haystack_corrector.sentence_transformers.negatives.source import NegativeSource

# The default depth: range_min + num_negatives + 2 candidates. With one negative that is 3, the setting of every result
# in docs/results.md (it matched re-encoding the corpus on SciFact and CoSQA). With four negatives, SciFact-5ep seed 0:
# 6 candidates gave 0.8077 nDCG@10 and 12 (three per negative, the earlier rule) 0.8093, +0.0016 [-0.0034, +0.0066],
# with 35% fewer target passes (docs/performance.md, "The re-ranking depth").
EXTRA_CANDIDATES = 2


class RerankedNegatives(NegativeSource):
    """Args:
    depth: candidates re-encoded per anchor (default ``range_min + num_negatives + 2``: 3 with one negative, the
        measured setting; docs/performance.md measures it at four); at least ``range_min + num_negatives``.
    candidates: ``"corrected"`` (default: the corrected cache's best rows) or ``"stale"`` (the raw cache's).
    """

    def __init__(self, depth: int | None = None, candidates: str = "corrected") -> None:
        super().__init__()
        self.depth = None if depth is None else check_positive_int(depth, "depth")
        self.candidates = check_choice(candidates, "candidates", ("corrected", "stale"))
        self.warmup_steps = 0
        self.encode: Any = None
        self._last_corrected = False
        # (rows, fresh embeddings) of the last call's candidates: (B·L,) int64 and (B·L, dim) float32.
        self._fresh_pairs: tuple[Tensor, Tensor] | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        depth = "" if self.depth is None else f":{self.depth}"
        return ("corrector+rerank" if self.candidates == "corrected" else "rerank") + depth

    @property
    def searches_corrected(self) -> bool:
        return self.candidates == "corrected"

    @property
    def last_corrected(self) -> bool:
        """Whether the last candidates came from the corrected cache."""
        return self._last_corrected

    @property
    def encodes_texts(self) -> bool:
        return True

    def bind(self, loss: Any) -> None:
        super().bind(loss)
        needed = loss.range_min + loss.num_negatives
        if self.depth is None:
            self.depth = needed + EXTRA_CANDIDATES
        elif self.depth < needed:
            raise ValueError(
                f"depth={self.depth} re-ranks too few candidates: range_min + num_negatives = {needed} are needed"
            )
        self.warmup_steps = loss.corrector_warmup_steps
        self.encode = loss.encoder(loss.negative_prompt)

    def take_fresh_pairs(self) -> tuple[Tensor, Tensor] | None:
        pairs, self._fresh_pairs = self._fresh_pairs, None
        return pairs

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        loss, store = self.loss, self.store
        k, skip = loss.num_negatives, loss.range_min
        depth = min(int(self.depth or 0), len(store) - max(len(rows) for rows in exclude))
        self._last_corrected = self.searches_corrected and step >= self.warmup_steps
        with torch.no_grad():
            # At a large cache, corrected candidates may come from the materialised view (the loss's max_view_age)
            # instead of applying the corrector to every row at every step.
            _, candidates = store.search(
                anchors,
                depth,
                exclude=exclude,
                corrected=self._last_corrected,
                max_view_age=loss.max_view_age,
                view_rescore_depth=loss.view_rescore_depth,
            )
        texts = store.texts or []
        flat = candidates.reshape(-1)
        fresh = self.encode([texts[row] for row in flat.tolist()])
        self.costs.target_forward_passes += flat.numel()
        self._fresh_pairs = (flat, fresh)  # (a row may be a candidate of several anchors: the loss keeps one)
        fresh = fresh.reshape(candidates.shape[0], depth, -1)
        scores = similarity_scores(anchors, fresh, normalize=store.similarity == "cosine")
        order = torch.argsort(scores, dim=1, descending=True)
        chosen = order[:, skip : skip + k]
        rows = torch.gather(candidates, 1, chosen)
        if rows.shape[1] < k:  # anchors with so many relevant rows that fewer candidates remain: skipped
            rows = torch.cat([rows, torch.full((rows.shape[0], k - rows.shape[1]), -1, dtype=torch.int64)], dim=1)
        return rows

    def get_config_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "candidates": self.candidates}
