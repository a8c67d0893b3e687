"""Corrected exact top-k over a large float16 cache vs faiss.IndexFlatIP on the same stale vectors (float32).

Reproduces benchmark 1 of docs/performance.md: 64 queries, top-100, N x 384 synthetic rows.

    python benchmarks/search_speed.py --rows 1000000 --dim 384 --queries 64
    python benchmarks/search_speed.py --rows 1000000 --device cuda   # scans on a GPU (rows stay in CPU memory)

Prints seconds per search for: faiss IndexFlatIP (float32, the baseline); our blocked scan of the stale cache;
the scan of a materialised corrected view; the fused scan (corrector applied block by block); each of the three also
with the exact bfloat16 first pass (``scan_dtype=torch.bfloat16``; float32 where the CPU lacks BF16); the scan of a
bfloat16 view (``materialize(dtype="bfloat16")``); the one-off cost of materialising each view; and the matrix
products alone in float32 and bfloat16 — each with its ratio to faiss and its GFLOP/s, all measured in this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector.cache_rows import CacheRows


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--device", default="cpu", help="where the scan computes (the corrector's device); rows stay in CPU memory"
    )
    args = parser.parse_args()
    import faiss

    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {faiss.__version__}; rows={args.rows} dim={args.dim} queries={args.queries} top_k={args.top_k}; "
        f"scans on {args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else "")
    )
    generator = torch.Generator().manual_seed(0)
    storage = torch.empty((args.rows, args.dim), dtype=torch.float16)
    for start in range(0, args.rows, 100_000):
        block = torch.randn(min(100_000, args.rows - start), args.dim, generator=generator)
        storage[start : start + block.shape[0]] = torch.nn.functional.normalize(block, dim=-1).half()
    queries = torch.nn.functional.normalize(torch.randn(args.queries, args.dim, generator=generator), dim=-1)
    corrector = Corrector(args.dim, hidden_dim=args.hidden_dim)
    with torch.no_grad():
        for p in corrector.parameters():
            p.normal_(0, 0.02)
    corrector.to(args.device)
    store = CorrectedCacheStore.from_rows(CacheRows(storage, block_size=args.block_size), corrector, "dot")

    index = faiss.IndexFlatIP(args.dim)
    index.add(storage.float().numpy())
    q = queries.numpy().astype(np.float32)
    baseline = timed(lambda: index.search(q, args.top_k), args.repeats)
    rows = [("faiss IndexFlatIP, float32 (baseline)", baseline)]
    rows.append(
        (
            "blocked scan of the stale float16 cache",
            timed(lambda: store.search(queries, args.top_k, corrected=False), args.repeats),
        )
    )
    bf16 = torch.bfloat16
    rows.append(
        (
            "blocked scan of the stale cache, bfloat16 first pass (exact)",
            timed(lambda: store.search(queries, args.top_k, corrected=False, scan_dtype=bf16), args.repeats),
        )
    )
    rows.append(("fused scan: corrector applied block by block", timed(lambda: store.search(queries, args.top_k), 1)))
    rows.append(
        (
            "fused scan, bfloat16 first pass (exact)",
            timed(lambda: store.search(queries, args.top_k, scan_dtype=bf16), 1),
        )
    )
    start = time.perf_counter()
    store.materialize()
    materialise = time.perf_counter() - start
    rows.append(
        (
            "scan of the materialised corrected view (float16)",
            timed(lambda: store.search(queries, args.top_k), args.repeats),
        )
    )
    rows.append(
        (
            "scan of the float16 view, bfloat16 first pass (exact)",
            timed(lambda: store.search(queries, args.top_k, scan_dtype=bf16), args.repeats),
        )
    )
    float16_view = store.search(queries, args.top_k)
    start = time.perf_counter()
    store.materialize(dtype="bfloat16")
    materialise_bf16 = time.perf_counter() - start
    rows.append(
        (
            "scan of a bfloat16 view, bfloat16 first pass (exact)",
            timed(lambda: store.search(queries, args.top_k, scan_dtype=bf16), args.repeats),
        )
    )
    bfloat16_view = store.search(queries, args.top_k, scan_dtype=bf16)
    rows.append(("materialise the float16 view once (float32 corrector, one-off)", materialise))
    rows.append(("materialise a bfloat16 view once (bfloat16 autocast where supported, one-off)", materialise_bf16))
    # The matrix products alone, over the same rows in the same blocks: the rate the scans are measured against.
    blocks = [storage[i : i + args.block_size].to(args.device) for i in range(0, args.rows, args.block_size)]
    q32, q16 = queries.float().to(args.device), queries.to(bf16).to(args.device)
    blocks16 = [block.to(bf16) for block in blocks]
    blocks32 = [block.float() for block in blocks]
    products = {
        "float32": timed(lambda: [q32 @ block.T for block in blocks32], args.repeats),
        "bfloat16": timed(lambda: [block @ q16.T for block in blocks16], args.repeats),
    }
    flops = 2.0 * args.queries * args.rows * args.dim
    print("| search | seconds | ratio to faiss | GFLOP/s (score products) |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        rate = "" if name.startswith("materialise") else f"{flops / seconds / 1e9:.0f}"
        print(f"| {name} | {seconds:.3f} | {seconds / baseline:.2f}x | {rate} |")
    for name, seconds in products.items():
        print(
            f"| matrix products only, {name} (no top-k) | {seconds:.3f} | {seconds / baseline:.2f}x | "
            f"{flops / seconds / 1e9:.0f} |"
        )
    overlap = np.mean(
        [len(set(a.tolist()) & set(b.tolist())) / args.top_k for a, b in zip(float16_view[1], bfloat16_view[1])]
    )
    print(f"\noverlap@{args.top_k} of the bfloat16 view's exact top k with the float16 view's: {overlap:.4f}")


if __name__ == "__main__":
    main()
