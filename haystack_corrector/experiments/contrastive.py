"""The contrastive task: train the same bi-encoder with each arm's hard negatives, evaluate, and keep every figure.

It runs over the shared harness (``harness.py``: output folder, run loop, stock trainer).

Every arm of a seed starts from the same model weights, sees the same training rows in the same order (same
trainer seed, same dataset), uses the same batch size, negatives per query and step count; only the source of the
hard negatives differs. Results are written per (arm, seed) as soon as they exist, so a killed run resumes where it
stopped and finished arms are never redone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haystack_corrector.beir import document_text, load_beir
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.evaluation import fidelity_of, retrieval_metrics, run_from_search
from haystack_corrector.experiments.arms import Arm
from haystack_corrector.experiments.config import ExperimentConfig, check_resumable
from haystack_corrector.experiments.corpus_subset import judged_documents, nested_subset
from haystack_corrector.experiments.harness import (
    encode,
    encodes,
    machine,
    run_arms,
    stock_trainer,
    timed_train,
    training_precision,
    warmup,
)
from haystack_corrector.experiments.output_folder import OutputFolder

logger = logging.getLogger(__name__)
progress = logging.getLogger("haystack_corrector.progress")  # the console's lines (experiments/console.py)


@dataclass
class Prepared:
    """What every arm shares: data, the initial cache and the zero-shot evaluation."""

    corpus: dict[str, dict[str, str]]
    corpus_ids: list[str]
    corpus_texts: list[str]
    train_queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    eval_queries: dict[str, str]
    eval_qrels: dict[str, dict[str, int]]
    cache_path: Path
    zero_shot: dict[str, Any]
    model_path: str
    folder: OutputFolder


def evaluate_rankings(
    doc_embeddings: torch.Tensor, query_embeddings: torch.Tensor, prepared: Prepared, similarity: str = "cosine"
) -> tuple[dict[str, float], dict[str, dict[str, float]], torch.Tensor]:
    store = CorrectedCacheStore(doc_embeddings, ids=prepared.corpus_ids, similarity=similarity)
    top_k = min(100, len(store))
    scores, rows = store.search(query_embeddings, top_k, corrected=False)
    run = run_from_search(scores, rows, list(prepared.eval_queries), prepared.corpus_ids)
    means, per_query = retrieval_metrics(run, prepared.eval_qrels)
    return means, per_query, rows


def subset_queries(
    queries: dict[str, str], qrels: dict[str, dict[str, int]], count: int, seed: int = 0
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """``count`` queries drawn at random (fixed seed, independent of the arm's seed), in their original order."""
    ids = list(queries)
    keep = set(np.random.default_rng(seed).choice(len(ids), size=count, replace=False).tolist())
    chosen = [q for i, q in enumerate(ids) if i in keep]
    return {q: queries[q] for q in chosen}, {q: qrels[q] for q in chosen if q in qrels}


def load_data(
    config: ExperimentConfig,
) -> tuple[
    dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]], dict[str, str], dict[str, dict[str, int]]
]:
    """``(corpus, train queries, train qrels, eval queries, eval qrels)`` as the config selects them: the seeded
    train-query subset (``max_train_queries``) and the nested corpus subset (``corpus_size``, which keeps every
    document judged for those train queries and the evaluation queries)."""
    corpus, train_queries, train_qrels = load_beir(config.data, config.train_split)
    if config.max_train_queries is not None and config.max_train_queries < len(train_queries):
        train_queries, train_qrels = subset_queries(train_queries, train_qrels, config.max_train_queries)
    _, eval_queries, eval_qrels = load_beir(config.data, config.eval_split)
    if config.corpus_size is not None and config.corpus_size < len(corpus):
        kept = nested_subset(list(corpus), judged_documents(train_qrels, eval_qrels), config.corpus_size)
        corpus = {doc: corpus[doc] for doc in kept}
    return corpus, train_queries, train_qrels, eval_queries, eval_qrels


def prepare(config: ExperimentConfig) -> Prepared:
    """Load the data; build (or reuse) the one initial cache; evaluate the initial model (zero-shot)."""
    folder = OutputFolder(config.output)
    corpus, train_queries, train_qrels, eval_queries, eval_qrels = load_data(config)
    corpus_ids = list(corpus)
    corpus_texts = [document_text(corpus[i]) for i in corpus_ids]
    from haystack_corrector.sentence_transformers.model_loading import load_model, resolve_model_path

    model_path = resolve_model_path(config.model)
    cache_path, zero_shot_path = folder.initial_cache, folder.zero_shot_file
    prepared = Prepared(
        corpus,
        corpus_ids,
        corpus_texts,
        train_queries,
        train_qrels,
        eval_queries,
        eval_qrels,
        cache_path,
        {},
        model_path,
        folder,
    )
    if cache_path.is_dir() and zero_shot_path.is_file():
        logger.info("Reusing the initial cache and zero-shot results in %s", folder.path)
        prepared.zero_shot = json.loads(zero_shot_path.read_text())
        return prepared
    from haystack_corrector.sentence_transformers import encode_corpus

    model = load_model(model_path, config.max_seq_length)
    start = time.perf_counter()
    with encodes(model, config.bf16):
        store = encode_corpus(
            model, corpus_texts, ids=corpus_ids, batch_size=config.encode_batch_size, side_layers=config.side_layers
        )
    encode_seconds = time.perf_counter() - start
    store.save(cache_path)
    docs, similarity = store.stale_embeddings(), store.similarity
    with encodes(model, config.bf16):
        queries = encode(model, [eval_queries[q] for q in eval_queries], config.encode_batch_size, "evaluation queries")
    means, per_query, _ = evaluate_rankings(docs, queries, prepared, similarity)
    prepared.zero_shot = {
        "metrics": means,
        "per_query": per_query,
        "corpus_encode_seconds": encode_seconds,
        "corpus_size": len(corpus_ids),
        "precision": training_precision(config.bf16),
    }
    folder.write_json(zero_shot_path, prepared.zero_shot)
    progress.info("zero-shot nDCG@10 %.4f (initial cache: %.0f s)", means["ndcg@10"], encode_seconds)
    return prepared


@dataclass
class TrainedArm:
    model: Any
    store: CorrectedCacheStore
    loss: Any
    trainer: Any
    train_seconds: float
    train_cpu_seconds: float  # process CPU time (all threads): unaffected by a pause, little by a busy machine


def negative_source(arm: Arm, config: ExperimentConfig) -> Any:
    """The arm's negative source, with the run's window and strategy when it samples among the cache's scores."""
    from haystack_corrector.sentence_transformers.negatives import SampledNegatives, parse_negatives

    source = parse_negatives(arm.negatives_name)
    if isinstance(source, SampledNegatives):
        sampling = {"sampling_strategy": config.sampling_strategy, "range_max": config.range_max}
        return parse_negatives(arm.negatives_name, **sampling)
    return source


def train_arm(
    config: ExperimentConfig,
    arm: Arm,
    seed: int,
    prepared: Prepared,
    watch_loss: Callable[[Any], None] | None = None,
) -> TrainedArm:
    """Train one arm from the initial model and cache; nothing is evaluated or written.

    ``watch_loss`` is called with the loss before training (e.g. to record which rows trained the corrector).
    """
    from haystack_corrector.sentence_transformers import (
        CorrectedMultipleNegativesRankingLoss,
        CorrectorCallback,
        build_training_dataset,
    )

    torch.manual_seed(seed)
    from haystack_corrector.sentence_transformers.model_loading import load_model

    model = load_model(prepared.model_path, config.max_seq_length)
    store = CorrectedCacheStore.load(prepared.cache_path, mmap=False)
    if store.side_dim and not arm.side_features:  # only the +side arms read the side features of the cache
        store = store.without_side_features()
    store.corrector = Corrector(store.dim, hidden_dim=config.hidden_dim, side_dim=store.side_dim)
    if store.side_dim and not arm.raw_side_features:
        store.standardize_side_features()
    dataset = build_training_dataset(prepared.train_queries, prepared.corpus, prepared.train_qrels, store)
    negatives = negative_source(arm, config)
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=config.num_negatives,
        negatives=negatives,
        train_dataset=dataset,
        range_min=config.range_min,
        corrector_lr=config.corrector_lr,
        # A source that draws random numbers mines with them at construction (static): seed it now; the rest follow
        # the trainer's seed through CorrectorCallback.
        seed=seed if negatives.draws_random else None,
        **({"encode_batch_size": config.encode_batch_size} if negatives.encodes_texts else {}),
        bf16_encodes=config.bf16,
        **{"listwise_weight": config.listwise_weight, **arm.loss_kwargs()},  # an arm's listwise:W overrides
    )
    if watch_loss is not None:
        watch_loss(loss)
    trainer = stock_trainer(
        model,
        loss,
        dataset,
        prepared.folder,
        arm,
        seed,
        bf16=config.bf16,
        verbose=config.verbose,
        callbacks=[CorrectorCallback(loss)],
        num_train_epochs=config.epochs,
        max_steps=config.steps or -1,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        **warmup(config.warmup_ratio),
        batch_sampler="no_duplicates",
        logging_steps=config.logging_steps,
    )
    logger.info("Training arm %s, seed %d", arm.name, seed)
    seconds, cpu_seconds = timed_train(trainer)
    return TrainedArm(model, store, loss, trainer, seconds, cpu_seconds)


def run_arm(config: ExperimentConfig, arm: Arm, seed: int, prepared: Prepared) -> dict[str, Any]:
    """Train one arm with one seed, evaluate it, and return its result (:func:`run_arms` writes it)."""
    trained = train_arm(config, arm, seed, prepared)
    model, store, loss = trained.model, trained.store, trained.loss
    start, cpu_start = time.perf_counter(), time.process_time()
    progress.info("%s seed %d: trained in %.0f s; evaluating", arm.name, seed, trained.train_seconds)
    with encodes(model, config.bf16):
        fresh_docs = encode(
            model, prepared.corpus_texts, config.encode_batch_size, f"{arm.name}: evaluation corpus", config.verbose
        )
        queries = encode(
            model,
            [prepared.eval_queries[q] for q in prepared.eval_queries],
            config.encode_batch_size,
            f"{arm.name}: evaluation queries",
            config.verbose,
        )
    means, per_query, fresh_rows = evaluate_rankings(fresh_docs, queries, prepared, store.similarity)
    eval_seconds, eval_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if config.keep_embeddings:
        prepared.folder.keep_embeddings(arm.slug, seed, fresh_docs, queries, store.corrector)
    history = [
        {"step": e["step"], **{key.split("/")[1]: e[key] for key in e if key.startswith("corrector/")}}
        for e in trained.trainer.state.log_history
        if "corrector/staleness" in e
    ]
    result = {
        "arm": arm.name,
        "seed": seed,
        "metrics": means,
        "per_query": per_query,
        "steps": trained.trainer.state.global_step,
        "precision": training_precision(config.bf16),
        "train_seconds": trained.train_seconds,
        "eval_seconds": eval_seconds,
        # CPU seconds of all this process's threads: wall time is spoiled by a paused or shared machine, these less so.
        "train_cpu_seconds": trained.train_cpu_seconds,
        "eval_cpu_seconds": eval_cpu_seconds,
        **loss.costs.as_dict(),  # corpus_encodes, target_forward_passes
        "drift_history": history,
        # Fidelity at the end of training, for free: the arm's cache (stale and corrected) vs the fresh encode.
        "final_drift": fidelity_of(store, fresh_docs, queries, fresh_rows),
        "sampler_stats": dict(getattr(loss.source, "stats", {})),
        "skipped_anchors": loss.stats["skipped_anchors"],
    }
    progress.info(
        "%s seed %d: nDCG@10 %.4f, corrected overlap@10 %.3f (train %.0f s, eval %.0f s)",
        arm.name,
        seed,
        means["ndcg@10"],
        result["final_drift"]["corrected_overlap@10"],
        trained.train_seconds,
        eval_seconds,
    )
    return result


def embeddings_path(config: ExperimentConfig, arm: Arm, seed: int) -> Path:
    return OutputFolder(config.output).arm_folder("embeddings", arm.slug, seed)


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run every (arm, seed) not done yet; write results.json, results.md and the plots; return the results.

    The results cover the named arms with every seed finished in the output folder, not only ``config.seeds``:
    a comparison may run more seeds for some arms (e.g. ``--seeds 1`` for a subset of arms) and report them together.
    """
    from haystack_corrector.experiments import report
    from haystack_corrector.experiments.console import run_log

    arms = config.validate()
    folder = OutputFolder(config.output)  # claimed before anything is read from or written to it
    check_resumable(config, folder)
    total_start = time.perf_counter()
    output = folder.path
    with run_log(output):
        prepared = prepare(config)
        folder.write_json("config.json", asdict(config) | {"arms": list(config.arms), "seeds": list(config.seeds)})
        run_arms(folder, arms, config.seeds, lambda arm, seed: run_arm(config, arm, seed, prepared))
    runs: dict[str, dict[str, Any]] = {arm.name: {} for arm in arms}
    for arm in arms:  # every finished seed, those of earlier runs included
        for seed in folder.finished_seeds(arm.slug):
            runs[arm.name][str(seed)] = json.loads(folder.arm_file(arm.slug, seed).read_text())
    results = {
        "config": asdict(config) | {"arms": list(config.arms), "seeds": list(config.seeds)},
        "machine": machine(),
        "zero_shot": prepared.zero_shot,
        "arms": runs,
        "session_seconds": time.perf_counter() - total_start,
    }
    folder.write_json("results.json", results)
    (output / "results.md").write_text(report.markdown(results))
    report.plots(results, output)
    return results
