"""Haystack components that never correct twice, never guess a metric, and pin their corrector (issue 37, Why 2-5, 8, 9).

On the main this issue was filed against each test fails: the corrected retriever corrected an upgraded store a
second time, `{}` embeddings broke the upgrade, pool mode returned [] for embedding-less candidates, an unreadable
metric was scored as dot product, pool_size < top_k shrank the answer silently, and a YAML followed whatever
corrector its folder held.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

pytest.importorskip("haystack")

from haystack import Document, component  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack_integrations.common.corrector.documents import FRESH_MARKER, store_similarity  # noqa: E402
from haystack_integrations.components.retrievers.corrector import (  # noqa: E402
    CorrectedEmbeddingRetriever,
    CorrectedHardNegativeMiner,
)
from haystack_integrations.components.writers.corrector import DocumentStoreCorrector  # noqa: E402

from haystack_corrector import Corrector  # noqa: E402

QUERY = [0.3, -0.2, 0.9, 0.1]


def _documents(n=20, dim=4, seed=0):
    embeddings = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return [Document(id=f"doc{i}", content=f"document {i}", embedding=embeddings[i].tolist()) for i in range(n)]


def _store(documents=None):
    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents(documents or _documents())
    return store


def _save_corrector(folder, seed=1):
    corrector = Corrector(4, hidden_dim=8)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    corrector.save(folder)
    return str(folder)


def _ranking(retriever, top_k=20):
    return [(d.id, round(d.score, 5)) for d in retriever.run(query_embedding=QUERY, top_k=top_k)["documents"]]


def test_why_2_an_upgraded_store_is_never_corrected_again(tmp_path):
    path = _save_corrector(tmp_path / "corrector")
    store = _store()
    assert DocumentStoreCorrector(store, corrector_path=path).run() == {"corrected": 20, "skipped": 0}
    plain = _ranking(CorrectedEmbeddingRetriever(store))  # the upgraded embeddings as stored
    for retriever in (
        CorrectedEmbeddingRetriever(store, corrector_path=path),
        CorrectedEmbeddingRetriever(retriever=InMemoryEmbeddingRetriever(store), corrector_path=path, pool_size=20),
    ):
        assert _ranking(retriever) == plain


def test_why_2_documents_marked_fresh_are_never_corrected_and_the_rest_are(tmp_path):
    path = _save_corrector(tmp_path / "corrector")
    documents = _documents()
    for doc in documents[:5]:
        doc.meta["corrector"] = FRESH_MARKER  # embedded by the new encoder
    store = _store(documents)
    assert DocumentStoreCorrector(store, corrector_path=path).run() == {"corrected": 15, "skipped": 5}
    original = _documents()
    after = {d.id: d.embedding for d in store.filter_documents()}
    assert all(after[d.id] == pytest.approx(d.embedding) for d in original[:5])  # untouched
    with torch.no_grad():
        expected = Corrector.load(path)(torch.tensor([d.embedding for d in original[5:]])).tolist()
    assert all(after[d.id] == pytest.approx(e, abs=1e-5) for d, e in zip(original[5:], expected))
    # A retriever over the original mixed store corrects exactly the unmarked documents: as the upgraded store ranks.
    mixed = _store(
        [
            Document(id=d.id, content=d.content, embedding=d.embedding, meta=dict(m.meta))
            for d, m in zip(original, documents)
        ]
    )
    upgraded = _ranking(CorrectedEmbeddingRetriever(store))
    assert _ranking(CorrectedEmbeddingRetriever(mixed, corrector_path=path)) == upgraded


def test_why_5_empty_embeddings_count_as_missing(tmp_path, caplog):
    path = _save_corrector(tmp_path / "corrector")
    documents = _documents()
    documents[3] = Document(id="doc3", content="document 3", embedding=[])
    store = _store(documents)
    store.storage["doc3"] = dataclasses.replace(store.storage["doc3"], embedding={})  # what Qdrant hands back
    assert DocumentStoreCorrector(store, corrector_path=path).run() == {"corrected": 19, "skipped": 1}
    found = [
        d.id
        for d in CorrectedEmbeddingRetriever(store, corrector_path=path, top_k=20).run(query_embedding=QUERY)[
            "documents"
        ]
    ]
    assert len(found) == 19 and "doc3" not in found


def test_why_3_pool_mode_refuses_candidates_without_any_embedding():
    @component
    class Embeddingless:
        def __init__(self, document_store):
            self.document_store = document_store

        def to_dict(self):
            return {}

        @component.output_types(documents=list[Document])
        def run(self, query_embedding: list[float], filters: dict | None = None, top_k: int | None = None):
            return {"documents": [Document(id=f"doc{i}", content="x") for i in range(top_k or 10)]}

    retriever = CorrectedEmbeddingRetriever(retriever=Embeddingless(_store()), pool_size=10, top_k=5)
    with pytest.raises(ValueError, match="returned 10 candidates without embeddings.*return_embedding=True"):
        retriever.run(query_embedding=QUERY)


def test_why_4_a_metric_that_cannot_be_read_or_reproduced_is_refused():
    class PgvectorLike:
        def __init__(self, vector_function):
            self.vector_function = vector_function

    assert store_similarity(PgvectorLike("cosine_similarity"), None) == "cosine"
    assert store_similarity(PgvectorLike("inner_product"), None) == "dot"
    with pytest.raises(ValueError, match="ranks by 'l2_distance'"):
        store_similarity(PgvectorLike("l2_distance"), None)
    with pytest.raises(ValueError, match="Cannot tell which metric object ranks by"):
        store_similarity(object(), None)
    assert store_similarity(object(), "dot_product") == "dot"


def test_why_8_pool_size_below_top_k_is_refused():
    store = _store()
    with pytest.raises(ValueError, match="top_k=10 is larger than pool_size=5"):
        CorrectedEmbeddingRetriever(retriever=InMemoryEmbeddingRetriever(store), pool_size=5, top_k=10)
    retriever = CorrectedEmbeddingRetriever(retriever=InMemoryEmbeddingRetriever(store), pool_size=5, top_k=5)
    with pytest.raises(ValueError, match="top_k=6 is larger than pool_size=5"):
        retriever.run(query_embedding=QUERY, top_k=6)


def test_why_8_close_closes_what_the_component_wraps():
    closed = []

    class ClosingRetriever(InMemoryEmbeddingRetriever):
        def close(self):
            closed.append(True)

    retriever = CorrectedEmbeddingRetriever(retriever=ClosingRetriever(_store()), pool_size=20)
    retriever.warm_up()
    retriever.close()
    assert closed == [True] and retriever._snapshot is None


@pytest.mark.parametrize("component_class", [CorrectedEmbeddingRetriever, CorrectedHardNegativeMiner])
def test_why_9_the_yaml_pins_the_corrector(tmp_path, component_class):
    path = _save_corrector(tmp_path / "corrector", seed=1)
    data = component_class(_store(), corrector_path=path).to_dict()
    assert len(data["init_parameters"]["corrector_fingerprint"]) == 16
    component_class.from_dict(data).warm_up()  # the same corrector: fine
    _save_corrector(tmp_path / "corrector", seed=2)  # a re-fit into the same folder
    with pytest.raises(ValueError, match="has fingerprint [0-9a-f]{16}, but this component was saved with"):
        component_class.from_dict(data).warm_up()
    for bad in (42, "", "   "):
        with pytest.raises(TypeError, match="corrector_path must be a folder path"):
            component_class(_store(), corrector_path=bad)


def test_why_8_the_miner_takes_filters_and_runs_async():
    documents = _documents(n=30)
    for i, doc in enumerate(documents):
        doc.meta["group"] = i % 3
    store = _store(documents)
    group = {"field": "meta.group", "operator": "==", "value": 1}
    allowed = {d.id for d in documents if d.meta["group"] == 1}
    queries, positives = [QUERY, [0.1, 0.9, -0.2, 0.3]], [["doc0"], ["doc3"]]
    for miner in (
        CorrectedHardNegativeMiner(store, num_negatives=3),
        CorrectedHardNegativeMiner(retriever=InMemoryEmbeddingRetriever(store), pool_size=30, num_negatives=3),
    ):
        found = miner.run(query_embeddings=queries, positive_document_ids=positives, filters=group)["negatives"]
        assert all(len(n) == 3 and {d.id for d in n} <= allowed for n in found)
        unfiltered = miner.run(query_embeddings=queries, positive_document_ids=positives)["negatives"]
        assert any(not {d.id for d in n} <= allowed for n in unfiltered)  # (the filter really bites)
        asynced = asyncio.run(miner.run_async(query_embeddings=queries, positive_document_ids=positives))
        assert [[d.id for d in n] for n in asynced["negatives"]] == [[d.id for d in n] for n in unfiltered]


def test_why_6_the_upgrade_never_reads_the_whole_store_at_once(tmp_path):
    """A Qdrant store of 40 documents upgraded in pages of 8: every read holds at most 8 documents."""
    qdrant = pytest.importorskip("haystack_integrations.document_stores.qdrant")
    store = qdrant.QdrantDocumentStore(
        path=str(tmp_path / "q"), embedding_dim=4, similarity="cosine", progress_bar=False
    )
    store.write_documents(_documents(40))
    reads: list[int] = []
    by_id = store.get_documents_by_id

    def counted(ids):
        reads.append(len(ids))
        return by_id(ids)

    store.get_documents_by_id = counted
    store.filter_documents = lambda *args, **kwargs: pytest.fail("filter_documents() read the whole store")
    result = DocumentStoreCorrector(store, _save_corrector(tmp_path / "c"), page_size=8, progress_bar=False).run()
    assert result == {"corrected": 40, "skipped": 0}
    assert reads == [8] * 10  # 5 pages to check, 5 to correct
    store.close()


def test_why_7_pool_mode_runs_its_small_products_on_one_torch_thread(tmp_path, monkeypatch):
    from haystack_integrations.common.corrector import pool

    seen: list[int] = []
    score = pool.similarity_scores

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return score(*args, **kwargs)

    monkeypatch.setattr(pool, "similarity_scores", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        retriever = CorrectedEmbeddingRetriever(
            retriever=InMemoryEmbeddingRetriever(_store()), corrector_path=_save_corrector(tmp_path / "c"), top_k=3
        )
        retriever.warm_up()
        retriever.run(query_embedding=QUERY)
        assert seen == [1] and torch.get_num_threads() == 2  # one thread inside, the setting restored after
    finally:
        torch.set_num_threads(before)


def test_why_7_one_torch_thread_restores_the_setting_even_on_error():
    from haystack_integrations.common.corrector.pool import one_torch_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inside: list[int] = []
        with pytest.raises(RuntimeError, match="inside"), one_torch_thread():
            inside.append(torch.get_num_threads())
            raise RuntimeError("inside")
        assert inside == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_why_8_store_specific_run_parameters_pass_through(tmp_path):
    """Qdrant's score_threshold, group_by and group_size reach its retriever; what pool mode sets is refused."""
    qdrant = pytest.importorskip("haystack_integrations.document_stores.qdrant")
    retrievers = pytest.importorskip("haystack_integrations.components.retrievers.qdrant")
    store = qdrant.QdrantDocumentStore(
        path=str(tmp_path / "q"), embedding_dim=4, similarity="cosine", progress_bar=False
    )
    documents = [dataclasses.replace(d, meta={"group": i % 3}) for i, d in enumerate(_documents(30))]
    store.write_documents(documents)
    stock = retrievers.QdrantEmbeddingRetriever(store, top_k=30).run(query_embedding=QUERY)["documents"]
    threshold = (stock[9].score + stock[10].score) / 2  # between the stock retriever's 10th and 11th scores
    retriever = CorrectedEmbeddingRetriever(
        retriever=retrievers.QdrantEmbeddingRetriever(store),
        pool_size=30,
        top_k=30,
        retriever_kwargs={"score_threshold": threshold},
    )
    above = retriever.run(query_embedding=QUERY)["documents"]
    assert sorted(d.id for d in above) == sorted(d.id for d in stock[:10])
    everything = retriever.run(query_embedding=QUERY, retriever_kwargs={"score_threshold": -1.0})["documents"]
    assert len(everything) == 30
    groups = {"group_by": "meta.group", "group_size": 2, "score_threshold": -1.0}
    grouped = retriever.run(query_embedding=QUERY, retriever_kwargs=groups)["documents"]
    stock_grouped = retrievers.QdrantEmbeddingRetriever(store).run(query_embedding=QUERY, top_k=30, **groups)
    assert sorted(d.id for d in grouped) == sorted(d.id for d in stock_grouped["documents"])
    assert len(grouped) == 6 and len({d.meta["group"] for d in grouped}) == 3  # 2 per group, 3 groups
    assert CorrectedEmbeddingRetriever.from_dict(retriever.to_dict()).retriever_kwargs == {"score_threshold": threshold}
    with pytest.raises(ValueError, match="has no parameter colour; it accepts group_by, group_size, score_threshold"):
        retriever.run(query_embedding=QUERY, retriever_kwargs={"colour": "red"})
    with pytest.raises(ValueError, match="sets top_k, which pool mode sets itself"):
        CorrectedEmbeddingRetriever(retriever=retrievers.QdrantEmbeddingRetriever(store), retriever_kwargs={"top_k": 3})
    with pytest.raises(ValueError, match="retriever_kwargs is for pool mode"):
        CorrectedEmbeddingRetriever(store, retriever_kwargs={"score_threshold": 0.5})
    store.close()


def test_why_8_logs_through_haystacks_structured_logger(caplog):
    """Haystack's logger: keyword fields on the record (its structured logging sees them), not %-arguments."""
    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents([*_documents(3), Document(id="bare", content="no embedding")])
    with caplog.at_level("WARNING"):
        CorrectedEmbeddingRetriever(store, top_k=2).run(query_embedding=QUERY)
    records = [r for r in caplog.records if "without an embedding" in r.getMessage()]
    assert len(records) == 1 and records[0].skipped == 1 and records[0].first == "bare"


def test_why_6_a_document_another_corrector_writes_between_the_passes_is_left_alone(tmp_path, monkeypatch):
    store = _store()
    census = DocumentStoreCorrector._census

    def census_then_a_concurrent_upgrade(self, reader, ids):
        result = census(self, reader, ids)
        store.storage["doc3"].meta["corrector"] = "0123456789abcdef"  # another corrector's output, written meanwhile
        return result

    monkeypatch.setattr(DocumentStoreCorrector, "_census", census_then_a_concurrent_upgrade)
    before = list(store.storage["doc3"].embedding)
    result = DocumentStoreCorrector(store, _save_corrector(tmp_path / "c"), progress_bar=False).run()
    assert result == {"corrected": 19, "skipped": 1} and store.storage["doc3"].embedding == before
