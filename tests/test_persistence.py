from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector.cache_rows import CacheRows

REPO = Path(__file__).resolve().parents[1]


def _store(n=40, d=6, dtype="float32", seed=0):
    generator = torch.Generator().manual_seed(seed)
    corrector = Corrector(d, hidden_dim=12)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return CorrectedCacheStore(
        torch.randn(n, d, generator=generator),
        ids=[f"doc-{i}" for i in range(n)],
        corrector=corrector,
        similarity="dot",
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, dtype, mmap):
    store = _store(dtype=dtype)
    store.save(tmp_path / "s")
    loaded = CorrectedCacheStore.load(tmp_path / "s", mmap=mmap)
    assert loaded.is_memory_mapped == mmap
    assert loaded.ids == store.ids and loaded.dim == store.dim and loaded.similarity == "dot" and loaded.dtype == dtype
    assert torch.equal(loaded.stale_embeddings(), store.stale_embeddings())
    assert torch.equal(loaded.corrected_embeddings(), store.corrected_embeddings())
    q = torch.randn(3, 6)
    a, b = loaded.search(q, 5, exclude=[[0], [], [1, 2]]), store.search(q, 5, exclude=[[0], [], [1, 2]])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_saved_files_are_plain_and_not_pickled(tmp_path):
    _store().save(tmp_path / "s")
    names = sorted(str(p.relative_to(tmp_path / "s")) for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert names == [
        "corrector/corrector.safetensors",
        "corrector/corrector_config.json",
        "embeddings.npy",
        "ids.json",
        "store_config.json",
    ]
    assert np.load(tmp_path / "s" / "embeddings.npy", allow_pickle=False).shape == (40, 6)
    # the store directory also loads as a Corrector directory's parent
    assert Corrector.load(tmp_path / "s" / "corrector").dim == 6


def test_overwrite_replaces_previous_save(tmp_path):
    _store(seed=0).save(tmp_path / "s")
    second = _store(seed=1)
    second.save(tmp_path / "s")
    assert torch.equal(CorrectedCacheStore.load(tmp_path / "s").stale_embeddings(), second.stale_embeddings())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def _corrupt(path: Path, how: str) -> None:
    if how == "truncate-embeddings":
        data = (path / "embeddings.npy").read_bytes()
        (path / "embeddings.npy").write_bytes(data[:-10])
    elif how == "flip-embeddings":
        data = bytearray((path / "embeddings.npy").read_bytes())
        data[-3] ^= 0xFF
        (path / "embeddings.npy").write_bytes(bytes(data))
    elif how == "flip-ids":
        (path / "ids.json").write_text((path / "ids.json").read_text().replace("doc-1", "doc-X", 1))
    elif how == "truncate-corrector":
        weights = path / "corrector" / "corrector.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4])
    elif how == "config-dim":  # a consistent config (checksum recomputed) that disagrees with the array
        config = json.loads((path / "store_config.json").read_text())
        config["dim"] = 7
        (path / "store_config.json").write_text(json.dumps(_rechecksummed(config)))
    elif how == "config-edit":  # an edit without a new checksum
        config = json.loads((path / "store_config.json").read_text())
        config["dim"] = 7
        (path / "store_config.json").write_text(json.dumps(config))
    elif how == "config-garbage":
        (path / "store_config.json").write_text("{not json")
    elif how == "missing-ids":
        (path / "ids.json").unlink()
    elif how == "wrong-array":
        np.save(path / "embeddings.npy", np.zeros((40, 5), np.float32))
        config = json.loads((path / "store_config.json").read_text())
        config["files"]["embeddings.npy"]["size"] = (path / "embeddings.npy").stat().st_size
        (path / "store_config.json").write_text(json.dumps(_rechecksummed(config)))


def _rechecksummed(config):
    from haystack_corrector._validation import CONFIG_CHECKSUM_KEY, with_config_checksum

    config.pop(CONFIG_CHECKSUM_KEY, None)
    return with_config_checksum(config)


@pytest.mark.parametrize(
    ("how", "error", "match", "verify"),
    [
        ("truncate-embeddings", ValueError, "truncated or corrupted", False),
        ("flip-embeddings", ValueError, "checksum", True),
        ("flip-ids", ValueError, "checksum", False),
        ("truncate-corrector", ValueError, "truncated or corrupted", False),
        ("config-dim", ValueError, "config says shape", False),
        ("config-garbage", ValueError, "Corrupted store config", False),
        ("config-edit", ValueError, "store_config.json is corrupted: its content does not match", False),
        ("missing-ids", FileNotFoundError, "ids.json is missing", False),
        ("wrong-array", ValueError, "config says shape", False),
    ],
)
def test_corrupted_saves_raise_clear_errors(tmp_path, how, error, match, verify):
    _store().save(tmp_path / "s")
    _corrupt(tmp_path / "s", how)
    with pytest.raises(error, match=match):
        CorrectedCacheStore.load(tmp_path / "s", verify=verify)


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No saved haystack-corrector folder"):
        CorrectedCacheStore.load(tmp_path / "nothing")


_CHILD = textwrap.dedent(
    """
    import os, sys, time, torch
    import haystack_corrector._atomic as atomic
    from haystack_corrector import CorrectedCacheStore
    from haystack_corrector.corrector import Corrector
    path, stage = sys.argv[1], sys.argv[2]
    store = CorrectedCacheStore(torch.full((200, 8), 2.0), similarity="dot")
    def hang(*args, **kwargs):
        print("hanging", flush=True)
        time.sleep(600)
    if stage == "writing":      # killed while the new files are being written
        Corrector.save_to = hang
    elif stage == "swapping":   # killed between moving the old save aside and moving the new one in
        real_rename = os.rename
        calls = []
        def rename(src, dst):
            real_rename(src, dst)
            calls.append(dst)
            if len(calls) == 1:
                hang()
        atomic.os.rename = rename
    store.save(path)
    """
)


@pytest.mark.parametrize("stage", ["writing", "swapping"])
def test_kill_during_save_leaves_previous_save_loadable(tmp_path, stage):
    previous = _store(n=50, d=8, seed=3)
    previous.save(tmp_path / "s")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "s"), stage],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "hanging"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    loaded = CorrectedCacheStore.load(tmp_path / "s", verify=True)
    assert loaded.ids == previous.ids
    assert torch.equal(loaded.stale_embeddings(), previous.stale_embeddings())
    # A later save still works and cleans up the leftovers.
    _store(n=10, d=8, seed=4).save(tmp_path / "s")
    assert len(CorrectedCacheStore.load(tmp_path / "s")) == 10


_MMAP_CHILD = textwrap.dedent(
    """
    import sys, psutil, torch
    from haystack_corrector import CorrectedCacheStore
    def peak():  # high-water mark of this process's resident memory (VmHWM; ru_maxrss would include the parent's)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    process = psutil.Process()
    before = process.memory_info().rss
    store = CorrectedCacheStore.load(sys.argv[1], mmap=True)
    after_load = process.memory_info().rss
    store.search(torch.randn(4, store.dim), 10, corrected=False)
    after_search = peak()
    store.materialize(sys.argv[2])
    store.search(torch.randn(4, store.dim), 10)
    print(before, after_load, after_search, peak())
    """
)


def test_mmap_1m_by_384_float16_resident_memory_is_bounded_by_blocks_not_rows(tmp_path):
    rows, dim = 1_000_000, 384
    store = CorrectedCacheStore(torch.zeros(1, dim), dtype="float16")
    # Build the big store without holding a float32 copy: fill float16 storage directly.
    storage = torch.empty((rows, dim), dtype=torch.float16)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, rows, 100_000):
        storage[start : start + 100_000] = torch.randn(100_000, dim, generator=generator).half()
    big = CorrectedCacheStore.from_rows(
        CacheRows(storage, block_size=32768), store.corrector.__class__(dim, hidden_dim=64), "dot"
    )
    big.save(tmp_path / "big")
    del storage, big
    file_size = (tmp_path / "big" / "embeddings.npy").stat().st_size
    result = subprocess.run(
        [sys.executable, "-c", _MMAP_CHILD, str(tmp_path / "big"), str(tmp_path / "view.npy")],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    before, after_load, stale_peak, view_peak = map(int, result.stdout.split())
    assert after_load - before < 0.1 * file_size, (before, after_load, file_size)
    # A full scan (and writing + scanning a memory-mapped corrected view) releases each block's pages once read:
    # without that the peak grows by more than the whole 768 MB file (measured: +0.88 GB after the stale scan,
    # +1.8 GB after the view; with it +0.15 GB and +0.32 GB, block buffers and allocator slack).
    assert stale_peak - before < 0.3 * file_size, (before, stale_peak, file_size)
    assert view_peak - before < 0.6 * file_size, (before, view_peak, file_size)
    assert (tmp_path / "view.npy").stat().st_size >= file_size


def test_texts_round_trip_and_validation(tmp_path):
    store = _store(n=3)
    assert store.texts is None
    store.texts = ["alpha", "beta", "gamma"]
    store.save(tmp_path / "s")
    assert CorrectedCacheStore.load(tmp_path / "s").texts == ["alpha", "beta", "gamma"]
    with pytest.raises(ValueError, match="texts has 2 entries but the cache has 3 rows"):
        store.texts = ["a", "b"]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        store.texts = ["a", 3, "c"]
    assert CorrectedCacheStore(torch.randn(2, 3), texts=["x", "y"]).texts == ["x", "y"]


def test_from_npy_memory_maps_an_existing_file_and_searches_like_memory(tmp_path):
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(40, 6, generator=generator)
    for dtype in (np.float16, np.float32):
        file = tmp_path / f"emb-{np.dtype(dtype).name}.npy"
        np.save(file, embeddings.numpy().astype(dtype))
        store = CorrectedCacheStore.from_npy(file, ids=[f"d{i}" for i in range(40)], block_size=7)
        assert store.is_memory_mapped and store.dtype == np.dtype(dtype).name and store.rows_of(["d3"]) == [3]
        reference = CorrectedCacheStore(embeddings, dtype=np.dtype(dtype).name, block_size=7)
        q = torch.randn(3, 6, generator=generator)
        for a, b in zip(store.search(q, 5, exclude=[[1], [], [2]]), reference.search(q, 5, exclude=[[1], [], [2]])):
            assert torch.equal(a, b)
        store.save(tmp_path / f"saved-{np.dtype(dtype).name}")
        assert torch.equal(
            CorrectedCacheStore.load(tmp_path / f"saved-{np.dtype(dtype).name}").stale_embeddings(),
            store.stale_embeddings(),
        )
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="float16 or float32"):
        CorrectedCacheStore.from_npy(tmp_path / "ints.npy")
    np.save(tmp_path / "flat.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="float16 or float32"):
        CorrectedCacheStore.from_npy(tmp_path / "flat.npy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CorrectedCacheStore.from_npy(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="ids has 2 entries"):
        CorrectedCacheStore.from_npy(tmp_path / "emb-float32.npy", ids=["a", "b"])
