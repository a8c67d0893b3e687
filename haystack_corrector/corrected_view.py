"""The materialised corrected view: h(g') computed once for every row, and how to tell whether it is still current.

A view remembers the corrector object it was computed with and an exact copy of that corrector's weights. It is
current only while the store still holds that same corrector with exactly those weights, so every way of changing
them — optimiser steps, ``load_state_dict``, ``.data`` edits, ``vector_to_parameters``, a replaced submodule, a
replaced corrector — makes the store fall back to the exact fused scan. Its *age* counts the corrector steps
(``Corrector.steps``) since it was computed, for searches that tolerate an older view (``max_view_age``).
The view lives in memory or in its own memory-mapped ``.npy`` file, written atomically, in the store's dtype or in
bfloat16 (``materialize(dtype="bfloat16")``: the dtype the bfloat16 scan reads without converting; on disk its bit
patterns are stored as ``uint16``, since numpy has no bfloat16). It keeps the float32 norms of its stored rows.

A bfloat16 view is computed under bfloat16 autocast where the hardware has bfloat16 matrix units: measured on a
trained corrector (``benchmarks/view_precision.py``) that adds less error than the bfloat16 rounding of the view
itself, but several times float16's, so float16 and float32 views are computed in float32.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haystack_corrector._atomic import fault_point
from haystack_corrector._validation import check_choice, check_finite, check_non_negative_int
from haystack_corrector.cache_rows import release_pages
from haystack_corrector.corrector import CORRECTOR_CHUNK_ROWS, Corrector
from haystack_corrector.search import bf16_supported

Blocks = Callable[[], Iterable[tuple[int, int, torch.Tensor]]]  # (start, end, corrected float32 rows), all rows
VIEW_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The numpy dtype of a view file: bfloat16 bit patterns are kept as uint16 (numpy has no bfloat16).
VIEW_FILE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@dataclass
class CorrectedView:
    """h(g') for every row (a tensor, or a read-only memory map of ``path``) and the corrector it was computed with."""

    data: torch.Tensor | np.ndarray
    corrector: Corrector
    weights: list[tuple[str, torch.Tensor]]
    steps: int  # corrector.steps when computed
    dtype: str  # "float32", "float16" or "bfloat16"
    norms: torch.Tensor  # (N,) float32 L2 norms of the stored rows, for the bfloat16 scan
    path: Path | None = None

    def is_current(self, corrector: Corrector) -> bool:
        """Computed with this very corrector, whose weights have not changed since."""
        return corrector is self.corrector and corrector.matches_snapshot(self.weights)

    def age(self, corrector: Corrector) -> int | None:
        """Corrector updates since the view was computed; None when it belongs to another corrector."""
        return corrector.steps - self.steps if corrector is self.corrector else None


def claim_view_path(path: str | os.PathLike[str], current: Path | None, overwrite: bool) -> Path:
    """``path`` as the view's file, unless it is a file this store did not write (then ``overwrite`` must say so)."""
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"materialize(path={str(path)!r}) needs a file path; that is a directory")
    ours = current is not None and path.resolve() == current.resolve()
    if path.exists() and not ours and not overwrite:
        raise FileExistsError(
            f"Refusing to write the corrected view to {path}: the file exists and was not written by this "
            "store. Choose another path, or pass overwrite=True to replace it"
        )
    return path


def compute_view(
    corrector: Corrector, blocks: Blocks, shape: tuple[int, int], dtype: str, path: Path | None, device: torch.device
) -> CorrectedView:
    """Run ``blocks`` (the corrector over every row) into memory, or atomically into the ``.npy`` file ``path``.

    ``dtype="bfloat16"`` runs the corrector under bfloat16 autocast where :func:`bf16_supported` (module docstring)."""
    dtype = check_choice(dtype, "dtype", tuple(VIEW_DTYPES))
    weights, steps = corrector.weights_snapshot(), corrector.steps
    norms = torch.empty(shape[0], dtype=torch.float32)
    autocast = dtype == "bfloat16" and bf16_supported(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        data: torch.Tensor | np.ndarray
        if path is None:
            data = torch.empty(shape, dtype=VIEW_DTYPES[dtype])
            for start, end, stored in _rounded(blocks, dtype, norms):
                data[start:end] = stored
        else:
            data = _write(path, lambda: _rounded(blocks, dtype, norms), shape, dtype)
    return CorrectedView(data, corrector, weights, steps, dtype, norms, path)


def _rounded(blocks: Blocks, dtype: str, norms: torch.Tensor) -> Iterable[tuple[int, int, torch.Tensor]]:
    """The corrected blocks rounded to the view's dtype (on CPU), recording the float32 norms of the stored rows."""
    for start, end, block in blocks():
        stored = block.to(VIEW_DTYPES[dtype]).cpu()
        norms[start:end] = stored.float().norm(dim=1)
        if not bool(torch.isfinite(norms[start:end]).all()):  # a norm is finite only if every entry is
            check_finite(block, "the corrected view (the corrector produced non-finite values)")
            check_finite(stored, f"the corrected view (values beyond the range of {dtype})")
        yield start, end, stored


def _write(path: Path, blocks: Blocks, shape: tuple[int, int], dtype: str) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    fault_point("mkstemp view")
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=".npy")
    os.close(handle)
    partial = Path(name)
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=VIEW_FILE_DTYPES[dtype], shape=shape)
        for start, end, stored in blocks():
            out[start:end] = stored.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else stored.numpy()
            release_pages(out, start, end)
        out.flush()
        del out
        fault_point("replace view")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r", allow_pickle=False)


class CorrectedViewMixin:
    """The view-related part of :class:`~haystack_corrector.CorrectedCacheStore`: ``materialize``, ``is_materialized``,
    ``has_view``, ``view_age``, and which view (if any) a search may read. A mixin, so that it reads next to the view.
    """

    _corrected_view: CorrectedView | None
    _corrector: Corrector
    _view_path: Path | None

    @property
    def _view(self) -> torch.Tensor | np.ndarray | None:
        """The materialised view's rows, current or not (None without a view)."""
        return None if self._corrected_view is None else self._corrected_view.data

    @property
    def has_view(self) -> bool:
        """True when :meth:`materialize` was called (the view may be out of date; see :attr:`is_materialized`)."""
        return self._corrected_view is not None

    @property
    def is_materialized(self) -> bool:
        """True when a corrected view exists and was computed with the corrector's current weights."""
        return self._corrected_view is not None and self._corrected_view.is_current(self._corrector)

    @property
    def view_age(self) -> int | None:
        """Corrector steps (``Corrector.steps``) since the view was computed; None without a view."""
        return None if self._corrected_view is None else self._corrected_view.age(self._corrector)

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
        store: Any = self
        if dtype is None:
            dtype = self._corrected_view.dtype if self._corrected_view is not None else store.dtype
        dtype = check_choice(dtype, "dtype", tuple(VIEW_DTYPES))
        if path is not None:
            self._view_path = claim_view_path(path, self._view_path, overwrite)
        self._corrected_view = compute_view(
            self._corrector,
            # Blocks of CORRECTOR_CHUNK_ROWS rows: every temporary of the corrector stays small (corrector.py).
            lambda: (
                (s, e, store._correct_block(s, e))
                for s, e in store._blocks(min(store.block_size, CORRECTOR_CHUNK_ROWS))
            ),
            (len(store), store.dim),
            dtype,
            self._view_path,
            store._device,
        )

    def _view_for_search(self, corrected: bool, max_view_age: int | None) -> CorrectedView | None:
        """The view a search may read: the current one, or (with ``max_view_age``) one young enough, refreshed."""
        if not corrected:
            return None
        if max_view_age is None:
            return self._corrected_view if self.is_materialized else None
        max_view_age = check_non_negative_int(max_view_age, "max_view_age")
        age = self.view_age
        if age is None or age > max_view_age:
            self.materialize()
        return self._corrected_view
