"""Safe saves: a save is atomic, and it never deletes or replaces a file that haystack-corrector did not write.

``atomic_directory(path, kind=..., config_file=..., owned=...)`` checks the target folder *before* any work is done:

- it does not exist, or is empty: the save writes a hidden sibling ``.<name>.tmp-XXXX`` and renames it into place;
- it holds a previous save of the same kind (recognised by its config file's ``format``) and nothing else: the save
  is swapped in with two renames and the previous save's files are removed;
- it holds anything else (a *foreign* entry): the save refuses with :class:`FileExistsError` naming the folder and
  the first foreign entry, unless ``overwrite=True``; then only the entries the save owns are replaced and every
  foreign entry is moved, untouched, into the new folder.

The swap, for a target that exists:

1. ``path`` -> ``.<name>.haystack-corrector-previous``,
2. ``.<name>.tmp-XXXX`` -> ``path``,
3. foreign entries of the previous folder move back into ``path`` (only with ``overwrite=True``),
4. the previous folder's own entries are removed, then the (now empty) folder.

A process killed before step 2 leaves the previous save loadable through :func:`resolve_saved_directory` (which
falls back to the previous folder while ``path`` is missing); after step 2 the new save is complete. The next save
to the same path first finishes an interrupted swap (:func:`recover_interrupted_save`): foreign entries return to
``path``, nothing foreign is ever deleted. ``tests/test_safe_saves.py`` kills a save between every pair of
filesystem operations and checks both properties.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".haystack-corrector-previous"

# Fault injection for the tests: called with a label before every filesystem operation of a save.
_fault_hook: Callable[[str], None] | None = None


def step(label: str) -> None:
    """Mark one filesystem operation of a save (the tests kill the process at each of these points)."""
    if _fault_hook is not None:
        _fault_hook(label)


def previous_directory(target: Path) -> Path:
    return target.with_name(f".{target.name}{PREVIOUS_SUFFIX}")


def is_saved_directory(directory: Path, config_file: str, kind: str) -> bool:
    """True when ``directory`` holds ``config_file`` whose JSON ``format`` is ``kind`` (a save of that kind)."""
    config = directory / config_file
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == kind


def foreign_entries(directory: Path, config_file: str, kind: str, owned: Collection[str]) -> list[str]:
    """Entries of an existing ``directory`` that a save of ``kind`` did not write, sorted.

    In a folder recognised as a save of ``kind``, the ``owned`` names are ours; in any other folder, every entry is
    foreign (a user's ``ids.json`` is not ours just because of its name).
    """
    entries = sorted(os.listdir(directory))
    if is_saved_directory(directory, config_file, kind):
        return [name for name in entries if name not in owned]
    return entries


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a directory) to disk; directories only where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. directories on some filesystems
        pass
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _remove_dead_temporaries(target: Path, owned: Collection[str]) -> None:
    """Delete temporary folders of saves to ``target`` whose process is gone (killed mid-save).

    Ours by their name (``.<name>.tmp-<pid>-…``, a pid that no longer runs) and by their content (only entries a save
    of this kind writes): anything else is left alone.
    """
    prefix = f".{target.name}.tmp-"
    if not target.parent.is_dir():
        return
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix) or not entry.is_dir():
            continue
        pid = entry.name[len(prefix) :].partition("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)) and set(os.listdir(entry)) <= set(owned):
            logger.info("Removing %s, left by a save that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def recover_interrupted_save(target: Path, config_file: str, kind: str, owned: Collection[str]) -> None:
    """Finish a swap that a killed process left half done (see the module docstring); never deletes foreign files."""
    previous = previous_directory(target)
    if not previous.is_dir():
        return
    # The folder's name (hidden, with our suffix) is what marks it as ours: after step 1 of an overwrite=True save
    # into a foreign folder it holds the user's files and no config of ours.
    if not target.exists():
        logger.warning("A save to %s was interrupted; restoring the previous save from %s", target, previous)
        step(f"restore {previous.name}")
        os.rename(previous, target)
        return
    logger.warning("A save to %s was interrupted after it completed; finishing its clean-up of %s", target, previous)
    for name in sorted(os.listdir(previous)):
        source = previous / name
        if name in owned:
            step(f"remove previous {name}")
            _remove(source)
        elif not (target / name).exists():
            step(f"move back {name}")
            os.rename(source, target / name)
    with contextlib.suppress(OSError):  # left in place if anything unexpected is still in it
        step(f"rmdir {previous.name}")
        previous.rmdir()


def check_save_target(
    path: str | os.PathLike[str], *, kind: str, config_file: str, owned: Collection[str], overwrite: bool = False
) -> None:
    """Raise the error a save to ``path`` would raise, before any expensive work (see :func:`atomic_directory`)."""
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"Cannot save to {target}: it exists and is not a directory")
    if target.is_dir():
        foreign = foreign_entries(target, config_file, kind, owned)
        if foreign and not overwrite:
            raise FileExistsError(
                f"Refusing to save into {target}: it holds {foreign[0]!r}, which is not part of a saved "
                f"{kind.rpartition('/')[2]} ({len(foreign)} such entries). Save into a new or empty folder, or pass "
                "overwrite=True to replace only haystack-corrector's own files and keep the rest"
            )


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    kind: str,
    config_file: str,
    owned: Collection[str],
    overwrite: bool = False,
) -> Iterator[Path]:
    """Yield an empty temporary folder to write a save into; swap it into ``path`` when the block succeeds.

    Args:
        path: the folder to save to.
        kind: the ``format`` string of this kind of save (in ``config_file``).
        config_file: the file that identifies a save of this kind; write it into the temporary folder.
        owned: every top-level name a save of this kind writes. The temporary folder must hold only these.
        overwrite: save into a folder that holds foreign entries too, replacing only the ``owned`` ones.

    Raises:
        FileExistsError: ``path`` is a file, or holds foreign entries and ``overwrite`` is False.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"Cannot save to {target}: it exists and is not a directory")
    recover_interrupted_save(target, config_file, kind, owned)  # first: it may put the user's files back in place
    check_save_target(target, kind=kind, config_file=config_file, owned=owned, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target, owned)
    step("mkdtemp")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    try:
        yield tmp
        unexpected = sorted(set(os.listdir(tmp)) - set(owned))
        if unexpected:
            raise RuntimeError(f"internal error: a {kind} save wrote unregistered entries {unexpected}")
        step("fsync")
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own, uniquely named folder
        raise
    previous = previous_directory(target)
    swapped = False
    try:
        if target.exists():
            step("rename target -> previous")
            os.rename(target, previous)
            try:
                step("rename tmp -> target")
                os.rename(tmp, target)
            except BaseException:
                os.rename(previous, target)  # the old save goes back where it was
                raise
        else:
            step("rename tmp -> target")
            os.rename(tmp, target)
        swapped = True
    finally:
        if not swapped:
            shutil.rmtree(tmp, ignore_errors=True)
    # The new save is in place. A failure from here on leaves the previous folder for the next save to finish.
    if previous.is_dir():
        for name in sorted(os.listdir(previous)):
            source = previous / name
            if name in owned:  # replaced by the new save
                step(f"remove previous {name}")
                _remove(source)
            else:
                step(f"move back {name}")
                os.rename(source, target / name)
        step("rmdir previous")
        previous.rmdir()
    _fsync(target.parent)


def resolve_saved_directory(path: str | os.PathLike[str]) -> Path:
    """The directory to load from: ``path``, or the previous save left by a save interrupted mid-swap."""
    target = Path(path)
    if target.is_dir():
        return target
    previous = previous_directory(target)
    if not target.exists() and previous.is_dir():
        logger.warning(
            "%s is missing but %s exists (a save was interrupted); loading the previous save", target, previous
        )
        return previous
    if target.exists():
        raise NotADirectoryError(f"{target} is not a directory saved by haystack-corrector")
    raise FileNotFoundError(f"No saved haystack-corrector directory at {target}")
