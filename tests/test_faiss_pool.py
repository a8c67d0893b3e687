from __future__ import annotations

import pytest
import torch

pytest.importorskip("faiss")

from haystack_corrector import CorrectedCacheStore, Corrector  # noqa: E402
from tests.oracles import assert_topk_matches, naive_scores, overlap_at_k  # noqa: E402


def _store(n=300, d=16, similarity="cosine"):
    generator = torch.Generator().manual_seed(0)
    corrector = Corrector(d, hidden_dim=32)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return CorrectedCacheStore(torch.randn(n, d, generator=generator), corrector=corrector, similarity=similarity)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_pool_with_all_rows_equals_exact_search(similarity):
    store = _store(similarity=similarity)
    store.build_pool("flat")
    queries = torch.randn(150, 16)  # more than one chunk of re-ranked queries
    exclude = [[0, 1], [], [5], [], list(range(20))] * 30
    scores, rows = store.search(queries, 10, exclude=exclude, pool_size=len(store))
    oracle = naive_scores(queries, store.corrected_embeddings(), similarity)
    assert_topk_matches(scores, rows, oracle, 10, exclude)


@pytest.mark.parametrize("index_type", ["ivf", "hnsw"])
def test_approximate_pools_recover_most_of_the_exact_top_k(index_type):
    store = _store(n=2000)
    store.build_pool(index_type, nprobe=64)
    queries = torch.randn(20, 16)
    _, exact = store.search(queries, 10)
    _, pooled = store.search(queries, 10, pool_size=400)
    assert overlap_at_k(pooled, exact, 10) >= 0.8


def test_pool_is_saved_and_loaded_with_the_store(tmp_path):
    store = _store()
    store.build_pool("hnsw", hnsw_m=16)
    store.save(tmp_path / "s")
    loaded = CorrectedCacheStore.load(tmp_path / "s")
    assert loaded.pool is not None and loaded.pool.index_type == "hnsw" and loaded.pool.hnsw_m == 16
    queries = torch.randn(3, 16)
    assert torch.equal(loaded.search(queries, 5, pool_size=50)[1], store.search(queries, 5, pool_size=50)[1])


def test_pool_errors():
    store = _store()
    with pytest.raises(ValueError, match="call store.build_pool"):
        store.search(torch.randn(1, 16), 5, pool_size=10)
    store.build_pool("flat")
    with pytest.raises(ValueError, match="pool_size=3 must be >= top_k=5"):
        store.search(torch.randn(1, 16), 5, pool_size=3)
    with pytest.raises(ValueError, match="Unknown index_type 'lsh'"):
        store.build_pool("lsh")


def test_replacing_embeddings_drops_the_pool_built_on_them():
    store = _store()
    store.build_pool("flat")
    store.replace_embeddings(torch.randn(300, 16))
    with pytest.raises(ValueError, match="call store.build_pool"):
        store.search(torch.randn(1, 16), 5, pool_size=10)
