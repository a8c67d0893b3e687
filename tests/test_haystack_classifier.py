"""RetrievedEvidenceClassifier against the marginal computed by hand, in a pipeline, and its errors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("haystack")
pytest.importorskip("sentence_transformers")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryEmbeddingRetriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402
from haystack_integrations.components.classifiers.corrector import RetrievedEvidenceClassifier  # noqa: E402

from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader  # noqa: E402

LABELS = ["SUPPORT", "CONTRADICT", "NOT_ENOUGH_INFO"]
DOCUMENTS = [
    Document(content="aspirin thins the blood", embedding=[1.0, 0.0, 0.0]),
    Document(content="cats sleep a lot", embedding=[0.0, 1.0, 0.0]),
    Document(content="the heart pumps blood", embedding=[0.6, 0.8, 0.0]),
]


@pytest.fixture(scope="module")
def reader_folder(tiny_model_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader") / "reader"
    torch.manual_seed(0)
    CrossEncoderReader(str(tiny_model_folder), num_labels=3, max_length=32).save(folder)
    return str(folder)


def test_the_label_is_the_marginal_over_the_retrieved_documents(reader_folder):
    classifier = RetrievedEvidenceClassifier(reader_folder, labels=LABELS, temperature=0.1, max_length=32, batch_size=2)
    classifier.warm_up()
    docs = [Document(content=d.content, score=s) for d, s in zip(DOCUMENTS, (0.9, 0.2, 0.5))]
    result = classifier.run(query="aspirin reduces clotting", documents=docs)
    reader = CrossEncoderReader(reader_folder, num_labels=3, max_length=32).eval()
    with torch.no_grad():
        logits = reader(["aspirin reduces clotting"], [[d.content for d in docs]])[0]
    weights = torch.softmax(torch.tensor([0.9, 0.2, 0.5]) / 0.1, dim=0)
    expected = (weights[:, None] * torch.softmax(logits, dim=-1)).sum(dim=0)
    assert list(result["probabilities"]) == LABELS
    torch.testing.assert_close(torch.tensor(list(result["probabilities"].values())), expected, atol=1e-5, rtol=1e-5)
    assert result["label"] == LABELS[int(expected.argmax())]
    out = result["documents"]
    assert [d.id for d in out] == [d.id for d in docs] and all(d.meta == {} for d in docs)  # copies, inputs untouched
    assert sum(d.meta["evidence_weight"] for d in out) == pytest.approx(1.0)
    assert out[0].meta["label_probabilities"] == pytest.approx(dict(zip(LABELS, torch.softmax(logits[0], -1).tolist())))


def test_in_a_pipeline_after_a_retriever_and_through_yaml(reader_folder):
    store = InMemoryDocumentStore(embedding_similarity_function="cosine")
    store.write_documents(DOCUMENTS)
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryEmbeddingRetriever(store, top_k=2))
    pipeline.add_component("classifier", RetrievedEvidenceClassifier(reader_folder, labels=LABELS, max_length=32))
    pipeline.connect("retriever.documents", "classifier.documents")
    inputs = {"retriever": {"query_embedding": [0.9, 0.1, 0.0]}, "classifier": {"query": "aspirin and blood"}}
    first = pipeline.run(inputs)["classifier"]
    assert [d.content for d in first["documents"]] == ["aspirin thins the blood", "the heart pumps blood"]
    restored = Pipeline.loads(pipeline.dumps())
    restored.get_component("retriever").document_store = store  # the in-memory store itself is not serialised
    again = restored.run(inputs)["classifier"]
    assert again["label"] == first["label"]
    assert again["probabilities"] == pytest.approx(first["probabilities"])


def test_errors(reader_folder):
    with pytest.raises(TypeError, match="labels must be a list"):
        RetrievedEvidenceClassifier(reader_folder, labels="SUPPORT")
    classifier = RetrievedEvidenceClassifier(reader_folder, labels=LABELS, max_length=32)
    with pytest.raises(RuntimeError, match="warm_up"):
        classifier.run(query="x", documents=[Document(content="y", score=0.1)])
    classifier.warm_up()
    with pytest.raises(ValueError, match="at least one retrieved document"):
        classifier.run(query="x", documents=[])
    with pytest.raises(ValueError, match="retriever's score"):
        classifier.run(query="x", documents=[Document(content="y")])
