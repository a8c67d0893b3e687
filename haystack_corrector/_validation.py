"""Cheap input checks shared by the core classes.

Every check raises ``ValueError``/``TypeError`` naming the argument and echoing the bad value, so a user never sees a
stack trace from deep inside torch for a mistake in their own input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # numpy array or torch tensor

_FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_NUMPY_FLOATS = (np.float16, np.float32, np.float64)


class RowIndexError(IndexError, ValueError):
    """A row index out of range: an ``IndexError`` and, being bad user input, a ``ValueError`` too."""


CONFIG_CHECKSUM_KEY = "config_sha256"


def with_config_checksum(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` plus the SHA-256 of its canonical JSON, so that any change to a saved config file is detected."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()
    return {**config, CONFIG_CHECKSUM_KEY: digest}


class MissingChecksumError(ValueError):
    """A saved file without the checksum that every save of this version writes (an old save, or one edited)."""


def check_config_checksum(
    config: dict[str, Any], path: Any, keys: Iterable[str], *, accept_missing_checksums: bool = False
) -> dict[str, Any]:
    """The config without its checksum; ``ValueError`` naming ``path`` if it was changed or has no checksum.

    ``keys`` are the keys a config of this kind may hold: an unknown key is damage too. A config without its
    checksum (saves of 0.1) loads only with ``accept_missing_checksums=True``. The checksum catches accidental damage
    (a flipped bit, a truncated copy, a hand edit); anyone can recompute it, so it does not prove who wrote the file.
    """
    unknown = sorted(set(config) - set(keys) - {CONFIG_CHECKSUM_KEY})
    if unknown:
        raise ValueError(f"{path} is corrupted: unexpected key {unknown[0]!r}")
    config = dict(config)
    saved = config.pop(CONFIG_CHECKSUM_KEY, None)
    if saved is None:
        if not accept_missing_checksums:
            raise MissingChecksumError(
                f"{path} has no {CONFIG_CHECKSUM_KEY}: every save of this version writes one, so it is an old save "
                "or it was edited. Load it with accept_missing_checksums=True if you trust it"
            )
    elif with_config_checksum(config)[CONFIG_CHECKSUM_KEY] != saved:
        raise ValueError(f"{path} is corrupted: its content does not match the checksum saved in it")
    return config


def check_saved_config(
    config: Any, path: Any, kind: str, keys: Iterable[str], what: str, *, accept_missing_checksums: bool = False
) -> dict[str, Any]:
    """A parsed saved config of ``kind`` (its ``format``), checked against its own checksum and allowed ``keys``."""
    if not isinstance(config, dict) or config.get("format") != kind:
        raise ValueError(f"{path} is not a haystack-corrector {what}")
    return check_config_checksum(config, path, keys, accept_missing_checksums=accept_missing_checksums)


def describe(value: Any) -> str:
    """A short description of a value for error messages (never a huge repr)."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_float_matrix(value: ArrayLike, name: str, *, dim: int | None = None, allow_empty: bool = False) -> torch.Tensor:
    """Turn a (n, d) float numpy array / tensor into a float32 CPU-or-same-device tensor, checking everything cheap."""
    if isinstance(value, np.ndarray):
        if value.dtype == object or not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point numbers, got {describe(value)}")
        if value.dtype.type not in _NUMPY_FLOATS:  # e.g. float128, which torch cannot wrap
            value = value.astype(np.float64)
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        if value.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must hold floating-point numbers, got {describe(value)}")
        tensor = value
    elif isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(f"{name} must be a rectangular (n, d) matrix of floats, got a ragged sequence") from exc
        if array.dtype == object or not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"{name} must hold floating-point numbers, got a sequence of dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(np.float32))
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor of shape (n, d), got {type(value).__name__}")
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (n, d), got {describe(tensor)}")
    if tensor.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0: got shape {tuple(tensor.shape)}, need at least one column")
    if tensor.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: got shape {tuple(tensor.shape)}, need at least one row")
    if dim is not None and tensor.shape[1] != dim:
        raise ValueError(f"{name} has dimension {tensor.shape[1]} but the cache has dimension {dim}")
    tensor = tensor.detach().to(torch.float32)
    check_finite(tensor, name)
    return tensor


def check_finite(tensor: torch.Tensor, name: str) -> None:
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at position {tuple(bad)})")


def check_rows_scorable(rows: torch.Tensor, name: str, *, offset: int = 0, norms: bool = True) -> None:
    """Refuse rows with NaN/inf values, or (``norms``) whose squared norm overflows float32: neither can be scored.

    Cosine and dot scores are computed in float32; a row of finite values above ~1.8e19 overflows its norm and would
    score 0 or inf. ``offset`` is the block's first row, for the message.
    """
    if not rows.numel():
        return
    finite = torch.isfinite(rows).all(dim=-1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{name}: row {offset + bad} holds NaN or inf; embeddings are finite, so this data is damaged")
    if norms and rows.dtype in (torch.float32, torch.float64):
        squared = rows.float().square().sum(dim=-1)
        if not bool(torch.isfinite(squared).all()):
            bad = int((~torch.isfinite(squared)).nonzero()[0, 0])
            raise ValueError(
                f"{name}: row {offset + bad} has values up to {float(rows[bad].abs().max()):.3g}, too large to score "
                "in float32 (its squared norm overflows); are they embeddings?"
            )


def check_squared_norms_finite(tensor: torch.Tensor, name: str) -> None:
    """Refuse a float32 matrix whose rows' squared norms overflow: every loss on it would be inf whatever the lr."""
    if tensor.numel() and not bool(torch.isfinite(tensor.square().sum(dim=1)).all()):
        raise ValueError(
            f"{name} are too large for float32 arithmetic: a row's squared norm overflows (values of magnitude up "
            f"to {float(tensor.abs().max()):.3g}); are they embeddings?"
        )


def as_index_tensor(value: Any, name: str, *, num_rows: int) -> torch.Tensor:
    """A 1-D int64 tensor of row indices, each in [0, num_rows)."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer row indices, got {describe(value)}")
        tensor = value.to(torch.int64).reshape(-1).cpu()
    else:
        array = np.asarray(value)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must hold integer row indices, got values of dtype {array.dtype}")
        tensor = torch.from_numpy(array.astype(np.int64).reshape(-1))
    if tensor.numel():
        check_row_range(int(tensor.min()), int(tensor.max()), num_rows, name)
    return tensor


def check_row_range(low: int, high: int, num_rows: int, name: str) -> None:
    """``RowIndexError`` naming ``name`` unless the row indices from ``low`` to ``high`` all lie in [0, num_rows)."""
    if low < 0 or high >= num_rows:
        bad = low if low < 0 else high
        raise RowIndexError(f"{name} contains row index {bad}, out of range for a cache of {num_rows} rows")


def as_row_sets(value: Iterable[Iterable[int]] | None, name: str, *, num_queries: int, num_rows: int) -> list[set[int]]:
    """Per-query collections of row indices -> list of sets, validated."""
    if value is None:
        return [set() for _ in range(num_queries)]
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of per-query collections of row indices, got {describe(value)}")
    try:
        rows = list(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a sequence of per-query collections of row indices, got {describe(value)}"
        ) from None
    if len(rows) != num_queries:
        raise ValueError(f"{name} must have one collection per query: got {len(rows)} for {num_queries} queries")
    result: list[set[int]] = []
    for position, collection in enumerate(rows):
        if isinstance(collection, (set, frozenset)) and all(type(item) is int for item in collection):
            # Fast path (a loss step passes sets of Python ints, thousands of text copies each): one range check.
            if collection:
                check_row_range(min(collection), max(collection), num_rows, f"{name}[{position}]")
            result.append(set(collection))
            continue
        items: Iterable[Any] = [collection] if isinstance(collection, (int, np.integer)) else collection
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"{name}[{position}] must be a collection of integer row indices, got {describe(items)}")
        members: set[int] = set()
        for item in items:
            if isinstance(item, torch.Tensor):
                item = item.item()
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
                raise TypeError(f"{name}[{position}] must hold integer row indices, got {describe(item)}")
            check_row_range(int(item), int(item), num_rows, f"{name}[{position}]")
            members.add(int(item))
        result.append(members)
    return result


def check_int(value: Any, name: str) -> int:
    """An int (numpy ints included, bools not): ``TypeError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


def check_non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_float(
    value: Any, name: str, *, minimum: float | None = None, strict: bool = False, optional: bool = False
) -> float:
    """A finite float, optionally ``> minimum`` (``strict``) or ``>= minimum``; None passes when ``optional``.

    The messages say exactly which bound applies (``lr must be > 0, got -1``), generated here for every caller.
    """
    if value is None and optional:
        return None  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        kind = "a float or None" if optional else "a float"
        raise TypeError(f"{name} must be {kind}, got {describe(value)}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value}")
    return float(value)


def check_bool(value: Any, name: str, *, optional: bool = False) -> bool:
    """A bool (or None when ``optional``): TypeError otherwise, so ``"false"`` is never read as True."""
    if value is None and optional:
        return None  # type: ignore[return-value]
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool{' or None' if optional else ''}, got {describe(value)}")
    return value


def check_path_string(value: Any, name: str) -> str:
    """A non-empty path string (components keep paths, not Path objects, so that they serialise to YAML)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty path string, got {describe(value)}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {describe(value)}")
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {', '.join(repr(c) for c in choices)}")
    return str(value)
