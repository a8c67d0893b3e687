"""What a bfloat16 view costs in precision: the corrector's output materialised under bfloat16 autocast, and rounded
to bfloat16, against the float32 corrector, on a real index upgrade (the setting of ``benchmarks/index_upgrade.py``,
whose cached encodes it reads).

A corrector (MSE, hidden 768) is fitted on every document's old -> new embedding pair, so it moves rows as far as a
trained one does (``--epochs``). Then, for each way of materialising the view, against h(g') in float32:
the per-row relative error (mean and max), and the overlap@10 of the view's exact top 10 for the test queries (new
encoder) with the float32 top 10. The first line is the error autocast adds before any rounding; the claim the
package rests on is that it stays below the rounding of the view's own dtype, which is why only bfloat16 views are
computed under autocast (``haystack_corrector/corrected_view.py``).

    python benchmarks/index_upgrade.py --data ../shared/data/cosqa --output runs/index-upgrade/cosqa --variants mse+listwise0.1-h768
    python benchmarks/view_precision.py --upgrade runs/index-upgrade/cosqa
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
from haystack_corrector.search import bf16_supported


def relative(a: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (a.float() - reference).norm(dim=1) / reference.norm(dim=1)


def overlap_at_10(store: CorrectedCacheStore, queries: torch.Tensor, reference: torch.Tensor) -> float:
    got = store.search(queries, 10)[1]
    return sum(len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, reference)) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upgrade", type=Path, required=True, help="an index_upgrade.py output folder")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    old = np.load(args.upgrade / "old_corpus.npy")
    new = np.load(args.upgrade / "new_corpus.npy")
    queries = torch.from_numpy(np.load(args.upgrade / "new_test_queries.npy")).float()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, bfloat16 units: "
        f"{bf16_supported('cpu')}; {len(old)} rows x {old.shape[1]}, {len(queries)} test queries"
    )
    store = CorrectedCacheStore(old, corrector=Corrector(old.shape[1], hidden_dim=768), dtype="float16")
    CorrectorTrainer(store).fit(np.arange(len(old)), new, epochs=args.epochs, show_progress_bar=False)
    reference = store.corrected_embeddings()  # float32 from the float16 cache
    moved = relative(store.stale_embeddings(), reference)
    print(f"the fitted corrector moves rows by {float(moved.mean()):.3f} of their norm (mean)")
    exact = store.search(queries, 10, scan_dtype=torch.float32)[1]  # fused float32: the reference ranking
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = store._correct(store.stale_embeddings())
    print("\n| view | rel. error mean | rel. error max | overlap@10 with float32 | materialise s |")
    print("|---|---|---|---|---|")
    error = relative(autocast, reference)
    print(f"| (bfloat16 autocast output, before rounding) | {float(error.mean()):.2e} | {float(error.max()):.2e} | | |")
    for name, dtype, force_float32 in [
        ("float16, float32 corrector", "float16", False),
        ("bfloat16, float32 corrector", "bfloat16", True),
        ("bfloat16, bfloat16 autocast", "bfloat16", False),
    ]:
        if force_float32:
            os.environ["HAYSTACK_CORRECTOR_NO_BF16"] = "1"
        start = time.perf_counter()
        store.materialize(dtype=dtype)
        seconds = time.perf_counter() - start
        os.environ.pop("HAYSTACK_CORRECTOR_NO_BF16", None)
        error = relative(store._corrected_view.data, reference)
        print(
            f"| {name} | {float(error.mean()):.2e} | {float(error.max()):.2e} | "
            f"{overlap_at_10(store, queries, exact):.4f} | {seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
