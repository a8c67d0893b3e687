"""Peak resident memory while searching a memory-mapped float16 cache, against reading the same cache into memory.

Reproduces benchmark 4 of docs/performance.md:

    python benchmarks/mmap_memory.py --rows 1000000 --dim 384 --workdir runs/mmap-1m
    python benchmarks/mmap_memory.py --rows 10000000 --dim 384 --workdir runs/mmap-10m   # a 7.7 GB file

Writes a synthetic (rows, dim) float16 ``.npy`` file block by block (never holding it in memory), then runs each
measurement in a fresh process and reads that process's peak resident memory (``VmHWM``):

- ``in-memory``: ``np.load`` the whole file, then one exact stale search (the baseline: what a non-mmap cache costs);
- ``mmap-stale``: ``CorrectedCacheStore.from_npy`` (memory-mapped) and one exact stale search;
- ``mmap-fused``: the same with the corrector applied block by block;
- ``mmap-view``: materialise the corrected view into its own memory-mapped file, then search it.

Each line gives the peak, the peak over the file size, and the peak over the in-memory baseline's, all from this run.
The OS page cache (not part of a process's resident memory) may still hold the file's pages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _peak_bytes() -> int:
    with open("/proc/self/status") as status:  # VmHWM: this process's own peak (ru_maxrss would include the parent's)
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only)")


def write_cache(file: Path, rows: int, dim: int, block: int = 200_000) -> None:
    """A synthetic float16 cache of unit rows, written block by block."""
    if file.is_file():
        return
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(file.name + ".partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(rows, dim))
    generator = torch.Generator().manual_seed(0)
    for start in range(0, rows, block):
        end = min(start + block, rows)
        out[start:end] = torch.nn.functional.normalize(
            torch.randn(end - start, dim, generator=generator), dim=-1
        ).half()
        out.flush()
    del out
    os.replace(partial, file)


def child(mode: str, file: str, queries: int, top_k: int, hidden_dim: int, view: str) -> dict[str, float]:
    from haystack_corrector import CorrectedCacheStore, Corrector

    before = _peak_bytes()
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(1)
    if mode == "in-memory":
        store = CorrectedCacheStore.from_npy(file, similarity="dot", block_size=65536)
        store.rows.storage = np.load(file)  # the whole matrix read into this process's memory
    else:
        store = CorrectedCacheStore.from_npy(file, similarity="dot", block_size=65536)
    corrector = Corrector(store.dim, hidden_dim=hidden_dim)
    with torch.no_grad():
        for p in corrector.parameters():
            p.normal_(0, 0.02, generator=generator)
    store.corrector = corrector
    q = torch.nn.functional.normalize(torch.randn(queries, store.dim, generator=generator), dim=-1)
    if mode == "mmap-view":
        store.materialize(view)
    store.search(q, top_k, corrected=mode in ("mmap-fused", "mmap-view"))
    return {"peak": _peak_bytes(), "start_peak": before, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--hidden-dim", type=int, default=384)
    parser.add_argument("--workdir", default="runs/mmap-memory")
    parser.add_argument("--modes", nargs="+", default=["in-memory", "mmap-stale", "mmap-fused", "mmap-view"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    file, view = workdir / "cache.npy", workdir / "view.npy"
    if args.child:
        print(json.dumps(child(args.child, str(file), args.queries, args.top_k, args.hidden_dim, str(view))))
        return

    started = time.perf_counter()
    write_cache(file, args.rows, args.dim)
    size = file.stat().st_size
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; rows={args.rows} dim={args.dim} "
        f"float16 file {size / 1e9:.2f} GB (written in {time.perf_counter() - started:.0f} s); "
        f"{args.queries} queries, top-{args.top_k}, corrector hidden {args.hidden_dim}"
    )
    results: dict[str, dict[str, float]] = {}
    for mode in args.modes:
        command = [sys.executable, __file__, "--child", mode, "--workdir", str(workdir), "--rows", str(args.rows)]
        command += ["--queries", str(args.queries), "--top-k", str(args.top_k), "--hidden-dim", str(args.hidden_dim)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    baseline = results.get("in-memory", {}).get("peak")
    print("| process | peak resident memory | peak / file size | peak / in-memory peak | seconds |")
    print("|---|---|---|---|---|")
    for mode, result in results.items():
        versus = f"{result['peak'] / baseline:.2f}x" if baseline else "n/a"
        print(
            f"| {mode} | {result['peak'] / 1e9:.2f} GB | {result['peak'] / size:.2f}x | {versus} | "
            f"{result['seconds']:.1f} |"
        )
    print(f"# interpreter + torch before loading anything: {results[args.modes[0]]['start_peak'] / 1e9:.2f} GB peak")


if __name__ == "__main__":
    main()
