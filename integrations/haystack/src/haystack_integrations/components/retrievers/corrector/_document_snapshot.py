"""Shared by the corrector components: import guard, corrector loading, and a snapshot of a DocumentStore as a cache.

Snapshot semantics: a component reads every document of its DocumentStore once (``filter_documents()``) into a
:class:`~haystack_corrector.CorrectedCacheStore` and searches that snapshot. Before each run it compares
``count_documents()`` with the snapshot and re-reads the store when they differ (documents written or deleted).
Documents overwritten in place with the same count are not noticed: call ``refresh()`` after such an update.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haystack_corrector import CorrectedCacheStore, Corrector

INSTALL_HINT = 'pip install "haystack-corrector[haystack]"'

try:
    from haystack import Document
except ImportError as exc:  # exercised in a subprocess test
    raise ImportError(f"The haystack-corrector components need haystack-ai. Install it with: {INSTALL_HINT}") from exc

logger = logging.getLogger(__name__)

SIMILARITIES = {"cosine": "cosine", "dot_product": "dot", "dot": "dot"}


def load_corrector(corrector_path: str | None) -> Corrector | None:
    if corrector_path is None:
        return None
    return Corrector.load(corrector_path)


def corrector_fingerprint(corrector_path: str) -> str:
    """Short SHA-256 of a saved corrector's weights, recorded in document meta."""
    weights = Path(corrector_path) / "corrector.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]


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


class DocumentSnapshot:
    """A DocumentStore read once into a CorrectedCacheStore (see the module docstring for when it is re-read)."""

    def __init__(self, document_store: Any, corrector: Corrector | None, similarity: str) -> None:
        self.document_store = document_store
        self.corrector = corrector
        self.similarity = similarity
        self.documents: list[Document] = []
        self.cache: CorrectedCacheStore | None = None
        self.count = -1

    def ensure_current(self) -> CorrectedCacheStore:
        count = self.document_store.count_documents()
        if self.cache is None or count != self.count:
            self.refresh()
        if self.cache is None:  # refresh() sets it or raises
            raise RuntimeError("the document snapshot could not be built")
        return self.cache

    def refresh(self) -> None:
        documents = self.document_store.filter_documents()
        if not documents:
            raise ValueError("The document store is empty: write documents with embeddings before retrieving")
        matrix = embedding_matrix(documents, "documents in the document store")
        corrector = self.corrector
        if corrector is not None and corrector.dim != matrix.shape[1]:
            raise ValueError(
                f"The corrector has dimension {corrector.dim} but the stored embeddings have dimension {matrix.shape[1]}"
            )
        self.cache = CorrectedCacheStore(
            matrix,
            ids=[doc.id for doc in documents],
            corrector=corrector,
            similarity=self.similarity,
            # Contents let the miner treat a copy of a positive (same content, other id) as a positive.
            texts=[doc.content or "" for doc in documents],
        )
        self.documents = documents
        self.count = len(documents)
        logger.info(
            "Read %d documents from %s into the corrected cache", len(documents), type(self.document_store).__name__
        )

    def allowed_rows(self, filters: dict[str, Any] | None) -> set[int] | None:
        """Rows of the documents matching ``filters`` (None: no filter)."""
        if not filters:
            return None
        cache = self.ensure_current()
        matching = self.document_store.filter_documents(filters=filters)
        known = []
        for doc in matching:
            try:
                known.extend(cache.rows_of([doc.id]))
            except KeyError:
                continue
        return set(known)


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


class SnapshotComponent:
    """Warm-up and refresh shared by the components that search a DocumentStore snapshot.

    Subclasses set ``document_store``, ``corrector_path``, ``_similarity`` and ``_snapshot = None`` in ``__init__``.
    """

    document_store: Any
    corrector_path: str | None
    _similarity: str
    _snapshot: DocumentSnapshot | None

    def warm_up(self) -> None:
        """Load the corrector (once; later calls do nothing)."""
        if self._snapshot is None:
            self._snapshot = DocumentSnapshot(
                self.document_store, load_corrector(self.corrector_path), self._similarity
            )

    def refresh(self) -> None:
        """Re-read the document store now (e.g. after documents were overwritten in place)."""
        self._ready_snapshot().refresh()

    def _ready_snapshot(self) -> DocumentSnapshot:
        self.warm_up()
        if self._snapshot is None:
            raise RuntimeError("warm_up() did not initialise the component")
        return self._snapshot
