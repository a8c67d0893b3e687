"""Tolerated view age: sample from a materialised corrected view refreshed every K corrector updates, while the
corrector trains online — what it saves in time and what it costs in fidelity, against the exact fused scan.

Reproduces the view-age part of benchmark 1 in docs/performance.md:

    python benchmarks/view_age.py --rows 200000 --dim 384 --steps 60 --ages 1 5 20 60

Synthetic nonlinear drift (``make_synthetic_drift``): each simulated training step samples top-k negatives for a
batch of queries, then the corrector takes one online step on a random batch of (stale, fresh) rows, as the
sentence-transformers loss does. All policies share one corrector trajectory; per policy we measure the search
seconds per step (re-materialisations included), the overlap@k of its negatives with the exact search's (fused scan
with the current corrector: the baseline, measured in the same run), and the overlap@k of both with the fresh
ranking (what the corrector is for).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector.evaluation import overlap_at_k
from haystack_corrector.synthetic import make_synthetic_drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ages", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--queries-per-step", type=int, default=32)
    parser.add_argument("--rows-per-step", type=int, default=256, help="targets the corrector learns from per step")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--block-size", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"rows={args.rows} dim={args.dim} corrector hidden {args.hidden_dim}, {args.steps} steps of "
        f"{args.queries_per_step} queries (top-{args.top_k}) and {args.rows_per_step} corrector rows, lr {args.lr}"
    )
    torch.manual_seed(args.seed)
    drift = make_synthetic_drift(
        args.rows, args.dim, args.steps * args.queries_per_step, strength=args.strength, seed=args.seed
    )
    exact = CorrectedCacheStore(
        drift.stale, corrector=Corrector(args.dim, hidden_dim=args.hidden_dim), block_size=args.block_size
    )
    policies = {age: exact.shard(0, args.rows) for age in args.ages}  # same rows, same corrector object
    fresh_store = CorrectedCacheStore(drift.fresh, block_size=args.block_size)
    trainer = CorrectorTrainer(exact, lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed + 1)
    seconds = {"exact": 0.0, **{age: 0.0 for age in args.ages}}
    agree = {age: 0.0 for age in args.ages}
    with_fresh = {"exact": 0.0, "stale": 0.0, **{age: 0.0 for age in args.ages}}
    for step in range(args.steps):
        queries = drift.queries[step * args.queries_per_step : (step + 1) * args.queries_per_step]
        _, fresh_top = fresh_store.search(queries, args.top_k, corrected=False)
        start = time.perf_counter()
        _, exact_top = exact.search(queries, args.top_k)
        seconds["exact"] += time.perf_counter() - start
        with_fresh["exact"] += overlap_at_k(exact_top, fresh_top, args.top_k)
        _, stale_top = exact.search(queries, args.top_k, corrected=False)
        with_fresh["stale"] += overlap_at_k(stale_top, fresh_top, args.top_k)
        for age, store in policies.items():
            start = time.perf_counter()
            _, top = store.search(queries, args.top_k, max_view_age=age)
            seconds[age] += time.perf_counter() - start
            agree[age] += overlap_at_k(top, exact_top, args.top_k)
            with_fresh[age] += overlap_at_k(top, fresh_top, args.top_k)
        rows = torch.randperm(args.rows, generator=generator)[: args.rows_per_step]
        trainer.observe(rows, drift.fresh[rows])
    steps = args.steps
    print(
        f"| policy | search s/step | ratio to exact | overlap@{args.top_k} with exact | "
        f"overlap@{args.top_k} with fresh |"
    )
    print("|---|---|---|---|---|")
    print(f"| stale cache, no corrector | | | | {with_fresh['stale'] / steps:.3f} |")
    print(
        f"| exact fused scan (baseline) | {seconds['exact'] / steps:.3f} | 1.00x | 1.000 | "
        f"{with_fresh['exact'] / steps:.3f} |"
    )
    for age in args.ages:
        print(
            f"| view, max_view_age={age} | {seconds[age] / steps:.3f} | {seconds[age] / seconds['exact']:.2f}x | "
            f"{agree[age] / steps:.3f} | {with_fresh[age] / steps:.3f} |"
        )


if __name__ == "__main__":
    main()
