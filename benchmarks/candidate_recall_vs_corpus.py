"""Does the stale cache's top L miss the fresh hardest negative more often as the corpus grows, and does the
corrected cache's top L miss it less? (issue 39, item 1; the curve in docs/results.md)

Reads one finished arm of a harness folder run with ``--keep-embeddings`` on the whole corpus: the initial cache
(the stale embeddings g'), the arm's fresh document and query embeddings (its end model, f_t and g_t) and its
corrector as training left it (h, fitted online by the loss). For each evaluation query and each nested corpus size
(every judged document kept, the same seeded others as ``--corpus-size`` takes), the fresh hardest negative is the
best-scoring non-relevant document by <f_t(q), g_t(y)> inside the subset; it is a *hit* at L when it is among the
query's L best non-relevant documents of the subset by the stale score <f_t(q), g'(y)>, or by the corrected score
<f_t(q), h(g'(y))>. The candidates a re-ranking step re-encodes are exactly these top L (``rerank:L`` takes them
from the stale cache, the default ``corrector+rerank:L`` from the corrected one).

    python benchmarks/candidate_recall_vs_corpus.py runs/codesearch-all --arm stale --sizes 20000 50000 100000 0 \
        --json docs/results/codesearch-all/candidate-recall-stale.json --plot docs/results/codesearch-candidate-recall.png

Prints one table row per size: hit rates at each L for stale and corrected candidates, and the paired difference
(corrected − stale) with its 95% bootstrap interval over queries. Size 0 means the whole corpus.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector.evaluation import hardest_negative_rank, relative_error
from haystack_corrector.experiments.arms import parse_arm
from haystack_corrector.experiments.config import ExperimentConfig
from haystack_corrector.experiments.corpus_subset import judged_documents, nested_subset
from haystack_corrector.experiments.report import paired_bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a harness output folder, run on the whole corpus with --keep-embeddings")
    parser.add_argument("--arm", default="stale", help="whose end model and corrector to read")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 100000, 0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--plot", default=None, help="write the curve here (PNG)")
    args = parser.parse_args()
    folder = Path(args.folder)
    saved = json.loads((folder / "config.json").read_text())
    config = ExperimentConfig(**{k: v for k, v in saved.items() if k in ExperimentConfig.__dataclass_fields__})
    if config.corpus_size is not None:
        raise SystemExit(f"{folder} was run on a subset (--corpus-size {config.corpus_size}); run on the whole corpus")
    from haystack_corrector.experiments.contrastive import embeddings_path, load_data

    corpus, _, train_qrels, eval_queries, eval_qrels = load_data(config)
    corpus_ids = list(corpus)
    arm = parse_arm(args.arm)
    kept = embeddings_path(config, arm, args.seed)
    store = CorrectedCacheStore.load(folder / "initial-cache", mmap=True)
    if list(store.ids) != corpus_ids:
        raise SystemExit("the initial cache's ids are not the corpus in order: wrong folder?")
    store.corrector = Corrector.load(kept / "corrector")
    stale_raw = store.stale_embeddings()
    fresh_raw = torch.from_numpy(np.load(kept / "documents.npy")).float()
    stale_all = torch.nn.functional.normalize(stale_raw, dim=1)
    corrected_all = torch.nn.functional.normalize(store.corrected_embeddings(), dim=1)
    fresh_all = torch.nn.functional.normalize(fresh_raw, dim=1)
    queries = torch.nn.functional.normalize(torch.from_numpy(np.load(kept / "queries.npy")).float(), dim=1)
    query_ids = list(eval_queries)
    judged = judged_documents(train_qrels, eval_qrels)
    position = {doc: i for i, doc in enumerate(corpus_ids)}
    results = {
        "folder": str(folder),
        "arm": args.arm,
        "seed": args.seed,
        "queries": len(query_ids),
        "staleness_all_rows": relative_error(stale_raw, fresh_raw),
        "corrected_error_all_rows": relative_error(store.corrected_embeddings(), fresh_raw),
        "sizes": [],
    }
    depth = max(args.depths)
    header = " | ".join(f"stale@{L} | corrected@{L} | corrected − stale @{L} [95% CI]" for L in args.depths)
    print(f"# {folder}, arm {args.arm} seed {args.seed}: {len(query_ids)} queries, CPU {os.cpu_count()} cores")
    print(f"| documents | {header} |")
    print("|---" * (1 + 3 * len(args.depths)) + "|")
    for size in args.sizes:
        ids = corpus_ids if size == 0 else nested_subset(corpus_ids, judged, size)
        rows = torch.tensor([position[doc] for doc in ids])
        local = {int(row): i for i, row in enumerate(rows.tolist())}
        relevant = [
            [local[position[d]] for d, g in eval_qrels.get(q, {}).items() if g > 0 and position.get(d) is not None]
            for q in query_ids
        ]
        fresh = fresh_all[rows]
        stale_rank = hardest_negative_rank(queries, stale_all[rows], fresh, relevant, depth).numpy()
        corrected_rank = hardest_negative_rank(queries, corrected_all[rows], fresh, relevant, depth).numpy()
        entry = {"documents": len(ids), "by_depth": {}}
        cells = []
        for L in args.depths:
            stale_hit, corrected_hit = (stale_rank < L).astype(float), (corrected_rank < L).astype(float)
            difference = paired_bootstrap(corrected_hit - stale_hit)
            entry["by_depth"][str(L)] = {
                "stale": float(stale_hit.mean()),
                "corrected": float(corrected_hit.mean()),
                "corrected_minus_stale": list(difference),
            }
            cells.append(
                f"{stale_hit.mean():.3f} | {corrected_hit.mean():.3f} | "
                f"{difference[0]:+.3f} [{difference[1]:+.3f}, {difference[2]:+.3f}]"
            )
        results["sizes"].append(entry)
        print(f"| {len(ids):,} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.depths, Path(args.plot))


def plot(results: dict, depths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [entry["documents"] for entry in results["sizes"]]
    figure, axis = plt.subplots(figsize=(8.4, 4.4))
    for L, color in zip(depths, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for source, style in (("stale", "--"), ("corrected", "-")):
            values = [entry["by_depth"][str(L)][source] for entry in results["sizes"]]
            axis.plot(sizes, values, style, marker="o", color=color, label=f"{source} top {L}")
    axis.set_xscale("log")
    axis.set_xlabel("documents in the corpus (nested subsets)")
    axis.set_ylabel("share of queries whose fresh hardest negative is inside")
    axis.set_title(f"Stale vs corrected candidates ({results['arm']} arm's end state)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
