"""Sharded exact search with 2 gloo ranks vs one process on the same cache: same results? how long?

Reproduces benchmark 5 of docs/performance.md:

    python benchmarks/sharded_search.py --rows 1000000 --dim 384 --queries 64 --world-size 2

A synthetic (rows, dim) float16 cache (each block generated from its own seed, so a rank builds only its shard) and a
corrector. The single process (baseline, all the machine's torch threads) searches the whole cache; then
``world-size`` processes spawned here (gloo, CPU; torch threads split between them) each hold one shard and call
``sharded_search`` with their share of the queries. Prints seconds per search (median of --repeats after a warm-up)
for stale and corrected (fused) search, the ratio sharded / single, and whether the rows match (tie-aware).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector.cache_rows import CacheRows
from haystack_corrector.distributed import shard_bounds, sharded_search

_BLOCK = 100_000


def rows_block(index: int, dim: int, rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + index)
    count = min(_BLOCK, rows - index * _BLOCK)
    return torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=-1).half()


def build(start: int, end: int, dim: int, rows: int, hidden: int, block_size: int) -> CorrectedCacheStore:
    storage = torch.empty((end - start, dim), dtype=torch.float16)
    for index in range(start // _BLOCK, (end - 1) // _BLOCK + 1):
        block = rows_block(index, dim, rows)
        lo, hi = max(start, index * _BLOCK), min(end, index * _BLOCK + block.shape[0])
        storage[lo - start : hi - start] = block[lo - index * _BLOCK : hi - index * _BLOCK]
    corrector = Corrector(dim, hidden_dim=hidden)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    # float16 storage as built, without the float32 round trip of the public constructor
    return CorrectedCacheStore.from_rows(CacheRows(storage, block_size=block_size), corrector, "dot")


def queries_for(count: int, dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=-1)


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    torch.set_num_threads(max(1, args.threads // world))
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        start, end = shard_bounds(args.rows, world, rank)
        shard = build(start, end, args.dim, args.rows, args.hidden_dim, args.block_size)
        queries = queries_for(args.queries, args.dim)
        q_start, q_end = shard_bounds(args.queries, world, rank)
        mine = queries[q_start:q_end]
        result = {}
        for corrected in (False, True):
            dist.barrier()
            seconds, found = timed(
                lambda corrected=corrected: sharded_search(shard, start, mine, args.top_k, corrected=corrected),
                args.repeats,
            )
            result[corrected] = (seconds, found)
        out[rank] = result
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--hidden-dim", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads in all")
    args = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} torch threads in "
        f"all; rows={args.rows} dim={args.dim} float16, {args.queries} queries, top-{args.top_k}, corrector hidden "
        f"{args.hidden_dim}, {args.world_size} gloo ranks"
    )
    torch.set_num_threads(args.threads)
    single = build(0, args.rows, args.dim, args.rows, args.hidden_dim, args.block_size)
    queries = queries_for(args.queries, args.dim)
    baseline = {}
    for corrected in (False, True):
        baseline[corrected] = timed(
            lambda corrected=corrected: single.search(queries, args.top_k, corrected=corrected), args.repeats
        )

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(worker, args=(args.world_size, port, args, out), nprocs=args.world_size, join=True)

    print("| search | one process (s) | sharded, slowest rank (s) | ratio sharded / one | same rows |")
    print("|---|---|---|---|---|")
    for corrected in (False, True):
        seconds, (scores, rows) = baseline[corrected]
        sharded_seconds = max(out[rank][corrected][0] for rank in range(args.world_size))
        sharded_scores = torch.cat([out[rank][corrected][1][0] for rank in range(args.world_size)])
        sharded_rows = torch.cat([out[rank][corrected][1][1] for rank in range(args.world_size)])
        same_rows = bool((sharded_rows == rows).all())
        same_scores = torch.allclose(sharded_scores, scores, atol=1e-5)
        verdict = "yes" if same_rows else ("equal scores (ties)" if same_scores else "NO")
        name = "corrected (fused)" if corrected else "stale"
        print(f"| {name} | {seconds:.3f} | {sharded_seconds:.3f} | {sharded_seconds / seconds:.2f}x | {verdict} |")


if __name__ == "__main__":
    main()
