from __future__ import annotations

import os

# Nothing may reach a hub at test time, and Haystack must not phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # Chroma's telemetry (no network in tests)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from tests.tiny_model import build_tiny_model_folder

    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tiny_model(tiny_model_folder):
    from tests.tiny_model import load_tiny_model

    return load_tiny_model(tiny_model_folder)


@pytest.fixture(scope="session")
def tiny_st_path(tiny_model_folder, tmp_path_factory):
    """The tiny model saved as a SentenceTransformer folder (what --model expects)."""
    from tests.tiny_model import load_tiny_model

    path = tmp_path_factory.mktemp("tiny-st") / "model"
    load_tiny_model(tiny_model_folder).save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def toy_beir(tmp_path_factory):
    """A small BEIR folder with train and test splits (multi-positive qrels included)."""
    import json

    from tests.tiny_model import toy_corpus

    corpus, queries, qrels = toy_corpus(num_docs=120, num_queries=40, seed=1)
    folder = tmp_path_factory.mktemp("toy-beir")
    with open(folder / "corpus.jsonl", "w") as handle:
        for doc_id, doc in corpus.items():
            handle.write(json.dumps({"_id": doc_id, **doc}) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for query_id, text in queries.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (folder / "qrels").mkdir()
    for split, ids in (("train", list(qrels)[:28]), ("test", list(qrels)[28:])):
        with open(folder / "qrels" / f"{split}.tsv", "w") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for query_id in ids:
                for doc_id, grade in qrels[query_id].items():
                    handle.write(f"{query_id}\t{doc_id}\t{grade}\n")
    return str(folder)


@pytest.fixture
def toy_training(tiny_model):
    """(tiny model, its store of the toy corpus, the (anchor, positive) training dataset, qrels)."""
    from haystack_corrector.beir import document_text
    from haystack_corrector.sentence_transformers import build_training_dataset, encode_corpus
    from tests.tiny_model import toy_corpus

    corpus, queries, qrels = toy_corpus()
    ids = list(corpus)
    store = encode_corpus(tiny_model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    return tiny_model, store, build_training_dataset(queries, corpus, qrels, store), qrels
