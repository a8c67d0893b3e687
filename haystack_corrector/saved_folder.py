"""Reading a saved folder as one generation, with every size checked against the bytes on disk before it is trusted.

A save replaces its folder with two renames (:mod:`haystack_corrector._atomic`); the files of one saved folder never
change after the rename. So a load opens the folder **once** (a directory descriptor) and reads every file relative
to it: whatever saves land meanwhile, it reads one generation. If a save removed a file of that generation before
the load opened it, the folder at ``path`` is a different one by then; :func:`read_one_generation` notices
(:meth:`SavedFolder.replaced`) and reads again from the start. A missing or damaged file in a folder that was not
replaced is a real error and is raised at once.

Everything read here is bounded by the bytes on disk: ``.npy`` headers and JSON are parsed from files whose sizes
are checked first, and no shape from a header or config allocates memory before it matches the file's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from haystack_corrector._atomic import resolve_saved_directory

T = TypeVar("T")

# Reads of one load restart at most this many times because saves kept replacing the folder under it.
ATTEMPTS = 20
# The largest JSON file a load parses (ids and texts of 10M documents fit easily); bigger is refused as damage.
MAX_JSON_BYTES = 1 << 34

# Test hook: called with a file's name before every read of a load (the tests land a save at each of these points).
_read_hook: Callable[[str], None] | None = None


class SavedFolder:
    """A saved folder opened once; every read goes through its directory descriptor (one generation)."""

    def __init__(self, path: Path, fd: int | None = None, parent: SavedFolder | None = None) -> None:
        self.path = path
        self.parent = parent
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if fd is None else fd
        if not stat.S_ISDIR(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise NotADirectoryError(f"{path} is not a folder")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> SavedFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, name: str) -> Path:
        """The path of ``name`` for messages (reads never go through it)."""
        return self.path / name

    def sub(self, name: str) -> SavedFolder:
        """A sub-folder, opened relative to this one (same generation)."""
        _hook(name)
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), dir_fd=self.fd)
        return SavedFolder(self.path / name, fd, parent=self)

    def exists(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(name, dir_fd=self.fd).st_mode)
        except FileNotFoundError:
            return False

    def open(self, name: str) -> IO[bytes]:
        _hook(name)
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=self.fd)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path} is incomplete: {name} is missing") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{self.file(name)} is not a regular file")
        return os.fdopen(fd, "rb")

    def read_bytes(self, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        with self.open(name) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise ValueError(f"{self.file(name)} is {size:,} bytes, more than any file of a save holds ({limit:,})")
            return handle.read()

    def read_json(self, name: str, what: str) -> Any:
        return parse_json(self.read_bytes(name), self.file(name), what)

    def replaced(self) -> bool:
        """True when the folder's path names another folder now (a save swapped it), or none."""
        if self.parent is not None:
            return self.parent.replaced()
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        mine = os.fstat(self.fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)


def _hook(name: str) -> None:
    if _read_hook is not None:
        _read_hook(name)


def read_one_generation(path: str | os.PathLike[str], read: Callable[[SavedFolder], T]) -> T:
    """``read(folder)`` on the saved folder at ``path``, restarted if a save replaced the folder while it read."""
    for attempt in range(ATTEMPTS):
        last = attempt == ATTEMPTS - 1
        try:
            folder = SavedFolder(resolve_saved_directory(path))
        except (FileNotFoundError, NotADirectoryError):
            if last:
                raise
            continue  # a save's swap renamed the folder between two looks: look again
        try:
            return read(folder)
        except (OSError, ValueError):
            if last or not folder.replaced():
                raise
        finally:
            folder.close()
    raise AssertionError("unreachable")  # pragma: no cover


def parse_json(data: bytes, file: Path, what: str) -> Any:
    """Parse a JSON file of a save; any damage (bad UTF-8, syntax, nesting too deep) is a ``ValueError`` naming it."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"Corrupted {what} {file}: {exc}") from exc
    except RecursionError:
        raise ValueError(f"Corrupted {what} {file}: its JSON is nested too deeply") from None


def sha256_of(handle: IO[bytes], chunk: int = 1 << 24) -> str:
    """SHA-256 of an open file, read from its start (the position is left at the end)."""
    handle.seek(0)
    digest = hashlib.sha256()
    while block := handle.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def read_npy(handle: IO[bytes], file: Path, mmap: bool, dtypes: tuple[np.dtype, ...]) -> np.ndarray:
    """A ``.npy`` array from an open file: header, dtype and size checked before anything is mapped or allocated.

    Never unpickles. ``dtypes`` are the dtypes accepted. The result is memory-mapped (read-only) or read in full.
    """
    handle.seek(0)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError or tokenize errors
        raise ValueError(f"{file} is not a valid .npy file: {exc}") from exc
    if dtype not in dtypes:
        raise ValueError(f"{file} holds {dtype} values; expected {' or '.join(str(d) for d in dtypes)}")
    if not all(isinstance(n, int) and n >= 0 for n in shape) or fortran:
        raise ValueError(f"{file} is corrupted: its header gives the shape {shape} (fortran order: {fortran})")
    offset = handle.tell()
    size = os.fstat(handle.fileno()).st_size
    expected = offset + math.prod(shape) * dtype.itemsize  # Python integers: no wrap-around
    if size != expected:
        raise ValueError(f"{file} is truncated or corrupted: {size} bytes, expected {expected} for shape {shape}")
    if mmap and math.prod(shape):
        return np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape)
    array = np.empty(shape, dtype=dtype)
    view = memoryview(array).cast("B") if array.size else memoryview(b"")
    handle.seek(offset)
    filled = 0
    while filled < len(view):
        count = handle.readinto(view[filled:])
        if not count:
            raise ValueError(f"{file} is truncated: it ended while being read")
        filled += count
    return array
