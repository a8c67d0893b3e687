"""The materialised corrected view: h(g') computed once for every row, and how to tell whether it is still current.

A view remembers the corrector object it was computed with and an exact copy of that corrector's weights. It is
current only while the store still holds that same corrector with exactly those weights, so every way of changing
them — optimiser steps, ``load_state_dict``, ``.data`` edits, ``vector_to_parameters``, a replaced submodule, a
replaced corrector — makes the store fall back to the exact fused scan. Its *age* counts the corrector steps
(``Corrector.steps``) since it was computed, for searches that tolerate an older view (``max_view_age``).
The view lives in memory or in its own memory-mapped ``.npy`` file, written atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from haystack_corrector._atomic import step
from haystack_corrector._validation import check_finite
from haystack_corrector.cache_rows import release_pages
from haystack_corrector.corrector import Corrector

Blocks = Callable[[], Iterable[tuple[int, int, torch.Tensor]]]  # (start, end, corrected float32 rows), all rows


@dataclass
class CorrectedView:
    """h(g') for every row (a tensor, or a read-only memory map of ``path``) and the corrector it was computed with."""

    data: torch.Tensor | np.ndarray
    corrector: Corrector
    weights: list[tuple[str, torch.Tensor]]
    steps: int  # corrector.steps when computed
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
    corrector: Corrector, blocks: Blocks, shape: tuple[int, int], dtype: np.dtype, path: Path | None
) -> CorrectedView:
    """Run ``blocks`` (the corrector over every row) into memory, or atomically into the ``.npy`` file ``path``."""
    weights, steps = corrector.weights_snapshot(), corrector.steps
    data: torch.Tensor | np.ndarray
    if path is None:
        data = torch.from_numpy(np.empty(shape, dtype=dtype))
        _fill(data.numpy(), blocks)
    else:
        data = _write(path, blocks, shape, dtype)
    return CorrectedView(data, corrector, weights, steps, path)


def _fill(out: np.ndarray, blocks: Blocks) -> None:
    """Write the corrected blocks into ``out`` (an array, or a memory map whose written pages are released)."""
    for start, end, block in blocks():
        check_finite(block, "the corrected view (the corrector produced non-finite values)")
        out[start:end] = block.cpu().numpy().astype(out.dtype)
        release_pages(out, start, end)


def _write(path: Path, blocks: Blocks, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    step("mkstemp view")
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=".npy")
    os.close(handle)
    partial = Path(name)
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        _fill(out, blocks)
        out.flush()
        del out
        step("replace view")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r", allow_pickle=False)
