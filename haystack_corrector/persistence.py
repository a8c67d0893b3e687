"""Saving and loading a cache store: plain ``.npy``, JSON and safetensors files, each one checked on load.

A saved store is a folder: ``embeddings.npy`` (the stale cache, memory-mappable), ``ids.json``, ``texts.json``
(optional), ``corrector/`` (a :class:`Corrector` save), ``index.faiss`` (optional pool) and ``store_config.json``,
which records every file's size and SHA-256 and carries a checksum of its own. Nothing is ever unpickled. Saves
follow the rule of :mod:`haystack_corrector._atomic`: atomic, and never deleting a file they did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from haystack_corrector._atomic import atomic_directory, check_save_target, resolve_saved_directory, step
from haystack_corrector._validation import (
    check_choice,
    check_positive_int,
    describe,
    read_config,
    read_json,
    with_config_checksum,
)
from haystack_corrector.cache_rows import DefaultIds
from haystack_corrector.corrector import Corrector
from haystack_corrector.scoring import SIMILARITIES

if TYPE_CHECKING:
    from haystack_corrector.cache_store import CorrectedCacheStore

DTYPES = {"float32": torch.float32, "float16": torch.float16}
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
OWNED_FILES = frozenset({EMBEDDINGS_FILE, IDS_FILE, TEXTS_FILE, CONFIG_FILE, CORRECTOR_DIR, INDEX_FILE, SIDE_FILE})


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
    pool: dict[str, Any] | None
    side: torch.Tensor | np.ndarray | None


def sha256_of(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_store(store: CorrectedCacheStore, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Write ``store`` into the directory ``path`` atomically (the save rule of :mod:`haystack_corrector._atomic`)."""
    with atomic_directory(path, kind=FORMAT, config_file=CONFIG_FILE, owned=OWNED_FILES, overwrite=overwrite) as tmp:
        _write_rows(store, store._storage, tmp / EMBEDDINGS_FILE, NUMPY_DTYPES[store.dtype])
        step(f"wrote {EMBEDDINGS_FILE}")
        # Default ids are saved as null: a million "0".."N-1" strings would cost memory on every load.
        (tmp / IDS_FILE).write_text(json.dumps(None if isinstance(store.ids, DefaultIds) else list(store.ids)))
        step(f"wrote {IDS_FILE}")
        saved = [EMBEDDINGS_FILE, IDS_FILE]
        if store._side is not None:
            _write_rows(store, store._side, tmp / SIDE_FILE, np.float16)
            step(f"wrote {SIDE_FILE}")
            saved.append(SIDE_FILE)
        if store.texts is not None:
            (tmp / TEXTS_FILE).write_text(json.dumps(store.texts))
            step(f"wrote {TEXTS_FILE}")
            saved.append(TEXTS_FILE)
        if store.pool is not None:
            store.pool.save(tmp / INDEX_FILE)
            step(f"wrote {INDEX_FILE}")
            saved.append(INDEX_FILE)
        (tmp / CORRECTOR_DIR).mkdir()
        store.corrector.save_to(tmp / CORRECTOR_DIR)
        files = {
            name: {"size": (tmp / name).stat().st_size, "sha256": sha256_of(tmp / name)}
            for name in (
                *saved,
                f"{CORRECTOR_DIR}/corrector.safetensors",
                f"{CORRECTOR_DIR}/corrector_config.json",
            )
        }
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
        (tmp / CONFIG_FILE).write_text(json.dumps(with_config_checksum(config), indent=2))
        step(f"wrote {CONFIG_FILE}")


def _write_rows(store: CorrectedCacheStore, storage: Any, path: Path, dtype: Any) -> None:
    """Copy row storage block by block into a ``.npy`` file, in its own dtype (no float32 round trip)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(int(n) for n in storage.shape))
    for start, end in store._blocks():
        block = storage[start:end]
        out[start:end] = block.numpy() if isinstance(block, torch.Tensor) else block
    out.flush()
    del out


def check_save_path(path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Raise the error :func:`save_store` would raise for ``path``, before any expensive work."""
    check_save_target(path, kind=FORMAT, config_file=CONFIG_FILE, owned=OWNED_FILES, overwrite=overwrite)


def read_store(path: str | os.PathLike[str], mmap: bool = True, verify: bool | None = None) -> SavedStore:
    """Read and check every file of a saved store: the parts a :class:`CorrectedCacheStore` is built from."""
    directory = resolve_saved_directory(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a saved CorrectedCacheStore: {CONFIG_FILE} is missing")
    keys = ("format", "format_version", "num_rows", "dim", "dtype", "similarity", "block_size", "pool", "files")
    config = read_config(config_path, FORMAT, keys, "store config")
    if not isinstance(config.get("format_version", 0), int) or config.get("format_version", 0) > FORMAT_VERSION:
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
        if (name != EMBEDDINGS_FILE or verify) and sha256_of(file) != expected["sha256"]:
            raise ValueError(f"{file} is corrupted: its SHA-256 checksum does not match the one saved with it")
    array = load_npy(directory / EMBEDDINGS_FILE, mmap)
    if array.shape != (num_rows, dim) or array.dtype != NUMPY_DTYPES[dtype]:
        raise ValueError(
            f"{directory / EMBEDDINGS_FILE} holds {describe(array)}, but the config says shape "
            f"({num_rows}, {dim}) and dtype {dtype}"
        )
    ids = read_json(directory / IDS_FILE, "ids file")
    if ids is not None and not isinstance(ids, list):
        raise ValueError(f"Corrupted ids file {directory / IDS_FILE}: expected a list or null")
    corrector = Corrector.load(directory / CORRECTOR_DIR)
    storage: torch.Tensor | np.ndarray = array if mmap else torch.from_numpy(array)
    side: torch.Tensor | np.ndarray | None = None
    if SIDE_FILE in files:
        side_array = load_npy(directory / SIDE_FILE, mmap)
        if side_array.ndim != 2 or side_array.shape[0] != num_rows or side_array.dtype != np.float16:
            raise ValueError(f"{directory / SIDE_FILE} holds {describe(side_array)}; expected ({num_rows}, s) float16")
        side = side_array if mmap else torch.from_numpy(side_array)
    texts = None
    if (directory / TEXTS_FILE).is_file() and TEXTS_FILE in files:
        texts = read_json(directory / TEXTS_FILE, "texts file")
    return SavedStore(
        directory, storage, ids, corrector, similarity, dtype, block_size, texts, config.get("pool"), side
    )


def load_npy(file: Path, mmap: bool) -> np.ndarray:
    """A ``.npy`` file whose header, size and dtype are checked first (never unpickled), memory-mapped or read."""
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


def store_from_npy(
    cls: type[CorrectedCacheStore],
    file: str | os.PathLike[str],
    ids: Sequence[str] | None,
    corrector: Corrector | None,
    similarity: str,
    texts: Sequence[str] | None,
    block_size: int,
) -> CorrectedCacheStore:
    """A store memory-mapping an existing (N, d) float16/float32 ``.npy`` file (:meth:`CorrectedCacheStore.from_npy`)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    array = load_npy(file, mmap=True)
    names = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32"}
    if array.ndim != 2 or array.dtype not in names or 0 in array.shape:
        raise ValueError(f"{file} must hold a non-empty 2-D float16 or float32 array, got {describe(array)}")
    store = cls._from_storage(array, ids, corrector, similarity, names[array.dtype], block_size)
    store.texts = texts  # type: ignore[assignment]
    return store


def load_store(
    cls: type[CorrectedCacheStore], path: str | os.PathLike[str], mmap: bool, verify: bool | None
) -> CorrectedCacheStore:
    """A store from a saved folder, every file checked (:meth:`CorrectedCacheStore.load`)."""
    saved = read_store(path, mmap=mmap, verify=verify)
    try:
        store = cls._from_storage(
            saved.storage, saved.ids, saved.corrector, saved.similarity, saved.dtype, saved.block_size, saved.side
        )
        store.texts = saved.texts  # type: ignore[assignment]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Corrupted store {saved.directory}: {exc}") from exc
    if saved.pool:
        from haystack_corrector.faiss_pool import FaissPool

        store.pool = FaissPool(**saved.pool)
        store.pool.load(saved.directory / INDEX_FILE)
    return store


class StorePersistence:
    """``save``, ``load``, ``from_npy`` and ``check_save_path`` of :class:`~haystack_corrector.CorrectedCacheStore`.

    A mixin, so that the store's persistence reads in this file, next to the format it writes.
    """

    def save(self: Any, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Save ids, stale embeddings (``.npy``), texts, config and corrector into the directory ``path``, atomically.

        ``path`` may be new, empty, or a previous store save. A folder holding anything else is refused
        (:class:`FileExistsError`) unless ``overwrite=True``, which replaces only the store's own files
        (``embeddings.npy``, ``ids.json``, ``texts.json``, ``store_config.json``, ``corrector/``, ``index.faiss``) and
        keeps every other entry. A materialised view is a cache and is not saved.
        """
        save_store(self, path, overwrite=overwrite)

    @staticmethod
    def check_save_path(path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Raise the error :meth:`save` would raise for ``path`` (call it before encoding a corpus to save)."""
        check_save_path(path, overwrite=overwrite)

    @classmethod
    def from_npy(
        cls,
        file: str | os.PathLike[str],
        ids: Sequence[str] | None = None,
        corrector: Corrector | None = None,
        similarity: str = "cosine",
        texts: Sequence[str] | None = None,
        block_size: int = 16384,
    ) -> CorrectedCacheStore:  # type: ignore[misc]
        """Memory-map an existing (N, d) float16/float32 ``.npy`` file of embeddings as the stale cache, without copying.

        For caches written by another pipeline (or by ``numpy.lib.format.open_memmap``); the storage dtype is the
        file's. The file must not change while the store uses it. :meth:`save` writes a regular store directory.
        """
        return store_from_npy(cls, file, ids, corrector, similarity, texts, block_size)  # type: ignore[arg-type]

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
        return load_store(cls, path, mmap=mmap, verify=verify)  # type: ignore[arg-type]
