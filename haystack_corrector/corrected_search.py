"""A store's exact search: where each block of rows is read from, and the blocked top-k over them.

Corrected searches read the materialised view while it may be read (:class:`~haystack_corrector.corrected_view.ViewCache`)
and otherwise apply the corrector to each block of stale rows on the fly; stale searches read the stale rows. The
scan itself (float32, or bfloat16 with an exact float32 re-score) is :func:`~haystack_corrector.search.blocked_topk`.
With ``view_rescore_depth`` the view only proposes candidates, which are re-scored with the current corrector.
Pool mode (a FAISS index proposes candidates) is :func:`~haystack_corrector.faiss_pool.pool_search`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from haystack_corrector._validation import check_positive_int
from haystack_corrector.cache_rows import read_rows
from haystack_corrector.search import blocked_topk, candidate_topk

if TYPE_CHECKING:
    from haystack_corrector.cache_store import CorrectedCacheStore

__all__ = ["search_store"]


@torch.no_grad()
def search_store(
    store: CorrectedCacheStore,
    queries: torch.Tensor,
    top_k: int,
    excluded: list[set[int]],
    corrected: bool,
    *,
    partial: bool = False,
    pool_size: int | None = None,
    max_view_age: int | None = None,
    scan_dtype: torch.dtype | None = None,
    view_rescore_depth: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arguments of :meth:`CorrectedCacheStore.search`, already checked (``queries`` (B, d) float32, ``excluded``
    one row set per query). ``partial=True`` (shards): fewer allowed rows than ``top_k`` give -inf scores, row -1."""
    if pool_size is not None:
        from haystack_corrector.faiss_pool import pool_search

        return pool_search(store, queries, top_k, excluded, pool_size, corrected)
    rows, corrector = store.rows, store.corrector
    device = corrector.device
    if view_rescore_depth is not None:
        view_rescore_depth = check_positive_int(view_rescore_depth, "view_rescore_depth")
    view = store.views.for_search(corrector, corrected, max_view_age, store.materialize)
    rescore = view is not None and view_rescore_depth is not None
    depth = min(max(top_k, view_rescore_depth or 0), len(rows)) if rescore else top_k
    if scan_dtype is None and view is not None and view.dtype == "bfloat16":
        scan_dtype = torch.bfloat16  # a bfloat16 view is read by the bfloat16 pass unless float32 is asked for

    def blocks() -> Iterator[tuple[int, int, torch.Tensor]]:
        # Rows travel in their storage dtype; the scan converts them once (to float32, or to bfloat16).
        for start, end in rows.blocks():
            if view is not None:
                yield start, end, read_rows(view.data, start, end, dtype=None).to(device)
            elif corrected:
                yield start, end, corrector.correct(*rows.block(start, end))
            else:
                yield start, end, read_rows(rows.storage, start, end, dtype=None).to(device)

    normalize = store.similarity == "cosine"
    scores, found = blocked_topk(
        queries.to(device),
        blocks,
        depth,
        excluded,
        normalize=normalize,
        partial=partial or rescore,
        scan_dtype=scan_dtype,
        row_norms=None if view is None else view.norms,
        exact=not rescore,  # candidates that are re-scored below need no exact view scores of their own
    )
    if not rescore:
        return scores, found
    return candidate_topk(
        queries.to(device),
        found,
        lambda candidates: corrector.correct(rows.stale_rows(candidates), rows.side_rows(candidates)),
        top_k,
        normalize=normalize,
        partial=partial,
    )
