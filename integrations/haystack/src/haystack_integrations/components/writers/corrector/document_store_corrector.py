"""DocumentStoreCorrector: upgrade every embedding of a DocumentStore in place through a corrector, resumably."""

from __future__ import annotations

import logging
from typing import Any

from haystack import component, default_from_dict, default_to_dict
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.common.corrector.correctors import CORRECTOR_META
from haystack_integrations.common.corrector.documents import FRESH_MARKER, check_document_store, with_embeddings
from haystack_integrations.components.embedders.corrector.embedding_corrector import EmbeddingCorrector
from tqdm.auto import tqdm

from haystack_corrector._validation import check_bool, check_positive_int

logger = logging.getLogger(__name__)


@component
class DocumentStoreCorrector:
    """Rewrites the (stale) embeddings of a DocumentStore through a saved corrector, page by page, in place.

    It reads the store's documents (``filter_documents(filters)``), corrects the embeddings of those not yet
    corrected with ``EmbeddingCorrector`` and writes each page back with ``DuplicatePolicy.OVERWRITE`` under the same
    ids, with the same content and meta plus the corrector's record (``meta["corrector"]``, ``meta["corrector_path"]``).
    The store keeps its document count: no second copy is created. An interrupted run is resumed by running again:
    documents this corrector already wrote are skipped, so no embedding is corrected twice. Documents that another
    corrector wrote are refused (their embeddings are no longer the old encoder's) unless ``force=True``.

    Usage example:
    ```python
    from haystack import Document
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_corrector import Corrector
    from haystack_integrations.components.writers.corrector import DocumentStoreCorrector

    store = InMemoryDocumentStore()
    store.write_documents([Document(content="x", embedding=[0.6, 0.8])])
    Corrector(2).save("identity-corrector")
    upgrade = DocumentStoreCorrector(store, "identity-corrector")
    print(upgrade.run())  # {'corrected': 1, 'skipped': 0}
    print(upgrade.run())  # {'corrected': 0, 'skipped': 1}
    ```
    """

    def __init__(
        self,
        document_store: Any,
        corrector_path: str,
        page_size: int = 1000,
        force: bool = False,
        progress_bar: bool = True,
    ) -> None:
        """
        :param document_store: any Haystack DocumentStore with ``write_documents(..., policy=OVERWRITE)``.
        :param corrector_path: directory of a saved ``haystack_corrector.Corrector``.
        :param page_size: documents corrected and written per page; a crash loses at most the page being written.
        :param force: also rewrite documents another corrector wrote (applies this one to its output).
        :param progress_bar: show a progress bar over the pages.
        """
        check_document_store(document_store)
        if not callable(getattr(document_store, "write_documents", None)):
            raise TypeError(f"document_store must offer write_documents(), got {type(document_store).__name__}")
        self.document_store = document_store
        self.corrector_path = corrector_path
        self.page_size = check_positive_int(page_size, "page_size")
        self.force = check_bool(force, "force")
        self.progress_bar = check_bool(progress_bar, "progress_bar")
        self._embedder = EmbeddingCorrector(corrector_path, force=force)

    def warm_up(self) -> None:
        """Load the corrector (once)."""
        self._embedder.warm_up()

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            document_store=self.document_store,
            corrector_path=self.corrector_path,
            page_size=self.page_size,
            force=self.force,
            progress_bar=self.progress_bar,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocumentStoreCorrector:
        return default_from_dict(cls, data)

    @component.output_types(corrected=int, skipped=int)
    def run(self, filters: dict[str, Any] | None = None) -> dict[str, int]:
        """Correct every matching document not yet corrected by this corrector; returns the counts.

        :param filters: Haystack filters choosing the documents to upgrade (default: all).
        """
        self.warm_up()
        fingerprint = self._embedder.fingerprint
        documents = (
            self.document_store.filter_documents(filters=filters) if filters else self.document_store.filter_documents()
        )
        embedded = with_embeddings(documents, "documents in the store")  # one warning for those without
        fresh = [doc for doc in embedded if (doc.meta or {}).get(CORRECTOR_META) == FRESH_MARKER]
        if fresh:
            logger.info("%d documents are marked as embedded by the new encoder; never corrected", len(fresh))
        embedded = [doc for doc in embedded if (doc.meta or {}).get(CORRECTOR_META) != FRESH_MARKER]
        done = [doc for doc in embedded if (doc.meta or {}).get(CORRECTOR_META) == fingerprint]
        todo = [doc for doc in embedded if (doc.meta or {}).get(CORRECTOR_META) != fingerprint]
        if done:
            logger.info(
                "%d of %d documents were already corrected by this corrector; skipped", len(done), len(documents)
            )
        foreign = [doc for doc in todo if (doc.meta or {}).get(CORRECTOR_META)]
        if foreign and not self.force:  # checked before the first write, so a refusal leaves the store as it was
            raise ValueError(
                f"{len(foreign)} of {len(documents)} documents were corrected by another corrector (first: id "
                f"{foreign[0].id!r}, meta[{CORRECTOR_META!r}] = {foreign[0].meta[CORRECTOR_META]!r}, this one is "
                f"{fingerprint!r}); correcting them would apply a corrector to corrected embeddings. Pass force=True "
                "to do it anyway"
            )
        count_before = self.document_store.count_documents()
        pages = range(0, len(todo), self.page_size)
        for start in tqdm(pages, desc="Correcting the store", unit="page", disable=not self.progress_bar or not todo):
            page = self._embedder.run(documents=todo[start : start + self.page_size])["documents"]
            self.document_store.write_documents(page, policy=DuplicatePolicy.OVERWRITE)
        count_after = self.document_store.count_documents()
        if count_after != count_before:
            raise RuntimeError(
                f"{type(self.document_store).__name__} holds {count_after} documents after the upgrade, {count_before} "
                "before: writing under the same ids created copies instead of overwriting"
            )
        return {"corrected": len(todo), "skipped": len(documents) - len(todo)}
