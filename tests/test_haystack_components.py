"""Haystack components: init, to_dict/from_dict, warm_up, run, wrong input, and a Pipeline round trip."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("haystack")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack_integrations.common.corrector.correctors import corrector_fingerprint  # noqa: E402
from haystack_integrations.components.embedders.corrector import CorrectorFitter, EmbeddingCorrector  # noqa: E402
from haystack_integrations.components.retrievers.corrector import (  # noqa: E402
    CorrectedEmbeddingRetriever,
    CorrectedHardNegativeMiner,
)

from haystack_corrector import Corrector  # noqa: E402

STORE_TYPE = "haystack.document_stores.in_memory.document_store.InMemoryDocumentStore"


def _documents(n=20, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=generator)
    return [
        Document(id=f"doc{i}", content=f"document {i}", meta={"group": i % 2}, embedding=embeddings[i].tolist())
        for i in range(n)
    ]


@pytest.fixture
def document_store():
    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents(_documents())
    return store


@pytest.fixture
def corrector_path(tmp_path):
    corrector = Corrector(4, hidden_dim=8)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    corrector.save(tmp_path / "corrector")
    return str(tmp_path / "corrector")


# ------------------------------------------------------------------------------------- CorrectedEmbeddingRetriever
class TestCorrectedEmbeddingRetriever:
    def test_init_defaults(self, document_store):
        retriever = CorrectedEmbeddingRetriever(document_store)
        assert retriever.corrector_path is None and retriever.top_k == 10 and retriever.filters is None
        assert retriever.scale_score is False and retriever.return_embedding is False

    def test_init_with_parameters(self, document_store, corrector_path):
        retriever = CorrectedEmbeddingRetriever(
            document_store,
            corrector_path=corrector_path,
            top_k=3,
            filters={"field": "meta.group", "operator": "==", "value": 1},
            scale_score=True,
            return_embedding=True,
            similarity="dot_product",
        )
        assert retriever.top_k == 3 and retriever.scale_score and retriever.return_embedding
        assert retriever.corrector_path == corrector_path and retriever.similarity == "dot_product"

    def test_to_dict(self, document_store, corrector_path):
        retriever = CorrectedEmbeddingRetriever(document_store, corrector_path=corrector_path, top_k=5)
        assert retriever.to_dict() == {
            "type": "haystack_integrations.components.retrievers.corrector.corrected_embedding_retriever.CorrectedEmbeddingRetriever",
            "init_parameters": {
                "document_store": document_store.to_dict(),
                "corrector_path": corrector_path,
                "top_k": 5,
                "filters": None,
                "scale_score": False,
                "return_embedding": False,
                "similarity": None,
                "retriever": None,
                "pool_size": 100,
                "corrector_fingerprint": corrector_fingerprint(corrector_path),
                "filter_policy": "replace",
                "retriever_kwargs": None,
            },
        }
        assert retriever.to_dict()["init_parameters"]["document_store"]["type"] == STORE_TYPE

    def test_from_dict(self, document_store, corrector_path):
        data = CorrectedEmbeddingRetriever(document_store, corrector_path=corrector_path, top_k=5).to_dict()
        restored = CorrectedEmbeddingRetriever.from_dict(data)
        assert isinstance(restored.document_store, InMemoryDocumentStore)
        assert restored.top_k == 5 and restored.corrector_path == corrector_path
        assert restored.to_dict() == data

    def test_warm_up_is_idempotent(self, document_store, corrector_path):
        retriever = CorrectedEmbeddingRetriever(document_store, corrector_path=corrector_path)
        retriever.warm_up()
        first = retriever._snapshot
        retriever.warm_up()
        assert retriever._snapshot is first

    def test_run_without_corrector_matches_in_memory_retriever(self, document_store):
        from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever

        query = [0.3, -0.2, 0.9, 0.1]
        ours = CorrectedEmbeddingRetriever(document_store, top_k=5).run(query_embedding=query)["documents"]
        theirs = InMemoryEmbeddingRetriever(document_store, top_k=5).run(query_embedding=query)["documents"]
        assert [d.id for d in ours] == [d.id for d in theirs]
        assert [d.score for d in ours] == pytest.approx([d.score for d in theirs], abs=1e-5)
        assert all(d.embedding is None for d in ours)

    def test_run_scores_corrected_embeddings(self, document_store, corrector_path):
        corrector = Corrector.load(corrector_path)
        query = torch.tensor([[0.3, -0.2, 0.9, 0.1]])
        docs = document_store.filter_documents()
        corrected = corrector(torch.tensor([d.embedding for d in docs])).detach()
        expected = torch.nn.functional.cosine_similarity(query, corrected)
        order = torch.argsort(expected, descending=True)[:4].tolist()
        result = CorrectedEmbeddingRetriever(
            document_store, corrector_path=corrector_path, top_k=4, return_embedding=True
        )
        found = result.run(query_embedding=query[0].tolist())["documents"]
        assert [d.id for d in found] == [docs[i].id for i in order]
        assert [d.score for d in found] == pytest.approx(expected[order].tolist(), abs=1e-5)
        assert all(isinstance(x, float) for x in found[0].embedding)  # the stored embedding, as plain floats

    def test_filters_top_k_and_scale_score(self, document_store):
        retriever = CorrectedEmbeddingRetriever(document_store, top_k=50)
        filters = {"field": "meta.group", "operator": "==", "value": 1}
        found = retriever.run(query_embedding=[1.0, 0.0, 0.0, 0.0], filters=filters, scale_score=True)["documents"]
        assert len(found) == 10 and all(d.meta["group"] == 1 for d in found)
        assert all(0.0 <= d.score <= 1.0 for d in found)
        # top_k=0 means what it means to InMemoryEmbeddingRetriever: nothing (issue 37, Why 8)
        stock = InMemoryEmbeddingRetriever(document_store, top_k=50)
        assert stock.run(query_embedding=[1.0, 0.0, 0.0, 0.0], top_k=0)["documents"] == []
        assert retriever.run(query_embedding=[1.0, 0.0, 0.0, 0.0], top_k=0)["documents"] == []

    def test_snapshot_follows_new_documents(self, document_store):
        retriever = CorrectedEmbeddingRetriever(document_store, top_k=1)
        retriever.run(query_embedding=[1.0, 0.0, 0.0, 0.0])
        document_store.write_documents([Document(id="new", content="new", embedding=[100.0, 0.0, 0.0, 0.0])])
        assert retriever.run(query_embedding=[1.0, 0.0, 0.0, 0.0])["documents"][0].id == "new"

    def test_wrong_input(self, document_store, corrector_path):
        with pytest.raises(ValueError, match="top_k must be > 0"):
            CorrectedEmbeddingRetriever(document_store, top_k=0)
        with pytest.raises(TypeError, match="document_store must be a Haystack DocumentStore"):
            CorrectedEmbeddingRetriever(object())
        retriever = CorrectedEmbeddingRetriever(document_store)
        with pytest.raises(ValueError, match="dimension 3 but the stored embeddings have dimension 4"):
            retriever.run(query_embedding=[1.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="top_k must be >= 0"):
            retriever.run(query_embedding=[1.0, 0.0, 0.0, 0.0], top_k=-1)
        with pytest.raises(FileNotFoundError):
            CorrectedEmbeddingRetriever(document_store, corrector_path="/nonexistent/corrector").warm_up()

    def test_documents_without_embeddings_are_skipped_with_one_warning(self, caplog):
        store = InMemoryDocumentStore()
        store.write_documents(
            [Document(id="bare", content="no embedding"), Document(id="e", content="e", embedding=[1.0])]
        )
        with caplog.at_level("WARNING"):
            found = CorrectedEmbeddingRetriever(store).run(query_embedding=[1.0])["documents"]
        assert [d.id for d in found] == ["e"]
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "Skipped 1 of 2 documents" in warnings[0] and "'bare'" in warnings[0]


# ------------------------------------------------------------------------------------- CorrectedHardNegativeMiner
class TestCorrectedHardNegativeMiner:
    def test_init_defaults_and_to_dict(self, document_store):
        miner = CorrectedHardNegativeMiner(document_store)
        assert miner.to_dict() == {
            "type": "haystack_integrations.components.retrievers.corrector.corrected_hard_negative_miner.CorrectedHardNegativeMiner",
            "init_parameters": {
                "document_store": document_store.to_dict(),
                "corrector_path": None,
                "num_negatives": 1,
                "sampling_strategy": "top",
                "temperature": 0.05,
                "range_min": 0,
                "range_max": None,
                "absolute_margin": None,
                "relative_margin": None,
                "max_score": None,
                "min_score": None,
                "seed": None,
                "similarity": None,
                "retriever": None,
                "pool_size": 100,
                "corrector_fingerprint": None,
            },
        }

    def test_init_with_parameters_and_from_dict(self, document_store, corrector_path):
        miner = CorrectedHardNegativeMiner(
            document_store,
            corrector_path=corrector_path,
            num_negatives=2,
            sampling_strategy="gumbel",
            temperature=0.1,
            range_min=1,
            range_max=8,
            absolute_margin=0.01,
            relative_margin=0.05,
            max_score=0.99,
            seed=3,
        )
        restored = CorrectedHardNegativeMiner.from_dict(miner.to_dict())
        assert restored.to_dict() == miner.to_dict()
        assert restored.sampling_strategy == "gumbel" and restored.range_max == 8 and restored.seed == 3

    def test_warm_up_is_idempotent(self, document_store):
        miner = CorrectedHardNegativeMiner(document_store)
        miner.warm_up()
        first = miner._snapshot
        miner.warm_up()
        assert miner._snapshot is first

    def test_run_never_returns_positives_and_matches_top_oracle(self, document_store, corrector_path):
        miner = CorrectedHardNegativeMiner(document_store, corrector_path=corrector_path, num_negatives=3)
        queries = [[0.3, -0.2, 0.9, 0.1], [1.0, 1.0, 0.0, 0.0]]
        positives = [["doc0", "doc5"], ["doc1"]]
        negatives = miner.run(query_embeddings=queries, positive_document_ids=positives)["negatives"]
        corrector = Corrector.load(corrector_path)
        docs = document_store.filter_documents()
        corrected = corrector(torch.tensor([d.embedding for d in docs])).detach()
        for query, positive_ids, found in zip(queries, positives, negatives):
            scores = torch.nn.functional.cosine_similarity(torch.tensor([query]), corrected)
            ranked = [
                docs[i].id for i in torch.argsort(scores, descending=True).tolist() if docs[i].id not in positive_ids
            ]
            assert [d.id for d in found] == ranked[:3]
            assert not {d.id for d in found} & set(positive_ids)
            assert all(d.embedding is None for d in found)

    def test_gumbel_never_returns_positives(self, document_store):
        miner = CorrectedHardNegativeMiner(
            document_store, num_negatives=5, sampling_strategy="gumbel", range_max=15, seed=0
        )
        for _ in range(20):
            negatives = miner.run(query_embeddings=[[1.0, 0.0, 0.0, 0.0]], positive_document_ids=[["doc2", "doc3"]])
            ids = [d.id for d in negatives["negatives"][0]]
            assert len(set(ids)) == 5 and not {"doc2", "doc3"} & set(ids)

    def test_copies_of_a_positive_are_never_negatives(self):
        # doc20 is doc0's content under another id (other meta), with the same embedding: the nearest "negative".
        documents = _documents()
        twin = documents[0]
        documents.append(Document(id="doc20", content=twin.content, meta={"group": 9}, embedding=twin.embedding))
        store = InMemoryDocumentStore(embedding_similarity_function="cosine")
        store.write_documents(documents)
        miner = CorrectedHardNegativeMiner(store, num_negatives=3)
        query = [[v + 0.01 for v in twin.embedding]]
        ids = [d.id for d in miner.run(query_embeddings=query, positive_document_ids=[["doc0"]])["negatives"][0]]
        docs = store.filter_documents()
        scores = torch.nn.functional.cosine_similarity(torch.tensor(query), torch.tensor([d.embedding for d in docs]))
        ranked = [docs[i].id for i in torch.argsort(scores, descending=True).tolist()]
        assert ranked[:2] == ["doc0", "doc20"] or ranked[:2] == ["doc20", "doc0"]
        assert ids == [i for i in ranked if i not in ("doc0", "doc20")][:3]

    def test_wrong_input(self, document_store):
        with pytest.raises(ValueError, match="Unknown sampling_strategy 'best'"):
            CorrectedHardNegativeMiner(document_store, sampling_strategy="best")
        with pytest.raises(ValueError, match="num_negatives must be > 0"):
            CorrectedHardNegativeMiner(document_store, num_negatives=0)
        miner = CorrectedHardNegativeMiner(document_store)
        with pytest.raises(ValueError, match="id 'nope' is not in this store"):
            miner.run(query_embeddings=[[1.0, 0.0, 0.0, 0.0]], positive_document_ids=[["nope"]])
        with pytest.raises(ValueError, match="one list of ids per query"):
            miner.run(query_embeddings=[[1.0, 0.0, 0.0, 0.0]], positive_document_ids=[["doc1"], ["doc2"]])
        with pytest.raises(ValueError, match="dimension 2"):
            miner.run(query_embeddings=[[1.0, 0.0]], positive_document_ids=[[]])


# ------------------------------------------------------------------------------------------- EmbeddingCorrector
class TestEmbeddingCorrector:
    def test_init_to_dict_from_dict(self, corrector_path):
        component_ = EmbeddingCorrector(corrector_path)
        assert component_.batch_size == 1024
        data = EmbeddingCorrector(corrector_path, batch_size=7).to_dict()
        assert data == {
            "type": "haystack_integrations.components.embedders.corrector.embedding_corrector.EmbeddingCorrector",
            "init_parameters": {"corrector_path": corrector_path, "batch_size": 7, "force": False},
        }
        assert EmbeddingCorrector.from_dict(data).batch_size == 7

    def test_warm_up_is_idempotent(self, corrector_path):
        component_ = EmbeddingCorrector(corrector_path)
        component_.warm_up()
        first = component_._corrector
        component_.warm_up()
        assert component_._corrector is first

    def test_run_corrects_copies_and_records_the_corrector(self, corrector_path):
        documents = _documents(n=9)
        originals = [list(d.embedding) for d in documents]
        out = EmbeddingCorrector(corrector_path, batch_size=4).run(documents)["documents"]
        expected = Corrector.load(corrector_path)(torch.tensor(originals)).detach()
        assert [d.id for d in out] == [d.id for d in documents]
        torch.testing.assert_close(torch.tensor([d.embedding for d in out]), expected)
        assert all(type(x) is float for x in out[0].embedding)
        assert [list(d.embedding) for d in documents] == originals  # inputs untouched
        assert out[0].meta["corrector_path"] == corrector_path and len(out[0].meta["corrector"]) == 16
        assert out[0].meta["group"] == documents[0].meta["group"] and "corrector" not in documents[0].meta

    def test_wrong_input(self, corrector_path):
        with pytest.raises(ValueError, match="batch_size must be > 0"):
            EmbeddingCorrector(corrector_path, batch_size=0)
        component_ = EmbeddingCorrector(corrector_path)
        with pytest.raises(ValueError, match="have no embedding"):
            component_.run([Document(content="x")])
        with pytest.raises(ValueError, match="dimension 4 but the documents' embeddings have dimension 2"):
            component_.run([Document(content="x", embedding=[1.0, 2.0])])
        with pytest.raises(TypeError, match="list of Documents"):
            component_.run(["not a document"])
        assert component_.run([]) == {"documents": []}

    def test_refuses_to_correct_twice_unless_forced(self, corrector_path, tmp_path):
        other = tmp_path / "other-corrector"
        Corrector(4, hidden_dim=8).save(other)
        once = EmbeddingCorrector(corrector_path).run(_documents(n=3))["documents"]
        for path in (corrector_path, str(other)):  # the same corrector or any other one
            with pytest.raises(ValueError, match="3 of 3 documents were already corrected"):
                EmbeddingCorrector(path).run(once)
        mixed = [*_documents(n=2), once[0]]
        with pytest.raises(ValueError, match="1 of 3 documents were already corrected"):
            EmbeddingCorrector(corrector_path).run(mixed)
        twice = EmbeddingCorrector(corrector_path, force=True).run(once)["documents"]
        expected = Corrector.load(corrector_path)(torch.tensor([d.embedding for d in once])).detach()
        torch.testing.assert_close(torch.tensor([d.embedding for d in twice]), expected)
        with pytest.raises(TypeError, match="force must be a bool"):
            EmbeddingCorrector(corrector_path, force="yes")


# ---------------------------------------------------------------------------------------------- CorrectorFitter
class TestCorrectorFitter:
    def test_seeds_locally_and_leaves_the_global_rng_alone(self, tmp_path):
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)
        CorrectorFitter(str(tmp_path / "a"), epochs=2, seed=5, require_improvement=False).run(
            stale_documents=_documents(n=8), fresh_documents=_documents(n=8, seed=1)
        )
        assert torch.equal(torch.rand(3), expected_next), "the fitter changed the global RNG"
        torch.manual_seed(999)  # another global state: the fit must not depend on it
        CorrectorFitter(str(tmp_path / "b"), epochs=2, seed=5, require_improvement=False).run(
            stale_documents=_documents(n=8), fresh_documents=_documents(n=8, seed=1)
        )
        a, b = Corrector.load(tmp_path / "a"), Corrector.load(tmp_path / "b")
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    def test_init_to_dict_from_dict(self, tmp_path):
        fitter = CorrectorFitter(str(tmp_path / "h"))
        assert fitter.epochs == 50 and fitter.hidden_dim is None
        data = CorrectorFitter(str(tmp_path / "h"), epochs=3, hidden_dim=16).to_dict()
        assert data == {
            "type": "haystack_integrations.components.embedders.corrector.corrector_fitter.CorrectorFitter",
            "init_parameters": {
                "output_path": str(tmp_path / "h"),
                "epochs": 3,
                "hidden_dim": 16,
                "lr": 1e-3,
                "batch_size": 256,
                "loss": "mse",
                "seed": 0,
                "holdout_fraction": 0.2,
                "patience": 10,
                "require_improvement": True,
            },
        }
        assert CorrectorFitter.from_dict(data).hidden_dim == 16

    def test_run_fits_pairs_by_id_and_writes_a_loadable_corrector(self, tmp_path):
        stale = _documents(n=64, seed=3)
        fresh = [Document(id=d.id, content=d.content, embedding=[1.5 * x + 0.2 for x in d.embedding]) for d in stale]
        fresh = list(reversed(fresh))[:60] + [Document(id="only-fresh", content="x", embedding=[0.0] * 4)]
        result = CorrectorFitter(str(tmp_path / "h"), epochs=200, lr=1e-2, batch_size=16).run(
            stale_documents=stale, fresh_documents=fresh
        )
        metrics = result["metrics"]
        assert result["corrector_path"] == str(tmp_path / "h")
        assert metrics["pairs"] == 60 and metrics["unpaired_stale"] == 4 and metrics["unpaired_fresh"] == 1
        assert metrics["corrected_error"] < 0.05 * metrics["staleness"]
        assert metrics["held_out_pairs"] == 12  # judged on pairs it never trained on
        assert metrics["held_out_corrected_error"] < 0.05 * metrics["held_out_staleness"]
        corrector = Corrector.load(result["corrector_path"])
        probe = torch.tensor([stale[0].embedding])
        torch.testing.assert_close(corrector(probe).detach(), 1.5 * probe + 0.2, atol=0.15, rtol=0.1)

    def test_a_fit_that_does_not_beat_the_stale_index_on_held_out_pairs_is_not_written(self, tmp_path):
        """Issue 37, Why 1. Oracle: without drift (fresh == stale) no corrector can beat the stale index."""
        same = _documents(n=40)
        fitter = CorrectorFitter(str(tmp_path / "h"), epochs=20, lr=1e-2, batch_size=8)
        with pytest.raises(ValueError, match="does not beat the stale embeddings on the 8 held-out pairs"):
            fitter.run(stale_documents=same, fresh_documents=same)
        assert not (tmp_path / "h").exists()
        # Unrelated pairs: the in-sample error flatters the fit (what 0.1 reported); require_improvement=False writes.
        stale, fresh = _documents(n=40), _documents(n=40, seed=1)
        loud = CorrectorFitter(str(tmp_path / "h"), epochs=100, lr=1e-2, batch_size=8, require_improvement=False)
        metrics = loud.run(stale_documents=stale, fresh_documents=fresh)["metrics"]
        assert metrics["corrected_error"] < metrics["held_out_corrected_error"]
        assert (tmp_path / "h").is_dir()

    def test_wrong_input(self, tmp_path):
        fitter = CorrectorFitter(str(tmp_path / "h"), epochs=1)
        with pytest.raises(ValueError, match="No document id is shared"):
            fitter.run(
                stale_documents=_documents(n=2), fresh_documents=[Document(id="zzz", content="x", embedding=[1.0] * 4)]
            )
        with pytest.raises(ValueError, match="dimension 4 but fresh ones 2"):
            fitter.run(
                stale_documents=_documents(n=2),
                fresh_documents=[Document(id="doc0", content="x", embedding=[1.0, 2.0])],
            )
        with pytest.raises(ValueError, match="epochs must be > 0"):
            CorrectorFitter(str(tmp_path / "h"), epochs=0)
        with pytest.raises(ValueError, match="Unknown loss"):
            CorrectorFitter(str(tmp_path / "h"), loss="l1")


# -------------------------------------------------------------------------------------------------- Pipelines
def test_pipeline_round_trip_under_default_allowlist_then_runs(
    document_store, corrector_path, tiny_model_folder, tmp_path
):
    from haystack_integrations.components.embedders.sentence_transformers import SentenceTransformersTextEmbedder

    from tests.tiny_model import load_tiny_model

    model = load_tiny_model(tiny_model_folder)
    texts = [f"document number {i} about topic {i % 3}" for i in range(12)]
    embeddings = model.encode(texts).tolist()
    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents(
        [Document(id=f"d{i}", content=t, embedding=e) for i, (t, e) in enumerate(zip(texts, embeddings))]
    )
    corrector = Corrector(64, hidden_dim=32)
    with torch.no_grad():  # far from the identity: a pipeline that lost corrector_path would rank differently
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    corrector.save(tmp_path / "h64")
    model.save(str(tmp_path / "tiny-st"))

    pipeline = Pipeline()
    pipeline.add_component(
        "embedder", SentenceTransformersTextEmbedder(model=str(tmp_path / "tiny-st"), progress_bar=False)
    )
    pipeline.add_component(
        "retriever", CorrectedEmbeddingRetriever(store, corrector_path=str(tmp_path / "h64"), top_k=3)
    )
    pipeline.connect("embedder.embedding", "retriever.query_embedding")
    yaml_text = pipeline.dumps()
    assert "haystack_integrations.components.retrievers.corrector" in yaml_text
    restored = Pipeline.loads(yaml_text)  # default deserialisation allowlist
    result = restored.run({"embedder": {"text": "document number 4 about topic 1"}})
    assert len(result["retriever"]["documents"]) == 3
    # Oracle: cosine of the query against the corrector applied to every stored embedding, ranked by hand.
    from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever

    query = torch.tensor(model.encode(["document number 4 about topic 1"])[0])
    with torch.no_grad():
        corrected = torch.nn.functional.normalize(corrector(torch.tensor(embeddings)), dim=-1)
    expected = [f"d{i}" for i in torch.topk(corrected @ torch.nn.functional.normalize(query, dim=0), 3).indices]
    assert [d.id for d in result["retriever"]["documents"]] == expected
    plain = InMemoryEmbeddingRetriever(store, top_k=3).run(query_embedding=query.tolist())["documents"]
    assert [d.id for d in plain] != expected, "the corrector must change the ranking for this test to mean anything"


def test_all_components_round_trip_in_one_pipeline_yaml(document_store, corrector_path, tmp_path):
    pipeline = Pipeline()
    pipeline.add_component(
        "miner", CorrectedHardNegativeMiner(document_store, corrector_path=corrector_path, num_negatives=2)
    )
    pipeline.add_component("corrector", EmbeddingCorrector(corrector_path))
    pipeline.add_component("fitter", CorrectorFitter(str(tmp_path / "fitted"), epochs=2, require_improvement=False))
    restored = Pipeline.loads(pipeline.dumps())
    assert restored.to_dict() == pipeline.to_dict()
    out = restored.run(
        {
            "miner": {"query_embeddings": [[1.0, 0.0, 0.0, 0.0]], "positive_document_ids": [["doc0"]]},
            "corrector": {"documents": _documents(n=2)},
            "fitter": {"stale_documents": _documents(n=8), "fresh_documents": _documents(n=8, seed=1)},
        }
    )
    assert len(out["miner"]["negatives"][0]) == 2 and len(out["corrector"]["documents"]) == 2
    assert out["fitter"]["corrector_path"] == str(tmp_path / "fitted")
