"""CorrectedEmbeddingRetriever: a drop-in embedding retriever that scores the corrected embeddings."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.types import FilterPolicy, apply_filter_policy
from haystack_integrations.common.corrector.correctors import pinned_fingerprint
from haystack_integrations.common.corrector.documents import (
    check_document_store,
    output_document,
    query_matrix,
    store_score_scale,
    store_similarity,
)
from haystack_integrations.common.corrector.pool import RetrieverPool, inner_document_store, rank_pool
from haystack_integrations.common.corrector.snapshot import DocumentSnapshot, SnapshotComponent

from haystack_corrector._validation import check_non_negative_int, check_positive_int


@component
class CorrectedEmbeddingRetriever(SnapshotComponent):
    """Retrieves the documents closest to a query embedding, scoring ``h(stored embedding)`` instead of the stored one.

    Use it when the stored (stale) document embeddings come from an older encoder than the query embeddings: the
    corrector ``h`` maps them to the new encoder's space without re-embedding the corpus. With ``corrector_path=None``
    it ranks like the store's own embedding retriever. Two modes:

    - **Pool mode** (``retriever=`` any store's embedding retriever, e.g. ``QdrantEmbeddingRetriever``): each query
      asks that retriever, through the store's own index and with the filters passed through, for the ``pool_size``
      documents nearest by the stored embeddings, corrects those candidates and re-ranks them. Constant work per
      query whatever the store's size; a document the stale index ranks below ``pool_size`` is not returned.
    - **Snapshot mode** (``document_store=``): every document is read once (``filter_documents()``) into an in-memory
      corrected cache that is re-read when ``count_documents()`` changes (checked before every query; call
      ``refresh()`` after overwriting documents in place). Exact over the whole store; for small stores.

    Drop-in semantics as the stock retrievers: an empty store returns ``[]``, documents without embeddings are skipped
    (one warning says how many), ``filters`` follow ``filter_policy``, ``run_async`` is offered.

    Usage example:
    ```python
    from haystack import Document
    from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_integrations.components.retrievers.corrector import CorrectedEmbeddingRetriever

    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents([Document(content="a", embedding=[1.0, 0.0]), Document(content="b", embedding=[0.0, 1.0])])
    retriever = CorrectedEmbeddingRetriever(retriever=InMemoryEmbeddingRetriever(store), pool_size=50, top_k=1)
    retriever.warm_up()
    print(retriever.run(query_embedding=[0.9, 0.1])["documents"][0].content)  # a
    ```
    """

    def __init__(
        self,
        document_store: Any = None,
        corrector_path: str | None = None,
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
        scale_score: bool = False,
        return_embedding: bool = False,
        similarity: str | None = None,
        retriever: Any = None,
        pool_size: int = 100,
        corrector_fingerprint: str | None = None,
        filter_policy: str | FilterPolicy = FilterPolicy.REPLACE,
        retriever_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """
        :param document_store: snapshot mode: any Haystack DocumentStore holding documents with (stale) embeddings.
            Give either this or ``retriever``.
        :param corrector_path: directory of a saved ``haystack_corrector.Corrector``; ``None`` applies no correction.
        :param top_k: documents to return; must be > 0.
        :param filters: Haystack filters applied at every run, combined with run-time filters by ``filter_policy``.
        :param scale_score: scale scores to [0, 1] as ``InMemoryDocumentStore`` does.
        :param return_embedding: return the documents' stored embeddings.
        :param similarity: ``"cosine"`` or ``"dot_product"``; default: the metric of the store's index (``"ip"`` is
            the dot product; an ``"l2"`` index needs an explicit choice), else dot product.
        :param retriever: pool mode: the store's own embedding retriever; its candidates are re-ranked.
        :param pool_size: pool mode: candidates fetched per query; must be > 0 and should be well above ``top_k``.
        :param corrector_fingerprint: the fingerprint of the corrector at ``corrector_path`` (written by ``to_dict``);
            a folder that holds another corrector is refused at ``warm_up`` (both fingerprints in the error).
        :param filter_policy: ``"replace"`` (run-time filters replace the init filters) or ``"merge"``. In pool mode
            the resulting filters are passed to the inner retriever, where they replace its own init filters (unless
            none result, in which case its own apply).
        :param retriever_kwargs: pool mode: more parameters for the wrapped retriever's ``run()``, passed through at
            every query (e.g. Qdrant's ``score_threshold``, ``group_by``, ``group_size``); they shape the candidates,
            which are then re-ranked by corrected score (a ``score_threshold`` applies to the stored embeddings'
            scores). Names pool mode sets itself (``filters``, ``top_k``, ...) and names the retriever does not
            accept are refused.
        """
        if (document_store is None) == (retriever is None):
            raise ValueError(
                "Give exactly one of document_store (snapshot mode: the whole store read into memory) or retriever "
                "(pool mode: candidates from the store's own embedding retriever)"
            )
        check_positive_int(top_k, "top_k")
        self._pool = None if retriever is None else RetrieverPool(retriever, pool_size)
        if self._pool is not None and top_k > pool_size:
            raise ValueError(
                f"top_k={top_k} is larger than pool_size={pool_size}: pool mode returns at most pool_size documents. "
                "Raise pool_size (well above top_k) or lower top_k"
            )
        if retriever_kwargs is not None and self._pool is None:
            raise ValueError("retriever_kwargs is for pool mode (retriever=...); snapshot mode has no inner retriever")
        self._retriever_kwargs = {} if self._pool is None else self._pool.check_kwargs(retriever_kwargs)
        if document_store is not None:
            check_document_store(document_store)
        self.document_store = document_store
        self.retriever = retriever
        self.pool_size = pool_size
        self.corrector_path = corrector_path
        self.corrector_fingerprint = pinned_fingerprint(corrector_path, corrector_fingerprint)
        self.top_k = top_k
        self.filters = filters
        self.scale_score = scale_score
        self.return_embedding = return_embedding
        self.similarity = similarity
        self.filter_policy = (
            filter_policy if isinstance(filter_policy, FilterPolicy) else FilterPolicy.from_str(filter_policy)
        )
        scored_store = document_store if retriever is None else inner_document_store(retriever)
        self._similarity = store_similarity(scored_store, similarity)
        self._store_scale = store_score_scale(scored_store)
        self.retriever_kwargs = retriever_kwargs
        self._snapshot: DocumentSnapshot | None = None

    def warm_up(self) -> None:
        """Load the corrector and warm up the inner retriever (once; later calls do nothing)."""
        if self._pool is not None and callable(getattr(self.retriever, "warm_up", None)):
            self.retriever.warm_up()
        SnapshotComponent.warm_up(self)  # explicit: @component rebuilds the class, so zero-argument super() fails

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            document_store=self.document_store,
            corrector_path=self.corrector_path,
            top_k=self.top_k,
            filters=self.filters,
            scale_score=self.scale_score,
            return_embedding=self.return_embedding,
            similarity=self.similarity,
            retriever=self.retriever,
            pool_size=self.pool_size,
            corrector_fingerprint=self.corrector_fingerprint,
            filter_policy=self.filter_policy.value,
            retriever_kwargs=self.retriever_kwargs,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectedEmbeddingRetriever:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        scale_score: bool | None = None,
        return_embedding: bool | None = None,
        retriever_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[Document]]:
        """Retrieve the ``top_k`` documents by corrected similarity to ``query_embedding``.

        :param query_embedding: the query's embedding (from the new encoder).
        :param filters: Haystack filters; combined with the init filters by ``filter_policy``.
        :param top_k: overrides the init ``top_k``; None means the init ``top_k``. 0 means what it means to the
            store's own retriever: no documents for Haystack's in-memory one (and in snapshot mode), the init
            ``top_k`` for the integrations that read ``top_k or self.top_k`` (Qdrant, Chroma).
        :param scale_score: overrides the init ``scale_score``.
        :param return_embedding: overrides the init ``return_embedding``.
        :param retriever_kwargs: pool mode: updates the init ``retriever_kwargs`` for this query.

        Scores: the store's own retriever's scale. The corrected similarity (cosine or dot product, higher is nearer)
        for InMemory, Qdrant and pgvector; for Chroma, whose retriever reports distances, the distance that similarity
        means there (cosine: 1 - cosine; ip: 1 - dot; l2: 2 - 2 cosine, the squared L2 distance between unit vectors),
        nearest first as Chroma's. ``scale_score=True`` gives the similarity scaled to [0, 1] for every store.
        """
        options = self._options(query_embedding, filters, top_k, scale_score, return_embedding)
        extra = self._run_kwargs(retriever_kwargs)
        if self._pool is None:
            return self._run_snapshot(**options)
        if options["top_k"] == 0:
            return {"documents": []}
        candidates = self._pool.fetch(query_embedding, options["filters"], **extra)
        return self._rank_candidates(candidates, **options)

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None = None,
        top_k: int | None = None,
        scale_score: bool | None = None,
        return_embedding: bool | None = None,
        retriever_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, list[Document]]:
        """As ``run``; pool mode awaits the inner retriever's ``run_async``, snapshot mode runs in a worker thread."""
        options = self._options(query_embedding, filters, top_k, scale_score, return_embedding)
        extra = self._run_kwargs(retriever_kwargs)
        if self._pool is None:
            return await asyncio.to_thread(self._run_snapshot, **options)
        if options["top_k"] == 0:
            return {"documents": []}
        candidates = await self._pool.fetch_async(query_embedding, options["filters"], **extra)
        return self._rank_candidates(candidates, **options)

    def _run_kwargs(self, retriever_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """The init ``retriever_kwargs`` updated by the run's, checked against the wrapped retriever."""
        if retriever_kwargs is None:
            return self._retriever_kwargs
        if self._pool is None:
            raise ValueError("retriever_kwargs is for pool mode (retriever=...); snapshot mode has no inner retriever")
        return {**self._retriever_kwargs, **self._pool.check_kwargs(retriever_kwargs)}

    def _options(
        self,
        query_embedding: list[float],
        filters: dict[str, Any] | None,
        top_k: int | None,
        scale_score: bool | None,
        return_embedding: bool | None,
    ) -> dict[str, Any]:
        if top_k is None or (top_k == 0 and self._pool is not None and not self._pool.zero_is_empty):
            top_k = self.top_k
        check_non_negative_int(top_k, "top_k")
        if self._pool is not None and top_k > self.pool_size:
            raise ValueError(f"top_k={top_k} is larger than pool_size={self.pool_size}: raise pool_size")
        return {
            "query": query_matrix([query_embedding], None, "query_embedding"),
            "filters": apply_filter_policy(self.filter_policy, self.filters, filters) or None,
            "top_k": top_k,
            "scale_score": self.scale_score if scale_score is None else scale_score,
            "return_embedding": self.return_embedding if return_embedding is None else return_embedding,
        }

    def _rank_candidates(
        self,
        candidates: list[Document],
        query: Any,
        filters: dict[str, Any] | None,
        top_k: int,
        scale_score: bool,
        return_embedding: bool,
    ) -> dict[str, list[Document]]:
        ranked = rank_pool(candidates, query, self._ready_snapshot().corrector, self._similarity, top_k)
        return {"documents": [self._output(doc, score, scale_score, return_embedding) for doc, score in ranked]}

    def _run_snapshot(
        self,
        query: Any,
        filters: dict[str, Any] | None,
        top_k: int,
        scale_score: bool,
        return_embedding: bool,
    ) -> dict[str, list[Document]]:
        snapshot = self._ready_snapshot()
        cache = snapshot.ensure_current()
        if cache is None or top_k == 0:  # an empty store returns nothing, as the stock retrievers do
            return {"documents": []}
        if query.shape[-1] != cache.dim:
            raise ValueError(
                f"query_embedding has dimension {query.shape[-1]} but the stored embeddings have dimension {cache.dim}"
            )
        allowed = snapshot.allowed_rows(filters)
        available = len(cache) if allowed is None else len(allowed)
        top_k = min(top_k, available)
        if top_k == 0:
            return {"documents": []}
        exclude = None if allowed is None else [set(range(len(cache))) - allowed]
        scores, rows = cache.search(query, top_k, exclude=exclude)
        return {
            "documents": [
                self._output(snapshot.documents[row], score, scale_score, return_embedding)
                for score, row in zip(scores[0].tolist(), rows[0].tolist())
            ]
        }

    def _output(self, document: Document, score: float, scale_score: bool, return_embedding: bool) -> Document:
        if scale_score:
            score = (score + 1) / 2 if self._similarity == "cosine" else 1 / (1 + math.exp(-score / 100))
        elif self._store_scale is not None:
            score = self._store_scale(score)
        return output_document(document, score, return_embedding)
