"""Compare the same arms across two experiment folders that differ in one setting (e.g. float32 against --bf16).

    python scripts/compare_folders.py runs/scifact-5ep-fp32 runs/scifact-5ep-bf16 --arms corrector+rerank:3 refresh:29

For each arm and seed finished in both folders: nDCG@10 in each, the paired 95% bootstrap interval of (second −
first) over the evaluation queries, train and evaluation seconds in each and their ratio, and each folder's
precision and zero-shot nDCG@10 (the initial caches differ when the setting changes how they are encoded).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from haystack_corrector.experiments.arms import parse_arm
from haystack_corrector.experiments.report import paired_bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--arms", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    first, second = Path(args.first), Path(args.second)
    for folder in (first, second):
        zero = json.loads((folder / "zero_shot.json").read_text())
        print(
            f"# {folder}: zero-shot nDCG@10 {zero['metrics']['ndcg@10']:.4f}, precision "
            f"{zero.get('precision', 'float32')}, initial cache encoded in {zero['corpus_encode_seconds']:.0f} s"
        )
    print(
        f"| arm | seed | nDCG@10 {first.name} | nDCG@10 {second.name} | second − first [95% CI] | train s first / "
        "second (ratio) | eval s first / second |"
    )
    print("|---|---|---|---|---|---|---|")
    for arm in args.arms:
        slug = parse_arm(arm).slug
        for seed in args.seeds:
            paths = [folder / "arms" / f"{slug}__seed{seed}.json" for folder in (first, second)]
            if not all(path.is_file() for path in paths):
                print(f"| {arm} | {seed} | missing in {', '.join(str(p) for p in paths if not p.is_file())} |")
                continue
            a, b = (json.loads(path.read_text()) for path in paths)
            queries = sorted(a["per_query"])
            difference = np.array([b["per_query"][q]["ndcg@10"] - a["per_query"][q]["ndcg@10"] for q in queries])
            mean, low, high = paired_bootstrap(difference)
            print(
                f"| {arm} | {seed} | {a['metrics']['ndcg@10']:.4f} | {b['metrics']['ndcg@10']:.4f} | "
                f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] | {a['train_seconds']:.0f} / {b['train_seconds']:.0f} "
                f"({b['train_seconds'] / a['train_seconds']:.2f}x) | {a['eval_seconds']:.0f} / {b['eval_seconds']:.0f} |"
            )


if __name__ == "__main__":
    main()
