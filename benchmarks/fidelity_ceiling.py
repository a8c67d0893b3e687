"""How far can a corrector of the stale embedding go? Ranking fidelity on real drift, against oracle ceilings.

Reproduces the fidelity-ceiling table of docs/experiments.md:

    python benchmarks/fidelity_ceiling.py --embeddings runs/index-upgrade/cosqa-w0 --data ../shared/data/cosqa

``--embeddings`` is the cache ``benchmarks/index_upgrade.py`` writes (``old_corpus.npy``: zero-shot all-MiniLM-L6-v2;
``new_corpus.npy``: the same documents after one epoch of in-batch MNRL on the train pairs; ``new_test_queries.npy``,
``new_train_queries.npy``: queries by the new encoder). The rows "the training touched" are the train positives.
For held-out test queries, each cache's top-10/top-100 is compared with the fresh ranking (overlap@k) and its relative
error is measured on the untouched rows:

- stale; the touched rows swapped for their fresh embeddings (no corrector);
- correctors fitted on the touched rows only (what a user has): MSE, and MSE + 1 x a listwise term in which the
  training queries rank every touched row (``CorrectorTrainer.fit(listwise_candidates="all")``);
- oracle ceilings, fitted on *every* row including those they are scored on: a least-squares linear map, and an MSE
  corrector with twice the hidden width;
- a calibration: the fresh embeddings plus isotropic noise of the MSE corrector's error, to show whether the
  ranking loss comes from the error's size or from its direction.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from haystack_corrector import CorrectedCacheStore
from haystack_corrector.beir import load_beir
from haystack_corrector.evaluation import overlap_at_k, relative_error
from haystack_corrector.experiments.fidelity import fit_offline_corrector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", default="runs/index-upgrade/cosqa-w0")
    parser.add_argument("--data", default="../shared/data/cosqa")
    parser.add_argument("--epochs", type=int, default=30, help="fitting epochs of the touched-row correctors")
    parser.add_argument("--oracle-epochs", type=int, default=100, help="fitting epochs of the oracle corrector")
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start_all = time.perf_counter()

    folder = Path(args.embeddings)
    stale = torch.from_numpy(np.load(folder / "old_corpus.npy")).float()
    fresh = torch.from_numpy(np.load(folder / "new_corpus.npy")).float()
    test_queries = torch.from_numpy(np.load(folder / "new_test_queries.npy")).float()
    train_queries = torch.from_numpy(np.load(folder / "new_train_queries.npy")).float()
    corpus, _, train_qrels = load_beir(args.data, "train")
    position = {doc_id: row for row, doc_id in enumerate(corpus)}
    touched = torch.tensor(sorted({position[d] for docs in train_qrels.values() for d, g in docs.items() if g > 0}))
    untouched = torch.ones(len(stale), dtype=torch.bool)
    untouched[touched] = False
    unseen = untouched.nonzero().squeeze(1)

    _, fresh_rows = CorrectedCacheStore(fresh).search(test_queries, 100, corrected=False)
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; {len(stale)} rows, "
        f"{touched.numel()} touched, {test_queries.shape[0]} test queries, {train_queries.shape[0]} training queries"
    )
    print("| cache | fitted on | relative error (untouched rows) | overlap@10 | overlap@100 | fit s |")
    print("|---|---|---|---|---|---|")

    def report(name: str, fitted_on: str, store: CorrectedCacheStore, corrected: bool, seconds: float | None) -> None:
        _, rows = store.search(test_queries, 100, corrected=corrected)
        embeddings = store.corrected_embeddings(unseen) if corrected else store.stale_embeddings(unseen)
        error = relative_error(embeddings, fresh[unseen])
        timing = f"{seconds:.0f}" if seconds is not None else ""
        print(
            f"| {name} | {fitted_on} | {error:.4f} | {overlap_at_k(rows, fresh_rows, 10):.3f} | "
            f"{overlap_at_k(rows, fresh_rows, 100):.3f} | {timing} |",
            flush=True,
        )

    report("stale", "–", CorrectedCacheStore(stale), False, None)
    swapped = stale.clone()
    swapped[touched] = fresh[touched]
    report("stale, touched rows swapped for fresh", "–", CorrectedCacheStore(swapped), False, None)

    def fitted(rows: torch.Tensor, hidden: int, epochs: int, listwise: bool) -> tuple[CorrectedCacheStore, float]:
        start = time.perf_counter()
        store = fit_offline_corrector(
            stale,
            rows,
            fresh[rows],
            hidden_dim=hidden,
            lr=1e-3,
            epochs=epochs,
            seed=args.seed,
            listwise_weight=1.0 if listwise else 0.0,
            listwise_candidates="all" if listwise else None,
            queries=train_queries,
        )
        return store, time.perf_counter() - start

    mse_store, seconds = fitted(touched, args.hidden_dim, args.epochs, listwise=False)
    report(f"corrector h={args.hidden_dim}, MSE", "touched rows", mse_store, True, seconds)
    store, seconds = fitted(touched, args.hidden_dim, args.epochs, listwise=True)
    report(f"corrector h={args.hidden_dim}, MSE + listwise over all touched rows", "touched rows", store, True, seconds)

    start = time.perf_counter()
    ridge = torch.linalg.solve(stale.T @ stale + 1e-3 * torch.eye(stale.shape[1]), stale.T @ fresh)
    linear = CorrectedCacheStore(stale @ ridge)  # cosine similarity: the map's output is normalised when scored
    report("ORACLE linear map (least squares)", "every row", linear, False, time.perf_counter() - start)
    store, seconds = fitted(torch.arange(len(stale)), 2 * args.hidden_dim, args.oracle_epochs, listwise=False)
    report(f"ORACLE corrector h={2 * args.hidden_dim}, MSE", "every row", store, True, seconds)

    error = mse_store.corrected_embeddings() - fresh
    norm = error.norm(dim=1, keepdim=True).mean()
    noise = torch.randn(fresh.shape, generator=torch.Generator().manual_seed(args.seed))
    noisy = fresh + noise / noise.norm(dim=1, keepdim=True) * norm
    report(
        "fresh + isotropic noise of the MSE corrector's mean error norm", "–", CorrectedCacheStore(noisy), False, None
    )
    print(f"# {time.perf_counter() - start_all:.0f} s in all")


if __name__ == "__main__":
    main()
