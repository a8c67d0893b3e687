"""The corrector components on real vector databases: InMemory, Qdrant (local mode, on disk), Chroma (persistent),
PostgreSQL with pgvector (a real server, started once per session by ``pgserver`` on a Unix socket in a temporary
folder, and stopped at the end) and Milvus (milvus-lite, embedded, one file per test).

One suite, parametrised over the four stores, each test against an oracle: a float64 brute-force ranking of the
corrected embeddings, the store's own retriever, or the snapshot mode's result.
"""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
import torch

pytest.importorskip("haystack")

from haystack import Document, Pipeline, component  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever  # noqa: E402
from haystack.components.writers import DocumentWriter  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack.document_stores.types import DuplicatePolicy  # noqa: E402
from haystack_integrations.common.corrector.paging import document_pages, page_reader  # noqa: E402
from haystack_integrations.components.embedders.corrector import EmbeddingCorrector  # noqa: E402
from haystack_integrations.components.retrievers.corrector import (  # noqa: E402
    CorrectedEmbeddingRetriever,
    CorrectedHardNegativeMiner,
)
from haystack_integrations.components.writers.corrector import DocumentStoreCorrector  # noqa: E402

from haystack_corrector import Corrector  # noqa: E402

N, DIM = 30, 4
STORES = ["in_memory", "qdrant", "chroma", "pgvector", "milvus"]
_PG: dict[str, str] = {}  # the session's PostgreSQL server: its connection string


@pytest.fixture(scope="session", autouse=True)
def _postgres_server(tmp_path_factory):
    """Stop the PostgreSQL server at the end of the session, if a pgvector test started one."""
    yield
    server = _PG.pop("server", None)
    if server is not None:
        server.cleanup()


def _postgres_uri(tmp_path_factory_dir) -> str:
    if "uri" not in _PG:
        pgserver = pytest.importorskip("pgserver")
        server = pgserver.get_server(str(tmp_path_factory_dir), cleanup_mode="stop")
        _PG["server"], _PG["uri"] = server, server.get_uri()
        # The store reads its connection string from this variable, so it serialises (a token secret would not).
        os.environ["PG_CONN_STR"] = _PG["uri"]
    return _PG["uri"]


def _documents(n=N, seed=0):
    # L2-normalised, as sentence embeddings are: Qdrant normalises what it stores for cosine
    embeddings = torch.nn.functional.normalize(
        torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=1
    )
    return [
        Document(id=f"doc{i}", content=f"document {i}", meta={"group": i % 2}, embedding=embeddings[i].tolist())
        for i in range(n)
    ]


def own_retriever(retriever_class, store, **kwargs):
    """The store's own embedding retriever (pgvector's take ``document_store`` by keyword only)."""
    return retriever_class(document_store=store, **kwargs)


def make_store(kind, folder):
    """A cosine store of ``kind`` whose data lives under ``folder``, and its own embedding retriever class."""
    if kind == "in_memory":
        return InMemoryDocumentStore(embedding_similarity_function="cosine"), InMemoryEmbeddingRetriever
    if kind == "qdrant":
        # recreate_index stays False: a pipeline loaded from YAML rebuilds the store from its to_dict, and True
        # would empty the collection there.
        qdrant = pytest.importorskip("haystack_integrations.document_stores.qdrant")
        retrievers = pytest.importorskip("haystack_integrations.components.retrievers.qdrant")
        store = qdrant.QdrantDocumentStore(
            path=str(folder / "qdrant"), embedding_dim=DIM, similarity="cosine", progress_bar=False
        )
        return store, retrievers.QdrantEmbeddingRetriever
    if kind == "pgvector":
        pgvector = pytest.importorskip("haystack_integrations.document_stores.pgvector")
        retrievers = pytest.importorskip("haystack_integrations.components.retrievers.pgvector")
        from haystack.utils import Secret

        _postgres_uri(folder.parent / "postgres")
        name = f"{abs(hash(str(folder))) % 10**12}"  # a table (and its indexes) per test
        store = pgvector.PgvectorDocumentStore(
            connection_string=Secret.from_env_var("PG_CONN_STR"),
            table_name=f"t_{name}",
            keyword_index_name=f"k_{name}",
            hnsw_index_name=f"h_{name}",
            embedding_dimension=DIM,
            vector_function="cosine_similarity",
            recreate_table=False,  # a new table per test anyway; True would empty it when a YAML rebuilds the store
            search_strategy="exact_nearest_neighbor",
        )
        return store, retrievers.PgvectorEmbeddingRetriever
    if kind == "milvus":
        milvus = pytest.importorskip("milvus_haystack")
        store = milvus.MilvusDocumentStore(
            connection_args={"uri": str(folder / "milvus.db")},  # milvus-lite: an embedded Milvus in one file
            index_params={"index_type": "FLAT", "metric_type": "COSINE"},
        )
        return store, milvus.MilvusEmbeddingRetriever
    chroma = pytest.importorskip("haystack_integrations.document_stores.chroma")
    retrievers = pytest.importorskip("haystack_integrations.components.retrievers.chroma")
    return chroma.ChromaDocumentStore(persist_path=str(folder / "chroma"), distance_function="cosine"), (
        retrievers.ChromaEmbeddingRetriever
    )


@pytest.fixture(params=STORES)
def store_kind(request):
    return request.param


@pytest.fixture
def store_and_retriever(store_kind, tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")  # Chroma's telemetry
    if store_kind == "milvus":  # milvus-haystack lives outside haystack_integrations: a YAML user allows it, as here
        monkeypatch.setenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", "milvus_haystack.*")
    store, retriever_class = make_store(store_kind, tmp_path)
    store.write_documents(_documents())
    yield store, retriever_class
    close = getattr(store, "close", None)
    if callable(close):
        close()


@pytest.fixture
def corrector_path(tmp_path):
    corrector = Corrector(DIM, hidden_dim=8)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    corrector.save(tmp_path / "corrector")
    return str(tmp_path / "corrector")


def _oracle(query, documents, corrector_path=None, allowed=None):
    """Ids of ``documents`` ranked by cosine to ``query`` of their (corrected) embeddings, float64."""
    matrix = torch.tensor([d.embedding for d in documents])
    if corrector_path is not None:
        matrix = Corrector.load(corrector_path)(matrix).detach()
    scores = torch.nn.functional.cosine_similarity(torch.tensor([query], dtype=torch.float64), matrix.double())
    order = torch.argsort(scores, descending=True).tolist()
    return [documents[i].id for i in order if allowed is None or documents[i].id in allowed]


def _retrievers(store, retriever_class, corrector_path, **kwargs):
    """The same corrected retriever in snapshot mode and in pool mode with a pool covering the whole store."""
    snapshot = CorrectedEmbeddingRetriever(store, corrector_path=corrector_path, **kwargs)
    pool = CorrectedEmbeddingRetriever(
        retriever=own_retriever(retriever_class, store), corrector_path=corrector_path, pool_size=N, **kwargs
    )
    return {"snapshot": snapshot, "pool": pool}


QUERY = [0.3, -0.2, 0.9, 0.1]


# ------------------------------------------------------------------------------------------- corrected retrieval
def test_without_a_corrector_both_modes_rank_and_score_as_the_stores_own_retriever(store_and_retriever):
    """Drop-in: the same documents in the same order with the same scores (Chroma's are distances)."""
    store, retriever_class = store_and_retriever
    theirs = own_retriever(retriever_class, store, top_k=5).run(query_embedding=QUERY)["documents"]
    for mode, retriever in _retrievers(store, retriever_class, None, top_k=5).items():
        ours = retriever.run(query_embedding=QUERY)["documents"]
        assert [d.id for d in ours] == [d.id for d in theirs], mode
        assert [d.score for d in ours] == pytest.approx([d.score for d in theirs], abs=1e-5), mode


def test_both_modes_equal_the_corrected_oracle(store_and_retriever, corrector_path):
    store, retriever_class = store_and_retriever
    expected = _oracle(QUERY, _documents(), corrector_path)[:7]
    results = {}
    for mode, retriever in _retrievers(store, retriever_class, corrector_path, top_k=7).items():
        retriever.warm_up()
        results[mode] = retriever.run(query_embedding=QUERY)["documents"]
        assert [d.id for d in results[mode]] == expected, mode
    # pool_size >= the store's size: the pool mode's ranking and scores are the snapshot mode's
    assert [d.score for d in results["pool"]] == pytest.approx([d.score for d in results["snapshot"]], abs=1e-6)


def test_pool_mode_reranks_only_the_stale_top_pool(store_and_retriever, corrector_path):
    store, retriever_class = store_and_retriever
    pool_ids = [d.id for d in own_retriever(retriever_class, store, top_k=8).run(query_embedding=QUERY)["documents"]]
    pool_documents = [d for d in _documents() if d.id in pool_ids]
    retriever = CorrectedEmbeddingRetriever(
        retriever=own_retriever(retriever_class, store), corrector_path=corrector_path, pool_size=8, top_k=4
    )
    found = [d.id for d in retriever.run(query_embedding=QUERY)["documents"]]
    assert found == _oracle(QUERY, pool_documents, corrector_path)[:4]


def test_filters_follow_the_filter_policy_in_both_modes(store_and_retriever, corrector_path):
    store, retriever_class = store_and_retriever
    group1 = {"field": "meta.group", "operator": "==", "value": 1}
    small = {"field": "meta.group", "operator": "in", "value": [0, 1]}
    odd = {d.id for d in _documents() if d.meta["group"] == 1}
    expected = _oracle(QUERY, _documents(), corrector_path, allowed=odd)[:5]
    for policy in ("replace", "merge"):
        init = small if policy == "merge" else {"field": "meta.group", "operator": "==", "value": 0}
        for mode, retriever in _retrievers(
            store, retriever_class, corrector_path, top_k=5, filters=init, filter_policy=policy
        ).items():
            found = retriever.run(query_embedding=QUERY, filters=group1)["documents"]
            assert [d.id for d in found] == expected, (policy, mode)


def test_top_k_scale_score_and_return_embedding(store_and_retriever, store_kind):
    store, retriever_class = store_and_retriever
    for mode, retriever in _retrievers(store, retriever_class, None, top_k=3).items():
        plain = retriever.run(query_embedding=QUERY)["documents"]
        # top_k=0: what the store's own retriever answers (InMemory: nothing; Qdrant, Chroma: their init top_k)
        stock = own_retriever(retriever_class, store, top_k=3).run(query_embedding=QUERY, top_k=0)["documents"]
        ours = retriever.run(query_embedding=QUERY, top_k=0)["documents"]
        assert len(plain) == 3 and (len(ours) == len(stock) or mode == "snapshot"), mode
        assert all(d.embedding is None for d in plain), mode
        scaled = retriever.run(query_embedding=QUERY, scale_score=True, return_embedding=True)["documents"]
        # each store's own scale: Chroma's distance 1 - cosine, Milvus's (cosine + 1) / 2, the others' the cosine
        scale = {"chroma": lambda x: 1 - x, "milvus": lambda x: 2 * x - 1}.get(store_kind, lambda x: x)
        cosines = [scale(d.score) for d in plain]
        assert [d.score for d in scaled] == pytest.approx([(c + 1) / 2 for c in cosines], abs=1e-6)
        stored = {d.id: d.embedding for d in _documents()}
        for doc in scaled:
            assert doc.embedding == pytest.approx(stored[doc.id], abs=1e-6)


def test_run_async_equals_run(store_and_retriever, corrector_path, store_kind):
    store, retriever_class = store_and_retriever
    retrievers = _retrievers(store, retriever_class, corrector_path, top_k=5)
    if store_kind != "in_memory":  # Qdrant's local mode and Chroma's persistent client have no async client
        retrievers.pop("pool")
    for mode, retriever in retrievers.items():
        sync = retriever.run(query_embedding=QUERY)["documents"]
        async_ = asyncio.run(retriever.run_async(query_embedding=QUERY))["documents"]
        assert [(d.id, d.score) for d in async_] == [(d.id, d.score) for d in sync], mode


def test_an_empty_store_returns_no_documents(store_kind, tmp_path, monkeypatch, corrector_path):
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    store, retriever_class = make_store(store_kind, tmp_path)
    for mode, retriever in _retrievers(store, retriever_class, corrector_path).items():
        assert retriever.run(query_embedding=QUERY)["documents"] == [], mode


def test_pool_mode_skips_candidates_without_embeddings_with_one_warning(caplog):
    @component
    class NoEmbeddingsRetriever:  # a store's retriever that leaves some embeddings out of its results
        def __init__(self, document_store):
            self.inner = InMemoryEmbeddingRetriever(document_store)

        def to_dict(self):
            return {}

        @component.output_types(documents=list[Document])
        def run(self, query_embedding: list[float], filters: dict | None = None, top_k: int | None = None):
            documents = self.inner.run(query_embedding, filters, top_k, return_embedding=True)["documents"]
            return {"documents": [Document(id=d.id, content=d.content) if d.id == "doc3" else d for d in documents]}

    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents(_documents())
    with pytest.raises(ValueError, match="Cannot tell which metric"):  # the wrapper hides its store: name it
        CorrectedEmbeddingRetriever(retriever=NoEmbeddingsRetriever(store), pool_size=N, top_k=N)
    retriever = CorrectedEmbeddingRetriever(
        retriever=NoEmbeddingsRetriever(store), pool_size=N, top_k=N, similarity="cosine"
    )
    with caplog.at_level(logging.WARNING):
        found = [d.id for d in retriever.run(query_embedding=QUERY)["documents"]]
    assert found == [i for i in _oracle(QUERY, _documents()) if i != "doc3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 1 of 30 candidates" in warnings[0]


def test_wrong_input():
    store = InMemoryDocumentStore()
    with pytest.raises(ValueError, match="exactly one of document_store"):
        CorrectedEmbeddingRetriever()
    with pytest.raises(ValueError, match="exactly one of document_store"):
        CorrectedEmbeddingRetriever(store, retriever=InMemoryEmbeddingRetriever(store))
    with pytest.raises(ValueError, match="pool_size must be > 0"):
        CorrectedEmbeddingRetriever(retriever=InMemoryEmbeddingRetriever(store), pool_size=0)
    with pytest.raises(TypeError, match="Haystack embedding retriever"):
        CorrectedEmbeddingRetriever(retriever=object())
    with pytest.raises(ValueError, match="Unknown filter policy|replace|merge"):
        CorrectedEmbeddingRetriever(store, filter_policy="sometimes")


def test_an_l2_store_needs_an_explicit_similarity(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    chroma = pytest.importorskip("haystack_integrations.document_stores.chroma")
    retrievers = pytest.importorskip("haystack_integrations.components.retrievers.chroma")
    store = chroma.ChromaDocumentStore(persist_path=str(tmp_path / "l2"))  # Chroma's default distance: l2
    with pytest.raises(ValueError, match="ranks by 'l2'.*similarity='cosine'"):
        CorrectedEmbeddingRetriever(retriever=retrievers.ChromaEmbeddingRetriever(store))
    CorrectedEmbeddingRetriever(retriever=retrievers.ChromaEmbeddingRetriever(store), similarity="cosine")


# ------------------------------------------------------------------------------------------- serialisation
def test_pool_mode_round_trips_through_a_yaml_pipeline_under_the_default_allowlist(store_and_retriever, corrector_path):
    store, retriever_class = store_and_retriever
    retriever = CorrectedEmbeddingRetriever(
        retriever=own_retriever(retriever_class, store, top_k=3), corrector_path=corrector_path, pool_size=12, top_k=4
    )
    expected = [d.id for d in retriever.run(query_embedding=QUERY)["documents"]]
    pipeline = Pipeline()
    pipeline.add_component("retriever", retriever)
    text = pipeline.dumps()
    assert retriever_class.__name__ in text and "pool_size: 12" in text
    store.close() if callable(getattr(store, "close", None)) else None  # Qdrant's local mode locks its folder
    loaded = Pipeline.loads(text)
    restored = loaded.get_component("retriever")
    assert type(restored.retriever) is retriever_class and restored.pool_size == 12
    assert restored.to_dict() == retriever.to_dict()
    if not isinstance(store, InMemoryDocumentStore):  # an in-memory store is not shared by a new instance
        found = loaded.run({"retriever": {"query_embedding": QUERY}})["retriever"]["documents"]
        assert [d.id for d in found] == expected


# ------------------------------------------------------------------------------------------- hard-negative mining
def test_pool_mode_miner_equals_the_snapshot_miner(store_and_retriever, corrector_path):
    store, retriever_class = store_and_retriever
    queries = [QUERY, [1.0, 1.0, 0.0, 0.0]]
    positives = [["doc0", "doc5"], ["doc1"]]
    kwargs = {"corrector_path": corrector_path, "num_negatives": 3, "range_min": 1}
    snapshot = CorrectedHardNegativeMiner(store, **kwargs)
    pool = CorrectedHardNegativeMiner(retriever=own_retriever(retriever_class, store), pool_size=N, **kwargs)
    from_snapshot = snapshot.run(query_embeddings=queries, positive_document_ids=positives)["negatives"]
    from_pool = pool.run(query_embeddings=queries, positive_document_ids=positives)["negatives"]
    assert [[d.id for d in q] for q in from_pool] == [[d.id for d in q] for q in from_snapshot]
    for query, positive_ids, found in zip(queries, positives, from_pool):
        ranked = [i for i in _oracle(query, _documents(), corrector_path) if i not in positive_ids]
        assert [d.id for d in found] == ranked[1:4]


def test_pool_miner_looks_up_positives_outside_the_pool(store_and_retriever):
    store, retriever_class = store_and_retriever
    far = _oracle(QUERY, _documents())[-1]  # the least similar document: outside a pool of 5
    miner = CorrectedHardNegativeMiner(
        retriever=own_retriever(retriever_class, store), pool_size=5, num_negatives=2, max_score=2.0
    )
    negatives = miner.run(query_embeddings=[QUERY], positive_document_ids=[[far]])["negatives"][0]
    assert [d.id for d in negatives] == _oracle(QUERY, _documents())[:2]
    with pytest.raises(ValueError, match="positive_document_ids\\[0\\].*'nope'"):
        miner.run(query_embeddings=[QUERY], positive_document_ids=[["nope"]])


def test_pool_miner_draws_on_across_batches(store_and_retriever):
    store, retriever_class = store_and_retriever
    kwargs = {"num_negatives": 3, "sampling_strategy": "random", "seed": 7}
    pool = CorrectedHardNegativeMiner(retriever=own_retriever(retriever_class, store), pool_size=N, **kwargs)
    snapshot = CorrectedHardNegativeMiner(store, **kwargs)
    batches = [{"query_embeddings": [QUERY], "positive_document_ids": [["doc0"]]}] * 4
    drawn = [[d.id for d in pool.run(**batch)["negatives"][0]] for batch in batches]
    assert len({tuple(ids) for ids in drawn}) > 1  # the generator is not re-seeded per batch
    assert drawn == [[d.id for d in snapshot.run(**batch)["negatives"][0]] for batch in batches]


# ------------------------------------------------------------------------------------------- index upgrade
def _check_upgraded(store, corrector_path):
    upgraded = {d.id: d for d in store.filter_documents()}
    assert sorted(upgraded) == sorted(d.id for d in _documents()) and store.count_documents() == N
    expected = Corrector.load(corrector_path)(torch.tensor([d.embedding for d in _documents()])).detach()
    for original, row in zip(_documents(), expected):
        doc = upgraded[original.id]
        assert doc.content == original.content and doc.meta["group"] == original.meta["group"]
        assert len(doc.meta["corrector"]) == 16 and doc.meta["corrector_path"] == corrector_path
        # compared by direction: Qdrant normalises what it stores for cosine (the ranking is the same)
        stored = torch.nn.functional.normalize(torch.tensor(doc.embedding), dim=0)
        assert stored.tolist() == pytest.approx(torch.nn.functional.normalize(row, dim=0).tolist(), abs=1e-5)


def test_upgrade_pipeline_with_document_writer_overwrites_in_place(store_and_retriever, corrector_path):
    store, _ = store_and_retriever
    pipeline = Pipeline()
    pipeline.add_component("corrector", EmbeddingCorrector(corrector_path))
    pipeline.add_component("writer", DocumentWriter(store, policy=DuplicatePolicy.OVERWRITE))
    pipeline.connect("corrector.documents", "writer.documents")
    pipeline.run({"corrector": {"documents": store.filter_documents()}})
    _check_upgraded(store, corrector_path)
    with pytest.raises(Exception, match="already corrected"):  # a second run would correct twice
        pipeline.run({"corrector": {"documents": store.filter_documents()}})
    _check_upgraded(store, corrector_path)


def test_document_store_corrector_upgrades_once_and_resumes_after_a_crash(store_and_retriever, corrector_path):
    store, _ = store_and_retriever
    writes = []
    original_write = store.write_documents

    def crash_on_the_third_page(documents, policy=DuplicatePolicy.NONE):
        if len(writes) == 2:
            raise OSError("connection lost")
        writes.append([d.id for d in documents])
        return original_write(documents, policy=policy)

    store.write_documents = crash_on_the_third_page
    upgrade = DocumentStoreCorrector(store, corrector_path, page_size=7, progress_bar=False)
    with pytest.raises(OSError, match="connection lost"):
        upgrade.run()
    assert sum(len(page) for page in writes) == 14
    store.write_documents = original_write
    assert upgrade.run() == {"corrected": N - 14, "skipped": 14}  # the written pages are not corrected again
    _check_upgraded(store, corrector_path)
    assert upgrade.run() == {"corrected": 0, "skipped": N}


def test_document_store_corrector_refuses_another_correctors_output_before_writing(
    store_and_retriever, corrector_path, tmp_path
):
    store, _ = store_and_retriever
    DocumentStoreCorrector(store, corrector_path, progress_bar=False).run()
    before = {d.id: d.embedding for d in store.filter_documents()}
    other = tmp_path / "other"
    Corrector(DIM, hidden_dim=8).save(other)
    with pytest.raises(ValueError, match="30 of 30 documents were corrected by another corrector"):
        DocumentStoreCorrector(store, str(other), progress_bar=False).run()
    assert {d.id: d.embedding for d in store.filter_documents()} == before
    forced = DocumentStoreCorrector(store, str(other), force=True, progress_bar=False).run()
    assert forced == {"corrected": N, "skipped": 0}


def test_document_store_corrector_serialises(store_and_retriever, corrector_path):
    store, _ = store_and_retriever
    component_ = DocumentStoreCorrector(store, corrector_path, page_size=5)
    restored = DocumentStoreCorrector.from_dict(component_.to_dict())
    assert restored.to_dict() == component_.to_dict() and restored.page_size == 5
    with pytest.raises(ValueError, match="page_size must be > 0"):
        DocumentStoreCorrector(store, corrector_path, page_size=0)


# ------------------------------------------------------------------------------------------- paged reading
PAGED = ["qdrant", "chroma", "pgvector"]  # the stores whose whole content filter_documents() would copy


@pytest.mark.parametrize("filters", [None, {"field": "meta.group", "operator": "==", "value": 1}])
def test_a_paged_reader_lists_and_fetches_what_filter_documents_returns(store_and_retriever, filters):
    store, _ = store_and_retriever
    reader = page_reader(store)
    expected = {d.id: d for d in (store.filter_documents(filters=filters) if filters else store.filter_documents())}
    ids = reader.ids(filters)
    assert sorted(ids) == sorted(expected) and len(ids) == (N if filters is None else N // 2)
    fetched = [doc for page in document_pages(reader, ids, 4) for doc in page]
    assert sorted(d.id for d in fetched) == sorted(expected)
    for doc in fetched:
        assert doc.content == expected[doc.id].content and doc.meta == expected[doc.id].meta
        assert doc.embedding == pytest.approx(expected[doc.id].embedding, abs=1e-6)


def test_document_store_corrector_reads_a_page_at_a_time(store_kind, store_and_retriever, corrector_path):
    """Qdrant, Chroma and pgvector are never read whole: every read is a fetch of at most page_size ids."""
    if store_kind not in PAGED:
        pytest.skip("the in-memory store holds every document already; Milvus has no paged reader (one call, logged)")
    store, _ = store_and_retriever
    fetched: list[int] = []
    original_filter = store.filter_documents

    def page_reads_only(filters=None):
        in_filter = isinstance(filters, dict) and filters.get("field") == "id" and filters.get("operator") == "in"
        if not in_filter:
            raise AssertionError(f"read the whole store: filter_documents({filters!r})")
        fetched.append(len(filters["value"]))
        return original_filter(filters=filters)

    store.filter_documents = page_reads_only  # pgvector fetches its pages through it; the others never call it
    result = DocumentStoreCorrector(store, corrector_path, page_size=7, progress_bar=False).run()
    store.filter_documents = original_filter
    assert result == {"corrected": N, "skipped": 0}
    assert all(size <= 7 for size in fetched)
    _check_upgraded(store, corrector_path)


def test_document_store_corrector_upgrades_only_the_filtered_documents(store_and_retriever, corrector_path):
    store, _ = store_and_retriever
    group = {"field": "meta.group", "operator": "==", "value": 1}
    upgrade = DocumentStoreCorrector(store, corrector_path, page_size=4, progress_bar=False)
    assert upgrade.run(filters=group) == {"corrected": N // 2, "skipped": 0}
    marked = {d.id: "corrector" in d.meta for d in store.filter_documents()}
    assert marked == {f"doc{i}": i % 2 == 1 for i in range(N)}
    assert upgrade.run() == {"corrected": N // 2, "skipped": N // 2}
    _check_upgraded(store, corrector_path)
