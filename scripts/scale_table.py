"""The tables of docs/results.md "At scale": every arm of one or more experiment folders, and paired differences.

    python scripts/scale_table.py runs/codesearch-20k runs/codesearch-all \
        --pairs corrector+rerank:3-rerank:3 corrector+rerank:3-stale refresh:21-corrector+rerank:3

For each folder: one row per (arm, seed) with nDCG@10, Recall@100, MRR@10, corpus encodes, target passes, train and
evaluation seconds (wall, and CPU seconds of all threads where recorded), and the drift at the end (staleness,
overlap@10 stale / corrected). Then each pair ``a-b`` (arm names joined by ``-`` between two arms; use the exact
names): a − b in nDCG@10 for every seed both finished, and over the seeds they share (per-query scores averaged over
those seeds), each with its paired 95% bootstrap interval over the queries. With stale, refresh:N and the default
finished, the share of the stale → refresh gap the default recovers, per seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from haystack_corrector.experiments.report import paired_bootstrap


def load_runs(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted((folder / "arms").glob("*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(run["arm"], {})[int(run["seed"])] = run
    return runs


def split_pair(text: str, arms: set[str]) -> tuple[str, str]:
    for index in range(len(text)):
        if text[index] == "-" and text[:index] in arms and text[index + 1 :] in arms:
            return text[:index], text[index + 1 :]
    raise SystemExit(f"cannot split {text!r} into two finished arms of {sorted(arms)}")


def difference(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> str:
    queries = list(first[0]["per_query"])
    a = np.array([np.mean([run["per_query"][q]["ndcg@10"] for run in first]) for q in queries])
    b = np.array([np.mean([run["per_query"][q]["ndcg@10"] for run in second]) for q in queries])
    mean, low, high = paired_bootstrap(a - b)
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--pairs", nargs="*", default=[])
    parser.add_argument("--refresh", default="refresh:21", help="the refresh arm of the gap share")
    args = parser.parse_args()
    for name in args.folders:
        folder = Path(name)
        runs = load_runs(folder)
        zero = json.loads((folder / "zero_shot.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        size = config.get("corpus_size") or "all"
        print(f"\n## {folder} (corpus size {size}; zero-shot nDCG@10 {zero['metrics']['ndcg@10']:.4f})\n")
        print(
            "| arm | seed | nDCG@10 | Recall@100 | MRR@10 | corpus encodes | target passes | train s (CPU s) | "
            "eval s (CPU s) | staleness | overlap@10 stale / corrected |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for arm, seeds in runs.items():
            for seed, run in sorted(seeds.items()):
                m, drift = run["metrics"], run["final_drift"]
                cpu_train = f" ({run['train_cpu_seconds']:.0f})" if "train_cpu_seconds" in run else ""
                cpu_eval = f" ({run['eval_cpu_seconds']:.0f})" if "eval_cpu_seconds" in run else ""
                print(
                    f"| {arm} | {seed} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | "
                    f"{run['corpus_encodes']} | {run['target_forward_passes']:,} | {run['train_seconds']:.0f}{cpu_train} | "
                    f"{run['eval_seconds']:.0f}{cpu_eval} | {drift['staleness']:.3f} | "
                    f"{drift['stale_overlap@10']:.3f} / {drift['corrected_overlap@10']:.3f} |"
                )
        if args.pairs:
            print("\n| a − b (nDCG@10) | per seed | over shared seeds |\n|---|---|---|")
        for pair in args.pairs:
            try:
                first, second = split_pair(pair, set(runs))
            except SystemExit:
                print(f"| {pair} | not finished | |")
                continue
            shared = sorted(set(runs[first]) & set(runs[second]))
            per_seed = "; ".join(f"seed {s}: {difference([runs[first][s]], [runs[second][s]])}" for s in shared)
            pooled = difference([runs[first][s] for s in shared], [runs[second][s] for s in shared])
            print(f"| {first} − {second} | {per_seed} | {pooled} ({len(shared)} seeds) |")
        default, stale, refresh = "corrector+rerank:3", "stale", args.refresh
        if all(arm in runs for arm in (default, stale, refresh)):
            for seed in sorted(set(runs[default]) & set(runs[stale]) & set(runs[refresh])):
                s, d, r = (runs[arm][seed]["metrics"]["ndcg@10"] for arm in (stale, default, refresh))
                share = (d - s) / (r - s) if r != s else float("nan")
                print(
                    f"\nSeed {seed}: the default recovers {share:.0%} of the stale → {refresh} gap ({s:.4f} → {r:.4f})."
                )


if __name__ == "__main__":
    main()
