"""The latent-retrieval task: retrieval-augmented claim verification trained only through the reader's likelihood.

A BEIR folder plus a labels file (one JSON line per query: ``_id``, ``split``, ``label``; SciFact's ``claims.jsonl``)
becomes a classification task whose evidence is latent: for each training claim the retriever's top k abstracts are
scored by a reader, and :class:`~haystack_corrector.sentence_transformers.LatentRetrievalLoss` minimises
−log Σ_z P(z | x) p(y | x, z). Which abstract holds the evidence is never given to training.

Arms (every arm of a seed starts from the same retriever and reader weights and sees the claims in the same order):

- ``frozen``: the zero-shot retriever is never updated (its top k and P(z | x) without gradients); only the reader
  learns. The baseline a retriever must beat to have learned anything from the task.
- ``stale``: the retriever learns; its top k comes from the initial cache, never corrected or re-encoded.
- ``corrector``: the retriever learns; its top k comes from the corrected cache, the corrector trained on the k
  documents' fresh embeddings each step.
- ``refresh:N``: the retriever learns; the corpus is re-encoded every N steps.

Every arm trains through the stock ``SentenceTransformerTrainer`` (``harness.stock_trainer``): the claims are a
dataset with a ``claim`` and a ``label`` column, the retriever and the reader are one AdamW with two learning rates
(no warm-up, no decay, no gradient clipping), and refresh:N re-encodes the corpus from a trainer callback. With
``bf16`` the training steps (and refresh:N's re-encodes) run under bfloat16 autocast with float32 weights, where the
device has bfloat16 units (elsewhere in float32, with a warning); the cache search, the corrector and the
evaluation stay float32. On a 2-core AVX512-BF16 CPU a step at the SciFact settings takes 4.4 s instead of 11-14 s.

Evaluation re-encodes the corpus with each arm's final retriever (the same for every arm), retrieves the top k for
every test claim, and predicts argmax_y Σ_z P(z | x) p(y | x, z): label accuracy and macro-F1, and the retriever's
nDCG@10 on the test qrels, which training never sees. Results are written per (arm, seed) as soon as they exist,
so a killed run resumes with the next arm.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from haystack_corrector._validation import check_float
from haystack_corrector.beir import document_text, load_beir
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.evaluation import macro_f1, retrieval_metrics, run_from_search
from haystack_corrector.experiments.arms import LATENT_KINDS, Arm, parse_arm
from haystack_corrector.experiments.harness import (
    encode,
    run_arms,
    stock_trainer,
    timed_train,
    training_precision,
)
from haystack_corrector.experiments.output_folder import OutputFolder

logger = logging.getLogger(__name__)
progress = logging.getLogger("haystack_corrector.progress")

LABELS = ("SUPPORT", "CONTRADICT", "NOT_ENOUGH_INFO")
BASE_ARMS = ("frozen", "stale", "corrector")  # the report's order; refresh:N follow by N
# Settings that may change between two runs into one output folder (everything else defines the comparison).
RESUMABLE_SETTINGS = frozenset({"arms", "seeds", "output"})


@dataclass
class LatentConfig:
    data: str
    labels: str | None = None  # default: <data>/claims.jsonl
    model: str | None = None
    arms: list[str] = field(default_factory=lambda: ["frozen", "stale", "corrector"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: float = 1.0
    batch_size: int = 16
    top_k: int = 4
    temperature: float = 0.05
    max_seq_length: int = 128
    reader_max_length: int = 256
    lr: float = 2e-5
    reader_lr: float | None = None  # the reader's own learning rate (default: lr); its new head starts from scratch
    reader_warmup_steps: int = 0
    corrector_lr: float = 1e-3
    max_train_claims: int | None = None
    max_test_claims: int | None = None
    encode_batch_size: int = 64
    save_models: bool = False  # keep each arm's trained retriever and reader under <output>/models/
    bf16: bool = False  # train (and re-encode for refresh:N) under bfloat16 autocast where the hardware has it
    output: str = "runs/latent"


def parse_latent_arm(arm: str) -> Arm:
    """A latent arm in the harness's one grammar (``arms.py``): frozen, stale, corrector or refresh:N."""
    return parse_arm(arm, LATENT_KINDS, levers=False)


def load_labels(path: str | os.PathLike[str]) -> dict[str, tuple[str, int]]:
    """``{claim id: (split, label index)}`` from a JSON-lines labels file; unknown labels are a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No labels file at {path} (one JSON line per claim: _id, split, label)")
    out: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            claim, split, label = str(record["_id"]), str(record["split"]), str(record["label"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected a JSON object with _id, split and label ({exc})") from exc
        if label not in LABELS:
            raise ValueError(f"{path}:{number}: label {label!r} is not one of {', '.join(LABELS)}")
        out[claim] = (split, LABELS.index(label))
    return out


@dataclass
class Task:
    corpus_ids: list[str]
    corpus_texts: list[str]
    train: list[tuple[str, str, int]]  # (claim id, text, label)
    test: list[tuple[str, str, int]]
    test_qrels: dict[str, dict[str, int]]


def load_task(config: LatentConfig) -> Task:
    labels = load_labels(config.labels or Path(config.data) / "claims.jsonl")
    corpus, train_queries, _ = load_beir(config.data, "train")
    _, test_queries, test_qrels = load_beir(config.data, "test")
    ids = list(corpus)

    def claims(queries: dict[str, str], split: str, limit: int | None) -> list[tuple[str, str, int]]:
        chosen = [(q, text, labels[q][1]) for q, text in queries.items() if q in labels and labels[q][0] == split]
        if not chosen:
            raise ValueError(f"No {split} claims of {config.data} have a label in the labels file")
        return chosen[:limit] if limit else chosen

    test = claims(test_queries, "test", config.max_test_claims)
    kept = {q for q, _, _ in test}
    return Task(
        ids,
        [document_text(corpus[i]) for i in ids],
        claims(train_queries, "train", config.max_train_claims),
        test,
        {q: judged for q, judged in test_qrels.items() if q in kept},
    )


def retriever_metrics(
    model: Any, store: CorrectedCacheStore, task: Task, config: LatentConfig
) -> tuple[torch.Tensor, dict[str, float], dict[str, dict[str, float]]]:
    """(test query embeddings, mean metrics, per-query metrics) of ``model``'s queries against ``store`` as stored."""
    queries = encode(model, [text for _, text, _ in task.test], config.encode_batch_size, "test claims")
    scores, rows = store.search(queries, min(100, len(store)), corrected=False)
    query_ids = [q for q, _, _ in task.test]
    means, per_query = retrieval_metrics(run_from_search(scores, rows, query_ids, task.corpus_ids), task.test_qrels)
    return queries, means, per_query


def evaluate(model: Any, reader: Any, task: Task, config: LatentConfig, similarity: str) -> dict[str, Any]:
    """Accuracy, macro-F1 and nDCG@10 on the test claims, with a fresh encode of the corpus by ``model``."""
    from haystack_corrector.sentence_transformers.latent_retrieval_loss import predict_labels

    model.eval()
    reader.eval()
    store = CorrectedCacheStore(
        encode(model, task.corpus_texts, config.encode_batch_size, "corpus"), similarity=similarity
    )
    store.texts = task.corpus_texts
    queries, means, per_query = retriever_metrics(model, store, task, config)
    query_ids = [q for q, _, _ in task.test]
    with torch.no_grad():
        predicted = predict_labels(
            reader, [text for _, text, _ in task.test], queries, store, config.top_k, config.temperature
        ).tolist()
    gold = [label for _, _, label in task.test]
    correct = {q: float(p == g) for q, p, g in zip(query_ids, predicted, gold)}
    return {
        "metrics": {
            "accuracy": float(np.mean(list(correct.values()))),
            "macro_f1": macro_f1(predicted, gold, classes=len(LABELS)),
            "ndcg@10": means["ndcg@10"],
        },
        "per_query": {"correct": correct, "ndcg@10": {q: v["ndcg@10"] for q, v in per_query.items()}},
        "predicted": dict(zip(query_ids, (LABELS[p] for p in predicted))),
    }


def parameter_groups(loss: Any, lr: float, reader_lr: float | None) -> list[dict[str, Any]]:
    """AdamW groups: the retriever at ``lr``, the reader at ``reader_lr`` (``lr`` when None). Every trainable
    parameter of ``loss`` is in exactly one group (the corrector is not among them: it trains on its drift loss)."""
    reader = [p for p in loss.reader.parameters() if p.requires_grad]
    in_reader = {id(p) for p in reader}
    retriever = [p for p in loss.parameters() if p.requires_grad and id(p) not in in_reader]
    return [{"params": retriever, "lr": lr}, {"params": reader, "lr": lr if reader_lr is None else reader_lr}]


class CorpusRefresh(TrainerCallback):  # type: ignore[misc]
    """A trainer callback for refresh:N: re-encode the corpus into the store before every N-th step (not the first)."""

    def __init__(self, every: int, model: Any, store: CorrectedCacheStore, task: Task, config: LatentConfig) -> None:
        self.every, self.model, self.store, self.task, self.config = every, model, store, task, config
        self.corpus_encodes = 0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if step and step % self.every == 0:
            device = next(self.model.parameters()).device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.bf16)):
                fresh = encode(self.model, self.task.corpus_texts, self.config.encode_batch_size, "refresh")
            self.store.replace_embeddings(fresh)
            self.corpus_encodes += 1


def examples_trained(steps: int, claims: int, batch_size: int) -> int:
    """Claims the trainer's batches held over ``steps`` steps (each epoch's last batch holds what is left)."""
    full_epochs, rest = divmod(steps, -(-claims // batch_size))
    return full_epochs * claims + rest * batch_size


def run_arm(
    arm: Arm, seed: int, task: Task, config: LatentConfig, folder: OutputFolder, model_path: str
) -> dict[str, Any]:
    """Train one arm with one seed from the initial retriever, reader and cache; evaluate it; return its result."""
    from datasets import Dataset

    from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader, LatentRetrievalLoss
    from haystack_corrector.sentence_transformers.model_loading import load_model

    precision = training_precision(config.bf16)
    torch.manual_seed(seed)
    model = load_model(model_path, config.max_seq_length)
    reader = CrossEncoderReader(model_path, num_labels=len(LABELS), max_length=config.reader_max_length)
    store = CorrectedCacheStore.load(folder.initial_cache, mmap=False)
    store.corrector = Corrector(store.dim, hidden_dim=store.corrector.hidden_dim)  # identity, as after encoding
    steps_per_epoch = -(-len(task.train) // config.batch_size)
    steps = max(1, int(round(config.epochs * steps_per_epoch)))
    kind = arm.negatives
    loss = LatentRetrievalLoss(
        model,
        reader,
        store,
        top_k=config.top_k,
        temperature=config.temperature,
        corrected=kind == "corrector",
        train_corrector=kind == "corrector",
        corrector_lr=config.corrector_lr,
        retriever_warmup_steps=steps if kind == "frozen" else config.reader_warmup_steps,
        # The trainer's bf16 autocasts only the retriever's forward; the reader (the heavier half) needs its own.
        reader_autocast=torch.bfloat16 if precision == "bfloat16" else None,
    )
    loss.train()  # the reader too (transformers loads it in eval mode): dropout on while training
    optimizer = torch.optim.AdamW(parameter_groups(loss, config.lr, config.reader_lr))
    refresh = CorpusRefresh(arm.refresh_every, model, store, task, config) if arm.refresh_every else None
    dataset = Dataset.from_dict({"claim": [text for _, text, _ in task.train], "label": [y for _, _, y in task.train]})
    trainer = stock_trainer(
        model,
        loss,
        dataset,
        folder,
        arm,
        seed,
        bf16=config.bf16,
        verbose=False,
        callbacks=[] if refresh is None else [refresh],
        optimizers=(optimizer, None),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,  # the optimiser's groups hold the rates; the constant schedule keeps them
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # no clipping
        logging_steps=10,
    )
    train_seconds, _ = timed_train(trainer)
    if config.save_models:
        # Written before evaluation: a crash there keeps the trained pair (the folder is the harness's own).
        saved = folder.arm_folder("models", arm.slug, seed)
        model.save(str(saved / "retriever"))
        reader.save(saved / "reader")
    start = time.perf_counter()
    result = evaluate(model, reader, task, config, store.similarity)
    examples = examples_trained(steps, len(task.train), config.batch_size)
    corpus_encodes = 0 if refresh is None else refresh.corpus_encodes
    result.update(
        {
            "arm": arm.name,
            "seed": seed,
            "steps": trainer.state.global_step,
            "precision": precision,
            "corpus_encodes": corpus_encodes,
            # documents embedded with gradients in training, plus every corpus re-encode
            "target_forward_passes": examples * config.top_k + corpus_encodes * len(task.corpus_texts),
            "reader_forward_passes": examples * config.top_k,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - start,
        }
    )
    progress.info("%s seed %d: accuracy %.4f", arm.name, seed, result["metrics"]["accuracy"])
    return result


def run_latent(config: LatentConfig) -> dict[str, Any]:
    """Run every (arm, seed) not yet in ``<output>/arms`` and write ``results.json`` and ``results.md``."""
    from haystack_corrector.experiments.report import latent_markdown
    from haystack_corrector.sentence_transformers import encode_corpus
    from haystack_corrector.sentence_transformers.model_loading import load_model, resolve_model_path

    arms = [parse_latent_arm(arm) for arm in config.arms]
    for name in ("lr", "reader_lr", "corrector_lr"):
        check_float(getattr(config, name), name, minimum=0.0, strict=True, optional=name == "reader_lr")
    folder = OutputFolder(config.output)
    settings = {**json.loads(json.dumps(asdict(config))), "task": "latent"}
    folder.check_resumable(settings, asdict(LatentConfig(data=config.data)), RESUMABLE_SETTINGS)
    folder.write_json("config.json", settings)
    task = load_task(config)
    model_path = resolve_model_path(config.model)
    if not (folder.initial_cache / "store_config.json").is_file() or not folder.zero_shot_file.is_file():
        model = load_model(model_path, config.max_seq_length)
        store = encode_corpus(model, task.corpus_texts, ids=task.corpus_ids, show_progress_bar=False)
        store.save(folder.initial_cache, overwrite=True)
        _, means, _ = retriever_metrics(model, store, task, config)
        folder.write_json(folder.zero_shot_file, {"ndcg@10": means["ndcg@10"]})
    zero_shot = json.loads(folder.zero_shot_file.read_text())
    run_arms(folder, arms, config.seeds, lambda arm, seed: run_arm(arm, seed, task, config, folder, model_path))
    summary = {"zero_shot": zero_shot, "arms": finished_arms(folder.path / "arms")}
    folder.write_json("results.json", summary)
    (folder.path / "results.md").write_text(latent_markdown(summary))
    return summary


def finished_arms(folder: Path) -> list[dict[str, Any]]:
    """Every arm JSON in the ``arms`` folder (runs of earlier calls included): frozen, stale, corrector, refresh:N by
    N, then seed."""

    def order(result: dict[str, Any]) -> tuple[int, int, int]:
        arm = parse_latent_arm(result["arm"])
        kind = arm.negatives
        return BASE_ARMS.index(kind) if kind in BASE_ARMS else len(BASE_ARMS), arm.refresh_every or 0, result["seed"]

    return sorted((json.loads(path.read_text()) for path in folder.glob("*.json")), key=order)
