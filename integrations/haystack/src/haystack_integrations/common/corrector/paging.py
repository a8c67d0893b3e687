"""Reading a document store page by page, where the DocumentStore protocol reads everything at once.

Haystack's protocol offers one way to read documents, ``filter_documents(filters)``, which returns all of them in one
list: 100,000 documents with 384-dimensional embeddings are more than a gigabyte of Python floats. The readers here
list the matching documents' ids first (a few megabytes for 100,000 ids), then fetch them a page at a time through
the store's own by-id lookup, so the memory a pass over the store needs is the ids plus one page. Paging by ids, not
by offset, stays correct while the pages are overwritten in place: an overwrite can reorder a store's scan, never its
ids.

Stores with a reader: Qdrant, Chroma, PostgreSQL with pgvector. Haystack's in-memory store already holds every
document in memory and ``filter_documents`` returns those same objects, so it is read in one call at no extra cost;
any other store falls back to that, with a log line saying so (:func:`page_reader` takes a reader of your own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from haystack import Document, logging

logger = logging.getLogger(__name__)


class PageReader(Protocol):
    """What :func:`document_pages` needs from a store: the matching ids, then the documents of a page of them."""

    def ids(self, filters: dict[str, Any] | None) -> list[str]: ...

    def fetch(self, ids: list[str]) -> list[Document]: ...


class StoreReader:
    """A reader holds the store it reads."""

    def __init__(self, document_store: Any) -> None:
        self.document_store = document_store


class OneCallReader(StoreReader):
    """Any store: ``filter_documents`` once, its documents served page by page (no memory bound of its own)."""

    def __init__(self, document_store: Any) -> None:
        super().__init__(document_store)
        self._documents: dict[str, Document] = {}

    def ids(self, filters: dict[str, Any] | None) -> list[str]:
        store = self.document_store
        documents = store.filter_documents(filters=filters) if filters else store.filter_documents()
        self._documents = {doc.id: doc for doc in documents}
        return list(self._documents)

    def fetch(self, ids: list[str]) -> list[Document]:
        return [self._documents[i] for i in ids if i in self._documents]


class QdrantReader(StoreReader):
    """Qdrant: ids by a payload-only scroll, pages by ``get_documents_by_id``."""

    def ids(self, filters: dict[str, Any] | None) -> list[str]:
        from haystack_integrations.document_stores.qdrant.filters import convert_filters_to_qdrant

        store = self.document_store
        store._initialize_client()
        ids: list[str] = []
        offset = None
        while True:
            records, offset = store._client.scroll(
                collection_name=store.index,
                scroll_filter=convert_filters_to_qdrant(filters),
                limit=store.scroll_size,
                offset=offset,
                with_payload=["id"],
                with_vectors=False,
            )
            ids.extend(record.payload["id"] for record in records)
            if not records or store._check_stop_scrolling(offset):
                return ids

    def fetch(self, ids: list[str]) -> list[Document]:
        return self.document_store.get_documents_by_id(ids)


class ChromaReader(StoreReader):
    """Chroma: ids by a ``get`` that includes nothing else, pages by ``get(ids=...)``."""

    def ids(self, filters: dict[str, Any] | None) -> list[str]:
        store = self.document_store
        store._ensure_initialized()
        kwargs = {**store._prepare_get_kwargs(filters), "include": []}
        return list(store._collection.get(**kwargs)["ids"])

    def fetch(self, ids: list[str]) -> list[Document]:
        store = self.document_store
        result = store._collection.get(ids=ids, include=["embeddings", "documents", "metadatas"])
        return store._get_result_to_documents(result)


class PgvectorReader(StoreReader):
    """PostgreSQL with pgvector: ids by ``SELECT id`` with the filters' WHERE clause, pages by an ``id in`` filter."""

    def ids(self, filters: dict[str, Any] | None) -> list[str]:
        from haystack_integrations.document_stores.pgvector.filters import (
            _convert_filters_to_where_clause_and_params,
            _validate_filters,
        )
        from psycopg.sql import SQL, Identifier

        store = self.document_store
        _validate_filters(filters)
        query = SQL("SELECT id FROM {schema}.{table}").format(
            schema=Identifier(store.schema_name), table=Identifier(store.table_name)
        )
        params: tuple = ()
        if filters:
            where, params = _convert_filters_to_where_clause_and_params(filters)
            query += where
        store._ensure_db_setup()
        rows = store._execute_sql(
            cursor=store._dict_cursor, sql_query=query, params=params, error_msg="Could not list the document ids"
        ).fetchall()
        return [row["id"] for row in rows]

    def fetch(self, ids: list[str]) -> list[Document]:
        return self.document_store.filter_documents(filters={"field": "id", "operator": "in", "value": ids})


READERS = {
    "QdrantDocumentStore": QdrantReader,
    "ChromaDocumentStore": ChromaReader,
    "PgvectorDocumentStore": PgvectorReader,
}


def page_reader(document_store: Any) -> PageReader:
    """The reader for this store's class: paged where :data:`READERS` has one, else one ``filter_documents`` call."""
    reader = READERS.get(type(document_store).__name__)
    if reader is not None:
        return reader(document_store)
    if type(document_store).__name__ != "InMemoryDocumentStore":
        logger.info(
            "{store} has no paged reader here: its documents are read with one filter_documents() call, so memory "
            "grows with the store",
            store=type(document_store).__name__,
        )
    return OneCallReader(document_store)


def document_pages(reader: PageReader, ids: list[str], page_size: int) -> Iterator[list[Document]]:
    """The documents of ``ids``, ``page_size`` at a time (ids deleted since they were listed are left out)."""
    for start in range(0, len(ids), page_size):
        yield reader.fetch(ids[start : start + page_size])
