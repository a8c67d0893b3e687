"""Pool mode on a real vector database (Qdrant, local mode): retrieval quality of an index upgrade, and latency.

**Quality** (``--upgrade``, the setting of ``benchmarks/index_upgrade.py``, whose cached encodes it reads): the
stale index holds the old encoder's embeddings of the corpus in Qdrant; test queries come from the new encoder; a
corrector (MSE + 0.1 x listwise, hidden 768) is fitted on a random 10% of the documents re-embedded with the new
encoder. Compared, all through Qdrant: (a) the store's own retriever on the stale index, (b) the pool-mode
``CorrectedEmbeddingRetriever`` over it at each pool size, (b*) the index upgraded in place by
``DocumentStoreCorrector`` and searched by the store's own retriever, (c) a fully re-embedded index. nDCG@10 with
paired 95% bootstrap intervals over the test queries, in two scorings: BEIR's (document ids as judged) and "copies
as one" (a document is relevant when any document with its text is, and each text counts once per ranking). The
second matters on CoSQA, whose 20,604 documents hold 6,267 distinct texts: copies have identical embeddings, so the
order a retriever gives tied copies decides which of them reaches the top 10, and moves BEIR's nDCG@10 by itself.

**Latency**, in the same run: milliseconds per query of the store's own ``QdrantEmbeddingRetriever`` (the baseline),
the pool mode at each pool size and the snapshot mode, with each one's ratio to the baseline's median. Without
``--upgrade`` the index is ``--cache`` (a saved CorrectedCacheStore, e.g. a harness run's initial cache) or
``--rows`` synthetic unit vectors, queries are stored rows plus noise, and the corrector has random weights (its
cost per row does not depend on what it learned).

    python benchmarks/index_upgrade.py --data ../shared/data/cosqa --output runs/index-upgrade/cosqa --variants mse+listwise0.1-h768
    python benchmarks/haystack_pool_latency.py --upgrade runs/index-upgrade/cosqa --data ../shared/data/cosqa
    python benchmarks/haystack_pool_latency.py --rows 20000 --queries 200     # latency only, synthetic
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("haystack_pool_latency")


def timed_run(retriever, queries: list[list[float]], top_k: int) -> tuple[list[list[str]], list[float], list[float]]:
    """Ids and scores of each query's results, and milliseconds per query (after one warm-up query)."""
    retriever.run(query_embedding=queries[0], top_k=top_k)
    ids, scores, times = [], [], []
    for query in queries:
        start = time.perf_counter()
        documents = retriever.run(query_embedding=query, top_k=top_k)["documents"]
        times.append((time.perf_counter() - start) * 1000)
        ids.append([d.id for d in documents])
        scores.append([d.score for d in documents])
    return ids, scores, times


def write_store(path: Path, ids: list[str], embeddings: torch.Tensor):
    from haystack import Document
    from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

    store = QdrantDocumentStore(
        path=str(path), embedding_dim=embeddings.shape[1], similarity="cosine", progress_bar=False
    )
    for first in range(0, len(ids), 1000):
        store.write_documents(
            [
                Document(id=ids[i], content=f"document {ids[i]}", embedding=embeddings[i].tolist())
                for i in range(first, min(len(ids), first + 1000))
            ]
        )
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upgrade", default=None, help="output folder of benchmarks/index_upgrade.py (its encodes)")
    parser.add_argument("--data", default="../shared/data/cosqa", help="BEIR folder (with --upgrade)")
    parser.add_argument("--cache", default=None, help="latency only: a saved CorrectedCacheStore folder")
    parser.add_argument("--rows", type=int, default=20_000, help="latency only: synthetic rows")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200, help="latency only: queries (with --upgrade: the test set)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--fraction", type=float, default=0.10, help="documents re-embedded to fit the corrector")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "haystack", "haystack_integrations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from haystack_integrations.components.retrievers.corrector import CorrectedEmbeddingRetriever
    from haystack_integrations.components.retrievers.qdrant import QdrantEmbeddingRetriever
    from haystack_integrations.components.writers.corrector import DocumentStoreCorrector

    from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer

    folder = Path(tempfile.mkdtemp(prefix="pool-latency-"))
    generator = torch.Generator().manual_seed(args.seed)
    qrels = None
    if args.upgrade:
        from haystack_corrector.beir import document_text, load_beir
        from haystack_corrector.evaluation import retrieval_metrics

        upgrade = Path(args.upgrade)
        corpus, train_queries, _ = load_beir(args.data, "train")
        _, test_queries, qrels = load_beir(args.data, "test")
        ids = list(corpus)
        stale = torch.from_numpy(np.load(upgrade / "old_corpus.npy")).float()
        fresh = torch.from_numpy(np.load(upgrade / "new_corpus.npy")).float()
        query_matrix = torch.from_numpy(np.load(upgrade / "new_test_queries.npy")).float()
        train_q = torch.from_numpy(np.load(upgrade / "new_train_queries.npy")).float()
        query_ids = list(test_queries)
        # The corrector of docs/benchmarks.md's index upgrade: MSE + 0.1 x listwise, hidden 768, random 10% re-embedded.
        fit_rows = torch.randperm(len(ids), generator=generator)[: int(args.fraction * len(ids))]
        torch.manual_seed(args.seed)
        fit_store = CorrectedCacheStore(stale, ids=ids, corrector=Corrector(stale.shape[1], hidden_dim=768))
        start = time.perf_counter()
        CorrectorTrainer(fit_store, lr=1e-3, listwise_weight=0.1).fit(
            fit_rows, fresh[fit_rows], epochs=100, batch_size=256, seed=args.seed, query_embeddings=train_q
        )
        logger.info(
            "fitted the corrector on %d re-embedded documents in %.0f s", len(fit_rows), time.perf_counter() - start
        )
        corrector = fit_store.corrector
        source = f"{args.upgrade} ({len(ids):,} documents, old encoder), {len(query_ids)} test queries (new encoder)"
    else:
        if args.cache:
            stale = CorrectedCacheStore.load(args.cache).stale_embeddings().float()
            source = f"{args.cache} ({len(stale):,} rows)"
        else:
            stale = torch.nn.functional.normalize(torch.randn(args.rows, args.dim, generator=generator), dim=1)
            source = f"{args.rows:,} synthetic unit vectors"
        ids = [f"d{i}" for i in range(len(stale))]
        picks = torch.randint(0, len(stale), (args.queries,), generator=generator)
        noise = torch.randn(args.queries, stale.shape[1], generator=generator) * (0.5 / stale.shape[1] ** 0.5)
        query_matrix = torch.nn.functional.normalize(stale[picks] + noise, dim=1)
        query_ids = [f"q{i}" for i in range(args.queries)]
        corrector = Corrector(stale.shape[1], hidden_dim=768)
        with torch.no_grad():
            for parameter in corrector.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    corrector.save(folder / "corrector")
    queries = query_matrix.tolist()

    start = time.perf_counter()
    stale_store = write_store(folder / "stale", ids, stale)
    write_seconds = time.perf_counter() - start
    logger.info("wrote %d documents into Qdrant (local mode) in %.0f s", len(ids), write_seconds)

    runs = {"(a) stale index, QdrantEmbeddingRetriever": QdrantEmbeddingRetriever(stale_store)}
    for pool_size in args.pool_sizes:
        runs[f"(b) pool mode over (a), pool_size {pool_size}"] = CorrectedEmbeddingRetriever(
            retriever=QdrantEmbeddingRetriever(stale_store),
            corrector_path=str(folder / "corrector"),
            pool_size=pool_size,
        )
    runs["snapshot mode over (a) (whole store in memory)"] = CorrectedEmbeddingRetriever(
        stale_store, corrector_path=str(folder / "corrector")
    )
    results = {}
    for name, retriever in runs.items():
        if hasattr(retriever, "warm_up"):
            retriever.warm_up()
        results[name] = timed_run(retriever, queries, args.top_k)
        logger.info("%s: median %.2f ms/query", name, statistics.median(results[name][2]))
    if args.upgrade:
        upgraded = write_store(folder / "upgraded", ids, stale)
        start = time.perf_counter()
        DocumentStoreCorrector(upgraded, str(folder / "corrector"), page_size=2000).run()
        logger.info("upgraded the index in place in %.0f s", time.perf_counter() - start)
        results["(b*) upgraded in place by DocumentStoreCorrector, QdrantEmbeddingRetriever"] = timed_run(
            QdrantEmbeddingRetriever(upgraded), queries, args.top_k
        )
        fresh_store = write_store(folder / "fresh", ids, fresh)
        results["(c) re-embedded index, QdrantEmbeddingRetriever"] = timed_run(
            QdrantEmbeddingRetriever(fresh_store), queries, args.top_k
        )

    print(
        f"\nStore: Qdrant local mode (on disk), cosine; {source}; {len(ids):,} documents written in {write_seconds:.0f} s"
    )
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    )
    base = statistics.median(results["(a) stale index, QdrantEmbeddingRetriever"][2])
    if qrels is not None:
        # "Copies as one": a text is relevant when any of its documents is judged so, and counts once per ranking.
        text_of = {i: document_text(corpus[i]) for i in ids}
        text_id: dict[str, str] = {}
        for i in ids:
            text_id.setdefault(text_of[i], f"t{len(text_id)}")
        text_qrels: dict[str, dict[str, int]] = {}
        for q, judged in qrels.items():
            for d, grade in judged.items():
                if d in text_of:
                    key = text_id[text_of[d]]
                    text_qrels.setdefault(q, {})[key] = max(grade, text_qrels.get(q, {}).get(key, 0))
        tables: dict[str, dict[str, tuple[dict[str, float], float]]] = {
            "BEIR (document ids as judged)": {},
            "copies as one": {},
        }
        for name, (found, scores, _) in results.items():
            run = {q: {d: float(x) for d, x in zip(docs, s)} for q, docs, s in zip(query_ids, found, scores)}
            text_run: dict[str, dict[str, float]] = {}
            for q, docs, s in zip(query_ids, found, scores):
                for d, x in zip(docs, s):
                    text_run.setdefault(q, {}).setdefault(text_id[text_of[d]], float(x))  # each text at its best rank
            for scoring, (this_run, this_qrels) in zip(tables, ((run, qrels), (text_run, text_qrels))):
                means, by_query = retrieval_metrics(this_run, this_qrels)
                tables[scoring][name] = ({q: v["ndcg@10"] for q, v in by_query.items()}, means["ndcg@10"])
        for scoring, table in tables.items():
            print_quality(scoring, table, results, base, args.top_k)
    else:
        print(f"\nQueries: {len(queries)}, top_k {args.top_k}\n")
        print("| retriever | median ms/query | p95 ms/query | median / baseline |")
        print("|---|---|---|---|")
        for name, (_, _, times) in results.items():
            median = statistics.median(times)
            print(f"| {name} | {median:.2f} | {float(np.percentile(times, 95)):.2f} | {median / base:.2f}x |")


def print_quality(scoring: str, table: dict, results: dict, base: float, top_k: int) -> None:
    from haystack_corrector.experiments.report import paired_bootstrap

    a_name, c_name = "(a) stale index, QdrantEmbeddingRetriever", "(c) re-embedded index, QdrantEmbeddingRetriever"
    a_pq, a_ndcg = table[a_name]
    c_pq, c_ndcg = table[c_name]

    def interval(x: dict[str, float], y: dict[str, float]) -> str:
        mean, low, high = paired_bootstrap(np.asarray([x[q] - y[q] for q in y]))
        return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"

    print(f"\nScoring: {scoring}; {len(a_pq)} judged test queries; top_k {top_k}\n")
    print(
        "| index and retriever | nDCG@10 | − (a), 95% CI | (c) − this, 95% CI | share of the (c) − (a) gap | "
        "median ms/query | p95 ms/query | median / (a) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (pq, ndcg) in table.items():
        times = results[name][2]
        share = (ndcg - a_ndcg) / (c_ndcg - a_ndcg) if c_ndcg != a_ndcg else float("nan")
        print(
            f"| {name} | {ndcg:.4f} | {interval(pq, a_pq) if name != a_name else '–'} | "
            f"{interval(c_pq, pq) if name != c_name else '–'} | {share:.0%} | {statistics.median(times):.2f} | "
            f"{float(np.percentile(times, 95)):.2f} | {statistics.median(times) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
