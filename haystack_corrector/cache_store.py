"""CorrectedCacheStore: a stale embedding cache g'(y) plus the corrector h that maps it to the current space.

This file is the store's public face; its parts live in files named after them: the stale rows and ids
(``cache_rows.py``, the base class ``CacheRows``), the materialised corrected view (``corrected_view.py``: the store
holds a ``ViewCache`` as ``store.views``; ``materialize`` fills it), the blocked top-k scan (``search.py``) and its scoring (``scoring.py``), pool mode
(``faiss_pool.py``), saving and loading (``persistence.py``, a mixin).

Search is exact and blocked: rows are scanned ``block_size`` at a time, the corrector is applied to each block on the
fly (or a materialised corrected view is read), and a running top-k is merged, so memory is bounded by the block size
and the batch of queries, never by the number of rows. For a memory-mapped cache (or view), the pages of each block are
released from the process once the block is copied, so resident memory stays bounded too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from haystack_corrector import persistence
from haystack_corrector._validation import (
    ArrayLike,
    as_float_matrix,
    as_index_tensor,
    as_row_sets,
    check_choice,
    check_finite,
    check_int,
    check_positive_int,
    check_rows_scorable,
)
from haystack_corrector.cache_rows import CacheRows, DefaultIds, read_rows
from haystack_corrector.corrected_view import ViewCache
from haystack_corrector.corrector import CORRECTOR_CHUNK_ROWS, Corrector
from haystack_corrector.persistence import DTYPES
from haystack_corrector.precision import float32
from haystack_corrector.scoring import SIMILARITIES, normalize_rows
from haystack_corrector.search import NonFiniteScoresError, blocked_topk, candidate_topk

logger = logging.getLogger(__name__)

__all__ = ["CorrectedCacheStore"]


class CorrectedCacheStore(CacheRows, persistence.StorePersistence):
    """Stale cached target embeddings, their ids, and the corrector applied to them at search time.

    Args:
        embeddings: (N, d) float numpy array or torch tensor: the stale cache g'(y).
        ids: N unique string ids (default ``"0"`` .. ``"N-1"``).
        corrector: the :class:`Corrector` to apply; default a fresh identity ``Corrector(d)`` (with side features,
            ``Corrector(d, side_dim=s)`` standardised to them: :meth:`standardize_side_features`).
        similarity: ``"cosine"`` (rows and queries L2-normalised at scoring time) or ``"dot"``.
        dtype: storage dtype, ``"float32"`` or ``"float16"``; all arithmetic is float32.
        texts: optional N target texts, for training adapters that re-encode sampled negatives.
        block_size: rows scored per block during a scan (bounds the memory of a search).
        side_features: optional (N, s) per-row features the corrector reads next to g' (``Corrector(side_dim=s)``;
            ``encode_corpus(side_layers=...)`` keeps mean-pooled hidden states from the same one pass). Stored as
            float16: 2·s bytes per row (s = 1,536 for 4 layers of MiniLM: 3 KB per row, 300 GB at 100M rows).

    Example:
        >>> import torch
        >>> from haystack_corrector import CorrectedCacheStore
        >>> store = CorrectedCacheStore(torch.eye(4), ids=["a", "b", "c", "d"], similarity="dot")
        >>> scores, rows = store.search(torch.tensor([[0.0, 1.0, 0.5, 0.0]]), top_k=2)
        >>> [store.ids[i] for i in rows[0].tolist()]
        ['b', 'c']
    """

    is_collective = False  # searches and corrector steps involve only this process (see ShardedCacheStore)

    def __init__(
        self,
        embeddings: ArrayLike,
        ids: Sequence[str] | None = None,
        corrector: Corrector | None = None,
        similarity: str = "cosine",
        dtype: str = "float32",
        texts: Sequence[str] | None = None,
        block_size: int = 16384,
        side_features: ArrayLike | None = None,
    ) -> None:
        self.similarity = check_choice(similarity, "similarity", SIMILARITIES)
        self.dtype = check_choice(dtype, "dtype", tuple(DTYPES))
        self.block_size = check_positive_int(block_size, "block_size")
        matrix = as_float_matrix(embeddings, "embeddings")
        storage = matrix.to(DTYPES[self.dtype]).cpu().contiguous()
        _check_scorable(storage, f"embeddings (after conversion to {self.dtype})", self.block_size)
        side = None
        if side_features is not None:
            side = as_float_matrix(side_features, "side_features").to(torch.float16).cpu().contiguous()
            check_finite(side, "side_features (after conversion to float16)")
        self._init_storage(storage, ids, corrector, side)
        self.texts = texts  # type: ignore[assignment]

    # ----------------------------------------------------------------------------------------------- construction
    @classmethod
    def _from_storage(
        cls,
        storage: torch.Tensor | np.ndarray,
        ids: Sequence[str] | None,
        corrector: Corrector | None,
        similarity: str,
        dtype: str,
        block_size: int,
        side: torch.Tensor | np.ndarray | None = None,
    ) -> CorrectedCacheStore:
        """A store around storage already in its final dtype (a tensor or a memory map), without converting or copying."""
        store = cls.__new__(cls)
        store.similarity = check_choice(similarity, "similarity", SIMILARITIES)
        store.dtype = check_choice(dtype, "dtype", tuple(DTYPES))
        store.block_size = check_positive_int(block_size, "block_size")
        store._init_storage(storage, ids, corrector, side)
        return store

    def _init_storage(
        self,
        storage: torch.Tensor | np.ndarray,
        ids: Sequence[str] | None,
        corrector: Corrector | None,
        side: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        self._init_rows(storage, ids, side)
        self.views = ViewCache()  # the materialised corrected view, if any (corrected_view.py)
        default = Corrector(self._dim, side_dim=self.side_dim) if corrector is None else corrector
        self._corrector = self._check_corrector(default, self._dim, self.side_dim)
        if corrector is None and self.side_dim:
            self.standardize_side_features()
        self.pool: Any = None  # a FaissPool once build_pool() ran (pool mode)
        # What built the rows (encode_corpus fills it: model, max_seq_length, normalize, similarity), saved with the
        # store; a training loss refuses a store another setting built. None: unknown (built from plain arrays).
        self.encoder: dict[str, Any] | None = None

    def _share_rows_of(self, other: CorrectedCacheStore) -> None:
        """Become a second handle on ``other``'s rows, ids, texts and corrector: shared, not copied or re-checked."""
        self.similarity, self.dtype, self.block_size = other.similarity, other.dtype, other.block_size
        self._init_storage(other._storage, None, other._corrector, other._side)
        self._ids, self._texts = other._ids, other._texts
        self.encoder = other.encoder

    @staticmethod
    def _check_corrector(corrector: Any, dim: int, side_dim: int = 0) -> Corrector:
        if not isinstance(corrector, Corrector):
            raise TypeError(f"corrector must be a haystack_corrector.Corrector, got {type(corrector).__name__}")
        if corrector.dim != dim:
            raise ValueError(f"corrector has dim {corrector.dim} but the cache has dimension {dim}")
        if corrector.side_dim != side_dim:
            raise ValueError(
                f"corrector reads side features of width {corrector.side_dim} but the cache keeps {side_dim} per row"
            )
        return corrector

    def __repr__(self) -> str:
        kind = "memory-mapped" if isinstance(self._storage, np.ndarray) else "in-memory"
        return (
            f"CorrectedCacheStore({self._num_rows} rows, dim={self._dim}, similarity={self.similarity!r}, "
            f"dtype={self.dtype!r}, {kind}, materialized={self.is_materialized})"
        )

    @property
    def corrector(self) -> Corrector:
        return self._corrector

    @corrector.setter
    def corrector(self, corrector: Corrector) -> None:
        self._corrector = self._check_corrector(corrector, self._dim, self.side_dim)
        self.views.clear()

    # ------------------------------------------------------------------------------------------- corrected view
    @property
    def has_view(self) -> bool:
        """True when :meth:`materialize` was called (the view may be out of date; see :attr:`is_materialized`)."""
        return self.views.view is not None

    @property
    def is_materialized(self) -> bool:
        """True when a corrected view exists and was computed with the corrector's current weights."""
        return self.views.is_current(self._corrector)

    @property
    def view_age(self) -> int | None:
        """Corrector steps (``Corrector.steps``) since the view was computed; None without a view."""
        return self.views.age(self._corrector)

    def materialize(
        self, path: str | os.PathLike[str] | None = None, overwrite: bool = False, dtype: str | None = None
    ) -> None:
        """Compute h(g') for all rows once and keep it; searches read it while it is current.

        Args:
            path: write the view to this ``.npy`` file and memory-map it (for caches larger than memory; the
                file is written atomically, and later refreshes reuse the same path). Default: keep it in memory,
                or in the file of the previous ``materialize(path)`` call. The view is a cache: :meth:`save` does
                not store it. An existing file that is not this store's view is refused (:class:`FileExistsError`)
                unless ``overwrite=True``.
            overwrite: replace an existing file at ``path`` that this store did not write.
            dtype: the view's dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``. Default: the previous view's,
                else the store's. ``"bfloat16"`` is what ``search(..., scan_dtype=torch.bfloat16)`` reads without
                converting (the fastest exact scan where the hardware has bfloat16 units) and is computed under
                bfloat16 autocast there; its rows are rounded to 8 significant bits (float16: 11), so its exact top
                k is that of slightly coarser vectors (``benchmarks/view_precision.py`` measures the difference).

        Any update of the corrector's weights makes the view out of date; searches then fall back to applying the
        corrector block by block, so results are exact for the current corrector, unless the search tolerates an
        older view (``search(..., max_view_age=K)``). Call again to refresh.
        """
        if dtype is None:
            dtype = self.views.view.dtype if self.views.view is not None else self.dtype
        self.views.compute(
            self._corrector,
            # Blocks of CORRECTOR_CHUNK_ROWS rows: every temporary of the corrector stays small (corrector.py).
            lambda: (
                (s, e, self._correct_block(s, e)) for s, e in self._blocks(min(self.block_size, CORRECTOR_CHUNK_ROWS))
            ),
            (len(self), self.dim),
            self._device,
            dtype,
            path,
            overwrite,
        )

    def standardize_side_features(self) -> None:
        """Set the corrector's side-feature standardisation from this cache's statistics (one pass over the rows).

        The corrector then reads each side feature centred and scaled so that together they weigh about as much as
        the embedding (:meth:`Corrector.standardize_side`). Call it after giving the store a new side-feature
        corrector; a store's default corrector gets it at construction.
        """
        if not self.side_dim:
            raise ValueError("This cache keeps no side features: nothing to standardise")
        mean, std, embedding_norm = self.side_feature_statistics()
        self._corrector.standardize_side(mean, std, embedding_norm if embedding_norm > 0 else 1.0)
        self.views.clear()  # the corrected embeddings just changed

    def reduce_corrector_gradients(self) -> None:
        """Called by :class:`CorrectorTrainer` between backward and step: nothing to do in one process.

        :class:`~haystack_corrector.distributed.ShardedCacheStore` averages the gradients over its ranks here, so the
        trainer needs no knowledge of distribution.
        """

    @property
    def _device(self) -> torch.device:
        parameter = next(self._corrector.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def _correct(self, stale: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """h(g') in float32, CORRECTOR_CHUNK_ROWS rows per corrector call (for speed: see the constant in corrector.py)."""
        device = self._device
        chunks = [
            self._corrector(
                stale[i : i + CORRECTOR_CHUNK_ROWS].to(device, torch.float32),
                None if side is None else side[i : i + CORRECTOR_CHUNK_ROWS].to(device, torch.float32),
            ).float()
            for i in range(0, max(int(stale.shape[0]), 1), CORRECTOR_CHUNK_ROWS)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _correct_block(self, start: int, end: int) -> torch.Tensor:
        stale = read_rows(self._storage, start, end, dtype=None)  # converted to float32 chunk by chunk
        side = None if self._side is None else read_rows(self._side, start, end, dtype=None)
        return self._correct(stale, side)

    def corrected_embeddings(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor:
        """h(g') for these rows (all rows if None), computed in float32 with the current corrector, on CPU."""
        with float32():
            return self._corrected_embeddings(indices)

    def _corrected_embeddings(self, indices: ArrayLike | Sequence[int] | None) -> torch.Tensor:
        if indices is None:
            return torch.cat([self._correct_block(s, e).cpu() for s, e in self._blocks()])
        rows = as_index_tensor(indices, "indices", num_rows=self._num_rows)
        return self._correct(self._stale_rows(rows), self._side_rows(rows)).cpu()

    def replace_embeddings(self, embeddings: ArrayLike) -> None:
        """Swap in a newly encoded cache (same rows, same order), e.g. for a periodic full re-encode.

        Ids, texts and the corrector are kept; a materialised view and a FAISS pool (built on the old vectors) are
        dropped — call :meth:`build_pool` again if you use pool mode.
        """
        matrix = as_float_matrix(embeddings, "embeddings", dim=self._dim)
        if matrix.shape[0] != self._num_rows:
            raise ValueError(f"embeddings has {matrix.shape[0]} rows but the cache has {self._num_rows}")
        storage = matrix.to(DTYPES[self.dtype]).cpu().contiguous()
        _check_scorable(storage, f"embeddings (after conversion to {self.dtype})", self.block_size)
        self._storage = storage
        self.views.clear()
        if self.pool is not None:
            logger.info("replace_embeddings dropped the FAISS pool built on the old vectors; call build_pool() again")
            self.pool = None

    def build_pool(self, index_type: str = "flat", **options: Any) -> None:
        """Build a FAISS index over the stale vectors for pool-mode search (``search(..., pool_size=L)``).

        ``index_type`` is ``"flat"``, ``"ivf"`` or ``"hnsw"``; ``options`` go to :class:`~haystack_corrector.faiss_pool.FaissPool`.
        The index is saved and loaded with the store.
        """
        from haystack_corrector.faiss_pool import FaissPool

        self.pool = FaissPool(index_type, **options)
        self.pool.build(normalize_rows(self.stale_embeddings(), self.similarity == "cosine").numpy())

    def without_side_features(self) -> CorrectedCacheStore:
        """This store's rows, ids and texts (shared, not copied) without side features, with an identity corrector."""
        store = CorrectedCacheStore._from_storage(
            self._storage, None, Corrector(self._dim), self.similarity, self.dtype, self.block_size
        )
        store._ids, store._texts = self._ids, self._texts
        return store

    def shard(self, start: int, end: int) -> CorrectedCacheStore:
        """A store over rows [start, end) that shares this store's memory (or memory map) and its corrector object.

        Ids (``"0"``.. local when this store has default ids) and texts are sliced; no rows are copied.
        """
        start, end = check_int(start, "start"), check_int(end, "end")
        if not 0 <= start < end <= self._num_rows:
            raise ValueError(f"shard needs 0 <= start < end <= {self._num_rows}, got start={start}, end={end}")
        ids = None if isinstance(self._ids, DefaultIds) else list(self._ids[start:end])
        part = CorrectedCacheStore._from_storage(
            self._storage[start:end],
            ids,
            self._corrector,
            self.similarity,
            self.dtype,
            self.block_size,
            None if self._side is None else self._side[start:end],
        )
        if self._texts is not None:
            part._texts = self._texts[start:end]
        return part

    # ----------------------------------------------------------------------------------------------------- search
    def search(
        self,
        query_embeddings: ArrayLike,
        top_k: int,
        exclude: Iterable[Iterable[int]] | None = None,
        corrected: bool = True,
        pool_size: int | None = None,
        max_view_age: int | None = None,
        scan_dtype: torch.dtype | None = None,
        view_rescore_depth: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k rows for each query by corrected (default) or stale similarity.

        Args:
            query_embeddings: (B, d) float array/tensor.
            top_k: rows to return per query.
            exclude: optional per-query collections of row indices never to return (e.g. the query's positives).
            corrected: score against h(g') (True) or the raw stale cache g' (False).
            pool_size: pool mode (after :meth:`build_pool`): re-rank only each query's ``pool_size`` best rows by
                stale score from the FAISS index; exact when ``pool_size >= len(store)`` with a flat index.
            max_view_age: tolerate a materialised view up to this many corrector updates old: search it, and
                re-materialise (to the same place, memory or file) only when it is older. Trades exactness for
                speed while the corrector trains (``benchmarks/view_age.py`` measures the cost). None (default):
                read the view only while it matches the corrector exactly, else apply the corrector block by block.
            scan_dtype: ``torch.bfloat16`` scores each block in bfloat16 first and re-scores in float32 every row the
                proven rounding bound cannot rule out, so the result is the same exact top k, faster where the
                hardware has bfloat16 matrix units (:mod:`haystack_corrector.search`); ``torch.float32``: float32
                throughout; ``None`` (default): bfloat16 first when the search reads a bfloat16 view
                (``materialize(dtype="bfloat16")``), else float32.
            view_rescore_depth: when a corrected search reads a materialised view, take each query's
                ``view_rescore_depth`` best rows of the view and re-score them in float32 with the current corrector
                (applied to just those rows), returning the best ``top_k`` of them. A bfloat16 view on bfloat16
                hardware is ranked for this by its bfloat16 products alone (the exact float32 pass over the view
                would be redundant: the rows are re-scored anyway). With ``max_view_age`` this keeps
                an older view's ranking close to the exact one for little cost (B × L corrected rows), and the scores
                are always the current corrector's. Exact when every row of the exact top k is among the view's
                best L. None (default): the view's own ranking and scores. Pool mode (``pool_size``) never reads
                the view, so it ignores this: its candidates are already re-scored with the current corrector.

        Returns:
            ``(scores, indices)``: (B, top_k) float32 scores and int64 row indices on CPU, best first.
        """
        queries = as_float_matrix(query_embeddings, "query_embeddings", dim=self._dim)
        check_rows_scorable(queries, "query_embeddings")
        top_k = check_positive_int(top_k, "top_k")
        excluded = as_row_sets(exclude, "exclude", num_queries=queries.shape[0], num_rows=self._num_rows)
        available = self._num_rows - max((len(rows) for rows in excluded), default=0)
        if top_k > available:
            raise ValueError(
                f"top_k={top_k} is larger than the number of rows left to return ({available} of {self._num_rows} "
                f"after exclusions)"
            )
        try:
            with float32():  # float32 scores (and the corrector) even inside a caller's autocast region
                return self._search_any(
                    queries, top_k, excluded, corrected, pool_size, max_view_age, scan_dtype, view_rescore_depth
                )
        except NonFiniteScoresError:
            if corrected:
                raise
            raise ValueError(
                "The stale cache's rows produced non-finite scores (corrected=False, so not the corrector): its rows "
                "hold NaN/inf or values too large for float32, e.g. a memory-mapped file changed after it was "
                "loaded. Load it with verify=True to find the row"
            ) from None

    def _search_any(
        self,
        queries: torch.Tensor,
        top_k: int,
        excluded: list[set[int]],
        corrected: bool,
        pool_size: int | None,
        max_view_age: int | None,
        scan_dtype: Any,
        view_rescore_depth: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if pool_size is not None:
            from haystack_corrector.faiss_pool import pool_search

            return pool_search(self, queries, top_k, excluded, pool_size, corrected)
        return self._search(
            queries,
            top_k,
            excluded,
            corrected,
            max_view_age=max_view_age,
            scan_dtype=scan_dtype,
            view_rescore_depth=view_rescore_depth,
        )

    @torch.no_grad()
    def _search(
        self,
        queries: torch.Tensor,
        top_k: int,
        excluded: list[set[int]],
        corrected: bool,
        partial: bool = False,
        max_view_age: int | None = None,
        scan_dtype: torch.dtype | None = None,
        view_rescore_depth: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocked exact scan. ``partial=True`` (shards): fewer allowed rows than top_k give -inf scores, row -1."""
        device = self._device
        if view_rescore_depth is not None:
            view_rescore_depth = check_positive_int(view_rescore_depth, "view_rescore_depth")
        view = self.views.for_search(self._corrector, corrected, max_view_age, self.materialize)
        rescore = view is not None and view_rescore_depth is not None
        depth = min(max(top_k, view_rescore_depth or 0), self._num_rows) if rescore else top_k
        rows = None if view is None else view.data
        if scan_dtype is None and view is not None and view.dtype == "bfloat16":
            scan_dtype = torch.bfloat16  # a bfloat16 view is read by the bfloat16 pass unless float32 is asked for

        def blocks() -> Iterator[tuple[int, int, torch.Tensor]]:
            # Rows travel in their storage dtype; the scan converts them once (to float32, or to bfloat16).
            for start, end in self._blocks():
                if rows is not None:
                    yield start, end, read_rows(rows, start, end, dtype=None).to(device)
                elif corrected:
                    yield start, end, self._correct_block(start, end)
                else:
                    yield start, end, read_rows(self._storage, start, end, dtype=None).to(device)

        normalize = self.similarity == "cosine"
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
            lambda rows: self._correct(self._stale_rows(rows), self._side_rows(rows)),
            top_k,
            normalize=normalize,
            partial=partial,
        )


def _check_scorable(storage: torch.Tensor, name: str, block_size: int) -> None:
    """Every row finite and scorable in float32 (:func:`check_rows_scorable`), checked block by block."""
    for start in range(0, storage.shape[0], block_size):
        check_rows_scorable(storage[start : start + block_size], name, offset=start)
