"""Atomic directory saves: a process killed mid-save never destroys the previous save.

``atomic_directory(path)`` yields a temporary sibling directory; when the block finishes, the files are flushed to
disk and the directory is swapped into place with two renames:

1. ``path`` -> ``path.previous`` (only if ``path`` exists),
2. ``path.tmp-<pid>`` -> ``path``,
3. ``path.previous`` is deleted.

A kill before step 2 leaves ``path`` untouched; a kill between steps 1 and 2 leaves the previous save complete under
``path.previous``, which :func:`resolve_saved_directory` finds (with a warning) when ``path`` is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".previous"


def _fsync_directory(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_file():
            with open(child, "rb+") as handle:
                os.fsync(handle.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"Cannot save to {target}: it exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_directory(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if target.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.rename(target, previous)
    os.rename(tmp, target)
    if previous.exists():
        shutil.rmtree(previous)


def resolve_saved_directory(path: str | os.PathLike[str]) -> Path:
    """The directory to load from: ``path``, or its ``.previous`` twin left by a save interrupted mid-swap."""
    target = Path(path)
    if target.is_dir():
        return target
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if not target.exists() and previous.is_dir():
        logger.warning(
            "%s is missing but %s exists (a save was interrupted); loading the previous save", target, previous
        )
        return previous
    if target.exists():
        raise NotADirectoryError(f"{target} is not a directory saved by haystack-corrector")
    raise FileNotFoundError(f"No saved haystack-corrector directory at {target}")
