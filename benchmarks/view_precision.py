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
    python benchmarks/view_precision.py --upgrade runs/index-upgrade/cosqa --data ../shared/data/cosqa

With ``--data`` (the BEIR folder the upgrade was computed on) it also scores "copies as one" (CoSQA's 20,604
documents hold 6,267 distinct texts, and identical rows tie): overlap@10 of the distinct texts, and nDCG@10 of each
view's ranking against the float32 corrector's, with a paired 95% bootstrap interval over the test queries.
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
from haystack_corrector.experiments.report import paired_bootstrap
from haystack_corrector.search import bf16_supported


def relative(a: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (a.float() - reference).norm(dim=1) / reference.norm(dim=1)


def overlap(found: torch.Tensor, reference: torch.Tensor, key=int) -> float:
    """Mean share of each query's reference top 10 that ``found`` also holds (by row, or by ``key`` of a row)."""
    total = 0.0
    for a, b in zip(found.tolist(), reference.tolist()):
        wanted = {key(r) for r in b}
        total += len({key(r) for r in a} & wanted) / len(wanted)
    return total / len(found)


def copies_as_one(data: Path, rows: int):
    """(text key of each row, query ids, text qrels, nDCG@10 per query of a (B, k) row ranking) for ``data``."""
    from haystack_corrector.beir import document_text, load_beir
    from haystack_corrector.evaluation import retrieval_metrics

    corpus, _, _ = load_beir(data, "train")
    _, test_queries, qrels = load_beir(data, "test")
    ids = list(corpus)
    if len(ids) != rows:
        raise ValueError(f"{data} has {len(ids)} documents but the upgrade folder {rows} rows")
    text_id: dict[str, int] = {}
    key = [text_id.setdefault(document_text(corpus[i]), len(text_id)) for i in ids]
    row_of = {doc: row for row, doc in enumerate(ids)}
    text_qrels = {q: {f"t{key[row_of[d]]}": g for d, g in judged.items() if d in row_of} for q, judged in qrels.items()}
    query_ids = list(test_queries)

    def ndcg(found: torch.Tensor) -> dict[str, float]:
        run: dict[str, dict[str, float]] = {}
        for q, row_list in zip(query_ids, found.tolist()):
            for rank, r in enumerate(row_list):
                run.setdefault(q, {}).setdefault(f"t{key[r]}", float(len(row_list) - rank))  # best rank per text
        return {q: v["ndcg@10"] for q, v in retrieval_metrics(run, text_qrels)[1].items()}

    return key, ndcg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upgrade", type=Path, required=True, help="an index_upgrade.py output folder")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None, help="the BEIR folder, for the copies-as-one scores")
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
    key, ndcg = copies_as_one(args.data, len(old)) if args.data else (None, None)
    reference_ndcg = ndcg(exact) if ndcg else None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = store.corrector.correct(store.stale_embeddings())
    extra = " overlap@10, distinct texts | nDCG@10 (copies as one) − float32's [95% CI] |" if key else ""
    print(f"\n| view | rel. error mean | rel. error max | overlap@10 with float32 |{extra} materialise s |")
    print("|---|---|---|---|" + ("---|---|" if key else "") + "---|")
    error = relative(autocast, reference)
    blank = " | |" if key else ""
    print(
        f"| (bfloat16 autocast output, before rounding) | {float(error.mean()):.2e} | {float(error.max()):.2e} |"
        f"{blank} | |"
    )
    if reference_ndcg:
        print(f"(float32 corrector's own nDCG@10, copies as one: {np.mean(list(reference_ndcg.values())):.4f})")
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
        error = relative(store.views.view.data, reference)
        found = store.search(queries, 10)[1]
        cells = f"{overlap(found, exact):.4f} |"
        if key:
            ours = ndcg(found)
            mean, low, high = paired_bootstrap(np.array([ours[q] - reference_ndcg[q] for q in sorted(ours)]))
            cells += f" {overlap(found, exact, key=lambda r: key[r]):.4f} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] |"
        print(f"| {name} | {float(error.mean()):.2e} | {float(error.max()):.2e} | {cells} {seconds:.2f} |")


if __name__ == "__main__":
    main()
