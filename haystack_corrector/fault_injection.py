"""Fault injection into saves, for the reliability tests and the fault benchmarks (``benchmarks/fault_figures.py``,
``benchmarks/concurrency_soak.py``).

Saves call ``haystack_corrector._atomic.fault_point(label)`` before every filesystem operation; these helpers hook it to
count the operations, to kill the process at one of them (``os._exit`` in a forked child: no ``finally`` blocks run,
as under SIGKILL), or to make one of them fail like a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator

import torch

from haystack_corrector import CorrectedCacheStore, Corrector, _atomic


def count_steps(save: Callable[[], object]) -> list[str]:
    """Run ``save`` and return the labels of the filesystem operations it performed, in order."""
    labels: list[str] = []
    _atomic._fault_hook = labels.append
    try:
        save()
    finally:
        _atomic._fault_hook = None
    return labels


def killed_at(step_index: int, save: Callable[[], object], timeout: float = 60.0) -> int:
    """Run ``save`` in a forked child that dies abruptly before operation ``step_index``; return its exit code."""
    pid = os.fork()
    if pid == 0:  # child: no pytest, no clean-up on the way out
        counter = iter(range(10**6))

        def hook(label: str) -> None:
            if next(counter) == step_index:
                os._exit(137)

        _atomic._fault_hook = hook
        try:
            save()
        except BaseException:
            os._exit(1)
        os._exit(0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the save child hung at step {step_index}")


@contextlib.contextmanager
def disk_full_at(step_index: int) -> Iterator[None]:
    """Make operation ``step_index`` of the next save raise ``OSError(ENOSPC)``, as a full disk would."""
    counter = iter(range(10**6))

    def hook(label: str) -> None:
        if next(counter) == step_index:
            raise OSError(errno.ENOSPC, f"No space left on device (simulated before {label})")

    _atomic._fault_hook = hook
    try:
        yield
    finally:
        _atomic._fault_hook = None


# ------------------------------------------------------------------------------------- saves to break
def make_store(seed: int, n: int = 20, d: int = 6) -> CorrectedCacheStore:
    generator = torch.Generator().manual_seed(seed)
    store = CorrectedCacheStore(
        torch.randn(n, d, generator=generator),
        ids=[f"d{i}" for i in range(n)],
        texts=[f"t{seed}-{i}" for i in range(n)],
    )
    with torch.no_grad():
        for p in store.corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return store


def make_corrector(seed: int) -> Corrector:
    corrector = Corrector(6)
    with torch.no_grad():
        for p in corrector.parameters():
            p.fill_(float(seed))
    return corrector


def same_store(a: CorrectedCacheStore, b: CorrectedCacheStore) -> bool:
    return (
        torch.equal(a.stale_embeddings(), b.stale_embeddings())
        and list(a.ids) == list(b.ids)
        and a.texts == b.texts
        and torch.equal(a.corrected_embeddings(), b.corrected_embeddings())
    )


def same_corrector(a: Corrector, b: Corrector) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


SCENARIOS = ["store over store", "store over nothing", "store overwrite=True", "corrector over corrector"]


def scenario(name: str, folder):
    """(prepare the folder, the save to kill, load, old value or None, new value, same)."""
    if name == "corrector over corrector":
        return (
            lambda: make_corrector(1).save(folder),
            lambda: make_corrector(2).save(folder),
            lambda: Corrector.load(folder),
            make_corrector(1),
            make_corrector(2),
            same_corrector,
        )

    def prepare():
        if name == "store over nothing":
            return
        folder.mkdir()
        if name == "store overwrite=True":
            (folder / "important.txt").write_text("my notes")
            make_store(0).save(folder, overwrite=True)
        else:
            make_store(0).save(folder)

    overwrite = name == "store overwrite=True"
    old = None if name == "store over nothing" else make_store(0)
    return (
        prepare,
        lambda: make_store(1).save(folder, overwrite=overwrite),
        lambda: CorrectedCacheStore.load(folder),
        old,
        make_store(1),
        same_store,
    )


def probe_steps(folder, name: str) -> list[str]:
    """The labels of the filesystem operations of scenario ``name``'s save, run once into ``folder``/target."""
    target = folder / "target"
    folder.mkdir(parents=True)
    prepare, save, *_ = scenario(name, target)
    prepare()
    return count_steps(save)


# ------------------------------------------------------------------------------ generations for the race tests
def generation_store(k: int, n: int = 30, d: int = 8) -> CorrectedCacheStore:
    """A store whose every part says which generation ``k`` it is: rows, ids, texts and the corrector's bias."""
    rows = torch.arange(n * d, dtype=torch.float32).reshape(n, d) / 1000 + k
    store = CorrectedCacheStore(
        rows, ids=[f"g{k}-{i}" for i in range(n)], texts=[f"text {k} {i}" for i in range(n)], similarity="dot"
    )
    with torch.no_grad():
        store.corrector.residual[-1].bias.fill_(float(k))
    return store


def generations_in(store: CorrectedCacheStore) -> set[int]:
    """The generation numbers a loaded store's parts carry: one number for a whole load, several for a torn one."""
    return {
        int(float(store.stale_embeddings([0])[0, 0])),
        int(store.ids[0].split("-")[0][1:]),
        int(store.texts[0].split()[1]) if store.texts else -1,  # a load that lost its texts is torn too
        int(float(store.corrector.residual[-1].bias[0])),
    }


def soak(folder, loads: int, mode: str = "store") -> dict[str, int]:
    """A saver process and this process racing on ``folder``; returns the loads' outcome counts.

    ``mode="store"``: one process saves generations 1, 2, ... in a loop while this one loads ``loads`` times
    (alternating mmap and verify=True). ``mode="overwrite"``: two processes save overwrite=True into a folder that
    also holds a user's file, while this one loads. Counts: loads, whole (one generation), torn (parts of several),
    errors (any exception: on a healthy store, false), saves (completed by the savers), save_errors (raised by one).
    """
    import multiprocessing as mp
    import traceback

    context = mp.get_context("fork")
    stop = context.Event()
    save_errors = context.Value("i", 0)
    saves = context.Value("i", 0)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "overwrite":
        (folder / "notes.txt").write_text("the user's notes")
        generation_store(0).save(folder, overwrite=True)
    else:
        generation_store(0).save(folder)

    def saver(first: int, step_by: int) -> None:
        torch.set_num_threads(1)
        k = first
        while not stop.is_set():
            try:
                generation_store(k).save(folder, overwrite=mode == "overwrite")
                with saves.get_lock():
                    saves.value += 1
            except Exception:  # counted: a save must not fail because another process saves or loads
                traceback.print_exc()
                with save_errors.get_lock():
                    save_errors.value += 1
            k += step_by

    savers = [context.Process(target=saver, args=(1, 1))]
    if mode == "overwrite":
        savers = [context.Process(target=saver, args=(1, 2)), context.Process(target=saver, args=(2, 2))]
    for process in savers:
        process.start()
    counts = {"loads": 0, "whole": 0, "torn": 0, "errors": 0}
    try:
        for index in range(loads):
            counts["loads"] += 1
            try:
                loaded = CorrectedCacheStore.load(folder, mmap=index % 2 == 0, verify=index % 4 == 1)
            except Exception:
                traceback.print_exc()
                counts["errors"] += 1
                continue
            counts["whole" if len(generations_in(loaded)) == 1 else "torn"] += 1
    finally:
        stop.set()
        for process in savers:
            process.join(60)
    counts["save_errors"] = save_errors.value
    counts["saves"] = saves.value
    return counts
