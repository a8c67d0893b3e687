"""Corrector fidelity under synthetic nonlinear drift: stale vs corrected ranking overlap and relative error.

A stale cache g' (unit rows) drifts to g = normalise(g' + s * MLP(g')); queries come from the current encoder
(near fresh rows). A corrector is fitted on a small random sample of (g', g) pairs — the rows a trainer would have
re-encoded anyway — and judged on the queries' top-k over ALL rows, against the fresh ranking.

Prints one table row per setting; the ratio column is corrected overlap@100 / stale overlap@100, both measured in
this run.

    python benchmarks/corrector_fidelity.py --rows 100000 --dim 384 --queries 500 --fit-fraction 0.05
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector.evaluation import overlap_at_k, relative_error
from haystack_corrector.synthetic import make_synthetic_drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.1, 0.3, 0.6])
    parser.add_argument("--fit-fraction", type=float, default=0.05)
    parser.add_argument("--hidden-dim", type=int, default=None, help="corrector width (default 2 x dim)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(
        f"# rows={args.rows} dim={args.dim} queries={args.queries} fit on {args.fit_fraction:.1%} of rows, "
        f"hidden={args.hidden_dim or 2 * args.dim}, epochs={args.epochs}"
    )
    header = (
        "| drift strength | staleness (unseen rows) | corrected error (unseen rows) | stale overlap@10 | "
        "corrected overlap@10 | stale overlap@100 | corrected overlap@100 | ratio @100 | fit s |"
    )
    print(header)
    print("|---" * 9 + "|")
    for strength in args.strengths:
        drift = make_synthetic_drift(args.rows, args.dim, args.queries, strength=strength, seed=args.seed)
        store = CorrectedCacheStore(
            drift.stale, corrector=Corrector(args.dim, hidden_dim=args.hidden_dim or 2 * args.dim)
        )
        _, fresh_top = CorrectedCacheStore(drift.fresh).search(drift.queries, 100, corrected=False)
        _, stale_top = store.search(drift.queries, 100, corrected=False)
        generator = torch.Generator().manual_seed(args.seed + 1)
        fit_rows = torch.randperm(args.rows, generator=generator)[: max(1, int(args.fit_fraction * args.rows))]
        start = time.perf_counter()
        CorrectorTrainer(store, lr=args.lr).fit(
            fit_rows, drift.fresh[fit_rows], epochs=args.epochs, batch_size=args.batch_size, seed=args.seed
        )
        fit_seconds = time.perf_counter() - start
        _, corrected_top = store.search(drift.queries, 100)
        unseen = torch.ones(args.rows, dtype=torch.bool)
        unseen[fit_rows] = False
        rows = unseen.nonzero().squeeze(1)
        staleness = relative_error(drift.stale[rows], drift.fresh[rows])
        corrected_error = relative_error(store.corrected_embeddings(rows), drift.fresh[rows])
        stale10, corr10 = overlap_at_k(stale_top, fresh_top, 10), overlap_at_k(corrected_top, fresh_top, 10)
        stale100, corr100 = overlap_at_k(stale_top, fresh_top, 100), overlap_at_k(corrected_top, fresh_top, 100)
        print(
            f"| {strength} | {staleness:.4f} | {corrected_error:.4f} | {stale10:.3f} | {corr10:.3f} | "
            f"{stale100:.3f} | {corr100:.3f} | {corr100 / max(stale100, 1e-9):.2f}x | {fit_seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
