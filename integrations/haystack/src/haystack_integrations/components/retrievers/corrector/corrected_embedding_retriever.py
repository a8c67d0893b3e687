"""CorrectedEmbeddingRetriever: a drop-in for InMemoryEmbeddingRetriever that scores the corrected embeddings."""

from __future__ import annotations

import math
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack_integrations.common.corrector.documents import (
    check_document_store,
    output_document,
    query_matrix,
    store_similarity,
)
from haystack_integrations.common.corrector.snapshot import DocumentSnapshot, SnapshotComponent

from haystack_corrector._validation import check_non_negative_int, check_positive_int


@component
class CorrectedEmbeddingRetriever(SnapshotComponent):
    """Retrieves the documents closest to a query embedding, scoring ``h(stored embedding)`` instead of the stored one.

    Use it when the stored (stale) document embeddings come from an older encoder than the query embeddings: the
    corrector ``h`` maps them to the new encoder's space without re-embedding the corpus. With ``corrector_path=None``
    it behaves like ``InMemoryEmbeddingRetriever``. Works with any DocumentStore: documents are read through
    ``filter_documents()`` into an in-memory snapshot that is re-read when ``count_documents()`` changes (call
    ``refresh()`` after overwriting documents in place).

    Usage example:
    ```python
    from haystack import Document
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_integrations.components.retrievers.corrector import CorrectedEmbeddingRetriever

    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents([Document(content="a", embedding=[1.0, 0.0]), Document(content="b", embedding=[0.0, 1.0])])
    retriever = CorrectedEmbeddingRetriever(store, top_k=1)
    retriever.warm_up()
    print(retriever.run(query_embedding=[0.9, 0.1])["documents"][0].content)  # a
    ```
    """

    def __init__(
        self,
        document_store: Any,
        corrector_path: str | None = None,
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
        scale_score: bool = False,
        return_embedding: bool = False,
        similarity: str | None = None,
    ) -> None:
        """
        :param document_store: any Haystack DocumentStore holding documents with (stale) embeddings.
        :param corrector_path: directory of a saved ``haystack_corrector.Corrector``; ``None`` applies no correction.
        :param top_k: documents to return; must be > 0.
        :param filters: Haystack filters applied at every run (replaced by run-time filters when given).
        :param scale_score: scale scores to [0, 1] as ``InMemoryDocumentStore`` does.
        :param return_embedding: return the documents' stored embeddings.
        :param similarity: ``"cosine"`` or ``"dot_product"``; default: the store's ``embedding_similarity_function``,
            else dot product.
        """
        check_document_store(document_store)
        check_positive_int(top_k, "top_k")
        self.document_store = document_store
        self.corrector_path = corrector_path
        self.top_k = top_k
        self.filters = filters
        self.scale_score = scale_score
        self.return_embedding = return_embedding
        self.similarity = similarity
        self._similarity = store_similarity(document_store, similarity)
        self._snapshot: DocumentSnapshot | None = None

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
    ) -> dict[str, list[Document]]:
        """Retrieve the ``top_k`` documents by corrected similarity to ``query_embedding``.

        :param query_embedding: the query's embedding (from the new encoder).
        :param filters: Haystack filters; replace the init filters when given.
        :param top_k: overrides the init ``top_k``; 0 returns no documents.
        """
        snapshot = self._ready_snapshot()
        top_k = self.top_k if top_k is None else top_k
        check_non_negative_int(top_k, "top_k")
        scale_score = self.scale_score if scale_score is None else scale_score
        return_embedding = self.return_embedding if return_embedding is None else return_embedding
        cache = snapshot.ensure_current()
        query = query_matrix([query_embedding], cache.dim, "query_embedding")
        allowed = snapshot.allowed_rows(filters if filters is not None else self.filters)
        available = len(cache) if allowed is None else len(allowed)
        top_k = min(top_k, available)
        if top_k == 0:
            return {"documents": []}
        exclude = None if allowed is None else [set(range(len(cache))) - allowed]
        scores, rows = cache.search(query, top_k, exclude=exclude)
        documents = []
        for score, row in zip(scores[0].tolist(), rows[0].tolist()):
            if scale_score:
                score = (score + 1) / 2 if self._similarity == "cosine" else 1 / (1 + math.exp(-score / 100))
            documents.append(output_document(snapshot.documents[row], score, return_embedding))
        return {"documents": documents}
