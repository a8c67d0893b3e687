"""CorrectedHardNegativeMiner: hard negatives for training queries, straight from a DocumentStore."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack_integrations.common.corrector.correctors import pinned_fingerprint
from haystack_integrations.common.corrector.documents import (
    check_document_store,
    output_document,
    query_matrix,
    store_similarity,
)
from haystack_integrations.common.corrector.pool import (
    RetrieverPool,
    corrected_pool,
    inner_document_store,
    one_torch_thread,
)
from haystack_integrations.common.corrector.snapshot import DocumentSnapshot, SnapshotComponent

from haystack_corrector import CorrectedCacheStore, HardNegativeSampler


@component
class CorrectedHardNegativeMiner(SnapshotComponent):
    """Mines hard negatives for a batch of queries from a DocumentStore, scored through a corrector.

    The arguments mirror sentence-transformers' ``mine_hard_negatives`` (``sampling_strategy`` ``"top"``,
    ``"gumbel"`` or ``"random"``; ``range_min``/``range_max`` rank window; ``absolute_margin``/``relative_margin``/
    ``max_score`` filters against the query's lowest positive score, ``min_score``). A positive document is never returned.

    Snapshot mode (``document_store=``) ranks the whole store, read into memory. Pool mode (``retriever=`` the store's
    own embedding retriever) asks it for each query's ``pool_size`` stale-nearest documents and ranks, for every query
    of the batch, the union of the batch's pools (plus its positives, looked up by id) by corrected score: the rank
    window ``range_min``/``range_max`` then counts within those candidates.

    Usage example:
    ```python
    from haystack import Document
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack_integrations.components.retrievers.corrector import CorrectedHardNegativeMiner

    store = InMemoryDocumentStore()
    store.write_documents([Document(id=str(i), content=f"doc {i}", embedding=[1.0, i / 10]) for i in range(10)])
    miner = CorrectedHardNegativeMiner(store, num_negatives=2)
    miner.warm_up()
    negatives = miner.run(query_embeddings=[[1.0, 0.9]], positive_document_ids=[["9"]])["negatives"]
    print([doc.id for doc in negatives[0]])  # ['8', '7']
    ```
    """

    def __init__(
        self,
        document_store: Any = None,
        corrector_path: str | None = None,
        num_negatives: int = 1,
        sampling_strategy: str = "top",
        temperature: float = 0.05,
        range_min: int = 0,
        range_max: int | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        seed: int | None = None,
        similarity: str | None = None,
        retriever: Any = None,
        pool_size: int = 100,
        corrector_fingerprint: str | None = None,
    ) -> None:
        """
        :param document_store: any Haystack DocumentStore holding documents with (stale) embeddings.
        :param corrector_path: directory of a saved ``haystack_corrector.Corrector``; ``None`` mines from the stored
            embeddings as they are.
        :param num_negatives: negatives per query (default 1, as the sentence-transformers loss and `haystack-corrector mine`).
        :param sampling_strategy: ``"top"``, ``"gumbel"`` (sample from softmax(score/temperature)) or ``"random"``.
        :param range_min, range_max, absolute_margin, relative_margin, max_score, min_score: as in
            ``mine_hard_negatives`` (see ``haystack_corrector.HardNegativeSampler``).
        :param seed: seed of the sampler's random generator (``gumbel``/``random``).
        :param similarity: ``"cosine"`` or ``"dot_product"``; default: the metric of the store's index, else dot product.
        :param retriever: pool mode: the store's own embedding retriever (give it or ``document_store``).
        :param pool_size: pool mode: candidates fetched per query.
        """
        if (document_store is None) == (retriever is None):
            raise ValueError(
                "Give exactly one of document_store (snapshot mode: the whole store read into memory) or retriever "
                "(pool mode: candidates from the store's own embedding retriever)"
            )
        if document_store is not None:
            check_document_store(document_store)
        self._pool = None if retriever is None else RetrieverPool(retriever, pool_size)
        self.document_store = document_store
        self.retriever = retriever
        self.pool_size = pool_size
        self.corrector_path = corrector_path
        self.corrector_fingerprint = pinned_fingerprint(corrector_path, corrector_fingerprint)
        self.num_negatives = num_negatives
        self.sampling_strategy = sampling_strategy
        self.temperature = temperature
        self.range_min = range_min
        self.range_max = range_max
        self.absolute_margin = absolute_margin
        self.relative_margin = relative_margin
        self.max_score = max_score
        self.min_score = min_score
        self.seed = seed
        self.similarity = similarity
        self._similarity = store_similarity(
            document_store if retriever is None else inner_document_store(retriever), similarity
        )
        # Validate every sampler argument now, on a one-row stand-in, so bad values fail at construction.
        self._sampler_kwargs = {
            "num_negatives": num_negatives,
            "sampling_strategy": sampling_strategy,
            "temperature": temperature,
            "range_min": range_min,
            "range_max": range_max,
            "absolute_margin": absolute_margin,
            "relative_margin": relative_margin,
            "max_score": max_score,
            "min_score": min_score,
            "seed": seed,
        }
        HardNegativeSampler(CorrectedCacheStore([[1.0]]), **self._sampler_kwargs)
        self._snapshot: DocumentSnapshot | None = None
        self._sampler: HardNegativeSampler | None = None

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            document_store=self.document_store,
            corrector_path=self.corrector_path,
            num_negatives=self.num_negatives,
            sampling_strategy=self.sampling_strategy,
            temperature=self.temperature,
            range_min=self.range_min,
            range_max=self.range_max,
            absolute_margin=self.absolute_margin,
            relative_margin=self.relative_margin,
            max_score=self.max_score,
            min_score=self.min_score,
            seed=self.seed,
            similarity=self.similarity,
            retriever=self.retriever,
            pool_size=self.pool_size,
            corrector_fingerprint=self.corrector_fingerprint,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectedHardNegativeMiner:
        return default_from_dict(cls, data)

    @component.output_types(negatives=list[list[Document]])
    def run(
        self,
        query_embeddings: list[list[float]],
        positive_document_ids: list[list[str]],
        filters: dict[str, Any] | None = None,
    ) -> dict[str, list[list[Document]]]:
        """``num_negatives`` hard negatives per query, never one of its positives.

        :param query_embeddings: one embedding per query (from the current query encoder).
        :param positive_document_ids: per query, the ids of its relevant documents.
        :param filters: Haystack filters: negatives only among the matching documents (pool mode passes them to the
            wrapped retriever).
        """
        queries = self._check_queries(query_embeddings, positive_document_ids)
        documents, cache = self._candidates(query_embeddings, positive_document_ids, filters)
        return self._mine(queries, positive_document_ids, documents, cache, filtered=bool(filters))

    @component.output_types(negatives=list[list[Document]])
    async def run_async(
        self,
        query_embeddings: list[list[float]],
        positive_document_ids: list[list[str]],
        filters: dict[str, Any] | None = None,
    ) -> dict[str, list[list[Document]]]:
        """As ``run``; pool mode awaits the wrapped retriever's ``run_async``, snapshot mode runs in a worker thread."""
        if self._pool is None:
            return await asyncio.to_thread(self.run, query_embeddings, positive_document_ids, filters)
        queries = self._check_queries(query_embeddings, positive_document_ids)
        pools = await asyncio.gather(*(self._pool.fetch_async(q, filters) for q in query_embeddings))
        documents, cache = self._pool_candidates(pools, positive_document_ids, filtered=bool(filters))
        return self._mine(queries, positive_document_ids, documents, cache, filtered=bool(filters))

    @staticmethod
    def _check_queries(query_embeddings: list[list[float]], positive_document_ids: list[list[str]]) -> Any:
        queries = query_matrix(query_embeddings, None, "query_embeddings")
        if queries.ndim != 2:
            raise ValueError("query_embeddings must be a list of embeddings (a list of lists of floats)")
        if not isinstance(positive_document_ids, list) or len(positive_document_ids) != queries.shape[0]:
            raise ValueError(
                f"positive_document_ids must be a list with one list of ids per query: got "
                f"{len(positive_document_ids) if isinstance(positive_document_ids, list) else type(positive_document_ids).__name__}"
                f" for {queries.shape[0]} queries"
            )
        for position, ids in enumerate(positive_document_ids):
            if isinstance(ids, str):
                raise ValueError(f"positive_document_ids[{position}] must be a list of ids, got the string {ids!r}")
        return queries

    def _mine(
        self,
        queries: Any,
        positive_document_ids: list[list[str]],
        documents: list[Document],
        cache: Any,
        filtered: bool = False,
    ) -> dict[str, list[list[Document]]]:
        """Sample among ``cache``'s rows. ``filtered``: the candidates are the documents matching the filters only,
        and a positive outside them is left out (it cannot be a negative, and its score is not a margin's
        reference)."""
        if cache is None:
            raise ValueError("The document store holds no document with an embedding: there is nothing to mine")
        if queries.shape[1] != cache.dim:
            raise ValueError(
                f"query_embeddings has dimension {queries.shape[1]} but the stored embeddings have dimension {cache.dim}"
            )
        if self._sampler is None:
            self._sampler = HardNegativeSampler(cache, **self._sampler_kwargs)  # type: ignore[arg-type]
        # One sampler for the component's life: its random generator runs on across batches (pool mode builds a new
        # cache per batch; re-seeding there would draw the same random stream for every batch).
        self._sampler.store = cache
        positives = []
        known = set(cache.ids) if filtered else None
        for position, ids in enumerate(positive_document_ids):
            try:
                positives.append(cache.rows_of([i for i in ids if known is None or i in known]))
            except KeyError as exc:
                raise ValueError(f"positive_document_ids[{position}]: {exc.args[0]}") from None
        # A pool's cache is small: its products run on one thread (pool.one_torch_thread); a snapshot keeps torch's.
        with one_torch_thread() if self._pool is not None else contextlib.nullcontext():
            rows = self._sampler.sample(queries, positives)
        return {
            "negatives": [
                [output_document(documents[r], None, False) for r in query_rows] for query_rows in rows.tolist()
            ]
        }

    def _candidates(
        self,
        query_embeddings: list[list[float]],
        positive_document_ids: list[list[str]],
        filters: dict[str, Any] | None = None,
    ) -> tuple[list[Document], Any]:
        """The documents to rank and their corrected cache: the snapshot (only the documents matching ``filters``),
        or the batch's pools (plus, without filters, its positives)."""
        snapshot = self._ready_snapshot()
        if self._pool is not None:
            pools = [self._pool.fetch(q, filters) for q in query_embeddings]
            return self._pool_candidates(pools, positive_document_ids, filtered=bool(filters))
        cache = snapshot.ensure_current()  # first: it may re-read the documents
        allowed = snapshot.allowed_rows(filters)
        if cache is None or allowed is None:
            return snapshot.documents, cache
        keep = sorted(allowed)
        documents = [snapshot.documents[row] for row in keep]
        if not documents:
            return [], None
        subset = CorrectedCacheStore(
            cache.stale_embeddings(keep),
            ids=[d.id for d in documents],
            similarity=cache.similarity,
            texts=[d.content or "" for d in documents],
        )
        return documents, subset

    def _pool_candidates(
        self, pools: list[list[Document]], positive_document_ids: list[list[str]], filtered: bool = False
    ) -> tuple[list[Document], Any]:
        """The union of the queries' pools, plus (without filters) the positives that are not in it, by id."""
        by_id: dict[str, Document] = {}
        for pool in pools:
            for doc in pool:
                by_id.setdefault(doc.id, doc)
        missing = [] if filtered else sorted({i for ids in positive_document_ids for i in ids} - by_id.keys())
        if missing:
            store = inner_document_store(self.retriever)
            if store is None:
                raise ValueError(
                    f"{len(missing)} positives (first: {missing[0]!r}) are not among the retrieved candidates and "
                    f"{type(self.retriever).__name__} does not expose its document store to look them up by id"
                )
            for doc_id in missing:  # one "==" filter each: Chroma supports no other operator on ids
                for doc in store.filter_documents(filters={"field": "id", "operator": "==", "value": doc_id}):
                    by_id.setdefault(doc.id, doc)
        return corrected_pool(list(by_id.values()), self._ready_snapshot().corrector, self._similarity)
