"""A snapshot of a DocumentStore as a corrected cache, and the component base class that keeps it current.

Snapshot semantics: a component reads every document of its DocumentStore once (``filter_documents()``) into a
:class:`~haystack_corrector.CorrectedCacheStore` and searches that snapshot. Before each run it compares
``count_documents()`` with the snapshot and re-reads the store when they differ (documents written or deleted).
Documents overwritten in place with the same count are not noticed: call ``refresh()`` after such an update.

Cost: the whole store is held in memory (embeddings as float16 plus the Document objects) and ``count_documents()``
runs before every query. That suits stores of up to some hundred thousand documents; for larger or remote stores use
pool mode (``retriever=...``, :mod:`haystack_integrations.common.corrector.pool`), which asks the store's own index.
"""

from __future__ import annotations

from typing import Any

from haystack import Document, logging
from haystack_integrations.common.corrector.correctors import load_corrector, pinned_fingerprint
from haystack_integrations.common.corrector.documents import corrected_matrix, with_embeddings

from haystack_corrector import CorrectedCacheStore, Corrector

logger = logging.getLogger(__name__)


class DocumentSnapshot:
    """A DocumentStore read once into a CorrectedCacheStore (see the module docstring for when it is re-read)."""

    def __init__(self, document_store: Any, corrector: Corrector | None, similarity: str) -> None:
        self.document_store = document_store
        self.corrector = corrector
        self.similarity = similarity
        self.documents: list[Document] = []
        self.cache: CorrectedCacheStore | None = None
        self.count = -1

    def ensure_current(self) -> CorrectedCacheStore | None:
        """The snapshot, re-read first if the store's count changed; None while the store holds no embedded document."""
        count = self.document_store.count_documents()
        if count != self.count:
            self.refresh()
        return self.cache

    def refresh(self) -> None:
        stored = self.document_store.filter_documents()
        documents = with_embeddings(stored, "documents in the document store")
        self.count = len(stored)
        if not documents:
            self.cache, self.documents = None, []
            return
        # Corrected once, here, for every document not already in the new space (never a second time); the cache's
        # own corrector is the identity.
        matrix = corrected_matrix(documents, self.corrector, "documents in the document store")
        self.cache = CorrectedCacheStore(
            matrix,
            ids=[doc.id for doc in documents],
            similarity=self.similarity,
            # Contents let the miner treat a copy of a positive (same content, other id) as a positive.
            texts=[doc.content or "" for doc in documents],
        )
        self.documents = documents
        logger.info(
            "Read {count} documents from {store} into the corrected cache",
            count=len(documents),
            store=type(self.document_store).__name__,
        )

    def allowed_rows(self, filters: dict[str, Any] | None) -> set[int] | None:
        """Rows of the documents matching ``filters`` (None: no filter)."""
        if not filters:
            return None
        cache = self.ensure_current()
        if cache is None:
            return set()
        matching = self.document_store.filter_documents(filters=filters)
        known = []
        for doc in matching:
            try:
                known.extend(cache.rows_of([doc.id]))
            except KeyError:
                continue
        return set(known)


class SnapshotComponent:
    """Warm-up and refresh shared by the components that search a DocumentStore snapshot.

    Subclasses set ``document_store``, ``corrector_path``, ``_similarity`` and ``_snapshot = None`` in ``__init__``.
    In pool mode (``document_store`` is None) the snapshot holds only the loaded corrector and never reads a store.
    """

    document_store: Any
    corrector_path: str | None
    corrector_fingerprint: str | None  # pinned by pinned_fingerprint() in __init__, checked again here
    _similarity: str
    _snapshot: DocumentSnapshot | None

    def warm_up(self) -> None:
        """Load the corrector (once; later calls do nothing), refusing one that is not the pinned fingerprint."""
        if self._snapshot is None:
            self.corrector_fingerprint = pinned_fingerprint(
                self.corrector_path, self.corrector_fingerprint, loading=True
            )
            self._snapshot = DocumentSnapshot(
                self.document_store, load_corrector(self.corrector_path), self._similarity
            )

    def close(self) -> None:
        """Release what the component holds: the snapshot and corrector, and the wrapped retriever (pool mode)."""
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()
        self._snapshot = None

    def refresh(self) -> None:
        """Re-read the document store now (e.g. after documents were overwritten in place); pool mode has no copy."""
        if self.document_store is not None:
            self._ready_snapshot().refresh()

    def _ready_snapshot(self) -> DocumentSnapshot:
        self.warm_up()
        if self._snapshot is None:
            raise RuntimeError("warm_up() did not initialise the component")
        return self._snapshot
