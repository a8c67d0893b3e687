"""Pool mode vs exact corrected search: how often the top-k agree as the pool size L grows, and what it costs.

Reproduces the pool-mode table of docs/performance.md:

    python benchmarks/pool_recall.py --embeddings runs/index-upgrade/cosqa      # real drift (CoSQA), see below
    python benchmarks/pool_recall.py --rows 200000 --dim 384                   # synthetic drift

With ``--embeddings DIR`` (the cache ``benchmarks/index_upgrade.py`` writes: ``old_corpus.npy`` = the stale index,
``new_corpus.npy`` = the same documents re-embedded by the fine-tuned encoder, ``new_test_queries.npy``), the
corrector is fitted on a random 10% of the documents (MSE, as in the index-upgrade measurement); otherwise a synthetic
nonlinear drift is used (``make_synthetic_drift``) with the same fit. For each FAISS index type over the stale vectors
and each pool size L: the share of queries whose pool-mode top-k is exactly the exact corrected top-k (as a set), the
tie-aware recall@k, and the seconds per query batch; the exact blocked scan is the baseline, timed in the same run.

Tie-aware, because real corpora hold duplicate documents (CoSQA does): rows with equal scores may be returned in any
order, so a query's pool-mode answer is exact when its k scores equal the exact search's, and a returned row counts
as a hit when its corrected score reaches the exact k-th best score.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector.evaluation import overlap_at_k
from haystack_corrector.synthetic import make_synthetic_drift


def load(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    if args.embeddings:
        folder = Path(args.embeddings)
        stale = torch.from_numpy(np.load(folder / "old_corpus.npy")).float()
        fresh = torch.from_numpy(np.load(folder / "new_corpus.npy")).float()
        queries = torch.from_numpy(np.load(folder / "new_test_queries.npy")).float()
        return stale, fresh, queries, f"real drift from {folder}"
    drift = make_synthetic_drift(args.rows, args.dim, args.queries, strength=args.strength, seed=args.seed)
    return drift.stale, drift.fresh, drift.queries, f"synthetic drift, strength {args.strength}"


def tie_aware(store: CorrectedCacheStore, queries: torch.Tensor, rows: torch.Tensor, exact_scores: torch.Tensor):
    """(share of queries whose k scores equal the exact ones, mean share of returned rows scoring >= exact k-th)."""
    targets = torch.nn.functional.normalize(store.corrected_embeddings(rows.reshape(-1)), dim=-1)
    scores = torch.einsum(
        "bd,bkd->bk", torch.nn.functional.normalize(queries, dim=-1), targets.reshape(*rows.shape, -1)
    )
    kth = exact_scores[:, -1:]
    same = (scores.sort(dim=1, descending=True).values - exact_scores).abs().amax(dim=1) <= 1e-5
    return float(same.float().mean()), float((scores >= kth - 1e-5).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", default=None, help="folder with old_corpus.npy, new_corpus.npy, ...")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--strength", type=float, default=0.3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[10, 20, 50, 100, 200, 500, 1000, 2000])
    parser.add_argument("--index-types", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--fit-fraction", type=float, default=0.1)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    stale, fresh, queries, source = load(args)
    num_rows, dim = stale.shape
    torch.manual_seed(args.seed)
    store = CorrectedCacheStore(stale, corrector=Corrector(dim, hidden_dim=args.hidden_dim))
    generator = torch.Generator().manual_seed(args.seed)
    fit_rows = torch.randperm(num_rows, generator=generator)[: int(args.fit_fraction * num_rows)]
    start = time.perf_counter()
    CorrectorTrainer(store, lr=1e-3).fit(fit_rows, fresh[fit_rows], epochs=args.epochs, batch_size=256, seed=args.seed)
    fit_seconds = time.perf_counter() - start
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"{source}: {num_rows} rows x {dim}, {queries.shape[0]} queries, top-{args.top_k}; corrector hidden "
        f"{args.hidden_dim} fitted on {fit_rows.numel()} rows ({args.fit_fraction:.0%}) in {fit_seconds:.0f} s"
    )
    start = time.perf_counter()
    exact_scores, exact = store.search(queries, args.top_k)
    exact_seconds = time.perf_counter() - start
    _, fresh_top = CorrectedCacheStore(fresh).search(queries, args.top_k, corrected=False)
    _, stale_top = store.search(queries, args.top_k, corrected=False)
    print(
        f"# exact corrected scan: {exact_seconds:.3f} s for the batch; overlap@{args.top_k} with the fresh ranking: "
        f"stale {overlap_at_k(stale_top, fresh_top, args.top_k):.3f}, corrected {overlap_at_k(exact, fresh_top, args.top_k):.3f}; "
        f"the stale top-{args.top_k} is an exact corrected top-{args.top_k} (tie-aware) for "
        f"{tie_aware(store, queries, stale_top, exact_scores)[0]:.1%} of queries"
    )
    print(
        f"| index | L | queries whose top-{args.top_k} is exact | recall@{args.top_k} of the exact top-{args.top_k} | "
        f"seconds (batch) | ratio to exact scan |"
    )
    print("|---|---|---|---|---|---|")
    for index_type in args.index_types:
        store.build_pool(index_type)
        for size in args.pool_sizes:
            if size < args.top_k or size > num_rows:
                continue
            start = time.perf_counter()
            _, pooled = store.search(queries, args.top_k, pool_size=size)
            seconds = time.perf_counter() - start
            same, recall = tie_aware(store, queries, pooled, exact_scores)
            print(
                f"| {index_type} | {size} | {same:.1%} | {recall:.3f} | "
                f"{seconds:.3f} | {seconds / exact_seconds:.2f}x |"
            )


if __name__ == "__main__":
    main()
