"""Saving and loading a cache store: plain ``.npy``, JSON and safetensors files, each one checked on load.

A saved store is a folder: ``embeddings.npy`` (the stale cache, memory-mappable), ``ids.json``, ``texts.json``
(optional), ``side_features.npy`` (optional), ``corrector/`` (a :class:`Corrector` save), ``index.faiss`` (optional
pool) and ``store_config.json``, which records every file's size and SHA-256 and carries a checksum of its own.

- **Saves** follow :mod:`haystack_corrector._atomic`: atomic, serialised across processes, and never deleting,
  moving or rewriting an entry they did not write. Rows are checked (finite, scorable) as they are written.
- **Loads** read one generation (:mod:`haystack_corrector.saved_folder`): a save landing mid-load never mixes two.
- **Trusted input.** Nothing is unpickled, and every size is checked against the bytes on disk before anything is
  allocated. Checksums (required) catch accidental damage — a flipped bit, a truncated copy, a hand edit — but
  anyone can recompute them: they do not authenticate a file. ``index.faiss`` is parsed by FAISS's own reader once
  its checksum matches; load pool indexes only from stores you trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from haystack_corrector import corrector_persistence
from haystack_corrector._atomic import atomic_directory, check_save_target, fault_point
from haystack_corrector._validation import (
    check_choice,
    check_positive_int,
    check_rows_scorable,
    check_saved_config,
    with_config_checksum,
)
from haystack_corrector.cache_rows import DTYPES, DefaultIds
from haystack_corrector.corrector import Corrector
from haystack_corrector.saved_folder import SavedFolder, parse_json, read_npy, read_one_generation, sha256_of
from haystack_corrector.scoring import SIMILARITIES

if TYPE_CHECKING:
    from haystack_corrector.cache_rows import CacheRows
    from haystack_corrector.cache_store import CorrectedCacheStore

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
FORMAT = "haystack-corrector/cache-store"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.json"
TEXTS_FILE = "texts.json"
CONFIG_FILE = "store_config.json"
CORRECTOR_DIR = "corrector"
INDEX_FILE = "index.faiss"
SIDE_FILE = "side_features.npy"
LAYOUT: dict[str, frozenset[str] | None] = {
    EMBEDDINGS_FILE: None,
    IDS_FILE: None,
    TEXTS_FILE: None,
    CONFIG_FILE: None,
    CORRECTOR_DIR: corrector_persistence.FILES,
    INDEX_FILE: None,
    SIDE_FILE: None,
}
# What every store save writes; a save writes the optional files (texts, side features, pool) only when it has them.
ALWAYS_WRITTEN = (EMBEDDINGS_FILE, IDS_FILE, CONFIG_FILE, CORRECTOR_DIR)
_CONFIG_KEYS = (
    "format",
    "format_version",
    "num_rows",
    "dim",
    "dtype",
    "similarity",
    "block_size",
    "pool",
    "files",
    "encoder",
)
_CHUNK = 1 << 24


class SavedStore(NamedTuple):
    """What :func:`read_store` found in a saved folder, every file checked."""

    directory: Path
    storage: torch.Tensor | np.ndarray
    ids: list[str] | None
    corrector: Corrector
    similarity: str
    dtype: str
    block_size: int
    texts: list[str] | None
    pool: Any
    side: torch.Tensor | np.ndarray | None
    encoder: dict[str, Any] | None = None


def save_store(store: CorrectedCacheStore, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Write ``store`` into the folder ``path`` atomically (the save rule of :mod:`haystack_corrector._atomic`).

    ``path`` may be new, empty, or a previous store save. A folder holding anything else is refused
    (:class:`FileExistsError`) unless ``overwrite=True``, which replaces only the store's own files
    (``embeddings.npy``, ``ids.json``, ``texts.json``, ``side_features.npy``, ``store_config.json``, ``corrector/``,
    ``index.faiss``) and keeps every other entry where it is. A folder entry named like one of these that a save did
    not write (a user's file, a symlink) is always refused. A symlink to a folder saves into the real folder. Saves
    of one folder from several processes run one after the other (a lock). A materialised view is not saved.
    """
    rows = store.rows
    writes = [*ALWAYS_WRITTEN]
    writes += [SIDE_FILE] if rows.side is not None else []
    writes += [TEXTS_FILE] if store.texts is not None else []
    writes += [INDEX_FILE] if store.pool is not None else []
    with atomic_directory(
        path, kind=FORMAT, config_file=CONFIG_FILE, layout=LAYOUT, overwrite=overwrite, writes=writes
    ) as tmp:
        _write_rows(rows, rows.storage, tmp / EMBEDDINGS_FILE, NUMPY_DTYPES[rows.dtype], "embeddings")
        fault_point(f"wrote {EMBEDDINGS_FILE}")
        # Default ids are saved as null: a million "0".."N-1" strings would cost memory on every load.
        (tmp / IDS_FILE).write_text(json.dumps(None if isinstance(store.ids, DefaultIds) else list(store.ids)))
        fault_point(f"wrote {IDS_FILE}")
        saved = [EMBEDDINGS_FILE, IDS_FILE]
        if rows.side is not None:
            _write_rows(rows, rows.side, tmp / SIDE_FILE, np.float16, "side features")
            fault_point(f"wrote {SIDE_FILE}")
            saved.append(SIDE_FILE)
        if store.texts is not None:
            (tmp / TEXTS_FILE).write_text(json.dumps(store.texts))
            fault_point(f"wrote {TEXTS_FILE}")
            saved.append(TEXTS_FILE)
        if store.pool is not None:
            store.pool.save(tmp / INDEX_FILE)
            fault_point(f"wrote {INDEX_FILE}")
            saved.append(INDEX_FILE)
        (tmp / CORRECTOR_DIR).mkdir()
        store.corrector.save_to(tmp / CORRECTOR_DIR)
        saved += [f"{CORRECTOR_DIR}/{name}" for name in sorted(corrector_persistence.FILES)]
        files = {}
        for name in saved:
            with open(tmp / name, "rb") as handle:
                files[name] = {"size": os.fstat(handle.fileno()).st_size, "sha256": sha256_of(handle)}
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_rows": len(store),
            "dim": store.dim,
            "dtype": store.dtype,
            "similarity": store.similarity,
            "block_size": store.block_size,
            "pool": store.pool.get_config_dict() if store.pool is not None else None,
            "files": files,
        }
        if store.encoder is not None:
            config["encoder"] = store.encoder
        (tmp / CONFIG_FILE).write_text(json.dumps(with_config_checksum(config), indent=2))
        fault_point(f"wrote {CONFIG_FILE}")


def _write_rows(rows: CacheRows, storage: Any, path: Path, dtype: Any, what: str) -> None:
    """Copy row storage block by block into a ``.npy`` file, in its own dtype, refusing rows that cannot be scored."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(int(n) for n in storage.shape))
    for start, end in rows.blocks():
        block = storage[start:end]
        block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))
        check_rows_scorable(block, f"The store's {what} (not saved)", offset=start, norms=what == "embeddings")
        out[start:end] = block.numpy()
    out.flush()
    del out


def check_save_path(path: str | os.PathLike[str], overwrite: bool = False, texts: bool = True) -> None:
    """Raise the error :func:`save_store` would raise for ``path`` (a store with ``texts``), before any work."""
    writes = [*ALWAYS_WRITTEN, *([TEXTS_FILE] if texts else [])]
    check_save_target(path, kind=FORMAT, config_file=CONFIG_FILE, layout=LAYOUT, overwrite=overwrite, writes=writes)


def read_store(
    path: str | os.PathLike[str], mmap: bool = True, verify: bool | None = None, accept_missing_checksums: bool = False
) -> SavedStore:
    """Read and check every file of a saved store, all of one generation: the parts a store is built from.

    ``mmap`` memory-maps the embeddings (read lazily, block by block). ``verify`` checks the embeddings' SHA-256 and
    that every row is finite and scorable (reads the whole file); default: only when ``mmap=False``, since the file
    is read in full then anyway. Every other file (config, ids, texts, side features, corrector, pool index) is
    always checked against its checksum, and the embeddings' size and header always. ``accept_missing_checksums``
    loads a save of 0.1, written before checksums were required.

    Raises ``ValueError`` naming the file for any damage, ``FileNotFoundError`` for a missing folder or file. What
    is trusted: nothing is unpickled and no size is believed before it matches the bytes on disk, but a pool's
    ``index.faiss`` is parsed by FAISS's reader; checksums catch accidents, not a deliberate forgery. A flipped bit
    inside the embeddings of a memory-mapped load is **not** detected without ``verify=True`` (checking it would read
    the whole file, which memory-mapping exists to avoid); ``docs/reliability.md`` counts what each mode detects.
    """
    verify = (not mmap) if verify is None else verify
    return read_one_generation(path, lambda folder: _read_store(folder, mmap, verify, accept_missing_checksums))


def _read_store(folder: SavedFolder, mmap: bool, verify: bool, accept_missing_checksums: bool) -> SavedStore:
    config_path = folder.file(CONFIG_FILE)
    if not folder.exists(CONFIG_FILE):
        raise FileNotFoundError(f"{folder.path} is not a saved CorrectedCacheStore: {CONFIG_FILE} is missing")
    config = check_saved_config(
        folder.read_json(CONFIG_FILE, "store config"),
        config_path,
        FORMAT,
        _CONFIG_KEYS,
        "store config",
        accept_missing_checksums=accept_missing_checksums,
    )
    if not isinstance(config.get("format_version", 0), int) or config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{folder.path} was written by a newer haystack-corrector; upgrade to load it")
    try:
        files = _checked_file_list(config["files"])
        num_rows = check_positive_int(config["num_rows"], "num_rows")
        dim = check_positive_int(config["dim"], "dim")
        dtype = check_choice(config["dtype"], "dtype", tuple(DTYPES))
        similarity = check_choice(config["similarity"], "similarity", SIMILARITIES)
        block_size = check_positive_int(config.get("block_size", 16384), "block_size")
        encoder = check_encoder_record(config.get("encoder"))
        pool_config = config.get("pool")
        if pool_config is not None and (not isinstance(pool_config, dict) or INDEX_FILE not in files):
            raise ValueError(f"a pool config needs a dict and {INDEX_FILE} in the file list")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"Corrupted store config {config_path}: {exc}") from exc
    for required in (EMBEDDINGS_FILE, IDS_FILE, f"{CORRECTOR_DIR}/{corrector_persistence.WEIGHTS_FILE}"):
        if required not in files:
            raise ValueError(f"Corrupted store config {config_path}: it does not list {required}")
    # Small files: read once, size and checksum checked on the very bytes that are parsed.
    small = {name: _checked_bytes(folder, name, files[name]) for name in files if not name.endswith(".npy")}
    with folder.open(EMBEDDINGS_FILE) as handle:
        _check_size(handle, folder.file(EMBEDDINGS_FILE), files[EMBEDDINGS_FILE])
        if verify:
            _check_sha(handle, folder.file(EMBEDDINGS_FILE), files[EMBEDDINGS_FILE])
        array = read_npy(handle, folder.file(EMBEDDINGS_FILE), mmap, (np.dtype(NUMPY_DTYPES[dtype]),))
    if array.shape != (num_rows, dim):
        raise ValueError(
            f"{folder.file(EMBEDDINGS_FILE)} holds shape {array.shape}, but the config says shape ({num_rows}, {dim})"
        )
    if verify:
        _check_scorable_file(array, folder.file(EMBEDDINGS_FILE), norms=True)
    side = None
    if SIDE_FILE in files:
        with folder.open(SIDE_FILE) as handle:
            _check_size(handle, folder.file(SIDE_FILE), files[SIDE_FILE])
            _check_sha(handle, folder.file(SIDE_FILE), files[SIDE_FILE])
            side = read_npy(handle, folder.file(SIDE_FILE), mmap, (np.dtype(np.float16),))
        if side.ndim != 2 or side.shape[0] != num_rows:
            raise ValueError(f"{folder.file(SIDE_FILE)} holds shape {side.shape}; expected ({num_rows}, s)")
    ids = parse_json(small[IDS_FILE], folder.file(IDS_FILE), "ids file")
    if ids is not None and not isinstance(ids, list):
        raise ValueError(f"Corrupted ids file {folder.file(IDS_FILE)}: expected a list or null")
    texts = parse_json(small[TEXTS_FILE], folder.file(TEXTS_FILE), "texts file") if TEXTS_FILE in small else None
    with folder.sub(CORRECTOR_DIR) as inner:
        corrector = corrector_persistence.read_corrector(inner, "cpu", accept_missing_checksums)
    pool = None
    if pool_config is not None:
        pool = _read_pool(pool_config, small[INDEX_FILE], folder.file(INDEX_FILE), num_rows, dim, config_path)
    storage: torch.Tensor | np.ndarray = array if mmap else torch.from_numpy(array)
    side_storage = None if side is None else side if mmap else torch.from_numpy(side)
    return SavedStore(
        folder.path, storage, ids, corrector, similarity, dtype, block_size, texts, pool, side_storage, encoder
    )


def check_encoder_record(record: Any) -> dict[str, Any] | None:
    """A store's record of what built it: None, or a flat dict of short strings, ints, bools and nulls."""
    if record is None:
        return None
    if not isinstance(record, dict) or len(record) > 16:
        raise ValueError("encoder must be a dict of at most 16 entries")
    for key, value in record.items():
        short = isinstance(value, str) and len(value) <= 4096
        if not (isinstance(key, str) and (value is None or short or isinstance(value, (bool, int)))):
            raise ValueError(f"encoder[{key!r}] must be a short string, an int, a bool or null")
    return dict(record)


def _checked_file_list(listed: Any) -> dict[str, dict[str, Any]]:
    """The config's ``files``: every name one of ours, every size an int and every checksum a hex string."""
    files = dict(listed)
    allowed = {name for name, children in LAYOUT.items() if children is None}
    allowed |= {f"{CORRECTOR_DIR}/{name}" for name in corrector_persistence.FILES}
    for name, expected in files.items():
        if name not in allowed or name == CONFIG_FILE:
            raise ValueError(f"unexpected file name {name!r}")
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str):
            raise ValueError(f"{name}: no sha256")
        check_positive_int(expected.get("size"), f"{name} size")
    return files


def _check_size(handle: IO[bytes], file: Path, expected: dict[str, Any]) -> None:
    size = os.fstat(handle.fileno()).st_size
    if size != expected["size"]:
        raise ValueError(f"{file} is truncated or corrupted: {size} bytes, expected {expected['size']}")


def _check_sha(handle: IO[bytes], file: Path, expected: dict[str, Any]) -> None:
    if sha256_of(handle) != expected["sha256"]:
        raise ValueError(f"{file} is corrupted: its SHA-256 checksum does not match the one saved with it")


def _checked_bytes(folder: SavedFolder, name: str, expected: dict[str, Any]) -> bytes:
    with folder.open(name) as handle:
        _check_size(handle, folder.file(name), expected)
        data = handle.read()
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise ValueError(f"{folder.file(name)} is corrupted: its SHA-256 checksum does not match the one saved with it")
    return data


def _check_scorable_file(array: np.ndarray, file: Path, norms: bool) -> None:
    rows = max(1, _CHUNK // max(1, array.shape[1] * array.itemsize))
    for start in range(0, array.shape[0], rows):
        block = torch.from_numpy(np.asarray(array[start : start + rows]))
        check_rows_scorable(block, f"{file}", offset=start, norms=norms)


def _read_pool(config: dict[str, Any], data: bytes, file: Path, num_rows: int, dim: int, config_path: Path) -> Any:
    from haystack_corrector.faiss_pool import FaissPool

    try:
        pool = FaissPool(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Corrupted store config {config_path}: its pool config: {exc}") from exc
    pool.load_bytes(data, file, num_rows=num_rows, dim=dim)
    return pool


def read_embeddings_npy(file: Path, verify: bool = True) -> np.ndarray:
    """Memory-map an (N, d) float16/float32 ``.npy`` file of embeddings; ``verify`` refuses rows that cannot be
    scored (NaN/inf, too large for float32), naming the file and the row (:meth:`CorrectedCacheStore.from_npy`)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    with open(file, "rb") as handle:
        array = read_npy(handle, file, mmap=True, dtypes=(np.dtype(np.float16), np.dtype(np.float32)))
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{file} must hold a non-empty 2-D float16 or float32 array, got shape {array.shape}")
    if verify:
        _check_scorable_file(array, file, norms=True)
    return array
