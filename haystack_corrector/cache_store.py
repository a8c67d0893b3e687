"""CorrectedCacheStore: a stale embedding cache g'(y) plus the corrector h that maps it to the current space.

Search is exact and blocked: rows are scanned ``block_size`` at a time, the corrector is applied to each block on the
fly (or a materialised corrected view is read), and a running top-k is merged, so memory is bounded by the block size
and the batch of queries, never by the number of rows. For a memory-mapped cache (or view), the pages of each block are
released from the process once the block is copied, so resident memory stays bounded too (the operating system's page
cache still keeps what it can).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from haystack_corrector._atomic import atomic_directory, check_save_target, resolve_saved_directory, step
from haystack_corrector._validation import (
    ArrayLike,
    as_float_matrix,
    as_index_tensor,
    as_row_sets,
    check_choice,
    check_config_checksum,
    check_finite,
    check_non_negative_int,
    check_positive_int,
    describe,
    read_json,
    with_config_checksum,
)
from haystack_corrector.corrector import Corrector

logger = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "dot")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
_FORMAT = "haystack-corrector/cache-store"
_FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
TEXTS_FILE = "texts.json"
CONFIG_FILE = "store_config.json"
CORRECTOR_DIR = "corrector"
INDEX_FILE = "index.faiss"
OWNED_FILES = frozenset({EMBEDDINGS_FILE, IDS_FILE, TEXTS_FILE, CONFIG_FILE, CORRECTOR_DIR, INDEX_FILE})


class DefaultIds(Sequence[str]):
    """The default ids ``"0"`` .. ``"N-1"``, without holding N Python strings in memory."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, position):  # type: ignore[no-untyped-def]
        if isinstance(position, slice):
            return [str(i) for i in range(*position.indices(self._length))]
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(f"id position {position} out of range for {self._length} ids")
        return str(position)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DefaultIds):
            return other._length == self._length
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == self._length and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("DefaultIds", self._length))

    def __repr__(self) -> str:
        return f"DefaultIds({self._length})"

    def row_of(self, value: str) -> int | None:
        if value.isdigit() and str(int(value)) == value and int(value) < self._length:
            return int(value)
        return None


def _release_pages(array: np.ndarray, start: int, end: int) -> None:
    """Drop the pages of rows [start, end) of a memory-mapped array from this process (they stay in the OS cache).

    Without this, every page a scan reads stays mapped, so the resident memory of a full scan grows to the file size.
    A no-op for in-memory arrays and on platforms without ``madvise``.
    """
    handle = getattr(array, "_mmap", None)
    if handle is None or not hasattr(handle, "madvise") or end <= start:
        return
    # The array's byte offset inside the mapping (valid for slices of the memmap too).
    base = np.frombuffer(handle, dtype=np.uint8).ctypes.data
    row_bytes = array.strides[0]
    first = array.ctypes.data - base + start * row_bytes
    last = min(first + (end - start) * row_bytes, len(handle))
    first -= first % mmap.PAGESIZE
    try:
        handle.madvise(mmap.MADV_DONTNEED, first, last - first)
    except (OSError, ValueError):  # e.g. an unusual mapping: releasing pages is an optimisation only
        pass


def _read_rows(storage: torch.Tensor | np.ndarray, start: int, end: int) -> torch.Tensor:
    """Rows [start, end) of an in-memory tensor or a memory-mapped array, as a float32 tensor (a copy for arrays)."""
    if isinstance(storage, np.ndarray):
        block = torch.from_numpy(np.array(storage[start:end], dtype=np.float32))
        _release_pages(storage, start, end)
        return block
    return storage[start:end].to(torch.float32)


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class CorrectedCacheStore:
    """Stale cached target embeddings, their ids, and the corrector applied to them at search time.

    Args:
        embeddings: (N, d) float numpy array or torch tensor: the stale cache g'(y).
        ids: N unique string ids (default ``"0"`` .. ``"N-1"``).
        corrector: the :class:`Corrector` to apply; default a fresh identity ``Corrector(d)``.
        similarity: ``"cosine"`` (rows and queries L2-normalised at scoring time) or ``"dot"``.
        dtype: storage dtype, ``"float32"`` or ``"float16"``; all arithmetic is float32.
        texts: optional N target texts, for training adapters that re-encode sampled negatives.
        block_size: rows scored per block during a scan (bounds the memory of a search).

    Example:
        >>> import torch
        >>> from haystack_corrector import CorrectedCacheStore
        >>> store = CorrectedCacheStore(torch.eye(4), ids=["a", "b", "c", "d"], similarity="dot")
        >>> scores, rows = store.search(torch.tensor([[0.0, 1.0, 0.5, 0.0]]), top_k=2)
        >>> [store.ids[i] for i in rows[0].tolist()]
        ['b', 'c']
    """

    def __init__(
        self,
        embeddings: ArrayLike,
        ids: Sequence[str] | None = None,
        corrector: Corrector | None = None,
        similarity: str = "cosine",
        dtype: str = "float32",
        texts: Sequence[str] | None = None,
        block_size: int = 16384,
    ) -> None:
        self.similarity = check_choice(similarity, "similarity", SIMILARITIES)
        self.dtype = check_choice(dtype, "dtype", tuple(DTYPES))
        self.block_size = check_positive_int(block_size, "block_size")
        matrix = as_float_matrix(embeddings, "embeddings")
        storage = matrix.to(DTYPES[self.dtype]).cpu().contiguous()
        check_finite(storage, f"embeddings (after conversion to {self.dtype})")
        self._init_storage(storage, ids, corrector)
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
    ) -> CorrectedCacheStore:
        """A store around storage already in its final dtype (a tensor or a memory map), without converting or copying."""
        store = cls.__new__(cls)
        store.similarity = check_choice(similarity, "similarity", SIMILARITIES)
        store.dtype = check_choice(dtype, "dtype", tuple(DTYPES))
        store.block_size = check_positive_int(block_size, "block_size")
        store._init_storage(storage, ids, corrector)
        return store

    def _init_storage(
        self, storage: torch.Tensor | np.ndarray, ids: Sequence[str] | None, corrector: Corrector | None
    ) -> None:
        self._storage = storage
        num_rows, dim = int(storage.shape[0]), int(storage.shape[1])
        self._num_rows, self._dim = num_rows, dim
        self._ids = self._check_ids(ids, num_rows)
        self._id_to_row: dict[str, int] | None = None
        self._corrector = self._check_corrector(corrector if corrector is not None else Corrector(dim), dim)
        self._view: torch.Tensor | np.ndarray | None = None
        # (corrector object, copy of its weights) when the view was computed: the view is current only while the
        # same corrector holds exactly those weights (optimiser steps, load_state_dict, .data edits all show).
        self._view_snapshot: tuple[Corrector, list[tuple[str, torch.Tensor]]] | None = None
        self._view_updates = 0  # corrector.updates when the view was computed
        self._view_path: Path | None = None  # where materialize(path) keeps the view, if on disk
        self._texts: list[str] | None = None
        self._text_copies: dict[int, tuple[int, ...]] | None = None  # built on first use
        self.pool: Any = None  # a FaissPool once build_pool() ran (pool mode)

    @staticmethod
    def _check_ids(ids: Sequence[str] | None, num_rows: int) -> Sequence[str]:
        if ids is None or isinstance(ids, DefaultIds):
            return DefaultIds(num_rows)
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"ids must be a sequence of strings, got {describe(ids)}")
        ids = list(ids)
        if len(ids) != num_rows:
            raise ValueError(f"ids has {len(ids)} entries but embeddings has {num_rows} rows")
        for position, value in enumerate(ids):
            if not isinstance(value, str):
                raise TypeError(f"ids must be strings; ids[{position}] is {describe(value)}")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            duplicate = next(v for v in ids if v in seen or seen.add(v))  # type: ignore[func-returns-value]
            raise ValueError(f"ids must be unique; {duplicate!r} appears more than once")
        return ids

    @staticmethod
    def _check_corrector(corrector: Any, dim: int) -> Corrector:
        if not isinstance(corrector, Corrector):
            raise TypeError(f"corrector must be a haystack_corrector.Corrector, got {type(corrector).__name__}")
        if corrector.dim != dim:
            raise ValueError(f"corrector has dim {corrector.dim} but the cache has dimension {dim}")
        return corrector

    # ------------------------------------------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self._num_rows

    def __repr__(self) -> str:
        kind = "memory-mapped" if isinstance(self._storage, np.ndarray) else "in-memory"
        return (
            f"CorrectedCacheStore({self._num_rows} rows, dim={self._dim}, similarity={self.similarity!r}, "
            f"dtype={self.dtype!r}, {kind}, materialized={self.is_materialized})"
        )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ids(self) -> Sequence[str]:
        """The row ids (a list, or a lightweight sequence of ``"0"`` .. ``"N-1"`` when none were given)."""
        return self._ids

    @property
    def texts(self) -> list[str] | None:
        """The target texts row by row, when known (``encode_corpus`` and ``build_training_dataset`` set them)."""
        return self._texts

    @texts.setter
    def texts(self, texts: Sequence[str] | None) -> None:
        self._text_copies = None
        if texts is None:
            self._texts = None
            return
        if isinstance(texts, (str, bytes)):
            raise TypeError(f"texts must be a sequence of strings, got {describe(texts)}")
        texts = list(texts)
        if len(texts) != self._num_rows:
            raise ValueError(f"texts has {len(texts)} entries but the cache has {self._num_rows} rows")
        for position, value in enumerate(texts):
            if not isinstance(value, str):
                raise TypeError(f"texts must be strings; texts[{position}] is {describe(value)}")
        self._texts = texts

    @property
    def corrector(self) -> Corrector:
        return self._corrector

    @corrector.setter
    def corrector(self, corrector: Corrector) -> None:
        self._corrector = self._check_corrector(corrector, self._dim)
        self._view, self._view_snapshot = None, None

    @property
    def is_memory_mapped(self) -> bool:
        return isinstance(self._storage, np.ndarray)

    @property
    def has_view(self) -> bool:
        """True when :meth:`materialize` was called (the view may be out of date; see :attr:`is_materialized`)."""
        return self._view is not None

    @property
    def is_materialized(self) -> bool:
        """True when a corrected view exists and was computed with the corrector's current weights."""
        if self._view is None or self._view_snapshot is None:
            return False
        owner, weights = self._view_snapshot
        return owner is self._corrector and self._corrector.matches_snapshot(weights)

    @property
    def view_age(self) -> int | None:
        """Corrector updates (``CorrectorTrainer`` steps) since the view was computed; None without a view."""
        if self._view is None or self._view_snapshot is None or self._view_snapshot[0] is not self._corrector:
            return None
        return self._corrector.updates - self._view_updates

    @property
    def _device(self) -> torch.device:
        parameter = next(self._corrector.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def rows_of(self, ids: Iterable[str]) -> list[int]:
        """Row indices of the given ids (KeyError naming the first unknown id)."""
        if isinstance(self._ids, DefaultIds):
            default_rows = []
            for value in ids:
                row = self._ids.row_of(value) if isinstance(value, str) else None
                if row is None:
                    raise KeyError(f"id {value!r} is not in this store")
                default_rows.append(row)
            return default_rows
        if self._id_to_row is None:
            self._id_to_row = {value: row for row, value in enumerate(self._ids)}
        rows = []
        for value in ids:
            try:
                rows.append(self._id_to_row[value])
            except KeyError:
                raise KeyError(f"id {value!r} is not in this store") from None
        return rows

    def with_text_copies(self, rows: Iterable[int]) -> set[int]:
        """``rows`` plus every row whose text is identical to one of theirs (just ``rows`` when there are no texts).

        Corpora often hold the same text under several ids (CoSQA: 6,267 distinct texts in 20,604 documents). A copy of
        a query's positive scores like the positive itself, so a hard-negative sampler that excludes only the positive's
        own row samples its copies first: false negatives. Samplers exclude ``with_text_copies(positives)`` instead.
        Empty texts (documents without text) are nobody's copies.
        """
        rows = set(rows)
        if self._texts is None:
            return rows
        if self._text_copies is None:
            by_text: dict[str, list[int]] = {}
            for row, text in enumerate(self._texts):
                if text:
                    by_text.setdefault(text, []).append(row)
            self._text_copies = {row: tuple(group) for group in by_text.values() if len(group) > 1 for row in group}
        copies = self._text_copies
        return rows.union(*(copies[row] for row in rows if row in copies))

    # ------------------------------------------------------------------------------------------------- embeddings
    def _stale_block(self, start: int, end: int) -> torch.Tensor:
        return _read_rows(self._storage, start, end)

    def _stale_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if isinstance(self._storage, np.ndarray):
            return torch.from_numpy(np.array(self._storage[rows.numpy()], dtype=np.float32))
        return self._storage[rows].to(torch.float32)

    def _blocks(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self._num_rows, self.block_size):
            yield start, min(start + self.block_size, self._num_rows)

    @torch.no_grad()
    def _correct(self, stale: torch.Tensor) -> torch.Tensor:
        return self._corrector(stale.to(self._device)).float()

    def stale_embeddings(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor:
        """The stale cached embeddings g' of these rows (all rows if None), float32 on CPU."""
        if indices is None:
            return torch.cat([self._stale_block(s, e) for s, e in self._blocks()])
        return self._stale_rows(as_index_tensor(indices, "indices", num_rows=self._num_rows))

    def corrected_embeddings(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor:
        """h(g') for these rows (all rows if None), computed in float32 with the current corrector, on CPU."""
        if indices is None:
            return torch.cat([self._correct(self._stale_block(s, e)).cpu() for s, e in self._blocks()])
        rows = as_index_tensor(indices, "indices", num_rows=self._num_rows)
        return self._correct(self._stale_rows(rows)).cpu()

    def replace_embeddings(self, embeddings: ArrayLike) -> None:
        """Swap in a newly encoded cache (same rows, same order), e.g. for a periodic full re-encode.

        Ids, texts and the corrector are kept; a materialised view and a FAISS pool (built on the old vectors) are
        dropped — call :meth:`build_pool` again if you use pool mode.
        """
        matrix = as_float_matrix(embeddings, "embeddings", dim=self._dim)
        if matrix.shape[0] != self._num_rows:
            raise ValueError(f"embeddings has {matrix.shape[0]} rows but the cache has {self._num_rows}")
        storage = matrix.to(DTYPES[self.dtype]).cpu().contiguous()
        check_finite(storage, f"embeddings (after conversion to {self.dtype})")
        self._storage = storage
        self._view, self._view_snapshot = None, None
        if self.pool is not None:
            logger.info("replace_embeddings dropped the FAISS pool built on the old vectors; call build_pool() again")
            self.pool = None

    def build_pool(self, index_type: str = "flat", **options: Any) -> None:
        """Build a FAISS index over the stale vectors for pool-mode search (``search(..., pool_size=L)``).

        ``index_type`` is ``"flat"``, ``"ivf"`` or ``"hnsw"``; ``options`` go to :class:`~haystack_corrector.faiss_pool.FaissPool`.
        The index is saved and loaded with the store.
        """
        from haystack_corrector.faiss_pool import FaissPool

        pool = FaissPool(index_type, **options)
        vectors = torch.cat([self._stale_block(s, e) for s, e in self._blocks()])
        if self.similarity == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        pool.build(vectors.numpy())
        self.pool = pool

    def materialize(self, path: str | os.PathLike[str] | None = None, overwrite: bool = False) -> None:
        """Compute h(g') for all rows once and keep it (in the storage dtype); searches read it while it is current.

        Args:
            path: write the view to this ``.npy`` file and memory-map it (for caches larger than memory; the
                file is written atomically, and later refreshes reuse the same path). Default: keep it in memory,
                or in the file of the previous ``materialize(path)`` call. The view is a cache: :meth:`save` does
                not store it. An existing file that is not this store's view is refused (:class:`FileExistsError`)
                unless ``overwrite=True``.
            overwrite: replace an existing file at ``path`` that this store did not write.

        Any update of the corrector's weights makes the view out of date; searches then fall back to applying the
        corrector block by block, so results are exact for the current corrector, unless the search tolerates an
        older view (``search(..., max_view_age=K)``). Call again to refresh.
        """
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, got {describe(overwrite)}")
        if path is not None:
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(f"materialize(path={str(path)!r}) needs a file path; that is a directory")
            ours = self._view_path is not None and path.resolve() == self._view_path.resolve()
            if path.exists() and not ours and not overwrite:
                raise FileExistsError(
                    f"Refusing to write the corrected view to {path}: the file exists and was not written by this "
                    "store. Choose another path, or pass overwrite=True to replace it"
                )
            self._view_path = path
        snapshot, updates = (self._corrector, self._corrector.weights_snapshot()), self._corrector.updates
        view: torch.Tensor | np.ndarray
        if self._view_path is None:
            view = torch.empty((self._num_rows, self._dim), dtype=DTYPES[self.dtype])
            self._fill_view(view.numpy())
        else:
            view = self._write_view(self._view_path)
        self._view, self._view_snapshot, self._view_updates = view, snapshot, updates

    def _fill_view(self, out: np.ndarray) -> None:
        """Write h(g') into ``out`` (an array, or a memory map whose written pages are released) block by block."""
        for start, end in self._blocks():
            block = self._correct(self._stale_block(start, end)).cpu()
            check_finite(block, "the corrected view (the corrector produced non-finite values)")
            out[start:end] = block.numpy().astype(out.dtype)
            _release_pages(out, start, end)

    def _write_view(self, path: Path) -> np.ndarray:
        path.parent.mkdir(parents=True, exist_ok=True)
        step("mkstemp view")
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=".npy")
        os.close(handle)
        partial = Path(name)
        try:
            out = np.lib.format.open_memmap(
                partial, mode="w+", dtype=_NUMPY_DTYPES[self.dtype], shape=(self._num_rows, self._dim)
            )
            self._fill_view(out)
            out.flush()
            del out
            step("replace view")
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def shard(self, start: int, end: int) -> CorrectedCacheStore:
        """A store over rows [start, end) that shares this store's memory (or memory map) and its corrector object.

        Ids (``"0"``.. local when this store has default ids) and texts are sliced; no rows are copied.
        """
        if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
            raise TypeError(f"start and end must be ints, got {describe(start)} and {describe(end)}")
        if not 0 <= start < end <= self._num_rows:
            raise ValueError(f"shard needs 0 <= start < end <= {self._num_rows}, got start={start}, end={end}")
        ids = None if isinstance(self._ids, DefaultIds) else list(self._ids[start:end])
        part = CorrectedCacheStore._from_storage(
            self._storage[start:end], ids, self._corrector, self.similarity, self.dtype, self.block_size
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

        Returns:
            ``(scores, indices)``: (B, top_k) float32 scores and int64 row indices on CPU, best first.
        """
        queries = as_float_matrix(query_embeddings, "query_embeddings", dim=self._dim)
        top_k = check_positive_int(top_k, "top_k")
        excluded = as_row_sets(exclude, "exclude", num_queries=queries.shape[0], num_rows=self._num_rows)
        available = self._num_rows - max((len(rows) for rows in excluded), default=0)
        if top_k > available:
            raise ValueError(
                f"top_k={top_k} is larger than the number of rows left to return ({available} of {self._num_rows} "
                f"after exclusions)"
            )
        if pool_size is not None:
            pool_size = check_positive_int(pool_size, "pool_size")
            if self.pool is None:
                raise ValueError("pool_size needs a FAISS pool: call store.build_pool() first")
            if pool_size < top_k:
                raise ValueError(f"pool_size={pool_size} must be >= top_k={top_k}")
            from haystack_corrector.faiss_pool import pool_search

            with torch.no_grad():
                return pool_search(self, queries, top_k, excluded, pool_size, corrected)
        return self._search(queries, top_k, excluded, corrected, max_view_age=max_view_age)

    def _view_for_search(self, corrected: bool, max_view_age: int | None) -> torch.Tensor | np.ndarray | None:
        if not corrected:
            return None
        if max_view_age is None:
            return self._view if self.is_materialized else None
        max_view_age = check_non_negative_int(max_view_age, "max_view_age")
        age = self.view_age
        if age is None or age > max_view_age:
            self.materialize()
        return self._view

    @torch.no_grad()
    def _search(
        self,
        queries: torch.Tensor,
        top_k: int,
        excluded: list[set[int]],
        corrected: bool,
        partial: bool = False,
        max_view_age: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocked exact scan. ``partial=True`` (shards): fewer allowed rows than top_k give -inf scores, row -1."""
        device = self._device
        queries = queries.to(device)
        if self.similarity == "cosine":
            queries = F.normalize(queries, dim=-1)
        view = self._view_for_search(corrected, max_view_age)
        pairs = sorted((row, query) for query, rows in enumerate(excluded) for row in rows)
        pair_rows = torch.tensor([row for row, _ in pairs], dtype=torch.int64)
        pair_queries = torch.tensor([query for _, query in pairs], dtype=torch.int64)
        best_scores = torch.empty((queries.shape[0], 0), device=device)
        best_rows = torch.empty((queries.shape[0], 0), dtype=torch.int64, device=device)
        for start, end in self._blocks():
            if view is not None:
                block = _read_rows(view, start, end).to(device)
            else:
                block = self._stale_block(start, end).to(device)
                if corrected:
                    block = self._corrector(block).float()
            if self.similarity == "cosine":
                block = F.normalize(block, dim=-1)
            scores = queries @ block.T
            if len(pairs):
                lo = int(torch.searchsorted(pair_rows, start))
                hi = int(torch.searchsorted(pair_rows, end))
                if hi > lo:
                    scores[pair_queries[lo:hi].to(device), (pair_rows[lo:hi] - start).to(device)] = -torch.inf
            rows = torch.arange(start, end, device=device).expand(queries.shape[0], -1)
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged_rows = torch.cat([best_rows, rows], dim=1)
            keep = min(top_k, merged_scores.shape[1])
            best_scores, position = torch.topk(merged_scores, keep, dim=1)
            best_rows = torch.gather(merged_rows, 1, position)
        if partial:
            missing = best_scores == -torch.inf
            best_rows[missing] = -1
            if torch.isnan(best_scores).any() or (best_scores == torch.inf).any():
                raise ValueError("The corrector produced non-finite scores; it has diverged (check its learning rate)")
        elif not torch.isfinite(best_scores).all():
            raise ValueError(
                "The corrector produced non-finite scores; it has diverged (check its learning rate) or the queries "
                "are degenerate"
            )
        return best_scores.cpu(), best_rows.cpu()

    # ------------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Save ids, stale embeddings (``.npy``), config and corrector into the directory ``path``, atomically.

        ``path`` may be new, empty, or a previous store save. A folder holding anything else is refused
        (:class:`FileExistsError`) unless ``overwrite=True``, which replaces only the store's own files
        (``embeddings.npy``, ``ids.json``, ``texts.json``, ``store_config.json``, ``corrector/``, ``index.faiss``) and
        keeps every other entry.
        """
        with atomic_directory(
            path, kind=_FORMAT, config_file=CONFIG_FILE, owned=OWNED_FILES, overwrite=overwrite
        ) as tmp:
            array_path = tmp / EMBEDDINGS_FILE
            out = np.lib.format.open_memmap(
                array_path, mode="w+", dtype=_NUMPY_DTYPES[self.dtype], shape=(self._num_rows, self._dim)
            )
            for start, end in self._blocks():
                block = self._storage[start:end]
                out[start:end] = block.numpy() if isinstance(block, torch.Tensor) else block
            out.flush()
            del out
            step(f"wrote {EMBEDDINGS_FILE}")
            # Default ids are saved as null: a million "0".."N-1" strings would cost memory on every load.
            (tmp / IDS_FILE).write_text(json.dumps(None if isinstance(self._ids, DefaultIds) else list(self._ids)))
            step(f"wrote {IDS_FILE}")
            saved = [EMBEDDINGS_FILE, IDS_FILE]
            if self._texts is not None:
                (tmp / TEXTS_FILE).write_text(json.dumps(self._texts))
                step(f"wrote {TEXTS_FILE}")
                saved.append(TEXTS_FILE)
            if self.pool is not None:
                self.pool.save(tmp / INDEX_FILE)
                step(f"wrote {INDEX_FILE}")
                saved.append(INDEX_FILE)
            (tmp / CORRECTOR_DIR).mkdir()
            self._corrector.save_to(tmp / CORRECTOR_DIR)
            files = {
                name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                for name in (
                    *saved,
                    f"{CORRECTOR_DIR}/corrector.safetensors",
                    f"{CORRECTOR_DIR}/corrector_config.json",
                )
            }
            config = {
                "format": _FORMAT,
                "format_version": _FORMAT_VERSION,
                "num_rows": self._num_rows,
                "dim": self._dim,
                "dtype": self.dtype,
                "similarity": self.similarity,
                "block_size": self.block_size,
                "pool": self.pool.get_config_dict() if self.pool is not None else None,
                "files": files,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(with_config_checksum(config), indent=2))
            step(f"wrote {CONFIG_FILE}")

    @staticmethod
    def check_save_path(path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Raise the error :meth:`save` would raise for ``path`` (call it before encoding a corpus to save)."""
        check_save_target(path, kind=_FORMAT, config_file=CONFIG_FILE, owned=OWNED_FILES, overwrite=overwrite)

    @classmethod
    def from_npy(
        cls,
        file: str | os.PathLike[str],
        ids: Sequence[str] | None = None,
        corrector: Corrector | None = None,
        similarity: str = "cosine",
        texts: Sequence[str] | None = None,
        block_size: int = 16384,
    ) -> CorrectedCacheStore:
        """Memory-map an existing (N, d) float16/float32 ``.npy`` file of embeddings as the stale cache, without copying.

        For caches written by another pipeline (or by ``numpy.lib.format.open_memmap``); the storage dtype is the
        file's. The file must not change while the store uses it. :meth:`save` writes a regular store directory.
        """
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist")
        array = cls._load_array(file, mmap=True)
        names = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32"}
        if array.ndim != 2 or array.dtype not in names or 0 in array.shape:
            raise ValueError(f"{file} must hold a non-empty 2-D float16 or float32 array, got {describe(array)}")
        store = cls._from_storage(array, ids, corrector, similarity, names[array.dtype], block_size)
        store.texts = texts  # type: ignore[assignment]
        return store

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True, verify: bool | None = None) -> CorrectedCacheStore:
        """Load a store saved with :meth:`save`.

        Args:
            path: the saved directory.
            mmap: memory-map the embeddings (read lazily, block by block) instead of reading them into memory.
            verify: check the embeddings' SHA-256 (reads the whole file). Default: only when ``mmap=False``, since
                the file is read in full then anyway. Every other file (config, ids, texts, corrector) is always
                checked against its checksum, and the embeddings' size and header always.

        A flipped bit inside the embeddings of a memory-mapped load (the default) is **not** detected: checking it
        would read the whole file, which memory-mapping exists to avoid. Pass ``verify=True`` to check it (once,
        at load), e.g. after copying a store between machines; ``docs/reliability.md`` counts what each mode detects.
        """
        directory = resolve_saved_directory(path)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved CorrectedCacheStore: {CONFIG_FILE} is missing")
        config = read_json(config_path, "store config")
        if not isinstance(config, dict) or config.get("format") != _FORMAT:
            raise ValueError(f"{config_path} is not a haystack-corrector store config")
        config = check_config_checksum(
            config,
            config_path,
            ("format", "format_version", "num_rows", "dim", "dtype", "similarity", "block_size", "pool", "files"),
        )
        if not isinstance(config.get("format_version", 0), int) or config.get("format_version", 0) > _FORMAT_VERSION:
            raise ValueError(f"{directory} was written by a newer haystack-corrector; upgrade to load it")
        try:
            files = dict(config["files"])
            for name, expected in files.items():
                if not isinstance(name, str) or "/" in name.replace(f"{CORRECTOR_DIR}/", "", 1) or ".." in name:
                    raise ValueError(f"unexpected file name {name!r}")
                int(expected["size"]), str(expected["sha256"])
            num_rows, dim, dtype = int(config["num_rows"]), int(config["dim"]), str(config["dtype"])
            similarity = check_choice(config["similarity"], "similarity", SIMILARITIES)
            block_size = check_positive_int(config.get("block_size", 16384), "block_size")
            check_choice(dtype, "dtype", tuple(DTYPES))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"Corrupted store config {config_path}: {exc}") from exc
        for required in (EMBEDDINGS_FILE, IDS_FILE, f"{CORRECTOR_DIR}/corrector.safetensors"):
            if required not in files:
                raise ValueError(f"Corrupted store config {config_path}: it does not list {required}")
        verify = (not mmap) if verify is None else verify
        for name, expected in files.items():
            file = directory / name
            if not file.is_file():
                raise FileNotFoundError(f"{directory} is incomplete: {name} is missing")
            size = file.stat().st_size
            if size != int(expected["size"]):
                raise ValueError(f"{file} is truncated or corrupted: {size} bytes, expected {expected['size']}")
            if (name != EMBEDDINGS_FILE or verify) and _sha256(file) != expected["sha256"]:
                raise ValueError(f"{file} is corrupted: its SHA-256 checksum does not match the one saved with it")
        array = cls._load_array(directory / EMBEDDINGS_FILE, mmap)
        if array.shape != (num_rows, dim) or array.dtype != _NUMPY_DTYPES[dtype]:
            raise ValueError(
                f"{directory / EMBEDDINGS_FILE} holds {describe(array)}, but the config says shape "
                f"({num_rows}, {dim}) and dtype {dtype}"
            )
        ids = read_json(directory / IDS_FILE, "ids file")
        if ids is not None and not isinstance(ids, list):
            raise ValueError(f"Corrupted ids file {directory / IDS_FILE}: expected a list or null")
        corrector = Corrector.load(directory / CORRECTOR_DIR)
        storage: torch.Tensor | np.ndarray = array if mmap else torch.from_numpy(array)
        try:
            store = cls._from_storage(storage, ids, corrector, similarity, dtype, block_size)
            if (directory / TEXTS_FILE).is_file() and TEXTS_FILE in files:
                store.texts = read_json(directory / TEXTS_FILE, "texts file")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Corrupted store {directory}: {exc}") from exc
        if config.get("pool"):
            from haystack_corrector.faiss_pool import FaissPool

            store.pool = FaissPool(**config["pool"])
            store.pool.load(directory / INDEX_FILE)
        return store

    @staticmethod
    def _load_array(file: Path, mmap: bool) -> np.ndarray:
        with open(file, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
            except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError or tokenize errors
                raise ValueError(f"{file} is not a valid .npy file: {exc}") from exc
            offset = handle.tell()
        expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
        if file.stat().st_size != expected:
            raise ValueError(f"{file} is truncated or corrupted: {file.stat().st_size} bytes, expected {expected}")
        if np.dtype(dtype).hasobject:
            raise ValueError(f"{file} holds Python objects; refusing to load it")
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
