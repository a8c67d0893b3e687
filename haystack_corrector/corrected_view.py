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

import numpy as np
import torch

from haystack_corrector._atomic import fault_point
from haystack_corrector._validation import check_choice, check_finite, check_non_negative_int
from haystack_corrector.cache_rows import release_pages
from haystack_corrector.corrector import Corrector
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


class ViewCache:
    """What a store keeps of its corrected view: the last :class:`CorrectedView` computed (current or not) and the
    file it lives in, if on disk. The store holds one (``CorrectedCacheStore.views``) and answers ``materialize``,
    ``has_view``, ``is_materialized`` and ``view_age`` through it; any change of the store's rows or corrector calls
    :meth:`clear`.
    """

    def __init__(self) -> None:
        self.view: CorrectedView | None = None
        self.path: Path | None = None  # where materialize(path) keeps the view, if on disk (reused by refreshes)

    def clear(self) -> None:
        """Forget the view (the rows or the corrector changed); its file path is kept for the next refresh."""
        self.view = None

    @property
    def data(self) -> torch.Tensor | np.ndarray | None:
        """The view's rows, current or not (None without a view)."""
        return None if self.view is None else self.view.data

    def is_current(self, corrector: Corrector) -> bool:
        return self.view is not None and self.view.is_current(corrector)

    def age(self, corrector: Corrector) -> int | None:
        return None if self.view is None else self.view.age(corrector)

    def compute(
        self,
        corrector: Corrector,
        blocks: Blocks,
        shape: tuple[int, int],
        device: torch.device,
        dtype: str,
        path: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Compute the view of ``blocks`` (the corrector over every row) in ``dtype``, into ``path`` when given (else
        the previous file, else memory)."""
        dtype = check_choice(dtype, "dtype", tuple(VIEW_DTYPES))
        if path is not None:
            self.path = claim_view_path(path, self.path, overwrite)
        self.view = compute_view(corrector, blocks, shape, dtype, self.path, device)

    def for_search(
        self, corrector: Corrector, corrected: bool, max_view_age: int | None, refresh: Callable[[], None]
    ) -> CorrectedView | None:
        """The view a search may read: the current one, or (with ``max_view_age``) one young enough, calling
        ``refresh`` first when there is none or it is older."""
        if not corrected:
            return None
        if max_view_age is None:
            return self.view if self.is_current(corrector) else None
        max_view_age = check_non_negative_int(max_view_age, "max_view_age")
        age = self.age(corrector)
        if age is None or age > max_view_age:
            refresh()
        return self.view
