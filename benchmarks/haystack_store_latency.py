"""Pool-mode latency against each store's own embedding retriever, on a quiet and on a loaded machine.

For each store (Haystack's InMemory, Qdrant local mode, Chroma persistent, PostgreSQL with pgvector through
``pgserver``) the same ``--rows`` random unit vectors (dimension 384) are written, and ``--queries`` queries (stored
rows plus noise) are timed one by one, in turn through:

- the store's own embedding retriever, ``top_k`` 10 (the baseline: the ratio's denominator);
- the same retriever asked for what pool mode asks it for: the 100 nearest, with their embeddings (the store's share
  of pool mode's time);
- ``CorrectedEmbeddingRetriever`` in pool mode over that retriever, ``pool_size`` 100, a corrector of hidden width
  768 (random weights: its cost per row does not depend on what it learned), as shipped: the corrector's small
  products on one torch thread (``pool.one_torch_thread``);
- the same with torch's default threads (the earlier behaviour), for comparison.

``--load N`` runs the same measurements a second time while N background processes keep the cores busy (each a
one-thread float32 matrix-product loop, as a training job beside a retrieval service would). Each line prints the
medians and each pool mode's ratio to its own store's baseline, measured in the same run and under the same load.

    python benchmarks/haystack_store_latency.py --rows 20000 --queries 200 --load 2
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import torch  # noqa: E402

DIM = 384
STORES = ("in_memory", "qdrant", "chroma", "pgvector")


def busy(stop) -> None:
    """One core's worth of load: float32 matrix products on one thread until told to stop."""
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def make_store(kind: str, folder: Path):
    """An empty cosine store of ``kind`` and its own embedding retriever class."""
    if kind == "in_memory":
        from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
        from haystack.document_stores.in_memory import InMemoryDocumentStore

        return InMemoryDocumentStore(embedding_similarity_function="cosine"), InMemoryEmbeddingRetriever
    if kind == "qdrant":
        from haystack_integrations.components.retrievers.qdrant import QdrantEmbeddingRetriever
        from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

        store = QdrantDocumentStore(
            path=str(folder / "qdrant"), embedding_dim=DIM, similarity="cosine", progress_bar=False
        )
        return store, QdrantEmbeddingRetriever
    if kind == "chroma":
        from haystack_integrations.components.retrievers.chroma import ChromaEmbeddingRetriever
        from haystack_integrations.document_stores.chroma import ChromaDocumentStore

        return ChromaDocumentStore(persist_path=str(folder / "chroma"), distance_function="cosine"), (
            ChromaEmbeddingRetriever
        )
    from haystack.utils import Secret
    from haystack_integrations.components.retrievers.pgvector import PgvectorEmbeddingRetriever
    from haystack_integrations.document_stores.pgvector import PgvectorDocumentStore

    store = PgvectorDocumentStore(
        connection_string=Secret.from_env_var("PG_CONN_STR"),
        table_name="latency",
        embedding_dimension=DIM,
        vector_function="cosine_similarity",
        search_strategy="exact_nearest_neighbor",
        recreate_table=True,
    )
    return store, PgvectorEmbeddingRetriever


def median_ms(retriever, queries: list[list[float]], **kwargs) -> float:
    retriever.run(query_embedding=queries[0], **kwargs)  # warm-up
    times = []
    for query in queries:
        start = time.perf_counter()
        retriever.run(query_embedding=query, **kwargs)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(kind: str, folder: Path, rows: torch.Tensor, queries: list[list[float]], corrector: str) -> dict:
    from haystack import Document
    from haystack_integrations.common.corrector import pool
    from haystack_integrations.components.retrievers.corrector import CorrectedEmbeddingRetriever

    store, retriever_class = make_store(kind, folder)
    for first in range(0, len(rows), 2000):
        store.write_documents(
            [
                Document(id=f"d{first + i}", content=f"document {first + i}", embedding=row.tolist())
                for i, row in enumerate(rows[first : first + 2000])
            ]
        )
    own = retriever_class(document_store=store, top_k=10)
    corrected = CorrectedEmbeddingRetriever(
        retriever=retriever_class(document_store=store), corrector_path=corrector, pool_size=100, top_k=10
    )
    corrected.warm_up()
    # What pool mode asks the store for: the pool_size nearest, with their embeddings (the store's share of its time).
    fetch = retriever_class(document_store=store, top_k=100)
    with_embeddings = (
        {"return_embedding": True} if "return_embedding" in inspect.signature(fetch.run).parameters else {}
    )
    figures = {
        "own": median_ms(own, queries),
        "own_pool": median_ms(fetch, queries, **with_embeddings),
        "pool": median_ms(corrected, queries),
    }
    shipped = pool.one_torch_thread
    pool.one_torch_thread = contextlib.nullcontext  # the earlier behaviour: torch's default threads
    try:
        figures["pool_default_threads"] = median_ms(corrected, queries)
    finally:
        pool.one_torch_thread = shipped
    close = getattr(store, "close", None)
    if callable(close):
        close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--load", type=int, default=2, help="background busy processes for the loaded pass (0: none)")
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from haystack_corrector import Corrector

    folder = Path(tempfile.mkdtemp(prefix="store-latency-"))
    generator = torch.Generator().manual_seed(args.seed)
    rows = torch.nn.functional.normalize(torch.randn(args.rows, DIM, generator=generator), dim=1)
    picks = torch.randint(0, args.rows, (args.queries,), generator=generator)
    noise = torch.randn(args.queries, DIM, generator=generator) * (0.5 / DIM**0.5)
    queries = torch.nn.functional.normalize(rows[picks] + noise, dim=1).tolist()
    corrector = Corrector(DIM, hidden_dim=768)
    with torch.no_grad():
        for parameter in corrector.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    corrector.save(folder / "corrector")

    server = None
    if "pgvector" in args.stores:
        import pgserver

        server = pgserver.get_server(str(folder / "postgres"), cleanup_mode="stop")
        os.environ["PG_CONN_STR"] = server.get_uri()
    results = []
    try:
        for load in sorted({0, args.load}):
            stop = multiprocessing.Event()
            workers = [multiprocessing.Process(target=busy, args=(stop,), daemon=True) for _ in range(load)]
            for worker in workers:
                worker.start()
            try:
                for kind in args.stores:
                    figures = measure(kind, folder / f"{kind}-{load}", rows, queries, str(folder / "corrector"))
                    results.append((kind, load, figures))
                    print(kind, load, figures, file=sys.stderr, flush=True)
            finally:
                stop.set()
                for worker in workers:
                    worker.join()
    finally:
        if server is not None:
            server.cleanup()

    print(
        f"\n{args.rows:,} documents (dimension {DIM}), {args.queries} queries, top_k 10, pool_size 100, corrector "
        f"hidden 768; {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads by default), Python {platform.python_version()}\n"
    )
    print(
        "| store | background load | own retriever, top 10, median ms | own retriever, top 100 with embeddings, ms "
        "(ratio) | pool mode (one torch thread), ms | ratio | pool mode, torch's default threads, ms | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, load, f in results:
        print(
            f"| {kind} | {'quiet' if load == 0 else f'{load} busy processes'} | {f['own']:.2f} | "
            f"{f['own_pool']:.2f} ({f['own_pool'] / f['own']:.2f}x) | {f['pool']:.2f} | {f['pool'] / f['own']:.2f}x | "
            f"{f['pool_default_threads']:.2f} | {f['pool_default_threads'] / f['own']:.2f}x |"
        )


if __name__ == "__main__":
    main()
