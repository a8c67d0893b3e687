"""Documents and stores as matrices: checked embedding matrices, query matrices, similarity names, output copies."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from haystack import Document, logging

logger = logging.getLogger(__name__)

SIMILARITIES = {"cosine": "cosine", "dot_product": "dot", "dot": "dot"}
# Where stores keep the metric their index ranks by: InMemory, Qdrant, Chroma (private, no public accessor), pgvector.
_STORE_METRIC_ATTRIBUTES = ("embedding_similarity_function", "similarity", "_distance_function", "vector_function")
_STORE_METRICS = {**SIMILARITIES, "ip": "dot", "cosine_similarity": "cosine", "inner_product": "dot"}
# A document whose meta holds this key is in the new encoder's space already: corrected by DocumentStoreCorrector /
# EmbeddingCorrector (the value is the corrector's fingerprint) or embedded by the new encoder (mark it with
# FRESH_MARKER). No component ever applies a corrector to it.
CORRECTOR_META = "corrector"
FRESH_MARKER = "fresh"


def has_embedding(document: Document) -> bool:
    """Whether the document carries an embedding: None, and the ``{}`` or ``[]`` some stores return, count as none."""
    return document.embedding is not None and len(document.embedding) > 0


def in_new_space(document: Document) -> bool:
    """Whether the document's embedding is not to be corrected (its meta holds :data:`CORRECTOR_META`)."""
    return CORRECTOR_META in (document.meta or {})


def store_similarity(document_store: Any, similarity: str | None) -> str:
    """The similarity to score with: explicit, else the metric of the store's index.

    A store whose metric cannot be read, or whose index ranks by a distance a corrector cannot score (``"l2"``,
    Chroma's default; pgvector's ``"l2_distance"``), needs an explicit ``similarity``: guessing would rank silently
    differently from the store.
    """
    if similarity is not None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"Unknown similarity {similarity!r}; expected one of {sorted(SIMILARITIES)}")
        return SIMILARITIES[similarity]
    for attribute in _STORE_METRIC_ATTRIBUTES:
        metric = getattr(document_store, attribute, None)
        if isinstance(metric, str):
            break
    else:
        metric = _index_params_metric(document_store)
    if metric is None:
        raise ValueError(
            f"Cannot tell which metric {type(document_store).__name__} ranks by; pass similarity='cosine' or "
            "similarity='dot_product' explicitly"
        )
    if metric not in _STORE_METRICS:
        raise ValueError(
            f"{type(document_store).__name__} ranks by {metric!r}, which corrected scores cannot reproduce; pass "
            "similarity='cosine' (for L2-normalised embeddings, L2 distance and cosine rank alike) or "
            "similarity='dot_product'"
        )
    return _STORE_METRICS[metric]


# Stores whose own retriever reports a distance (lower is nearer) in Document.score, as a function of the similarity
# the corrected retriever ranks by: Chroma's cosine distance is 1 - cosine, its "ip" 1 - dot, its (squared) "l2"
# 2 - 2 cosine between unit vectors.
_CHROMA_DISTANCES = {"cosine": lambda s: 1.0 - s, "ip": lambda s: 1.0 - s, "l2": lambda s: 2.0 - 2.0 * s}


def store_score_scale(document_store: Any) -> Any:
    """The function that puts a similarity on the scale the store's own retriever reports, or None when that scale
    is the similarity itself (InMemory, Qdrant, pgvector). Chroma's retriever reports distances; so does a corrected
    retriever over Chroma, ranked best first as Chroma's are. Milvus's maps every metric to [0, 1]: (s + 1) / 2 for
    ``COSINE`` and ``IP``, 1 - d / 4 for ``L2`` (which is (s + 1) / 2 again between unit vectors)."""
    name = type(document_store).__name__
    if name == "MilvusDocumentStore":
        return _milvus_score
    if name != "ChromaDocumentStore":
        return None
    return _CHROMA_DISTANCES.get(getattr(document_store, "_distance_function", "l2"))


def _milvus_score(similarity: float) -> float:
    return (similarity + 1.0) / 2.0


def _index_params_metric(document_store: Any) -> str | None:
    """Milvus keeps its metric in ``index_params["metric_type"]`` (``"COSINE"``, ``"IP"``, ``"L2"``)."""
    params = getattr(document_store, "index_params", None)
    metric = params.get("metric_type") if isinstance(params, dict) else None
    return metric.lower() if isinstance(metric, str) else None


def check_document_store(document_store: Any) -> None:
    for method in ("filter_documents", "count_documents", "to_dict"):
        if not callable(getattr(document_store, method, None)):
            raise TypeError(
                f"document_store must be a Haystack DocumentStore (with {method}()), got {type(document_store).__name__}"
            )


def with_embeddings(documents: list[Document], what: str) -> list[Document]:
    """The documents that have an embedding; one warning says how many were skipped (as stock retrievers skip them)."""
    kept = [doc for doc in documents if has_embedding(doc)]
    if len(kept) < len(documents):
        logger.warning(
            "Skipped {skipped} of {total} {what} without an embedding (first id: {first!r}); embed them to make them "
            "retrievable, and if your store leaves embeddings out by default, switch them on (e.g. "
            "return_embedding=True)",
            skipped=len(documents) - len(kept),
            total=len(documents),
            what=what,
            first=next(doc.id for doc in documents if not has_embedding(doc)),
        )
    return kept


def embedding_matrix(documents: list[Document], what: str) -> np.ndarray:
    """Stack document embeddings, with a clear error for documents that have none."""
    missing = [doc.id for doc in documents if not has_embedding(doc)]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(documents)} {what} have no embedding (first id: {missing[0]!r}). Embed them "
            "first (e.g. with a DocumentEmbedder), and if your document store leaves embeddings out of "
            "filter_documents() by default, switch that on (e.g. return_embedding=True where the store offers it)."
        )
    dims = {len(doc.embedding) for doc in documents}  # type: ignore[arg-type]
    if len(dims) > 1:
        raise ValueError(f"{what} have embeddings of different dimensions: {sorted(dims)}")
    return np.asarray([doc.embedding for doc in documents], dtype=np.float32)


def query_matrix(query_embeddings: Any, dim: int | None, name: str) -> torch.Tensor:
    """Queries as a float32 tensor; ``dim=None`` checks the form only (the stored dimension is not known yet)."""
    if not isinstance(query_embeddings, (list, tuple)) or not query_embeddings:
        raise ValueError(f"{name} must be a non-empty list of floats, got {type(query_embeddings).__name__}")
    try:
        matrix = torch.tensor(query_embeddings, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold numbers only, with equal lengths: {exc}") from exc
    if dim is not None and matrix.shape[-1] != dim:
        raise ValueError(f"{name} has dimension {matrix.shape[-1]} but the stored embeddings have dimension {dim}")
    return matrix


def output_document(document: Document, score: float | None, return_embedding: bool) -> Document:
    """A copy of a stored document for output: score set, embedding kept (as plain floats) or dropped."""
    embedding = [float(x) for x in document.embedding] if return_embedding and has_embedding(document) else None
    return dataclasses.replace(document, score=score, embedding=embedding)


def corrected_matrix(documents: list[Document], corrector: Any, what: str) -> np.ndarray:
    """The documents' embeddings with ``corrector`` applied to each one not already in the new space (float32)."""
    matrix = embedding_matrix(documents, what)
    if corrector is None:
        return matrix
    if corrector.dim != matrix.shape[1]:
        raise ValueError(
            f"The corrector has dimension {corrector.dim} but the stored embeddings have dimension {matrix.shape[1]}"
        )
    stale = [row for row, doc in enumerate(documents) if not in_new_space(doc)]
    if stale:
        with torch.no_grad():
            matrix[stale] = corrector(torch.from_numpy(matrix[stale])).float().numpy()
    return matrix
