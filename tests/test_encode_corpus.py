"""encode_corpus: sharded encodes resume without re-encoding finished shards."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sentence_transformers")

from haystack_corrector.sentence_transformers import encode_corpus  # noqa: E402


def test_sharded_encoding_resumes_without_re_encoding_finished_shards(tiny_model, tmp_path):
    texts = [f"text number {i}" for i in range(25)]
    calls = []
    real_encode = tiny_model.encode

    def flaky_encode(chunk, **kwargs):
        calls.append(list(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-encode")
        return real_encode(chunk, **kwargs)

    tiny_model.encode = flaky_encode
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(tiny_model, texts, shard_dir=tmp_path / "shards", shard_size=10, show_progress_bar=False)
    assert sorted(p.name for p in (tmp_path / "shards").glob("shard-*.npy")) == ["shard-000000.npy", "shard-000001.npy"]
    calls.clear()
    store = encode_corpus(tiny_model, texts, shard_dir=tmp_path / "shards", shard_size=10, show_progress_bar=False)
    assert calls == [texts[20:]]  # only the unfinished shard was encoded again
    tiny_model.encode = real_encode
    torch.testing.assert_close(store.stale_embeddings(), torch.as_tensor(real_encode(texts)), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="holds shards of another encode"):
        encode_corpus(tiny_model, texts[:5], shard_dir=tmp_path / "shards", shard_size=10, show_progress_bar=False)
