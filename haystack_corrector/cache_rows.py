"""The stale rows of a cache (:class:`CacheRows`): ids, text copies, and reading blocks of rows out of memory or a
memory map.

Row storage is a float16/float32 torch tensor in memory or a numpy memory map of a ``.npy`` file; every reader returns
float32 torch blocks, and a memory map's pages are released once a block is copied, so a full scan keeps resident
memory bounded by one block.
"""

from __future__ import annotations

import copy
import math
import mmap
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from haystack_corrector._validation import ArrayLike, as_index_tensor, check_positive_int, describe

__all__ = ["CacheRows", "DefaultIds"]


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


def _strings(values: Sequence[str], name: str, num_rows: int, rows_name: str) -> list[str]:
    """``values`` as a list of ``num_rows`` strings (TypeError/ValueError naming the first bad entry)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, got {describe(values)}")
    values = list(values)
    if len(values) != num_rows:
        raise ValueError(f"{name} has {len(values)} entries but {rows_name} has {num_rows} rows")
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be strings; {name}[{position}] is {describe(value)}")
    return values


def check_ids(ids: Sequence[str] | None, num_rows: int) -> Sequence[str]:
    """Unique string ids, one per row; None gives the default ids ``"0"`` .. ``"N-1"``."""
    if ids is None or isinstance(ids, DefaultIds):
        return DefaultIds(num_rows)
    ids = _strings(ids, "ids", num_rows, "embeddings")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(v for v in ids if v in seen or seen.add(v))  # type: ignore[func-returns-value]
        raise ValueError(f"ids must be unique; {duplicate!r} appears more than once")
    return ids


def check_texts(texts: Sequence[str], num_rows: int) -> list[str]:
    """``texts`` as a list of ``num_rows`` strings, one per row."""
    return _strings(texts, "texts", num_rows, "the cache")


class IdIndex:
    """id -> row lookups: a dict over explicit ids, arithmetic for the default ids (no N strings in memory)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self._default = ids if isinstance(ids, DefaultIds) else None
        self._rows = None if self._default is not None else {value: row for row, value in enumerate(ids)}

    def rows_of(self, ids: Iterable[str]) -> list[int]:
        """Row indices of the given ids (KeyError naming the first unknown id)."""
        rows = []
        for value in ids:
            if self._default is not None:
                row = self._default.row_of(value) if isinstance(value, str) else None
            else:
                row = self._rows.get(value) if isinstance(value, str) else None  # type: ignore[union-attr]
            if row is None:
                raise KeyError(f"id {value!r} is not in this store")
            rows.append(row)
        return rows


def text_copy_groups(texts: Sequence[str]) -> dict[int, tuple[int, ...]]:
    """Row -> every row with the identical text, for rows whose text occurs more than once (empty texts excluded)."""
    by_text: dict[str, list[int]] = {}
    for row, text in enumerate(texts):
        if text:
            by_text.setdefault(text, []).append(row)
    return {row: tuple(group) for group in by_text.values() if len(group) > 1 for row in group}


def release_pages(array: np.ndarray, start: int, end: int) -> None:
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


def as_tensor_rows(array: np.ndarray) -> torch.Tensor:
    """A numpy block as a tensor in its stored dtype: ``uint16`` arrays hold bfloat16 bit patterns (numpy has no
    bfloat16; a bfloat16 view on disk is written that way) and come back as bfloat16."""
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if array.dtype == np.uint16 else tensor


def gather_rows(storage: torch.Tensor | np.ndarray, rows: torch.Tensor) -> torch.Tensor:
    """The given rows of an in-memory tensor or a memory-mapped array, as a float32 tensor."""
    if isinstance(storage, np.ndarray):
        return as_tensor_rows(np.array(storage[rows.numpy()])).to(torch.float32)
    return storage[rows].to(torch.float32)


def read_rows(
    storage: torch.Tensor | np.ndarray, start: int, end: int, dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """Rows [start, end) of an in-memory tensor or a memory-mapped array (a copy for arrays), as ``dtype``; ``None``
    keeps the storage dtype (float16, bfloat16 or float32), for scans that convert once themselves."""
    if isinstance(storage, np.ndarray):
        block = as_tensor_rows(np.array(storage[start:end]))
        release_pages(storage, start, end)
    else:
        block = storage[start:end]
    return block if dtype is None or block.dtype == dtype else block.to(dtype)


# The dtypes rows are stored in; all arithmetic is float32.
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def dtype_name(storage: torch.Tensor | np.ndarray) -> str:
    """``"float32"`` or ``"float16"``: the name of a row storage's dtype (a tensor's or a memory map's)."""
    for name, dtype in DTYPES.items():
        if storage.dtype in (dtype, np.dtype(name)):
            return name
    raise ValueError(f"rows must be stored as float16 or float32, got {storage.dtype}")


class CacheRows:
    """The stale rows of a cache and what identifies them: storage, ids, texts, side features, and row access.

    A :class:`~haystack_corrector.CorrectedCacheStore` holds one as ``store.rows`` and adds the corrector, its view,
    search and persistence. Rows are read ``block_size`` at a time. ``storage`` is kept as given (no copy, no check):
    the store's constructor converts and checks user input; a loaded store's files were checked on load.

    Args:
        storage: (N, d) float16/float32 tensor, or a memory map of a ``.npy`` file.
        ids: N unique string ids (default ``"0"`` .. ``"N-1"``, held as :class:`DefaultIds`).
        side: optional (N, s) float16 side features.
        block_size: rows read at a time by :meth:`blocks`.
    """

    def __init__(
        self,
        storage: torch.Tensor | np.ndarray,
        ids: Sequence[str] | None = None,
        side: torch.Tensor | np.ndarray | None = None,
        block_size: int = 16384,
    ) -> None:
        self.dtype = dtype_name(storage)
        self.storage = storage
        self.num_rows, self.dim = int(storage.shape[0]), int(storage.shape[1])
        if side is not None and (side.ndim != 2 or int(side.shape[0]) != self.num_rows):
            raise ValueError(f"side_features must have one row per cache row ({self.num_rows}), got {describe(side)}")
        self.side = side  # per-row side features for the corrector (float16), or None
        self.block_size = check_positive_int(block_size, "block_size")
        self._ids = check_ids(ids, self.num_rows)
        self._id_to_row: IdIndex | None = None  # built on first lookup
        self._texts: list[str] | None = None
        self._text_copies: dict[int, tuple[int, ...]] | None = None  # built on first use

    def __len__(self) -> int:
        return self.num_rows

    @property
    def ids(self) -> Sequence[str]:
        """The row ids (a list, or a lightweight sequence of ``"0"`` .. ``"N-1"`` when none were given)."""
        return self._ids

    @property
    def texts(self) -> list[str] | None:
        """The target texts row by row, when known."""
        return self._texts

    @texts.setter
    def texts(self, texts: Sequence[str] | None) -> None:
        self._text_copies = None
        self._texts = None if texts is None else check_texts(texts, self.num_rows)

    @property
    def is_memory_mapped(self) -> bool:
        return isinstance(self.storage, np.ndarray)

    @property
    def side_dim(self) -> int:
        """Width of the side features kept per row (0 when the cache has none)."""
        return 0 if self.side is None else int(self.side.shape[1])

    def replace_storage(self, storage: torch.Tensor) -> None:
        """Swap in new rows of the same shape and dtype (a re-encode); ids, texts and side features are kept."""
        if tuple(storage.shape) != (self.num_rows, self.dim) or dtype_name(storage) != self.dtype:
            raise ValueError(f"new rows must be ({self.num_rows}, {self.dim}) {self.dtype}, got {describe(storage)}")
        self.storage = storage

    def rows_of(self, ids: Iterable[str]) -> list[int]:
        """Row indices of the given ids (KeyError naming the first unknown id)."""
        if self._id_to_row is None:
            self._id_to_row = IdIndex(self._ids)
        return self._id_to_row.rows_of(ids)

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
            self._text_copies = text_copy_groups(self._texts)
        copies = self._text_copies
        return rows.union(*(copies[row] for row in rows if row in copies))

    # ----------------------------------------------------------------------------------------------- row access
    def blocks(self, size: int | None = None) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of consecutive blocks of ``size`` rows (default ``block_size``) covering every row."""
        size = size or self.block_size
        for start in range(0, self.num_rows, size):
            yield start, min(start + size, self.num_rows)

    def block(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stale rows [start, end) and their side features (None without), in their storage dtypes."""
        side = None if self.side is None else read_rows(self.side, start, end, dtype=None)
        return read_rows(self.storage, start, end, dtype=None), side

    def stale_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The stale rows at these (checked) indices, float32."""
        return gather_rows(self.storage, rows)

    def side_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The side features at these (checked) indices, float32; None without side features."""
        return None if self.side is None else gather_rows(self.side, rows)

    def stale_embeddings(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor:
        """The stale cached embeddings g' of these rows (all rows if None), float32 on CPU."""
        if indices is None:
            return torch.cat([read_rows(self.storage, s, e) for s, e in self.blocks()])
        return self.stale_rows(as_index_tensor(indices, "indices", num_rows=self.num_rows))

    def side_features(self, indices: ArrayLike | Sequence[int] | None = None) -> torch.Tensor | None:
        """The side features of these rows (all rows if None), float32 on CPU; None when the cache has none."""
        if self.side is None:
            return None
        if indices is None:
            return torch.cat([read_rows(self.side, s, e) for s, e in self.blocks()])
        return gather_rows(self.side, as_index_tensor(indices, "indices", num_rows=self.num_rows))

    def side_feature_statistics(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-feature mean and std of the side features over every row, and the RMS norm of the stale embeddings.

        Computed block by block in float64 (memory bounded by ``block_size``, also for memory maps); what
        :meth:`Corrector.standardize_side` takes.
        """
        if self.side is None:
            raise ValueError("This cache keeps no side features")
        total = torch.zeros(self.side_dim, dtype=torch.float64)
        squares = torch.zeros(self.side_dim, dtype=torch.float64)
        norms = 0.0
        for start, end in self.blocks():
            block = read_rows(self.side, start, end).double()
            total += block.sum(dim=0)
            squares += block.square().sum(dim=0)
            norms += float(read_rows(self.storage, start, end).double().square().sum())
        mean = total / self.num_rows
        std = (squares / self.num_rows - mean.square()).clamp(min=0).sqrt()
        return mean.float(), std.float(), math.sqrt(norms / self.num_rows)

    # ------------------------------------------------------------------------------------------ shared subsets
    def without_side_features(self) -> CacheRows:
        """The same rows, ids and texts (shared, not copied) without side features."""
        rows = copy.copy(self)
        rows.side = None
        return rows

    def shard(self, start: int, end: int) -> CacheRows:
        """Rows [start, end), sharing this storage (or memory map); ids (``"0"``.. local for default ids) and texts
        are sliced. ``0 <= start < end <= len(self)`` is the caller's to check."""
        rows = copy.copy(self)
        rows.storage = self.storage[start:end]
        rows.side = None if self.side is None else self.side[start:end]
        rows.num_rows = end - start
        rows._ids = DefaultIds(end - start) if isinstance(self._ids, DefaultIds) else list(self._ids[start:end])
        rows._id_to_row, rows._text_copies = None, None
        rows._texts = None if self._texts is None else self._texts[start:end]
        return rows
