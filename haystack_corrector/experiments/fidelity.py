"""Fidelity: how well a corrector recovers the fresh ranking after real drift (the mechanism behind the claim).

Encode the corpus with the initial model; fine-tune for T steps (any arm; in-batch by default); re-encode; then, for
held-out queries, compare the rankings by the stale cache and by corrected caches with the fresh ranking
(overlap@10/@100), and the relative errors on the rows the corrector never saw. Two correctors are reported:
the one trained online during the run, and one fitted offline only on the targets the training touched.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import torch

from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.evaluation import fidelity_of
from haystack_corrector.experiments.arms import parse_arm
from haystack_corrector.experiments.config import ExperimentConfig
from haystack_corrector.experiments.contrastive import prepare, train_arm
from haystack_corrector.experiments.harness import encode, machine
from haystack_corrector.trainer import CorrectorTrainer

logger = logging.getLogger(__name__)


def fit_offline_corrector(
    stale: torch.Tensor,
    rows: torch.Tensor,
    fresh: torch.Tensor,
    *,
    hidden_dim: int | None,
    lr: float,
    epochs: int,
    seed: int,
    listwise_weight: float = 0.0,
    listwise_candidates: int | Literal["all"] | None = None,
    queries: torch.Tensor | None = None,
    similarity: str = "cosine",
) -> CorrectedCacheStore:
    """A store over ``stale`` whose new corrector is fitted on (``rows``, ``fresh``): MSE, plus the listwise term
    (with ``queries``) when ``listwise_weight`` > 0; seeded, batches of 256 rows and of 256 queries."""
    torch.manual_seed(seed)
    store = CorrectedCacheStore(
        stale, corrector=Corrector(stale.shape[1], hidden_dim=hidden_dim), similarity=similarity
    )
    CorrectorTrainer(store, lr=lr, listwise_weight=listwise_weight).fit(
        rows,
        fresh,
        epochs=epochs,
        batch_size=256,
        seed=seed,
        query_embeddings=queries if listwise_weight > 0 else None,
        listwise_candidates=listwise_candidates,
        query_batch_size=256,
    )
    return store


def record_rows(loss: Any, rows: set[int]) -> None:
    """Add to ``rows`` every store row whose fresh embedding trains the loss's corrector."""
    observe = loss.corrector_trainer.observe

    def recording(batch_rows: Any, fresh: Any, **kwargs: Any) -> Any:
        rows.update(torch.as_tensor(batch_rows).tolist())
        return observe(batch_rows, fresh, **kwargs)

    loss.corrector_trainer.observe = recording


def run_fidelity(
    config: ExperimentConfig,
    arm: str = "inbatch",
    seed: int = 0,
    fit_epochs: int = 50,
    listwise_weights: tuple[float, ...] = (0.0, 0.1),
    sample_listwise_weight: float = 1.0,
) -> dict[str, Any]:
    """Train one arm, re-encode, and compare stale and corrected rankings with the fresh one (see the module doc).

    Offline correctors: MSE plus ``w`` × the in-batch listwise term for each ``w`` in ``listwise_weights``, and (if
    ``sample_listwise_weight`` > 0) MSE plus that weight × a listwise term in which the training queries rank every
    touched row (``CorrectorTrainer.fit(listwise_candidates="all")``).
    """
    config.validate()
    start_all = time.perf_counter()
    prepared = prepare(config)
    touched_rows: set[int] = set()
    trained = train_arm(config, parse_arm(arm), seed, prepared, watch_loss=lambda loss: record_rows(loss, touched_rows))
    model = trained.model
    fresh_docs = encode(model, prepared.corpus_texts, config.encode_batch_size, "fresh corpus")
    queries = encode(model, list(prepared.eval_queries.values()), config.encode_batch_size, "held-out queries")
    train_queries = encode(model, list(prepared.train_queries.values()), config.encode_batch_size, "training queries")
    similarity = trained.store.similarity
    k = min(100, len(fresh_docs))
    _, fresh_rows = CorrectedCacheStore(fresh_docs, similarity=similarity).search(queries, k, corrected=False)
    touched = torch.tensor(sorted(touched_rows), dtype=torch.int64)
    mask = torch.ones(len(fresh_docs), dtype=torch.bool)
    mask[touched] = False
    unseen = mask.nonzero().squeeze(1)
    results: dict[str, Any] = {
        "config": {**config.__dict__, "arms": [arm], "seeds": [seed]},
        "machine": machine(),
        "arm": arm,
        "steps": trained.trainer.state.global_step,
        "train_seconds": trained.train_seconds,
        "touched_rows": int(touched.numel()),
        "unseen_rows": int(unseen.numel()),
        "online": fidelity_of(trained.store, fresh_docs, queries, fresh_rows, rows=unseen),
        "offline": {},
    }
    initial = CorrectedCacheStore.load(prepared.cache_path, mmap=False).stale_embeddings()
    variants: list[tuple[float, Literal["all"] | None]] = [(weight, None) for weight in listwise_weights]
    if sample_listwise_weight > 0:
        variants.append((sample_listwise_weight, "all"))
    for weight, candidates in variants:
        start = time.perf_counter()
        store = fit_offline_corrector(
            initial,
            touched,
            fresh_docs[touched],
            hidden_dim=config.hidden_dim,
            lr=config.corrector_lr,
            epochs=fit_epochs,
            seed=seed,
            listwise_weight=weight,
            listwise_candidates=candidates,
            queries=train_queries,
            similarity=similarity,
        )
        name = "mse" if weight == 0 else f"mse+{weight:g}*listwise"
        if candidates == "all":
            name += " over all touched rows"
        results["offline"][name] = {
            **fidelity_of(store, fresh_docs, queries, fresh_rows, rows=unseen),
            "fit_seconds": time.perf_counter() - start,
        }
    results["total_seconds"] = time.perf_counter() - start_all
    output = Path(config.output)
    prepared.folder.write_json("fidelity.json", results)
    (output / "fidelity.md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Fidelity after {results['steps']} steps of `{results['arm']}` training ({results['train_seconds']:.0f} s); "
        f"{results['touched_rows']} rows touched, errors on the {results['unseen_rows']} untouched rows; "
        f"machine: {results['machine']}",
        "",
        "| cache | relative error (untouched rows) | overlap@10 | overlap@100 |",
        "|---|---|---|---|",
    ]
    online = results["online"]
    lines.append(
        f"| stale | {online['staleness']:.4f} | {online['stale_overlap@10']:.3f} | {online['stale_overlap@100']:.3f} |"
    )
    lines.append(
        f"| corrected, online during training | {online['corrected_error']:.4f} | {online['corrected_overlap@10']:.3f} | "
        f"{online['corrected_overlap@100']:.3f} |"
    )
    for name, values in results["offline"].items():
        lines.append(
            f"| corrected, fitted offline on touched rows ({name}) | {values['corrected_error']:.4f} | "
            f"{values['corrected_overlap@10']:.3f} | {values['corrected_overlap@100']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
