"""build_training_dataset: (anchor, positive) text pairs from BEIR-style queries, corpus and qrels.

A helper, not a requirement: the corrected losses take any (anchor, positive[, negatives...]) dataset and recognise
its texts by their tokens (:mod:`haystack_corrector.sentence_transformers.relevance`). This one makes one row per
relevant (query, document) pair, with the document's text exactly as the store holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from haystack_corrector.beir import Document, document_text
from haystack_corrector.cache_store import CorrectedCacheStore

logger = logging.getLogger(__name__)

COLUMNS = ("anchor", "positive")


def build_training_dataset(
    queries: Mapping[str, str],
    corpus: Mapping[str, Document],
    qrels: Mapping[str, Mapping[str, int]],
    store: CorrectedCacheStore,
    min_grade: int = 1,
) -> Any:
    """One row per relevant (query, document) pair: columns ``anchor`` and ``positive``.

    Args:
        queries: ``{query_id: text}``.
        corpus: ``{doc_id: text or {"title", "text"}}``; every relevant document must be in ``store.ids``.
        qrels: ``{query_id: {doc_id: grade}}``; pairs with ``grade >= min_grade`` become rows.
        store: the cache the loss samples from. If it has no texts yet, they are taken from ``corpus``.

    Returns:
        a ``datasets.Dataset``.
    """
    from datasets import Dataset

    if not isinstance(store, CorrectedCacheStore):
        raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
    if store.texts is None:
        missing = [doc_id for doc_id in store.ids if doc_id not in corpus]
        if missing:
            raise ValueError(
                f"The store has no texts and {len(missing)} of its ids are not in corpus (first: {missing[0]!r}); "
                "build the store from this corpus with encode_corpus"
            )
        store.texts = [document_text(corpus[doc_id]) for doc_id in store.ids]
    anchors: list[str] = []
    positives: list[str] = []
    queries_used: set[str] = set()
    skipped_unknown = skipped_query = 0
    for query_id, judged in qrels.items():
        if query_id not in queries:
            skipped_query += 1
            continue
        for doc_id, grade in judged.items():
            if grade < min_grade:
                continue
            try:
                (row,) = store.rows_of([doc_id])
            except KeyError:
                skipped_unknown += 1
                continue
            anchors.append(queries[query_id])
            positives.append(store.texts[row])  # type: ignore[index]
            queries_used.add(query_id)
    if skipped_query:
        logger.warning("Skipped %d judged queries that are missing from queries", skipped_query)
    if skipped_unknown:
        logger.warning("Skipped %d relevant documents that are not in the store", skipped_unknown)
    if not anchors:
        raise ValueError("No (query, relevant document) pair found: check that qrels, queries and the store match")
    logger.info("Built %d training pairs for %d queries", len(anchors), len(queries_used))
    return Dataset.from_dict({"anchor": anchors, "positive": positives})
