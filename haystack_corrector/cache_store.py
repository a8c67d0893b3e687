"""CorrectedCacheStore: a stale embedding cache g'(y) plus the corrector h that maps it to the current space.

This file is the store's public face. It holds its parts as objects, each in a file named after it: the stale rows,
ids and texts (``store.rows``, a :class:`~haystack_corrector.cache_rows.CacheRows`), the materialised corrected view
(``store.views``, a :class:`~haystack_corrector.corrected_view.ViewCache`), the corrector, and a FAISS pool for pool
mode (``store.pool``, ``faiss_pool.py``). The search over them is ``corrected_search.py`` (the blocked scan itself:
``search.py``); saving and loading are the functions of ``persistence.py``.

Search is exact and blocked: rows are scanned ``block_size`` at a time, the corrector is applied to each block on the
fly (or a materialised corrected view is read), and a running top-k is merged, so memory is bounded by the block size
and the batch of queries, never by the number of rows. For a memory-mapped cache (or view), the pages of each block are
released from the process once the block is copied, so resident memory stays bounded too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
from haystack_corrector.cache_rows import DTYPES, CacheRows
from haystack_corrector.corrected_search import search_store
from haystack_corrector.corrected_view import ViewCache
from haystack_corrector.corrector import CORRECTOR_CHUNK_ROWS, Corrector
from haystack_corrector.precision import float32
from haystack_corrector.scoring import SIMILARITIES, normalize_rows
from haystack_corrector.search import NonFiniteScoresError

logger = logging.getLogger(__name__)

__all__ = ["CorrectedCacheStore"]


class CorrectedCacheStore:
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
        check_choice(dtype, "dtype", tuple(DTYPES))
        block_size = check_positive_int(block_size, "block_size")
        matrix = as_float_matrix(embeddings, "embeddings")
        storage = matrix.to(DTYPES[dtype]).cpu().contiguous()
        _check_scorable(storage, f"embeddings (after conversion to {dtype})", block_size)
        side = None
        if side_features is not None:
            side = as_float_matrix(side_features, "side_features").to(torch.float16).cpu().contiguous()
            check_finite(side, "side_features (after conversion to float16)")
        self._assemble(CacheRows(storage, ids, side, block_size), corrector, similarity)
        self.texts = texts  # type: ignore[assignment]

    @classmethod
    def from_rows(
        cls, rows: CacheRows, corrector: Corrector | None = None, similarity: str = "cosine"
    ) -> CorrectedCacheStore:
        """A store around rows already in their final dtype (a tensor or a memory map): nothing converted or copied.

        Without a corrector, a fresh identity ``Corrector(d)`` (standardised to the side features, if any)."""
        store = cls.__new__(cls)
        store._assemble(rows, corrector, similarity)
        return store

    def _assemble(self, rows: CacheRows, corrector: Corrector | None, similarity: str) -> None:
        self.similarity = check_choice(similarity, "similarity", SIMILARITIES)
        self.rows = rows
        self.views = ViewCache()  # the materialised corrected view, if any (corrected_view.py)
        default = Corrector(rows.dim, side_dim=rows.side_dim) if corrector is None else corrector
        self._corrector = self._check_corrector(default, rows.dim, rows.side_dim)
        if corrector is None and rows.side_dim:
            self.standardize_side_features()
        self.pool: Any = None  # a FaissPool once build_pool() ran (pool mode)
        # What built the rows (encode_corpus fills it: model, max_seq_length, normalize, similarity), saved with the
        # store; a training loss refuses a store another setting built. None: unknown (built from plain arrays).
        self.encoder: dict[str, Any] | None = None

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
        kind = "memory-mapped" if self.rows.is_memory_mapped else "in-memory"
        return (
            f"CorrectedCacheStore({len(self)} rows, dim={self.dim}, similarity={self.similarity!r}, "
            f"dtype={self.dtype!r}, {kind}, materialized={self.is_materialized})"
        )

    @property
    def corrector(self) -> Corrector:
        return self._corrector

    @corrector.setter
    def corrector(self, corrector: Corrector) -> None:
        self._corrector = self._check_corrector(corrector, self.dim, self.side_dim)
        self.views.clear()

    # ----------------------------------------------------------------------- the rows (store.rows: cache_rows.py)
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return self.rows.dim

    @property
    def dtype(self) -> str:
        """The storage dtype of the stale rows, ``"float32"`` or ``"float16"``."""
        return self.rows.dtype

    @property
    def block_size(self) -> int:
        """Rows scored per block during a scan."""
        return self.rows.block_size

    @property
    def ids(self) -> Sequence[str]:
        """The row ids (a list, or a lightweight sequence of ``"0"`` .. ``"N-1"`` when none were given)."""
        return self.rows.ids

    @property
    def texts(self) -> list[str] | None:
        """The target texts row by row, when known (``encode_corpus`` and ``build_training_dataset`` set them)."""
        return self.rows.texts

    @texts.setter
    def texts(self, texts: Sequence[str] | None) -> None:
        self.rows.texts = texts  # type: ignore[assignment]

    @property
    def side_dim(self) -> int:
        """Width of the side features kept per row (0 when the cache has none)."""
        return self.rows.side_dim

    @property
    def is_memory_mapped(self) -> bool:
        return self.rows.is_memory_mapped

    def rows_of(self, ids: Iterable[str]) -> list[int]:
        """Row indices of the given ids (KeyError naming the first unknown id)."""
        return self.rows.rows_of(ids)

    def with_text_copies(self, rows: Iterable[int]) -> set[int]:
        """``rows`` plus every row with the identical text (:meth:`CacheRows.with_text_copies`: samplers exclude
        a positive's copies, which score like the positive itself)."""
        return self.rows.with_text_copies(rows)

    def stale_embeddings(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor:
        """The stale cached embeddings g' of these rows (all rows if None), float32 on CPU."""
        return self.rows.stale_embeddings(indices)

    def side_features(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor | None:
        """The side features of these rows (all rows if None), float32 on CPU; None when the cache has none."""
        return self.rows.side_features(indices)

    def side_feature_statistics(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-feature mean and std of the side features, and the RMS norm of the stale embeddings (block by block)."""
        return self.rows.side_feature_statistics()

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
                (s, e, self._corrector.correct(*self.rows.block(s, e)))
                for s, e in self.rows.blocks(min(self.block_size, CORRECTOR_CHUNK_ROWS))
            ),
            (len(self), self.dim),
            self._corrector.device,
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

    def corrected_embeddings(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor:
        """h(g') for these rows (all rows if None), computed in float32 with the current corrector, on CPU."""
        with float32():
            return self._corrected_embeddings(indices)

    def _corrected_embeddings(self, indices: ArrayLike | Sequence[int] | None) -> torch.Tensor:
        if indices is None:
            return torch.cat([self._corrector.correct(*self.rows.block(s, e)).cpu() for s, e in self.rows.blocks()])
        rows = as_index_tensor(indices, "indices", num_rows=len(self))
        return self._corrector.correct(self.rows.stale_rows(rows), self.rows.side_rows(rows)).cpu()

    def replace_embeddings(self, embeddings: ArrayLike) -> None:
        """Swap in a newly encoded cache (same rows, same order), e.g. for a periodic full re-encode.

        Ids, texts and the corrector are kept; a materialised view and a FAISS pool (built on the old vectors) are
        dropped — call :meth:`build_pool` again if you use pool mode.
        """
        matrix = as_float_matrix(embeddings, "embeddings", dim=self.dim)
        if matrix.shape[0] != len(self):
            raise ValueError(f"embeddings has {matrix.shape[0]} rows but the cache has {len(self)}")
        storage = matrix.to(DTYPES[self.dtype]).cpu().contiguous()
        _check_scorable(storage, f"embeddings (after conversion to {self.dtype})", self.block_size)
        self.rows.replace_storage(storage)
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
        return CorrectedCacheStore.from_rows(self.rows.without_side_features(), Corrector(self.dim), self.similarity)

    def shard(self, start: int, end: int) -> CorrectedCacheStore:
        """A store over rows [start, end) that shares this store's memory (or memory map) and its corrector object.

        Ids (``"0"``.. local when this store has default ids) and texts are sliced; no rows are copied.
        """
        start, end = check_int(start, "start"), check_int(end, "end")
        if not 0 <= start < end <= len(self):
            raise ValueError(f"shard needs 0 <= start < end <= {len(self)}, got start={start}, end={end}")
        return CorrectedCacheStore.from_rows(self.rows.shard(start, end), self._corrector, self.similarity)

    # ------------------------------------------------------------------------ saving and loading (persistence.py)
    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Save ids, stale embeddings (``.npy``), texts, config and corrector into the folder ``path``, atomically.

        A new, empty or earlier store folder; anything else is refused unless ``overwrite=True``, which replaces only
        the store's own files. Saves of one folder from several processes run one after the other. The materialised
        view is a cache and is not saved. The whole rule: :func:`~haystack_corrector.persistence.save_store`.
        """
        persistence.save_store(self, path, overwrite=overwrite)

    @staticmethod
    def check_save_path(path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Raise the error :meth:`save` would raise for ``path`` (call it before encoding a corpus to save)."""
        persistence.check_save_path(path, overwrite=overwrite)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        mmap: bool = True,
        verify: bool | None = None,
        accept_missing_checksums: bool = False,
    ) -> CorrectedCacheStore:
        """Load a store saved with :meth:`save`: one generation, even while another process saves to ``path``.

        ``mmap`` memory-maps the embeddings; ``verify`` (default: only when ``mmap=False``) checks their SHA-256 and
        that every row is scorable, which reads the whole file; every other file is always checked against its
        checksum. ``ValueError`` names the damaged file. What each mode detects:
        :func:`~haystack_corrector.persistence.read_store` and ``docs/reliability.md``.
        """
        saved = persistence.read_store(
            path, mmap=mmap, verify=verify, accept_missing_checksums=accept_missing_checksums
        )
        try:
            store = cls.from_rows(
                CacheRows(saved.storage, saved.ids, saved.side, saved.block_size), saved.corrector, saved.similarity
            )
            store.texts = saved.texts  # type: ignore[assignment]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Corrupted store {saved.directory}: {exc}") from exc
        store.pool, store.encoder = saved.pool, saved.encoder
        return store

    @classmethod
    def from_npy(
        cls,
        file: str | os.PathLike[str],
        ids: Sequence[str] | None = None,
        corrector: Corrector | None = None,
        similarity: str = "cosine",
        texts: Sequence[str] | None = None,
        block_size: int = 16384,
        verify: bool = True,
    ) -> CorrectedCacheStore:
        """Memory-map an existing (N, d) float16/float32 ``.npy`` file of embeddings as the stale cache, without copying.

        For caches written by another pipeline; the storage dtype is the file's, and the file must not change while
        the store uses it. ``verify`` (default True) reads it once to refuse NaN/inf rows and rows too large to score
        in float32 (``ValueError`` naming the file and the row). :meth:`save` writes a regular store folder.
        """
        array = persistence.read_embeddings_npy(Path(file), verify=verify)
        rows = CacheRows(array, ids, block_size=block_size)
        store = cls.from_rows(rows, corrector, similarity)
        store.texts = texts  # type: ignore[assignment]
        return store

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
        queries = as_float_matrix(query_embeddings, "query_embeddings", dim=self.dim)
        check_rows_scorable(queries, "query_embeddings")
        top_k = check_positive_int(top_k, "top_k")
        excluded = as_row_sets(exclude, "exclude", num_queries=queries.shape[0], num_rows=len(self))
        available = len(self) - max((len(rows) for rows in excluded), default=0)
        if top_k > available:
            raise ValueError(
                f"top_k={top_k} is larger than the number of rows left to return ({available} of {len(self)} "
                f"after exclusions)"
            )
        try:
            with float32():  # float32 scores (and the corrector) even inside a caller's autocast region
                return search_store(
                    self,
                    queries,
                    top_k,
                    excluded,
                    corrected,
                    pool_size=pool_size,
                    max_view_age=max_view_age,
                    scan_dtype=scan_dtype,
                    view_rescore_depth=view_rescore_depth,
                )
        except NonFiniteScoresError:
            if corrected:
                raise
            raise ValueError(
                "The stale cache's rows produced non-finite scores (corrected=False, so not the corrector): its rows "
                "hold NaN/inf or values too large for float32, e.g. a memory-mapped file changed after it was "
                "loaded. Load it with verify=True to find the row"
            ) from None


def _check_scorable(storage: torch.Tensor, name: str, block_size: int) -> None:
    """Every row finite and scorable in float32 (:func:`check_rows_scorable`), checked block by block."""
    for start in range(0, storage.shape[0], block_size):
        check_rows_scorable(storage[start : start + block_size], name, offset=start)
