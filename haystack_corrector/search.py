"""Exact blocked top-k: score rows a block at a time and keep a running top-k, so memory is bounded by the block.

``blocked_topk`` is the only top-k scan in the package: the cache store feeds it stale, corrected or materialised
blocks, and the sharded search runs it on each rank's shard. Per-query exclusions are applied as ``-inf`` scores
inside each block.

With ``scan_dtype=torch.bfloat16`` the blocks are first scored in bfloat16 (several times faster where the hardware
has bfloat16 matrix units), and the result is still the exact float32 top k: every row that could still reach the
top k given the proven rounding bound (:func:`first_pass_error`) is re-scored in float32 — by a threshold once k
exact scores are known, by a per-block top-k before that — and a query for which the bound cannot rule out a row
left behind by such a top-k is scanned again in float32. Blocks arrive in their storage dtype (float32, float16 or
bfloat16; a bfloat16 view is read without any conversion).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import torch

from haystack_corrector.scoring import dot_scores, normalize_rows

Blocks = Iterable[tuple[int, int, torch.Tensor]]
BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits
FP32_UNIT_ROUNDOFF = 2.0**-24
RESCORE_MARGIN = 32  # candidates re-scored per query and block beyond top_k


def bf16_error_bound(dim: int) -> float:
    """A constant c with |ŝ − s| ≤ c·‖q‖·‖x‖ for the bfloat16 score ŝ of a float32 dot product s = q·x in ``dim``.

    With u = 2⁻⁸ (bfloat16) and v = 2⁻²⁴ (float32): rounding q and x to bfloat16 moves each term q_i·x_i by at most
    (2u + u²)·|q_i·x_i|; the products of bfloat16 numbers are exact in float32 and are summed in float32 (as every
    bfloat16 matrix unit and oneDNN/cuBLAS kernel does), which adds at most γ_d·Σ|q̂_i·x̂_i| with
    γ_d = d·v / (1 − d·v); the sum is rounded once more to bfloat16 (u·|ŝ|). With Σ|q_i·x_i| ≤ ‖q‖·‖x‖
    (Cauchy–Schwarz) and ‖q̂‖·‖x̂‖ ≤ (1 + u)²·‖q‖·‖x‖:

        c = (2u + u²) + γ_d·(1 + u)² + u·(1 + u)²·(1 + γ_d)

    (about 0.0118 for d = 384). ``tests/test_search.py`` checks it against measured errors.
    """
    u, v = BF16_UNIT_ROUNDOFF, FP32_UNIT_ROUNDOFF
    gamma = dim * v / (1 - dim * v)
    return (2 * u + u * u) + gamma * (1 + u) ** 2 + u * (1 + u) ** 2 * (1 + gamma)


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16")) or "bf16" in flags.split()


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (CUDA with bf16, or a CPU with AVX512-BF16/AMX).
    ``HAYSTACK_CORRECTOR_NO_BF16=1`` answers False (to force and test the float32 path)."""
    if os.environ.get("HAYSTACK_CORRECTOR_NO_BF16") == "1":
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and _cpu_has_bf16()


@torch.no_grad()
def blocked_topk(
    queries: torch.Tensor,
    blocks: Blocks | Callable[[], Blocks],
    top_k: int,
    excluded: list[set[int]],
    *,
    normalize: bool,
    partial: bool = False,
    scan_dtype: torch.dtype | None = None,
    row_norms: torch.Tensor | None = None,
    exact: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``top_k`` rows per query over ``blocks`` of ``(start, end, rows[start:end])``, best first.

    Rows may come in float32, float16 or bfloat16 (their storage dtype); every score is computed in float32 from them.

    ``blocks`` is an iterable, or a function returning a fresh one (needed by ``scan_dtype=torch.bfloat16``, whose
    fallback scans again). ``scan_dtype=torch.bfloat16`` scores in bfloat16 first and returns the same exact float32
    top k (module docstring); without native bfloat16 (:func:`bf16_supported`) it scans in float32 directly.
    ``row_norms``: float32 L2 norms of all rows, used by the bfloat16 pass instead of computing them per block.
    ``exact=False`` with the bfloat16 pass ranks by the bfloat16 values alone (:func:`_first_pass_topk`, no float32
    re-scoring; the scores returned are those values): for candidates that the caller re-scores anyway.
    ``partial=True`` (shards): fewer allowed rows than ``top_k`` give ``-inf`` scores and row ``-1`` instead of an
    error. Returns ``(scores, rows)`` on CPU. Non-finite scores (a diverged corrector) raise ``ValueError``.
    """
    if scan_dtype is not None and scan_dtype != torch.float32:
        if scan_dtype != torch.bfloat16:
            raise ValueError(f"scan_dtype must be torch.bfloat16 or torch.float32, got {scan_dtype}")
        if not callable(blocks):
            raise TypeError("scan_dtype=torch.bfloat16 needs blocks as a function returning a fresh iterable")
        if bf16_supported(queries.device):
            if not exact:
                scores, rows = _first_pass_topk(queries, blocks(), top_k, excluded, normalize, row_norms)
                return _finish(scores, rows, partial)
            return _bf16_topk(
                queries, blocks, top_k, excluded, normalize=normalize, partial=partial, row_norms=row_norms
            )
    return _exact_topk(queries, blocks() if callable(blocks) else blocks, top_k, excluded, normalize, partial)


def candidate_topk(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    vectors_of: Callable[[torch.Tensor], torch.Tensor],
    top_k: int,
    *,
    normalize: bool,
    partial: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``top_k`` per query among its own ``candidates`` only, scored in float32 as :func:`blocked_topk` scores.

    ``candidates``: (B, L) row indices, ``-1`` for none; ``vectors_of(rows)`` gives the vectors of those distinct
    rows (ascending), each computed once however many queries share it. Used to re-score a search of an older
    corrected view with the current corrector (``CorrectedCacheStore.search(view_rescore_depth=...)``). Returns
    ``(scores, rows)`` on CPU; fewer than ``top_k`` candidates give ``-inf`` and row ``-1`` with ``partial=True``,
    else raise ``ValueError``.
    """
    candidates = candidates.to(queries.device)
    valid = candidates >= 0
    distinct = torch.unique(candidates[valid])
    rows = vectors_of(distinct.cpu()).to(queries.device)
    scores = dot_scores(normalize_rows(queries.float(), normalize), normalize_rows(rows.float(), normalize))
    allowed = torch.zeros_like(scores, dtype=torch.bool)
    query_of = torch.arange(candidates.shape[0], device=queries.device).unsqueeze(1).expand_as(candidates)
    allowed[query_of[valid], torch.searchsorted(distinct, candidates[valid])] = True
    scores = scores.masked_fill(~allowed, -torch.inf)
    best_scores, position = torch.topk(scores, min(top_k, scores.shape[1]), dim=1)
    best_rows = distinct[position]
    best_scores, best_rows = _pad(best_scores, best_rows, top_k)  # fewer distinct candidates than top_k
    if not partial and (best_scores == -torch.inf).any():
        raise ValueError(f"a query has fewer than top_k={top_k} candidates to re-score")
    return _finish(best_scores, best_rows, partial)


def _exclusion_pairs(excluded: list[set[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every excluded (row, query) pair as two int64 tensors sorted by row (then query), so that a block's pairs
    are one ``searchsorted`` slice. Built with tensor ops: a loss step excludes thousands of text copies per query."""
    counts = torch.tensor([len(rows) for rows in excluded], dtype=torch.int64)
    rows = torch.tensor([row for rows in excluded for row in rows], dtype=torch.int64)
    queries = torch.repeat_interleave(torch.arange(len(excluded)), counts)  # ascending, so a stable sort by row
    order = torch.argsort(rows, stable=True)  # keeps each row's queries in order
    return rows[order], queries[order]


def _exclude(scores: torch.Tensor, start: int, end: int, pair_rows: torch.Tensor, pair_queries: torch.Tensor) -> None:
    if len(pair_rows):
        lo = int(torch.searchsorted(pair_rows, start))
        hi = int(torch.searchsorted(pair_rows, end))
        if hi > lo:
            device = scores.device
            scores[pair_queries[lo:hi].to(device), (pair_rows[lo:hi] - start).to(device)] = -torch.inf


def first_pass_error(dim: int, normalize: bool) -> float:
    """A constant e with |f − s| ≤ e·‖q‖·‖x‖ (dot) or ≤ e·‖q̂‖ (cosine) between the bfloat16 first-pass value f
    :func:`_bf16_topk` ranks by and the float32 score s that the exact scan computes for the same row.

    Dot product: f is the bfloat16 product itself, within :func:`bf16_error_bound` of the real dot product of the
    float32 operands. Cosine: f = bf16(ŝ · bf16(1/‖x‖)) rescales the unnormalised bfloat16 product ŝ = q̂·x by the row's
    float32 norm, rounded twice more to bfloat16, which multiplies it by (1 + θ) with |θ| ≤ 2u + u²; since
    |ŝ/‖x‖| ≤ (1 + c)·‖q̂‖, that adds (2u + u²)(1 + c)·‖q̂‖ to c·‖q̂‖. Both sides also carry float32 rounding (the
    norm, the normalisation and the exact re-score's own dot product, each within γ_(d+4) relative), covered by
    4·γ_(d+4) of slack.
    """
    u = BF16_UNIT_ROUNDOFF
    c = bf16_error_bound(dim)
    slack = 4 * (dim + 4) * FP32_UNIT_ROUNDOFF / (1 - (dim + 4) * FP32_UNIT_ROUNDOFF)
    if normalize:
        return c + (2 * u + u * u) * (1 + c) + slack
    return c + slack


def _bf16_topk(
    queries: torch.Tensor,
    make_blocks: Callable[[], Blocks],
    top_k: int,
    excluded: list[set[int]],
    *,
    normalize: bool,
    partial: bool,
    row_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """bfloat16 first pass, float32 re-scoring of every row that can still reach the top k, exact float32 top k.

    Each block is scored in bfloat16 (value f per row and query, within e of the exact score: :func:`first_pass_error`).
    Once a query holds k exact scores with the k-th at τ, a row can enter only if f + e ≥ τ: exactly those rows are
    re-scored in float32 (a compare, no top-k over the block), so nothing is left behind. Until then (the first
    block) the block's ``top_k + RESCORE_MARGIN`` best rows by f are re-scored; as soon as that gives every query k
    exact scores, the rest of the same block goes through the threshold. Only while some query still lacks k finite
    scores (tiny blocks, heavy exclusions) is the best f left behind remembered, and a query whose final k-th score
    does not exceed it plus e is scanned again in float32.

    Blocks arrive in their storage dtype: bfloat16 rows are used as they are, float16/float32 rows are rounded to
    bfloat16 once. ``row_norms`` (float32 L2 norms of every row, kept with a materialised view) saves computing them.
    """
    device = queries.device
    queries = normalize_rows(queries.float(), normalize)
    q16 = queries.to(torch.bfloat16)
    error = first_pass_error(queries.shape[1], normalize) * queries.norm(dim=1)  # (B,), times max ‖x‖ for dot
    pair_rows, pair_queries = _exclusion_pairs(excluded)
    keep = top_k + RESCORE_MARGIN
    best_scores = torch.empty((queries.shape[0], 0), device=device)
    best_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=device)
    left_behind = torch.full((queries.shape[0],), -torch.inf, device=device)  # best upper bound not re-scored
    for start, end, block in make_blocks():
        first, norms = _first_pass_block(block, start, end, q16, normalize, row_norms, pair_rows, pair_queries)
        row_error = error if normalize else error * norms.max()  # type: ignore[union-attr]
        if not _threshold_known(best_scores, top_k):
            take = min(keep + 1, first.shape[1])
            ranked, ranked_rows = torch.topk(first, take, dim=1)
            values, rows = ranked[:, :keep], ranked_rows[:, :keep]
            scores = dot_scores(queries, normalize_rows(block[rows].float(), normalize))  # (B, keep) float32
            scores[values == -torch.inf] = -torch.inf  # excluded rows stay out even when a block has few rows
            best_scores, best_rows = _merge(best_scores, best_rows, scores, rows + start, top_k)
            if take <= keep:
                continue  # every row of the block was re-scored
            if not _threshold_known(best_scores, top_k):
                left_behind = torch.maximum(left_behind, ranked[:, keep].float() + row_error)
                continue
            # The k-th exact score is known now: the rest of this block goes through the threshold too, rather
            # than being left behind for a float32 rescan (near-ties in the first block made that rescan common).
            first.scatter_(1, rows, -torch.inf)  # (already re-scored)
        scores, rows = _above_threshold(first, best_scores[:, -1] - row_error, block, queries, normalize)
        best_scores, best_rows = _merge(best_scores, best_rows, scores, rows + start, top_k)
    proven = left_behind < best_scores[:, -1]  # strictly: a row left behind cannot even tie the k-th score
    if not bool(proven.all()):
        redo = (~proven).nonzero().squeeze(1)
        redo_excluded = [excluded[int(q)] for q in redo]
        scores, rows = _exact_topk(queries[redo], make_blocks(), top_k, redo_excluded, normalize, partial)
        best_scores, best_rows = best_scores.cpu(), best_rows.cpu()
        best_scores[redo.cpu()] = scores
        best_rows[redo.cpu()] = rows
    return _finish(best_scores, best_rows, partial)


def _first_pass_block(
    block: torch.Tensor,
    start: int,
    end: int,
    q16: torch.Tensor,
    normalize: bool,
    row_norms: torch.Tensor | None,
    pair_rows: torch.Tensor,
    pair_queries: torch.Tensor,
    with_norms: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One block's bfloat16 first-pass values f, (B, rows) with excluded pairs at ``-inf``, and the rows' float32
    norms (cosine always needs them; ``with_norms=False`` skips them for a dot-product caller that has no use for
    them, returning None). Cosine: f = bf16(q̂·x) · bf16(1/‖x‖) (:func:`first_pass_error` bounds it). bfloat16 rows
    are used as they are; others are rounded to bfloat16 once."""
    rows16 = block if block.dtype == torch.bfloat16 else block.to(torch.bfloat16)
    norms = None
    if normalize or with_norms:
        norms = row_norms[start:end].to(q16.device) if row_norms is not None else block.float().norm(dim=1)
    first = rows16 @ q16.T  # (rows, B): the faster orientation of the product on CPU
    if norms is not None and normalize:
        first.mul_(norms.reciprocal().to(torch.bfloat16)[:, None])
    first = first.T  # (B, rows), a view
    _exclude(first, start, end, pair_rows, pair_queries)
    return first, norms


def _first_pass_topk(
    queries: torch.Tensor,
    blocks: Blocks,
    top_k: int,
    excluded: list[set[int]],
    normalize: bool,
    row_norms: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``top_k`` rows per query by the bfloat16 first-pass value f alone, with f's values as the scores: what
    :func:`_bf16_topk` computes before any float32 re-scoring, so it can differ from the exact top k by rows within
    :func:`first_pass_error` of the k-th score. Fewer allowed rows than ``top_k`` give ``-inf`` scores."""
    q16 = normalize_rows(queries.float(), normalize).to(torch.bfloat16)
    pair_rows, pair_queries = _exclusion_pairs(excluded)
    best_scores = torch.empty((queries.shape[0], 0), device=queries.device)
    best_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=queries.device)
    for start, end, block in blocks:
        first, _ = _first_pass_block(
            block, start, end, q16, normalize, row_norms, pair_rows, pair_queries, with_norms=False
        )
        values, rows = torch.topk(first, min(top_k, first.shape[1]), dim=1)
        best_scores, best_rows = _merge(best_scores, best_rows, values.float(), rows + start, top_k)
    return _pad(best_scores, best_rows, top_k)  # fewer allowed rows than top_k in all


def _threshold_known(best_scores: torch.Tensor, top_k: int) -> bool:
    """Whether every query holds k finite exact scores, so that its k-th score can serve as the threshold τ."""
    return best_scores.shape[1] == top_k and bool(torch.isfinite(best_scores[:, -1]).all())


def _above_threshold(
    first: torch.Tensor, threshold: torch.Tensor, block: torch.Tensor, queries: torch.Tensor, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 scores of every (query, row) whose bfloat16 value reaches the query's ``threshold`` (τ − e), padded to
    (B, M) with ``-inf`` scores and row 0. The threshold is rounded down to bfloat16, so the compare keeps a superset.
    """
    floor = threshold.to(torch.bfloat16)
    floor = torch.where(floor.float() > threshold, torch.nextafter(floor, torch.full_like(floor, -torch.inf)), floor)
    # Compare in the product's own (rows, B) layout (contiguous, faster), then group the few hits by query.
    row_index, query_index = (first.T >= floor[None, :]).nonzero(as_tuple=True)
    order = torch.argsort(query_index, stable=True)
    query_index, row_index = query_index[order], row_index[order]
    counts = torch.bincount(query_index, minlength=first.shape[0])
    width = int(counts.max()) if len(counts) else 0
    scores = torch.full((first.shape[0], width), -torch.inf, device=first.device)
    rows = torch.zeros((first.shape[0], width), dtype=torch.int64, device=first.device)
    if width:
        slot = torch.arange(len(query_index), device=first.device) - (torch.cumsum(counts, 0) - counts)[query_index]
        candidates = normalize_rows(block[row_index].float(), normalize)
        scores[query_index, slot] = (queries[query_index] * candidates).sum(dim=1)
        rows[query_index, slot] = row_index
    return scores, rows


def _exact_topk(
    queries: torch.Tensor, blocks: Blocks, top_k: int, excluded: list[set[int]], normalize: bool, partial: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    device = queries.device
    queries = normalize_rows(queries.float(), normalize)
    pair_rows, pair_queries = _exclusion_pairs(excluded)
    best_scores = torch.empty((queries.shape[0], 0), device=device)
    best_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=device)
    for start, end, block in blocks:
        scores = dot_scores(queries, normalize_rows(block.float(), normalize))
        _exclude(scores, start, end, pair_rows, pair_queries)
        rows = torch.arange(start, end, device=device).expand(queries.shape[0], -1)
        best_scores, best_rows = _merge(best_scores, best_rows, scores, rows, top_k)
    return _finish(best_scores, best_rows, partial)


def _merge(
    best_scores: torch.Tensor, best_rows: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top k merged with a block's (scores, absolute rows)."""
    merged_scores = torch.cat([best_scores, scores], dim=1)
    merged_rows = torch.cat([best_rows, rows], dim=1)
    best_scores, position = torch.topk(merged_scores, min(top_k, merged_scores.shape[1]), dim=1)
    return best_scores, torch.gather(merged_rows, 1, position)


def _pad(best_scores: torch.Tensor, best_rows: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, m) scores and rows widened to (B, top_k) with ``-inf`` scores and row ``-1``, as a partial scan has them."""
    missing = top_k - best_scores.shape[1]
    if missing <= 0:
        return best_scores, best_rows
    best_scores = torch.cat([best_scores, best_scores.new_full((best_scores.shape[0], missing), -torch.inf)], 1)
    return best_scores, torch.cat([best_rows, best_rows.new_full((best_rows.shape[0], missing), -1)], 1)


class NonFiniteScoresError(ValueError):
    """Scores came out NaN or inf: the rows searched produced them (the store says which rows those were)."""


def _finish(best_scores: torch.Tensor, best_rows: torch.Tensor, partial: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if partial:
        missing = best_scores == -torch.inf
        best_rows[missing] = -1
        if torch.isnan(best_scores).any() or (best_scores == torch.inf).any():
            raise NonFiniteScoresError(
                "The corrector produced non-finite scores; it has diverged (check its learning rate)"
            )
    elif not torch.isfinite(best_scores).all():
        raise NonFiniteScoresError(
            "The corrector produced non-finite scores; it has diverged (check its learning rate) or the queries "
            "are degenerate"
        )
    return best_scores.cpu(), best_rows.cpu()
