"""Safe saves: atomic, serialised, and never deleting, moving or rewriting an entry that a save did not write.

``atomic_directory(path, kind=..., config_file=..., layout=...)`` is the one way the package writes a saved folder.

**The target.** ``path`` is resolved once (``os.path.realpath``): a symlink to a folder is followed and the save goes
into the real folder, which the symlink keeps pointing at. ``""``, ``"."``, ``".."`` and ``"/"`` are refused (a
save replaces its target folder; it must have a name of its own).

**Ownership.** An entry of an existing target is *ours* only when a save wrote it provably: the folder's
``config_file`` is a regular file of this ``kind``, the entry's name is in ``layout``, it is a regular file (or, for
a sub-folder of the layout, a real folder holding only regular files of its layout), and, where the config lists
its files (``"files"``), it is listed there. Symlinks are never ours. Everything else is *foreign*:

- a foreign entry named like one of the layout's is refused (:class:`FileExistsError`, even with ``overwrite=True``):
  a save would have to replace it;
- other foreign entries are refused unless ``overwrite=True``; then they are moved, untouched, into the new folder.

**Serialised.** A save holds an exclusive ``flock`` on the target's parent folder from its checks to its clean-up,
so saves of the same folder from several processes run one after the other (no lock file is left behind). Loads
take no lock: they read one folder through one directory descriptor (:mod:`haystack_corrector.saved_folder`).

**The swap**, for a target that exists:

0. a journal ``.<name>.haystack-corrector-swap.json`` records which entries of the old folder are ours (with their
   inode numbers),
1. ``path`` -> ``.<name>.haystack-corrector-previous``,
2. ``.<name>.tmp-<pid>-XXXX`` (the new save, complete and fsynced) -> ``path``,
3. foreign entries of the previous folder move back into ``path``,
4. the previous folder's own entries (the journal's, same inode) are removed, then the folder, then the journal.

A process killed before step 2 leaves the previous save loadable (loads fall back to the previous folder while
``path`` is missing); after step 2 the new save is complete. The next save of the same path first finishes an
interrupted swap from its journal. Without a journal a previous folder is not provably ours: it is never touched,
and a save refuses to run until the user moves it. ``tests/test_safe_saves.py`` kills a save between every pair of
filesystem operations; ``tests/test_concurrent_saves.py`` races saves and loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".haystack-corrector-previous"
JOURNAL_SUFFIX = ".haystack-corrector-swap.json"
JOURNAL_FORMAT = "haystack-corrector/swap"
# The longest hidden sibling a save writes next to its target is the swap journal (".<name>" + this suffix).
_SIBLING_OVERHEAD = 1 + max(len(PREVIOUS_SUFFIX), len(JOURNAL_SUFFIX), len(".tmp-4194304-XXXXXXXX"))

# A layout: every top-level name a save of one kind writes; None for a file, or the names a sub-folder holds.
Layout = Mapping[str, "frozenset[str] | None"]

# Fault injection for the tests: called with a label before every filesystem operation of a save.
_fault_hook: Callable[[str], None] | None = None


def fault_point(label: str) -> None:
    """Mark one filesystem operation of a save (the tests kill the process at each of these points)."""
    if _fault_hook is not None:
        _fault_hook(label)


def previous_directory(target: Path) -> Path:
    return target.with_name(f".{target.name}{PREVIOUS_SUFFIX}")


def journal_file(target: Path) -> Path:
    return target.with_name(f".{target.name}{JOURNAL_SUFFIX}")


# ------------------------------------------------------------------------------------------------ the target
def save_target(path: str | os.PathLike[str]) -> Path:
    """The real folder a save to ``path`` writes (symlinks resolved once); ``ValueError`` for a nameless path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip() or Path(text).name in ("", ".", ".."):
        raise ValueError(
            f"Cannot save to {text!r}: a save replaces its target folder, so it needs a folder name of its own "
            "(e.g. 'store' or './store'), not the current or a parent folder"
        )
    real = Path(os.path.realpath(text))
    if real != Path(os.path.abspath(text)):
        logger.info("Saving to %s, the real folder that %s links to", real, text)
    return real


def check_parent(target: Path) -> None:
    """Raise what creating hidden siblings of ``target`` would raise: parent not a folder, not writable, name long."""
    ancestor = target.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"Cannot save to {target}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot save to {target}: the folder {ancestor} is not writable")
    try:
        name_max = os.pathconf(ancestor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    length = len(os.fsencode(target.name))
    if length + _SIBLING_OVERHEAD > name_max:
        raise ValueError(
            f"Cannot save to {target}: its name is {length} bytes long, and a save writes hidden folders next to it "
            f"whose names add {_SIBLING_OVERHEAD} bytes (the filesystem allows {name_max}); use a name of at most "
            f"{name_max - _SIBLING_OVERHEAD} bytes"
        )


# ------------------------------------------------------------------------------------------------- ownership
def _our_config(directory: Path, config_file: str, kind: str) -> dict[str, Any] | None:
    """The folder's config when it is a regular file of ``kind`` (a save of ours), else None."""
    config = directory / config_file
    try:
        if not stat.S_ISREG(os.lstat(config).st_mode):
            return None
        data = json.loads(config.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and data.get("format") == kind else None


def is_saved_directory(directory: Path, config_file: str, kind: str) -> bool:
    """True when ``directory`` holds ``config_file`` whose JSON ``format`` is ``kind`` (a save of that kind)."""
    return _our_config(directory, config_file, kind) is not None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def owned_entries(directory: Path, config_file: str, kind: str, layout: Layout) -> set[str]:
    """The entries of ``directory`` that a save of ``kind`` provably wrote (the module docstring's rule)."""
    config = _our_config(directory, config_file, kind)
    if config is None:
        return set()
    listed = set(config["files"]) | {config_file} if isinstance(config.get("files"), dict) else None
    ours = set()
    for name, children in layout.items():
        entry = directory / name
        if children is None:
            if _is_regular(entry) and (listed is None or name in listed):
                ours.add(name)
            continue
        try:
            if not stat.S_ISDIR(os.lstat(entry).st_mode):
                continue
            inside = os.listdir(entry)
        except OSError:
            continue
        if all(
            child in children and _is_regular(entry / child) and (listed is None or f"{name}/{child}" in listed)
            for child in inside
        ):
            ours.add(name)
    return ours


def foreign_entries(directory: Path, config_file: str, kind: str, layout: Layout) -> list[str]:
    """Entries of an existing ``directory`` that no save of ``kind`` provably wrote, sorted."""
    ours = owned_entries(directory, config_file, kind, layout)
    return sorted(name for name in os.listdir(directory) if name not in ours)


def check_save_target(
    path: str | os.PathLike[str],
    *,
    kind: str,
    config_file: str,
    layout: Layout,
    overwrite: bool = False,
    writes: Collection[str] | None = None,
) -> Path:
    """Raise the error a save to ``path`` would raise, before any expensive work; return the real target folder.

    ``writes``: the layout's names this save will write (default: all of them); a foreign entry under one of those
    names is refused, a foreign entry under another name stays where it is.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be a bool, got {type(overwrite).__name__}")
    target = save_target(path)
    check_parent(target)
    if os.path.lexists(target) and not target.is_dir():
        raise FileExistsError(f"Cannot save to {target}: it exists and is not a folder")
    previous = previous_directory(target)
    if os.path.lexists(previous) and not journal_file(target).is_file():
        raise FileExistsError(
            f"Cannot save to {target}: {previous} exists, and no journal of an interrupted save proves it is "
            "haystack-corrector's; it is left untouched. Move it away (or delete it) and save again"
        )
    if target.is_dir():
        foreign = foreign_entries(target, config_file, kind, layout)
        clashing = [name for name in foreign if name in (layout if writes is None else writes)]
        if clashing:
            raise FileExistsError(
                f"Refusing to save into {target}: it holds {clashing[0]!r}, which haystack-corrector did not write "
                f"(not a file of a saved {kind.rpartition('/')[2]} there), and a save would replace it. Move it "
                "away and save again"
            )
        if foreign and not overwrite:
            raise FileExistsError(
                f"Refusing to save into {target}: it holds {foreign[0]!r}, which is not part of a saved "
                f"{kind.rpartition('/')[2]} ({len(foreign)} such entries). Save into a new or empty folder, or pass "
                "overwrite=True to replace only haystack-corrector's own files and keep the rest"
            )
    return target


# ---------------------------------------------------------------------------------------------- the machinery
def _remove(entry: Path) -> None:
    if stat.S_ISDIR(os.lstat(entry).st_mode):
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


@contextlib.contextmanager
def _save_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` (the target's parent): one save of its entries at a time."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: saves are atomic but not serialised
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process's save into %s to finish", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _remove_dead_temporaries(target: Path, layout: Layout) -> None:
    """Delete temporary folders of saves to ``target`` whose process is gone (killed mid-save).

    Ours by their name (``.<name>.tmp-<pid>-…``, a pid that no longer runs) and by their content (only entries a save
    of this kind writes): anything else is left alone.
    """
    prefix = f".{target.name}.tmp-"
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
            continue
        pid = entry.name[len(prefix) :].partition("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)) and set(os.listdir(entry)) <= set(layout):
            logger.info("Removing %s, left by a save that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _write_journal(target: Path, ours: set[str]) -> dict[str, list[int]]:
    """Step 0: record (and flush) which entries of the old folder are ours, by inode; return the record."""
    entries = {}
    for name in sorted(ours):
        info = os.lstat(target / name)
        entries[name] = [info.st_dev, info.st_ino]
    record = {"format": JOURNAL_FORMAT, "target": target.name, "ours": entries}
    journal = journal_file(target)
    with open(journal, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync(target.parent)
    return entries


def _read_journal(target: Path) -> dict[str, list[int]] | None:
    """The journal's record of our entries in the previous folder, or None when there is no valid journal."""
    journal = journal_file(target)
    if not _is_regular(journal):
        return None
    try:
        record = json.loads(journal.read_bytes().decode("utf-8"))
        if record.get("format") != JOURNAL_FORMAT or record.get("target") != target.name:
            return None
        return {str(name): [int(dev), int(ino)] for name, (dev, ino) in dict(record["ours"]).items()}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def _finish_swap(target: Path, ours: dict[str, list[int]]) -> None:
    """Steps 3-4: foreign entries of the previous folder back into ``target``; the journal's own entries removed."""
    previous = previous_directory(target)
    for name in sorted(os.listdir(previous)):
        source = previous / name
        info = os.lstat(source)
        if ours.get(name) == [info.st_dev, info.st_ino]:  # written by a save of ours (its journal says so)
            fault_point(f"remove previous {name}")
            _remove(source)
        elif not os.path.lexists(target / name):
            fault_point(f"move back {name}")
            os.rename(source, target / name)
        else:  # never deleted: the user decides
            logger.warning("%s and %s both exist; left %s where it is", source, target / name, source)
    fault_point("rmdir previous")
    try:
        previous.rmdir()
    except OSError:
        logger.warning("%s is not empty; it is left in place with its journal", previous)
        return
    fault_point("remove journal")
    journal_file(target).unlink()
    _fsync(target.parent)


def recover_interrupted_save(target: Path) -> None:
    """Finish (or undo) a swap that a killed process left half done, from its journal; never touches the unproven."""
    ours = _read_journal(target)
    previous = previous_directory(target)
    if ours is None:
        return
    if not os.path.lexists(previous):  # killed before step 1 or after step 4's rmdir: nothing to finish
        fault_point("remove journal")
        journal_file(target).unlink()
        return
    if not os.path.lexists(target):  # killed between steps 1 and 2: the previous save goes back
        logger.warning("A save to %s was interrupted; restoring the previous save from %s", target, previous)
        fault_point(f"restore {previous.name}")
        os.rename(previous, target)
        fault_point("remove journal")
        journal_file(target).unlink()
        return
    logger.warning("A save to %s was interrupted after it completed; finishing its clean-up of %s", target, previous)
    _finish_swap(target, ours)


def _make_temporary(target: Path) -> Path:
    """A new hidden sibling ``.<name>.tmp-<pid>-<random>``, created with the umask's permissions (as the final
    folder should have; ``tempfile.mkdtemp`` would make it 0700)."""
    while True:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    kind: str,
    config_file: str,
    layout: Layout,
    overwrite: bool = False,
    writes: Collection[str] | None = None,
) -> Iterator[Path]:
    """Yield an empty temporary folder to write a save into; swap it into ``path`` when the block succeeds.

    Args:
        path: the folder to save to (a symlink to a folder saves into the real folder).
        kind: the ``format`` string of this kind of save (in ``config_file``).
        config_file: the file that identifies a save of this kind; write it into the temporary folder.
        layout: every top-level name a save of this kind writes (None: a file; a set: a sub-folder's files). The
            temporary folder must hold only these.
        overwrite: save into a folder that holds foreign entries too (they are kept, moved into the new folder).
        writes: the layout's names this save writes (default: all). The temporary folder must hold only these.

    Raises:
        FileExistsError: ``path`` is a file, or holds foreign entries (see the module docstring).
        NotADirectoryError, PermissionError, ValueError: the parent is not a folder, is not writable, or the name is
            too long for the hidden siblings a save writes.
    """
    target = save_target(path)
    check_parent(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _save_lock(target.parent):
        recover_interrupted_save(target)  # first: it may put the user's files back in place
        check_save_target(target, kind=kind, config_file=config_file, layout=layout, overwrite=overwrite, writes=writes)
        _remove_dead_temporaries(target, layout)
        fault_point("mkdtemp")
        tmp = _make_temporary(target)
        try:
            yield tmp
            unexpected = sorted(set(os.listdir(tmp)) - set(layout if writes is None else writes))
            if unexpected:
                raise RuntimeError(f"internal error: a {kind} save wrote unregistered entries {unexpected}")
            fault_point("fsync")
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own, uniquely named folder
            raise
        if not target.exists():
            try:
                fault_point("rename tmp -> target")
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync(target.parent)
            return
        ours = owned_entries(target, config_file, kind, layout)
        try:
            fault_point("write journal")
            entries = _write_journal(target, ours)
            fault_point("rename target -> previous")
            os.rename(target, previous_directory(target))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                journal_file(target).unlink()
            raise
        try:
            fault_point("rename tmp -> target")
            os.rename(tmp, target)
        except BaseException:
            os.rename(previous_directory(target), target)  # the old save goes back where it was
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                journal_file(target).unlink()
            raise
        # The new save is in place. A failure from here on leaves the journal for the next save to finish.
        _finish_swap(target, entries)


def resolve_saved_directory(path: str | os.PathLike[str]) -> Path:
    """The folder to load from: ``path``, or the previous save left by a save interrupted mid-swap."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(os.path.realpath(os.fspath(path)))
    if target.is_dir():
        return target
    previous = previous_directory(target)
    if not os.path.lexists(target) and previous.is_dir():
        logger.warning(
            "%s is missing but %s exists (a save was interrupted); loading the previous save", target, previous
        )
        return previous
    if os.path.lexists(target):
        raise NotADirectoryError(f"{path} is not a folder saved by haystack-corrector")
    raise FileNotFoundError(f"No saved haystack-corrector folder at {path}")
