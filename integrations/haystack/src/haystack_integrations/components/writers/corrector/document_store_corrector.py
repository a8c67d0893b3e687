"""DocumentStoreCorrector: upgrade every embedding of a DocumentStore in place through a corrector, resumably."""

from __future__ import annotations

import dataclasses
from typing import Any

from haystack import component, default_from_dict, default_to_dict, logging
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.common.corrector.correctors import CORRECTOR_META
from haystack_integrations.common.corrector.documents import FRESH_MARKER, check_document_store, has_embedding
from haystack_integrations.common.corrector.paging import document_pages, page_reader
from haystack_integrations.components.embedders.corrector.embedding_corrector import EmbeddingCorrector
from tqdm.auto import tqdm

from haystack_corrector._validation import check_bool, check_positive_int

logger = logging.getLogger(__name__)


@component
class DocumentStoreCorrector:
    """Rewrites the (stale) embeddings of a DocumentStore through a saved corrector, page by page, in place.

    It reads the store's documents a page at a time (Qdrant, Chroma and pgvector by ids; other stores with one
    ``filter_documents(filters)`` call), corrects the embeddings of those not yet corrected with
    ``EmbeddingCorrector`` and writes each page back with ``DuplicatePolicy.OVERWRITE`` under the same
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

        Two passes over the store, each a page at a time (``paging.py``: the matching ids, then ``page_size``
        documents per fetch, so memory holds the ids and one page, not the store): the first counts what is there and
        refuses another corrector's output before anything is written; the second corrects and overwrites each page.

        :param filters: Haystack filters choosing the documents to upgrade (default: all).
        """
        self.warm_up()
        reader = page_reader(self.document_store)
        ids = reader.ids(filters)
        census = self._census(reader, ids)
        if census.todo == 0:
            return {"corrected": 0, "skipped": len(ids)}
        count_before = self.document_store.count_documents()
        corrected = 0
        pages = document_pages(reader, ids, self.page_size)
        total = -(-len(ids) // self.page_size)
        for documents in tqdm(
            pages, desc="Correcting the store", unit="page", total=total, disable=not self.progress_bar
        ):
            # Another corrector's output only with force: one written between the passes is left alone too.
            todo = [doc for doc in documents if self._kind(doc) in (("todo", "foreign") if self.force else ("todo",))]
            if todo:
                page = self._embedder.run(documents=todo)["documents"]
                self.document_store.write_documents(page, policy=DuplicatePolicy.OVERWRITE)
                corrected += len(page)
        count_after = self.document_store.count_documents()
        if count_after != count_before:
            raise RuntimeError(
                f"{type(self.document_store).__name__} holds {count_after} documents after the upgrade, {count_before} "
                "before: writing under the same ids created copies instead of overwriting"
            )
        return {"corrected": corrected, "skipped": len(ids) - corrected}

    def _kind(self, document: Any) -> str:
        """What the upgrade does with a document: missing (no embedding), fresh, done, foreign (another corrector's
        output) or todo."""
        if not has_embedding(document):
            return "missing"
        mark = (document.meta or {}).get(CORRECTOR_META)
        if mark == FRESH_MARKER:
            return "fresh"
        if mark == self._embedder.fingerprint:
            return "done"
        return "foreign" if mark else "todo"

    def _census(self, reader: Any, ids: list[str]) -> _Census:
        """The first pass: counts by kind, logged; another corrector's output refused before the first write."""
        census = _Census()
        pages = document_pages(reader, ids, self.page_size)
        total = -(-len(ids) // self.page_size)
        show = self.progress_bar and total > 1
        for documents in tqdm(pages, desc="Checking the store", unit="page", total=total, disable=not show):
            for doc in documents:
                census.add(self._kind(doc), doc)
        if census.counts["missing"]:
            logger.warning(
                "Skipped {skipped} of {total} documents in the store without an embedding (first id: {first!r}); "
                "embed them to make them retrievable",
                skipped=census.counts["missing"],
                total=len(ids),
                first=census.first["missing"],
            )
        if census.counts["fresh"]:
            logger.info(
                "{count} documents are marked as embedded by the new encoder; never corrected",
                count=census.counts["fresh"],
            )
        if census.counts["done"]:
            logger.info(
                "{done} of {total} documents were already corrected by this corrector; skipped",
                done=census.counts["done"],
                total=len(ids),
            )
        if census.counts["foreign"] and not self.force:
            first = census.first["foreign"]
            raise ValueError(
                f"{census.counts['foreign']} of {len(ids)} documents were corrected by another corrector (first: id "
                f"{first.id!r}, meta[{CORRECTOR_META!r}] = {first.meta[CORRECTOR_META]!r}, this one is "
                f"{self._embedder.fingerprint!r}); correcting them would apply a corrector to corrected embeddings. "
                "Pass force=True to do it anyway"
            )
        return census


@dataclasses.dataclass
class _Census:
    """Documents counted by what the upgrade does with them, and the first of each kind (for messages)."""

    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(("missing", "fresh", "done", "foreign", "todo"), 0)
    )
    first: dict[str, Any] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, document: Any) -> None:
        self.counts[kind] += 1
        self.first.setdefault(kind, document.id if kind == "missing" else document)

    @property
    def todo(self) -> int:
        return self.counts["todo"] + self.counts["foreign"]
