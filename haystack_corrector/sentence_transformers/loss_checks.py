"""The checks :class:`CorrectedNegativesLoss` runs at construction, so that no setting fails at the first step.

Each names the argument and what to do. An option that would have no effect with the chosen negative source is an
error, whichever source: a silent no-op hides a mistake.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from haystack_corrector.sentence_transformers.negatives import InBatchNegatives, NegativeSource

# Options of earlier versions that belong to a negative source now: the message says where.
MOVED_OPTIONS = {
    **{
        name: f"SampledNegatives({name}=...) (or RefreshedNegatives / StaticNegatives)"
        for name in (
            "sampling_strategy",
            "temperature",
            "range_max",
            "max_score",
            "min_score",
            "absolute_margin",
            "relative_margin",
        )
    },
    "refresh_every": "negatives='refresh:N' or RefreshedNegatives(every=N)",
    "corrector_after_refresh": "RefreshedNegatives(N, corrected=True, after_refresh=...)",
    "rerank_depth": "negatives='corrector+rerank:L' or RerankedNegatives(depth=L)",
    "rerank_candidates": "negatives='rerank:L' (the raw cache's candidates) or RerankedNegatives(candidates=...)",
}
GUIDED_LOSSES = ("GISTEmbedLoss", "CachedGISTEmbedLoss")  # they take (anchor, positive[, negative]) only
GUIDED_MAX_COLUMNS = 3


def refuse_unknown_options(owner: str, options: dict[str, Any]) -> None:
    """A TypeError for keyword arguments the loss does not take, saying where a moved one lives now."""
    for name in options:
        if name in MOVED_OPTIONS:
            raise TypeError(
                f"{owner} no longer takes {name}: it is an option of the negative source, {MOVED_OPTIONS[name]}"
            )
    if options:
        raise TypeError(f"{owner} got unexpected keyword arguments: {', '.join(sorted(options))}")


def innermost_loss(loss: nn.Module) -> nn.Module:
    """Follow ``.loss`` wrappers (``MatryoshkaLoss``, ``AdaptiveLayerLoss``, ...) to the loss that computes."""
    seen = 0
    while isinstance(getattr(loss, "loss", None), nn.Module) and seen < 16:
        loss, seen = loss.loss, seen + 1
    return loss


def uses_gradient_cache(loss: nn.Module) -> bool:
    """Whether the loss embeds through a gradient cache (``CachedLossMixin``), as sentence-transformers 6.3 tells it:
    the ``uses_gradient_cache`` flag, which its wrappers (``MatryoshkaLoss``) copy from the loss they wrap."""
    return bool(getattr(loss, "uses_gradient_cache", False)) or bool(
        getattr(innermost_loss(loss), "uses_gradient_cache", False)
    )


def check_wrapped_loss(loss: Any, dataset_columns: int, num_negatives: int, source: NegativeSource) -> None:
    if not isinstance(loss, nn.Module):
        raise TypeError(f"loss must be a sentence-transformers loss (an nn.Module), got {type(loss).__name__}")
    if type(loss).__name__ == "CorrectedNegativesLoss" or hasattr(loss, "corrector_trainer"):
        raise TypeError("loss is already a CorrectedNegativesLoss: wrap the inner loss once")
    inner = type(innermost_loss(loss)).__name__
    columns = dataset_columns + (num_negatives if source.adds_columns else 0)
    if inner in GUIDED_LOSSES and columns > GUIDED_MAX_COLUMNS:
        raise ValueError(
            f"{inner} takes (anchor, positive[, negative]): {dataset_columns} dataset columns + {num_negatives} "
            f"sampled negatives make {columns}. Use num_negatives={max(GUIDED_MAX_COLUMNS - dataset_columns, 0)} "
            "or MultipleNegativesRankingLoss, which takes any number of negative columns"
        )


def check_fits_store(store: Any, num_negatives: int, range_min: int, source: NegativeSource) -> None:
    """Enough rows besides an anchor's positive for ``range_min + num_negatives`` (and a re-ranking depth)."""
    if not source.adds_columns:
        return
    available = len(store) - 1  # every anchor has at least its positive excluded
    needed = range_min + num_negatives
    if needed > available:
        raise ValueError(
            f"range_min + num_negatives = {needed} but the store has {len(store)} rows: at most {available} can be "
            "negatives of an anchor besides its positive. Lower num_negatives (or range_min)"
        )
    depth = getattr(source, "depth", None)
    if depth is not None and depth > available:
        raise ValueError(
            f"{type(source).__name__}(depth={depth}) re-ranks more candidates than the store's {len(store)} rows "
            f"leave besides a positive ({available})"
        )


def check_options_apply(
    source: NegativeSource,
    *,
    range_min: int,
    corrector_warmup_steps: int,
    max_view_age: int | None,
    view_rescore_depth: int | None,
    seed: int | None,
    replay_size: int,
    encode_batch_size: int = 64,
) -> None:
    """Refuse an option that the chosen source would ignore."""
    given = []
    if isinstance(source, InBatchNegatives) and range_min:
        given.append(f"range_min={range_min} (in-batch negatives choose nothing from the cache)")
    if not source.searches_corrected:
        for name, value, default in (
            ("corrector_warmup_steps", corrector_warmup_steps, 0),
            ("max_view_age", max_view_age, None),
            ("view_rescore_depth", view_rescore_depth, None),
        ):
            if value != default:
                given.append(f"{name}={value!r} (the corrected cache is never searched)")
    if view_rescore_depth is not None and max_view_age is None:
        given.append("view_rescore_depth without max_view_age (without a view every search is exact)")
    if encode_batch_size != 64 and not source.encodes_texts:
        given.append(f"encode_batch_size={encode_batch_size} (this source encodes no texts without gradient)")
    if seed is not None and not source.draws_random and not replay_size:
        given.append(f"seed={seed!r} (this setting draws no random numbers)")
    if given:
        raise ValueError(f"With negatives={source.name!r}: " + "; ".join(given) + " has no effect: drop it")
