"""``haystack-corrector demo``: a short, offline, end-to-end run on the shipped SciFact subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haystack_corrector.experiments.harness import ExperimentConfig, run_experiment
from haystack_corrector.experiments.output_folder import clear_output_folder

DEMO_DATA = Path(__file__).resolve().parents[1] / "data" / "scifact_demo"


def demo_config(output: str, steps: int = 24, model: str | None = None, verbose: bool = False) -> ExperimentConfig:
    return ExperimentConfig(
        data=str(DEMO_DATA),
        model=model,
        arms=("static", "corrector"),
        seeds=(0,),
        steps=steps,
        batch_size=32,
        num_negatives=1,
        max_seq_length=128,
        lr=5e-5,
        range_min=0,
        range_max=30,
        output=output,
        logging_steps=4,
        verbose=verbose,
    )


def run_demo(
    output: str = "haystack-corrector-demo",
    steps: int = 24,
    fresh: bool = False,
    model: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    if fresh:
        clear_output_folder(output)  # only the files the demo writes; refuses a folder that is not ours
    return run_experiment(demo_config(output, steps, model, verbose))


def summary(results: dict[str, Any]) -> str:
    """The demo's console table: quality, cost and drift per run."""
    zero = results["zero_shot"]
    rows = [
        "| run | nDCG@10 | Recall@100 | MRR@10 | corpus encodes | wall time (s) |",
        "|---|---|---|---|---|---|",
        f"| zero-shot | {zero['metrics']['ndcg@10']:.4f} | {zero['metrics']['recall@100']:.4f} | "
        f"{zero['metrics']['mrr@10']:.4f} | 1 (the cache) | {zero['corpus_encode_seconds']:.0f} |",
    ]
    labels = {"static": "static negatives (mined once)", "corrector": "corrector negatives"}
    for arm, runs in results["arms"].items():
        run = next(iter(runs.values()))
        m = run["metrics"]
        rows.append(
            f"| {labels.get(arm, arm)} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} | "
            f"{run['corpus_encodes']} after the cache | {run['train_seconds']:.0f} |"
        )
    rows += [
        "",
        "Drift at the end of training (test queries; cache vs a fresh encode with the trained model):",
        "",
        "| run | staleness | corrected error | stale overlap@10 | corrected overlap@10 |",
        "|---|---|---|---|---|",
    ]
    for arm, runs in results["arms"].items():
        d = next(iter(runs.values()))["final_drift"]
        rows.append(
            f"| {labels.get(arm, arm)} | {d['staleness']:.4f} | {d['corrected_error']:.4f} | "
            f"{d['stale_overlap@10']:.3f} | {d['corrected_overlap@10']:.3f} |"
        )
    return "\n".join(rows)
