"""Documents and stores as matrices: checked embedding matrices, query matrices, similarity names, output copies."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from haystack import Document

SIMILARITIES = {"cosine": "cosine", "dot_product": "dot", "dot": "dot"}


def store_similarity(document_store: Any, similarity: str | None) -> str:
    """The similarity to score with: explicit, else the store's ``embedding_similarity_function``, else dot."""
    name = similarity or getattr(document_store, "embedding_similarity_function", None) or "dot_product"
    if name not in SIMILARITIES:
        raise ValueError(f"Unknown similarity {name!r}; expected one of {sorted(SIMILARITIES)}")
    return SIMILARITIES[name]


def check_document_store(document_store: Any) -> None:
    for method in ("filter_documents", "count_documents", "to_dict"):
        if not callable(getattr(document_store, method, None)):
            raise TypeError(
                f"document_store must be a Haystack DocumentStore (with {method}()), got {type(document_store).__name__}"
            )


def embedding_matrix(documents: list[Document], what: str) -> np.ndarray:
    """Stack document embeddings, with a clear error for documents that have none."""
    missing = [doc.id for doc in documents if doc.embedding is None]
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


def query_matrix(query_embeddings: Any, dim: int, name: str) -> torch.Tensor:
    if not isinstance(query_embeddings, (list, tuple)) or not query_embeddings:
        raise ValueError(f"{name} must be a non-empty list of floats, got {type(query_embeddings).__name__}")
    try:
        matrix = torch.tensor(query_embeddings, dtype=torch.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold numbers only, with equal lengths: {exc}") from exc
    if matrix.shape[-1] != dim:
        raise ValueError(f"{name} has dimension {matrix.shape[-1]} but the stored embeddings have dimension {dim}")
    return matrix


def output_document(document: Document, score: float | None, return_embedding: bool) -> Document:
    """A copy of a stored document for output: score set, embedding kept (as plain floats) or dropped."""
    embedding = [float(x) for x in document.embedding] if return_embedding and document.embedding is not None else None
    return dataclasses.replace(document, score=score, embedding=embedding)
