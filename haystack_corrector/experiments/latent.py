"""The latent-retrieval harness: retrieval-augmented claim verification trained only through the reader's likelihood.

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

With ``bf16`` the training steps (and refresh:N's re-encodes) run under bfloat16 autocast with float32 weights,
where the device has bfloat16 units (elsewhere in float32, with a warning); the cache search, the corrector and the
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haystack_corrector._validation import check_float
from haystack_corrector.beir import document_text, load_beir
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.evaluation import retrieval_metrics, run_from_search
from haystack_corrector.experiments.output_folder import claim_output_folder

logger = logging.getLogger(__name__)
progress = logging.getLogger("haystack_corrector.progress")

LABELS = ("SUPPORT", "CONTRADICT", "NOT_ENOUGH_INFO")
BASE_ARMS = ("frozen", "stale", "corrector")


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


def parse_latent_arm(arm: str) -> tuple[str, int | None]:
    """``"refresh:N"`` -> ("refresh", N); the base arms -> (arm, None); anything else is a ValueError."""
    if arm in BASE_ARMS:
        return arm, None
    if arm.startswith("refresh:"):
        every = arm.split(":", 1)[1]
        if every.isdigit() and int(every) > 0:
            return "refresh", int(every)
    raise ValueError(f"Unknown arm {arm!r}: use frozen, stale, corrector or refresh:N (N > 0 steps)")


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


def macro_f1(predicted: Sequence[int], gold: Sequence[int], classes: int = len(LABELS)) -> float:
    """Mean over classes of F1 (a class never predicted nor present counts 0, as scikit-learn's default)."""
    scores = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


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


def _encode(model: Any, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    was_training = model.training
    embeddings = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    model.train(was_training)
    return embeddings.float().cpu()


def retriever_metrics(
    model: Any, store: CorrectedCacheStore, task: Task, config: LatentConfig
) -> tuple[torch.Tensor, dict[str, float], dict[str, dict[str, float]]]:
    """(test query embeddings, mean metrics, per-query metrics) of ``model``'s queries against ``store`` as stored."""
    queries = _encode(model, [text for _, text, _ in task.test], config.encode_batch_size)
    scores, rows = store.search(queries, min(100, len(store)), corrected=False)
    query_ids = [q for q, _, _ in task.test]
    means, per_query = retrieval_metrics(run_from_search(scores, rows, query_ids, task.corpus_ids), task.test_qrels)
    return queries, means, per_query


def evaluate(model: Any, reader: Any, task: Task, config: LatentConfig, similarity: str) -> dict[str, Any]:
    """Accuracy, macro-F1 and nDCG@10 on the test claims, with a fresh encode of the corpus by ``model``."""
    from haystack_corrector.sentence_transformers.latent_retrieval_loss import predict_labels

    model.eval()
    reader.eval()
    store = CorrectedCacheStore(_encode(model, task.corpus_texts, config.encode_batch_size), similarity=similarity)
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
            "macro_f1": macro_f1(predicted, gold),
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


def run_arm(arm: str, seed: int, task: Task, config: LatentConfig, initial: Path, model_path: str) -> dict[str, Any]:
    from haystack_corrector.experiments.harness import training_precision
    from haystack_corrector.sentence_transformers.features import tokenize
    from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader, LatentRetrievalLoss
    from haystack_corrector.sentence_transformers.model_loading import load_model

    kind, every = parse_latent_arm(arm)
    precision = training_precision(config.bf16)
    torch.manual_seed(seed)
    model = load_model(model_path, config.max_seq_length)
    reader = CrossEncoderReader(model_path, num_labels=len(LABELS), max_length=config.reader_max_length)
    store = CorrectedCacheStore.load(initial, mmap=False)
    store.corrector = Corrector(store.dim, hidden_dim=store.corrector.hidden_dim)  # identity, as after encoding
    steps_per_epoch = -(-len(task.train) // config.batch_size)
    steps = max(1, int(round(config.epochs * steps_per_epoch)))
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
    )
    optimizer = torch.optim.AdamW(parameter_groups(loss, config.lr, config.reader_lr))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    corpus_encodes = 0
    start = time.perf_counter()
    loss.train()
    device = next(model.parameters()).device

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    for step in range(steps):
        if kind == "refresh" and every and step and step % every == 0:
            with autocast():
                store.replace_embeddings(_encode(model, task.corpus_texts, config.encode_batch_size))
            corpus_encodes += 1
        if len(order) < config.batch_size:
            order += rng.permutation(len(task.train)).tolist()
        batch, order = order[: config.batch_size], order[config.batch_size :]
        texts = [task.train[i][1] for i in batch]
        labels = torch.tensor([task.train[i][2] for i in batch])
        features = tokenize(model, texts, device)
        with autocast():
            value = loss([features], labels)
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % 10 == 0 or step + 1 == steps:
            progress.info("%s seed %d: step %d/%d, loss %.4f", arm, seed, step + 1, steps, float(value.detach()))
    train_seconds = time.perf_counter() - start
    if config.save_models:
        # Written before evaluation: a crash there keeps the trained pair (the folder is the harness's own).
        folder = Path(config.output) / "models" / f"{arm.replace(':', '-')}__seed{seed}"
        model.save(str(folder / "retriever"))
        reader.save(folder / "reader")
    start = time.perf_counter()
    result = evaluate(model, reader, task, config, store.similarity)
    examples = steps * config.batch_size
    result.update(
        {
            "arm": arm,
            "seed": seed,
            "steps": steps,
            "precision": precision,
            "corpus_encodes": corpus_encodes,
            # documents embedded with gradients in training, plus every corpus re-encode
            "target_forward_passes": examples * config.top_k + corpus_encodes * len(task.corpus_texts),
            "reader_forward_passes": examples * config.top_k,
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - start,
        }
    )
    return result


def run_latent(config: LatentConfig) -> dict[str, Any]:
    """Run every (arm, seed) not yet in ``<output>/arms`` and write ``results.json`` and ``results.md``."""
    from haystack_corrector.sentence_transformers import encode_corpus
    from haystack_corrector.sentence_transformers.model_loading import load_model, resolve_model_path

    for arm in config.arms:
        parse_latent_arm(arm)
    for name in ("lr", "reader_lr", "corrector_lr"):
        check_float(getattr(config, name), name, minimum=0.0, strict=True, optional=name == "reader_lr")
    output = claim_output_folder(config.output)
    settings = {**asdict(config), "task": "latent"}
    previous_file = output / "config.json"
    if previous_file.is_file():  # a resumed run must not mix arms trained under other settings
        previous = json.loads(previous_file.read_text())
        defaults = asdict(LatentConfig(data=config.data))
        differing = sorted(
            key
            for key in settings
            if key not in ("arms", "seeds", "output") and previous.get(key, defaults.get(key)) != settings[key]
        )
        if differing:
            raise ValueError(
                f"{output} holds results run with other settings ({', '.join(differing)}); choose another --output"
            )
    (output / "arms").mkdir(exist_ok=True)
    previous_file.write_text(json.dumps(settings, indent=2))
    task = load_task(config)
    model_path = resolve_model_path(config.model)
    initial = output / "initial-cache"
    zero_shot_file = output / "zero_shot.json"
    if not (initial / "store_config.json").is_file() or not zero_shot_file.is_file():
        model = load_model(model_path, config.max_seq_length)
        store = encode_corpus(model, task.corpus_texts, ids=task.corpus_ids, show_progress_bar=False)
        store.save(initial, overwrite=True)
        _, means, _ = retriever_metrics(model, store, task, config)
        zero_shot_file.write_text(json.dumps({"ndcg@10": means["ndcg@10"]}, indent=2))
    zero_shot = json.loads(zero_shot_file.read_text())
    for seed in config.seeds:
        for arm in config.arms:
            path = output / "arms" / f"{arm.replace(':', '-')}__seed{seed}.json"
            if path.is_file():
                continue
            progress.info("arm %s, seed %d", arm, seed)
            result = run_arm(arm, seed, task, config, initial, model_path)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2))
            os.replace(tmp, path)
    summary = {"zero_shot": zero_shot, "arms": finished_arms(output / "arms")}
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    (output / "results.md").write_text(latent_report(summary))
    return summary


def finished_arms(folder: Path) -> list[dict[str, Any]]:
    """Every arm JSON in ``folder`` (runs of earlier calls included), frozen, stale, corrector, refresh:N by N, seed."""

    def order(result: dict[str, Any]) -> tuple[int, int, int]:
        kind, every = parse_latent_arm(result["arm"])
        return BASE_ARMS.index(kind) if kind in BASE_ARMS else len(BASE_ARMS), every or 0, result["seed"]

    return sorted((json.loads(path.read_text()) for path in folder.glob("*.json")), key=order)


def latent_report(summary: dict[str, Any], reference: str | None = None) -> str:
    """Markdown: one row per arm (means over its seeds), then paired differences between arms.

    Every arm is compared with ``reference`` (default ``frozen``: the reader trained on a zero-shot retriever), and
    each trained arm with every trained arm listed before it (corrector - stale, refresh - stale, ...). A pair is
    computed on per-claim values averaged over the seeds each arm has.
    """
    from haystack_corrector.experiments.report import paired_bootstrap

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
