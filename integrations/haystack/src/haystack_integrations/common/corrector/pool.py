"""Pool mode: candidates from a store's own embedding retriever, re-ranked by their corrected embeddings.

A :class:`RetrieverPool` wraps any Haystack embedding retriever (``InMemoryEmbeddingRetriever``,
``QdrantEmbeddingRetriever``, ``ChromaEmbeddingRetriever``, ...). For each query it asks that retriever for the
``pool_size`` documents nearest by the stored (stale) embeddings — through the store's own index, with the filters
passed through — and the caller re-scores those candidates through the corrector. The work per query is one store
query plus a corrector pass over ``pool_size`` embeddings, whatever the store's size; nothing is copied out of the
store beforehand. The price: a document the stale index ranks below ``pool_size`` cannot be returned (with
``pool_size`` >= the store's size the ranking equals the snapshot mode's).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from haystack import Document
from haystack_integrations.common.corrector.documents import corrected_matrix, has_embedding, with_embeddings

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector._validation import check_positive_int
from haystack_corrector.scoring import similarity_scores


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the enclosed torch work on one intra-op thread, then restore the setting.

    A pool's corrector pass is a few small matrix products (100 x 384 through a 768-wide MLP). On torch's default
    threads each of them wakes a team of worker threads; on a loaded machine those wait for a free core, and a query
    took 7x the store's own retriever on a busy 2-core machine, against 1.7x on one thread (docs/benchmarks.md,
    "Pool-mode latency"). The setting is restored when the block ends, even on an error. ``torch.set_num_threads`` is
    not strictly per thread: while the block runs, other threads of the process may also see one thread (measured:
    threads already computing keep theirs, threads that start then may not), for the milliseconds a pool takes.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The wrapped retriever's run() parameters that pool mode sets itself.
_POOL_PARAMETERS = ("query_embedding", "filters", "top_k", "return_embedding", "scale_score")


def inner_document_store(retriever: Any) -> Any:
    """The document store a retriever searches (stores name the attribute differently; None if not exposed)."""
    for attribute in ("document_store", "_document_store"):
        store = getattr(retriever, attribute, None)
        if store is not None:
            return store
    return None


class RetrieverPool:
    """Fetches the ``pool_size`` stale-nearest candidates of a query through ``retriever.run`` / ``run_async``."""

    def __init__(self, retriever: Any, pool_size: int) -> None:
        run = getattr(retriever, "run", None)
        if not callable(run) or not callable(getattr(retriever, "to_dict", None)):
            raise TypeError(
                "retriever must be a Haystack embedding retriever component (with run() and to_dict()), got "
                f"{type(retriever).__name__}"
            )
        parameters = inspect.signature(run).parameters
        missing = [name for name in ("query_embedding", "filters", "top_k") if name not in parameters]
        if missing:
            raise TypeError(
                f"retriever {type(retriever).__name__}.run() has no {', '.join(missing)} parameter: pool mode needs an "
                "embedding retriever (query_embedding, filters, top_k)"
            )
        self.retriever = retriever
        self.pool_size = check_positive_int(pool_size, "pool_size")
        # What run(top_k=0) means to this retriever: Haystack's own return nothing; the integrations (Qdrant, Chroma)
        # read `top_k or self.top_k`, i.e. their init top_k. The wrapper answers as the retriever it wraps would.
        self.zero_is_empty = type(retriever).__module__.startswith("haystack.")
        # Ask for the candidates' embeddings where the retriever leaves them out by default (InMemory, Qdrant).
        self._extra = {"return_embedding": True} if "return_embedding" in parameters else {}
        # The wrapped retriever's own run parameters (Qdrant's score_threshold, group_by, ...), passed through as given;
        # those pool mode sets itself are not.
        self.own_parameters = sorted(set(parameters) - set(_POOL_PARAMETERS) - {"self"})

    def check_kwargs(self, retriever_kwargs: Any, name: str = "retriever_kwargs") -> dict[str, Any]:
        """``retriever_kwargs`` checked against the wrapped retriever's run() (None: no extra parameters)."""
        if retriever_kwargs is None:
            return {}
        if not isinstance(retriever_kwargs, dict):
            raise TypeError(f"{name} must be a dict of run() parameters, got {type(retriever_kwargs).__name__}")
        owned = sorted(set(retriever_kwargs) & set(_POOL_PARAMETERS))
        if owned:
            raise ValueError(
                f"{name} sets {', '.join(owned)}, which pool mode sets itself: pass filters and top_k to this component "
                "(pool_size is the candidates' top_k)"
            )
        unknown = sorted(set(retriever_kwargs) - set(self.own_parameters))
        if unknown:
            raise ValueError(
                f"{type(self.retriever).__name__}.run() has no parameter {', '.join(unknown)}; it accepts "
                f"{', '.join(self.own_parameters) or 'none besides those pool mode sets'}"
            )
        return dict(retriever_kwargs)

    def _arguments(self, query_embedding: list[float], filters: dict[str, Any] | None) -> dict[str, Any]:
        return {"query_embedding": query_embedding, "filters": filters, "top_k": self.pool_size, **self._extra}

    def fetch(self, query_embedding: list[float], filters: dict[str, Any] | None, **extra: Any) -> list[Document]:
        return self._checked(self.retriever.run(**self._arguments(query_embedding, filters), **extra)["documents"])

    async def fetch_async(
        self, query_embedding: list[float], filters: dict[str, Any] | None, **extra: Any
    ) -> list[Document]:
        run_async = getattr(self.retriever, "run_async", None)
        if run_async is None:
            return await asyncio.to_thread(self.fetch, query_embedding, filters, **extra)
        return self._checked((await run_async(**self._arguments(query_embedding, filters), **extra))["documents"])

    def _checked(self, documents: list[Document]) -> list[Document]:
        """The candidates, refused when none carries an embedding: re-ranking needs them, and an empty answer would
        reach a RAG pipeline as an empty context without a word."""
        if documents and not any(has_embedding(doc) for doc in documents):
            raise ValueError(
                f"{type(self.retriever).__name__} returned {len(documents)} candidates without embeddings: pool mode "
                "re-scores their stored embeddings. Make it return them (return_embedding=True on the retriever, or "
                "the store's option that keeps embeddings in query results)"
            )
        return documents

    def close(self) -> None:
        """Close the wrapped retriever, or its document store, where they offer close()."""
        for owner in (self.retriever, inner_document_store(self.retriever)):
            close = getattr(owner, "close", None)
            if callable(close):
                close()
                return


def corrected_pool(
    documents: list[Document], corrector: Corrector | None, similarity: str
) -> tuple[list[Document], CorrectedCacheStore | None]:
    """The candidates that have embeddings, and a cache of their corrected embeddings (None when there are none).

    The corrector is applied here, once, to every candidate not already in the new space (``in_new_space``): a
    document corrected by ``DocumentStoreCorrector`` or marked fresh is never corrected again. The cache's own
    corrector is the identity.
    """
    documents = with_embeddings(documents, "candidates from the retriever")
    if not documents:
        return [], None
    with one_torch_thread():
        matrix = corrected_matrix(documents, corrector, "candidates from the retriever")
    cache = CorrectedCacheStore(
        matrix,
        ids=[doc.id for doc in documents],
        similarity=similarity,
        texts=[doc.content or "" for doc in documents],
    )
    return documents, cache


def rank_pool(
    documents: list[Document], query: torch.Tensor, corrector: Corrector | None, similarity: str, top_k: int
) -> list[tuple[Document, float]]:
    """The ``top_k`` candidates by corrected similarity to ``query`` (a (1, d) tensor), best first.

    Scores as the snapshot mode's cache does (float32, the corrector's output for documents not already in the new
    space, cosine or dot product), without building a cache per query.
    """
    documents = with_embeddings(documents, "candidates from the retriever")
    if not documents or top_k == 0:
        return []
    with one_torch_thread():
        matrix = torch.from_numpy(corrected_matrix(documents, corrector, "candidates from the retriever"))
        if query.shape[-1] != matrix.shape[1]:
            raise ValueError(
                f"query_embedding has dimension {query.shape[-1]} but the stored embeddings have dimension "
                f"{matrix.shape[1]}"
            )
        scores = similarity_scores(query, matrix, normalize=similarity == "cosine")[0]
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("The corrector produced non-finite scores; it has diverged (check its learning rate)")
    best, rows = torch.topk(scores, min(top_k, len(documents)))
    return [(documents[row], score) for score, row in zip(best.tolist(), rows.tolist())]
