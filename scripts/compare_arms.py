"""Compare finished arms of one experiment folder: nDCG@10, costs, fidelity, and paired intervals between arms.

    python scripts/compare_arms.py runs/cosqa-2k-v2 runs/cosqa-2k-side --reference refresh:21 --stale stale

Reads ``<folder>/arms/*.json`` of every folder given (folders of one setting, e.g. an arm that needs its own initial
cache; the same arm in two folders is pooled as more seeds) (any arms and seeds finished so far) and prints a markdown table: per arm, the mean
test nDCG@10 over its seeds, corpus encodes, target forward passes, train seconds, the end-of-training overlap@10 of
its cache with the fresh ranking, the paired 95% bootstrap interval of (reference − arm) over queries, and the share
of the stale → reference gap the arm recovers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from haystack_corrector.experiments.report import paired_bootstrap  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="experiment folders of the same setting")
    parser.add_argument("--reference", default="refresh:21")
    parser.add_argument("--stale", default="stale")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (default: all)")
    parser.add_argument("--versus", default=None, help="also print arm − VERSUS per arm, paired 95%% CI")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(p for folder in args.folders for p in Path(folder, "arms").glob("*.json")):
        result = json.loads(path.read_text())
        if args.seeds is None or result["seed"] in args.seeds:
            runs[result["arm"]].append(result)

    def per_query(arm: str) -> dict[str, float]:
        seeds = runs[arm]
        return {q: float(np.mean([s["per_query"][q]["ndcg@10"] for s in seeds])) for q in seeds[0]["per_query"]}

    def mean(arm: str, key: str) -> float:
        return float(np.mean([s[key] if key in s else s["metrics"][key] for s in runs[arm]]))

    reference = per_query(args.reference) if args.reference in runs else None
    stale = mean(args.stale, "ndcg@10") if args.stale in runs else None
    versus = per_query(args.versus) if args.versus in runs else None
    extra = f" arm − {args.versus} [95% CI] |" if versus is not None else ""
    print(
        f"| arm | seeds | nDCG@10 | corpus encodes | target forward passes | train s | overlap@10 (corrected / stale) "
        f"| {args.reference} − arm [95% CI] | share of the {args.stale} → {args.reference} gap |{extra}"
    )
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if versus is not None else ""))
    for arm in sorted(runs, key=lambda a: -mean(a, "ndcg@10")):
        ndcg = mean(arm, "ndcg@10")
        drift = [s["final_drift"] for s in runs[arm]]
        overlap = f"{np.mean([d['corrected_overlap@10'] for d in drift]):.3f} / {np.mean([d['stale_overlap@10'] for d in drift]):.3f}"
        interval = share = "–"
        if reference is not None and arm != args.reference:
            mine = per_query(arm)
            queries = sorted(reference)
            diff = np.array([reference[q] - mine[q] for q in queries])
            m, lo, hi = paired_bootstrap(diff)
            interval = f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        if stale is not None and reference is not None and arm not in (args.reference, args.stale):
            gap = mean(args.reference, "ndcg@10") - stale
            share = f"{(ndcg - stale) / gap:.0%}" if gap > 0 else "–"
        against = ""
        if versus is not None:
            against = " – |"
            if arm != args.versus:
                mine = per_query(arm)
                m, lo, hi = paired_bootstrap(np.array([mine[q] - versus[q] for q in sorted(versus)]))
                against = f" {m:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
        print(
            f"| {arm} | {len(runs[arm])} | {ndcg:.4f} | {mean(arm, 'corpus_encodes'):.0f} | "
            f"{mean(arm, 'target_forward_passes'):,.0f} | {mean(arm, 'train_seconds'):.0f} | {overlap} | {interval} | {share} |"
            f"{against}"
        )


if __name__ == "__main__":
    main()
