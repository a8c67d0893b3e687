"""The report writer of both experiment tasks: tables and plots of their results (``results.json`` ->
``results.md`` and PNG files). :func:`markdown` and :func:`plots` for the contrastive task, :func:`latent_markdown`
for the latent one; both pair arms per query with :func:`paired_bootstrap`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("ndcg@10", "recall@100", "mrr@10")


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def paired_bootstrap(differences: np.ndarray, resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-query differences and its 95% percentile-bootstrap interval (queries resampled with replacement)."""
    if differences.size == 0:
        return math.nan, math.nan, math.nan
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, differences.size, size=(resamples, differences.size))
    means = differences[picks].mean(axis=1)
    return float(differences.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def per_query_mean(runs: dict[str, Any], metric: str = "ndcg@10") -> dict[str, float]:
    """Per-query metric averaged over the seeds of one arm."""
    seeds = list(runs.values())
    queries = seeds[0]["per_query"].keys()
    return {q: float(np.mean([s["per_query"][q][metric] for s in seeds])) for q in queries}


def markdown(results: dict[str, Any], reference: str = "corrector") -> str:
    config = results["config"]
    lines = [
        f"# Results: {Path(config['data']).name}",
        "",
        f"Machine: {results['machine']}. Batch {config['batch_size']}, "
        f"{config['num_negatives']} negative(s) per query, max_seq_length {config['max_seq_length']}, lr {config['lr']}, "
        + (f"{config['steps']} steps" if config.get("steps") else f"{config['epochs']} epoch(s)")
        + f", window range_min={config['range_min']} range_max={config['range_max']}, sampling_strategy {config.get('sampling_strategy', config.get('strategy'))}.",
        "",
        "Metrics are mean ± standard deviation over the arm's seeds; the other columns are means.",
        "",
        "| arm | seeds | nDCG@10 | Recall@100 | MRR@10 | corpus encodes after the initial cache | target-encoder forward passes | train s | final staleness | corrected error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    zero = results["zero_shot"]["metrics"]
    lines.append(
        f"| zero-shot | | {zero['ndcg@10']:.4f} | {zero['recall@100']:.4f} | {zero['mrr@10']:.4f} | 0 | 0 | 0 | | |"
    )
    for arm, runs in results["arms"].items():
        seeds = list(runs.values())
        cells = []
        for metric in METRICS:
            mean, std = _mean_std([s["metrics"][metric] for s in seeds])
            cells.append(f"{mean:.4f} ± {std:.4f}" if len(seeds) > 1 else f"{mean:.4f}")
        encodes = np.mean([s["corpus_encodes"] for s in seeds])
        passes = np.mean([s["target_forward_passes"] for s in seeds])
        seconds = np.mean([s["train_seconds"] for s in seeds])
        staleness = np.mean([s["final_drift"]["staleness"] for s in seeds])
        corrected = np.mean([s["final_drift"]["corrected_error"] for s in seeds])
        lines.append(
            f"| {arm} | {', '.join(runs)} | {' | '.join(cells)} | {encodes:g} | {passes:,.0f} | {seconds:.0f} | {staleness:.4f} | {corrected:.4f} |"
        )
    if reference in results["arms"]:
        ref = per_query_mean(results["arms"][reference])
        lines += [
            "",
            f"Paired per-query nDCG@10 differences against `{reference}` (per-query scores averaged over seeds; "
            "95% bootstrap interval, 10,000 resamples of the queries):",
            "",
            f"| arm | mean difference (arm − {reference}) | 95% interval |",
            "|---|---|---|",
        ]
        zero_per_query = {q: v["ndcg@10"] for q, v in results["zero_shot"]["per_query"].items()}
        for arm, runs in [("zero-shot", None), *results["arms"].items()]:
            if arm == reference:
                continue
            other = zero_per_query if runs is None else per_query_mean(runs)
            diff = np.asarray([other[q] - ref[q] for q in ref])
            mean, low, high = paired_bootstrap(diff)
            lines.append(f"| {arm} | {mean:+.4f} | [{low:+.4f}, {high:+.4f}] |")
    lines += [
        "",
        "Fidelity at the end of training (test queries; the arm's cache vs a fresh encode with the trained model):",
        "",
        "| arm | stale overlap@10 | corrected overlap@10 | stale overlap@100 | corrected overlap@100 |",
        "|---|---|---|---|---|",
    ]
    for arm, runs in results["arms"].items():
        seeds = list(runs.values())
        values = [
            np.mean([s["final_drift"][key] for s in seeds])
            for key in ("stale_overlap@10", "corrected_overlap@10", "stale_overlap@100", "corrected_overlap@100")
        ]
        lines.append(f"| {arm} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def _label_points(axis: Any, points: list[tuple[float, float, str, str]]) -> None:
    """Name each point beside it; labels of points that nearly coincide are stacked instead of overprinted."""
    values = [y for _, y, _, _ in points]
    close = 0.03 * ((max(values) - min(values)) or 1.0)
    placed: list[tuple[float, float]] = []
    for x, y, text, colour in sorted(points, key=lambda p: (p[0], -p[1])):
        shift = sum(1 for px, py in placed if px == x and abs(py - y) < close)
        placed.append((x, y))
        axis.annotate(
            text, (x, y), xytext=(6, -10 * shift), textcoords="offset points", va="center", fontsize=8, color=colour
        )


def plots(results: dict[str, Any], output: str | Path) -> list[Path]:
    """``quality_vs_encodes.png`` and ``drift.png`` in ``output``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    output = Path(output)
    written = []
    # Two costs: whole-corpus re-encodes (what refresh pays) and all target-encoder forward passes (what rerank pays
    # without ever re-encoding the corpus).
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    zero = results["zero_shot"]["metrics"]["ndcg@10"]
    colours = {arm: f"C{i % 10}" for i, arm in enumerate(results["arms"])}
    for axis, key, label in (
        (axes[0], "corpus_encodes", "corpus encodes after the initial cache"),
        (axes[1], "target_forward_passes", "target-encoder forward passes"),
    ):
        axis.axhline(zero, color="grey", linestyle="--", linewidth=1)
        axis.annotate("zero-shot", (0.01, zero), xycoords=("axes fraction", "data"), va="bottom", color="grey")
        points = []
        for arm, runs in results["arms"].items():
            seeds = list(runs.values())
            mean, std = _mean_std([s["metrics"]["ndcg@10"] for s in seeds])
            cost = float(np.mean([s[key] for s in seeds]))
            axis.errorbar([cost], [mean], yerr=[std], fmt="o", capsize=4, color=colours[arm])
            points.append((cost, mean, f"{arm} ({len(seeds)})", colours[arm]))
        _label_points(axis, points)
        axis.set_xlabel(label)
        axis.margins(x=0.35)
        axis.grid(alpha=0.3)
    # Corpus encodes are whole numbers from 0: no negative or fractional ticks, even when every arm sits at 0.
    highest = max(
        (float(np.mean([s["corpus_encodes"] for s in r.values()])) for r in results["arms"].values()), default=0
    )
    axes[0].set_xlim(-0.5, max(highest, 1.0) + 1.0)
    axes[0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("test nDCG@10 (mean ± std; seeds in brackets)")
    figure.suptitle("Quality against what it cost: re-encoding arms sit to the right")
    figure.tight_layout()
    path = output / "quality_vs_encodes.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    written.append(path)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for arm, runs in results["arms"].items():
        history = next(iter(runs.values()))["drift_history"]
        if not history:
            continue
        steps = [h["step"] for h in history]
        axes[0].plot(steps, [h["staleness"] for h in history], color=colours[arm], label=arm)
        axes[1].plot(steps, [h["corrected_error"] for h in history], color=colours[arm], label=arm)
    axes[0].set_title("staleness: cache vs fresh embedding")
    axes[1].set_title("corrected error: corrector output vs fresh")
    for axis in axes:
        axis.set_xlabel("training step")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("relative error on the step's targets")
    if axes[0].get_lines():
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    figure.suptitle("Drift during training (first seed of each arm)")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    path = output / "drift.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    written.append(path)
    return written


def latent_markdown(summary: dict[str, Any], reference: str | None = None) -> str:
    """Markdown: one row per arm (means over its seeds), then paired differences between arms.

    Every arm is compared with ``reference`` (default ``frozen``: the reader trained on a zero-shot retriever), and
    each trained arm with every trained arm listed before it (corrector - stale, refresh - stale, ...). A pair is
    computed on per-claim values averaged over the seeds each arm has.
    """
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for result in summary["arms"]:
        by_arm.setdefault(result["arm"], []).append(result)
    lines = [
        f"Zero-shot retriever nDCG@10 on the test claims: {summary['zero_shot']['ndcg@10']:.4f}",
        "",
        "| arm | seeds | accuracy | macro-F1 | retriever nDCG@10 | corpus encodes | target passes | reader passes | "
        "train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, runs in by_arm.items():
        means = {k: np.mean([r["metrics"][k] for r in runs]) for k in ("accuracy", "macro_f1", "ndcg@10")}
        lines.append(
            f"| {arm} | {', '.join(str(r['seed']) for r in runs)} | {means['accuracy']:.4f} | "
            f"{means['macro_f1']:.4f} | {means['ndcg@10']:.4f} | {np.mean([r['corpus_encodes'] for r in runs]):.0f} | "
            f"{np.mean([r['target_forward_passes'] for r in runs]):,.0f} | "
            f"{np.mean([r['reader_forward_passes'] for r in runs]):,.0f} | "
            f"{np.mean([r['train_seconds'] for r in runs]):.0f} |"
        )
    if not by_arm:
        return "\n".join(lines) + "\n"
    reference = reference or ("frozen" if "frozen" in by_arm else next(iter(by_arm)))
    trained = [arm for arm in by_arm if arm != reference]
    pairs = [(arm, reference) for arm in trained]
    pairs += [(arm, earlier) for i, arm in enumerate(trained) for earlier in trained[:i]]

    def per_claim(arm: str, key: str) -> dict[str, float]:
        runs = by_arm[arm]
        claims = runs[0]["per_query"][key]
        return {q: float(np.mean([r["per_query"][key][q] for r in runs])) for q in claims}

    lines += [
        "",
        "Paired differences (per-claim values averaged over each arm's seeds; 95% bootstrap over claims):",
        "",
        "| difference | accuracy [95% CI] | nDCG@10 [95% CI] |",
        "|---|---|---|",
    ]
    for arm, other in pairs:
        cells = []
        for key in ("correct", "ndcg@10"):
            ours, theirs = per_claim(arm, key), per_claim(other, key)
            mean, low, high = paired_bootstrap(np.array([ours[q] - theirs[q] for q in sorted(ours) if q in theirs]))
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]")
        lines.append(f"| {arm} - {other} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"
