"""Per-query latency of the pool-mode corrected retriever against the store's own retriever, on Qdrant (local mode).

Setting: a Qdrant collection (local mode, on disk, cosine) holding N documents with 384-d embeddings — the CoSQA
initial cache of a `haystack-corrector experiment` run (zero-shot all-MiniLM-L6-v2 embeddings of its 20,604
documents) or N synthetic unit vectors. Queries are stored embeddings plus noise, re-normalised. The corrector is a
residual MLP (hidden 768) with perturbed weights: its cost per row does not depend on what it learned.

For each query, measured in this run: `QdrantEmbeddingRetriever(top_k)` (the baseline), then
`CorrectedEmbeddingRetriever(retriever=QdrantEmbeddingRetriever(...), pool_size=P, top_k)` for each P, and the
snapshot mode (whole store in memory) for reference. Prints median and 95th-percentile milliseconds per query and
each one's ratio to the baseline's median.

    python benchmarks/haystack_pool_latency.py --cache runs/cosqa-2k-v2/initial-cache --queries 200
    python benchmarks/haystack_pool_latency.py --rows 20000 --queries 200     # synthetic, no data needed
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


def per_query_ms(run, queries: list[list[float]]) -> list[float]:
    run(queries[0])  # warm-up (loads, first allocations)
    times = []
    for query in queries:
        start = time.perf_counter()
        run(query)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None, help="a saved CorrectedCacheStore folder (its embeddings are used)")
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows when --cache is not given")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--pool-sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)

    from haystack import Document
    from haystack_integrations.components.retrievers.corrector import CorrectedEmbeddingRetriever
    from haystack_integrations.components.retrievers.qdrant import QdrantEmbeddingRetriever
    from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

    from haystack_corrector import CorrectedCacheStore, Corrector

    generator = torch.Generator().manual_seed(args.seed)
    if args.cache:
        embeddings = CorrectedCacheStore.load(args.cache).stale_embeddings().float()
        source = f"{args.cache} ({len(embeddings):,} rows)"
    else:
        embeddings = torch.nn.functional.normalize(torch.randn(args.rows, args.dim, generator=generator), dim=1)
        source = f"{args.rows:,} synthetic unit vectors"
    rows, dim = embeddings.shape
    picks = torch.randint(0, rows, (args.queries,), generator=generator)
    noise = torch.randn(args.queries, dim, generator=generator) * (0.5 / dim**0.5)
    queries = torch.nn.functional.normalize(embeddings[picks] + noise, dim=1).tolist()

    corrector = Corrector(dim, hidden_dim=768)
    with torch.no_grad():
        for parameter in corrector.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    folder = Path(tempfile.mkdtemp(prefix="pool-latency-"))
    corrector.save(folder / "corrector")

    store = QdrantDocumentStore(path=str(folder / "qdrant"), embedding_dim=dim, similarity="cosine", progress_bar=False)
    start = time.perf_counter()
    batch = 1000
    for first in range(0, rows, batch):
        store.write_documents(
            [
                Document(id=f"d{i}", content=f"document {i}", embedding=embeddings[i].tolist())
                for i in range(first, min(rows, first + batch))
            ]
        )
    write_seconds = time.perf_counter() - start

    baseline = QdrantEmbeddingRetriever(store, top_k=args.top_k)
    results = {"QdrantEmbeddingRetriever (baseline)": per_query_ms(lambda q: baseline.run(query_embedding=q), queries)}
    for pool_size in args.pool_sizes:
        pooled = CorrectedEmbeddingRetriever(
            retriever=QdrantEmbeddingRetriever(store),
            corrector_path=str(folder / "corrector"),
            pool_size=pool_size,
            top_k=args.top_k,
        )
        pooled.warm_up()
        results[f"pool mode, pool_size {pool_size}"] = per_query_ms(
            lambda q, r=pooled: r.run(query_embedding=q), queries
        )
    snapshot = CorrectedEmbeddingRetriever(store, corrector_path=str(folder / "corrector"), top_k=args.top_k)
    start = time.perf_counter()
    snapshot.run(query_embedding=queries[0])
    snapshot_build = time.perf_counter() - start
    results["snapshot mode (whole store in memory)"] = per_query_ms(lambda q: snapshot.run(query_embedding=q), queries)
    store.close()

    print(f"Store: Qdrant local mode, {source}, {dim}-d, cosine; written in {write_seconds:.1f} s")
    print(f"Queries: {args.queries}, top_k {args.top_k}; snapshot built in {snapshot_build:.1f} s (first query)")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
    )
    base = statistics.median(results["QdrantEmbeddingRetriever (baseline)"])
    print("\n| retriever | median ms/query | p95 ms/query | median / baseline |")
    print("|---|---|---|---|")
    for name, times in results.items():
        median = statistics.median(times)
        p95 = float(np.percentile(times, 95))
        print(f"| {name} | {median:.2f} | {p95:.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
