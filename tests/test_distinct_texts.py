from __future__ import annotations

import numpy as np
import pytest
import torch

from haystack_corrector.distinct_texts import distinct_texts, encode_distinct


def test_distinct_texts_in_first_occurrence_order():
    unique, inverse = distinct_texts(["b", "a", "b", "c", "a"])
    assert unique == ["b", "a", "c"]
    assert inverse.tolist() == [0, 1, 0, 2, 1]
    assert [unique[i] for i in inverse] == ["b", "a", "b", "c", "a"]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_encode_distinct_equals_encoding_every_text(as_tensor):
    texts = ["x", "y", "x", "z", "y", "x"]
    calls = []

    def encode(batch):  # an oracle encoder: a fixed vector per text, counted
        calls.append(list(batch))
        rows = np.array([[float(ord(t)), float(len(calls))] for t in batch], dtype=np.float32)
        return torch.from_numpy(rows) if as_tensor else rows

    rows = encode_distinct(texts, encode)
    assert calls == [["x", "y", "z"]], "each distinct text is encoded once"
    expected = [[float(ord(t)), 1.0] for t in texts]
    got = rows.tolist() if as_tensor else rows.tolist()
    assert got == expected
    assert encode_distinct(["p", "q"], encode).tolist() == [[112.0, 2.0], [113.0, 2.0]]  # no copies: passed through


def test_encode_corpus_gives_copies_the_same_row_and_keeps_ids(tiny_model):
    from haystack_corrector.sentence_transformers import encode_corpus

    texts = ["alpha beta", "gamma", "alpha beta", "delta", "gamma"]
    ids = ["d0", "d1", "d2", "d3", "d4"]
    store = encode_corpus(tiny_model, texts, ids=ids, show_progress_bar=False)
    rows = store.stale_embeddings()
    assert list(store.ids) == ids and store.texts == texts
    assert torch.equal(rows[0], rows[2]) and torch.equal(rows[1], rows[4])
    one_by_one = torch.tensor(np.stack([tiny_model.encode([t])[0] for t in texts]))
    torch.testing.assert_close(rows, one_by_one, atol=1e-5, rtol=1e-4)
