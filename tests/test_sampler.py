from __future__ import annotations

import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from haystack_corrector import CorrectedCacheStore, Corrector, HardNegativeSampler
from tests.oracles import naive_scores


def _store(n=60, d=8, seed=0, similarity="cosine"):
    generator = torch.Generator().manual_seed(seed)
    corrector = Corrector(d)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return CorrectedCacheStore(torch.randn(n, d, generator=generator), corrector=corrector, similarity=similarity)


def _oracle_passes(sampler, score, lowest):
    """Brute force: does a candidate with this score survive the sampler's score filters (mine_hard_negatives')?"""
    if sampler.absolute_margin is not None and score + sampler.absolute_margin > lowest:
        return False
    if sampler.relative_margin is not None and score > lowest - abs(lowest) * sampler.relative_margin:
        return False
    return sampler.max_score is None or score <= sampler.max_score


def oracle_window(store, query, positives, sampler):
    """Brute force: the candidate rows a sampler may return for one query, in order, per mine_hard_negatives."""
    targets = store.corrected_embeddings() if sampler.corrected else store.stale_embeddings()
    scores = naive_scores(query.unsqueeze(0), targets, store.similarity)[0]
    ranked = sorted((r for r in range(len(store)) if r not in positives), key=lambda r: -scores[r])
    ranked = ranked[: sampler.window]
    lowest = min((scores[p] for p in positives), default=math.inf)
    kept = [row for row in ranked if _oracle_passes(sampler, scores[row], lowest)]
    return kept[sampler.range_min :]


def oracle_fill_pool(store, query, positives, sampler):
    """Brute force: rows a fill may use: outside the window, not positives, passing every score filter."""
    targets = store.corrected_embeddings() if sampler.corrected else store.stale_embeddings()
    scores = naive_scores(query.unsqueeze(0), targets, store.similarity)[0]
    ranked = sorted((r for r in range(len(store)) if r not in positives), key=lambda r: -scores[r])
    lowest = min((scores[p] for p in positives), default=math.inf)
    return [row for row in ranked[sampler.window :] if _oracle_passes(sampler, scores[row], lowest)]


@settings(max_examples=60, deadline=None)
@given(
    num_negatives=st.integers(1, 6),
    strategy=st.sampled_from(["top", "gumbel", "random"]),
    range_min=st.integers(0, 5),
    extra=st.integers(0, 30),
    margin=st.one_of(st.none(), st.floats(0.0, 0.5)),
    max_score=st.one_of(st.none(), st.floats(-0.5, 1.0)),
    positives=st.lists(st.sets(st.integers(0, 59), max_size=6), min_size=1, max_size=4),
    corrected=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_sampler_invariants(num_negatives, strategy, range_min, extra, margin, max_score, positives, corrected, seed):
    store = _store()
    sampler = HardNegativeSampler(
        store,
        num_negatives=num_negatives,
        sampling_strategy=strategy,
        range_min=range_min,
        range_max=range_min + num_negatives + extra,
        absolute_margin=margin,
        max_score=max_score,
        corrected=corrected,
        seed=seed,
    )
    queries = torch.randn(len(positives), store.dim, generator=torch.Generator().manual_seed(seed))
    windows = [oracle_window(store, queries[q], positives[q], sampler) for q in range(len(positives))]
    pools = [oracle_fill_pool(store, queries[q], positives[q], sampler) for q in range(len(positives))]
    if any(len(w) + len(p) < num_negatives for w, p in zip(windows, pools)):
        with pytest.raises(ValueError, match="Cannot sample"):
            sampler.sample(queries, positives)
        assert sampler.stats["unfillable_queries"] == 1
        return
    negatives = sampler.sample(queries, positives)
    assert negatives.shape == (len(positives), num_negatives) and negatives.dtype == torch.int64
    for query, rows in enumerate(negatives.tolist()):
        assert len(set(rows)) == num_negatives, "duplicate negatives"
        assert not set(rows) & positives[query], "a positive was returned as a negative"
        window = windows[query]
        # The fill never brings back a row the window rejected (a filter or range_min) or one a filter rejects.
        assert set(rows) <= set(window) | set(pools[query]), "a rejected row was returned"
        if len(window) >= num_negatives:
            assert set(rows) <= set(window), "negative outside the candidate window"
            if strategy == "top":
                assert rows == window[:num_negatives]


def test_top_matches_oracle_with_relative_margin():
    store = _store(similarity="dot")
    sampler = HardNegativeSampler(store, num_negatives=3, relative_margin=0.1, range_min=1, range_max=40)
    queries = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    positives = [{1}, {2, 3}, set(), {4}, {5, 6, 7}]
    negatives = sampler.sample(queries, positives)
    for query in range(5):
        window = oracle_window(store, queries[query], positives[query], sampler)
        if len(window) >= 3:
            assert negatives[query].tolist() == window[:3]


def _ranked_store(n=30):
    """Dot-product rows whose score for the query e0 is 1.0, 0.97, 0.94, ... by row: row order = rank order."""
    embeddings = torch.zeros(n, 2)
    embeddings[:, 0] = 1.0 - 0.03 * torch.arange(n, dtype=torch.float32)
    return CorrectedCacheStore(embeddings, similarity="dot"), torch.tensor([[1.0, 0.0]])


def test_fill_is_counted_and_logged(caplog):
    store, query = _ranked_store()
    # max_score=0.5 rejects the whole window (rows 0-9 score 1.0..0.73) and rows 10-16 beyond it (0.70..0.52).
    sampler = HardNegativeSampler(store, num_negatives=4, max_score=0.5, range_max=10, seed=0)
    with caplog.at_level(logging.INFO, logger="haystack_corrector.sampler"):
        negatives = sampler.sample(query.expand(3, -1), [[0, 1], [2], []])
    assert sampler.stats["filled_queries"] == 3 and sampler.stats["filled_negatives"] == 12
    assert sampler.stats["skipped_max_score"] == 30
    assert sum("Filled 12 of 12 negatives" in r.getMessage() for r in caplog.records) == 1
    for rows, pos in zip(negatives.tolist(), [{0, 1}, {2}, set()]):
        assert len(set(rows)) == 4 and not set(rows) & pos
        assert min(rows) >= 17, f"the fill returned a row above max_score: {rows}"


@pytest.mark.parametrize("seed", range(20))
def test_fill_never_returns_rows_skipped_by_range_min(seed):
    store, query = _ranked_store(n=12)
    # Window = rows 0-5 (1.0..0.85); max_score=0.87 rejects rows 0-4; range_min=2 then skips the one valid row, 5
    # (a likely false negative). All 3 negatives come from the fill, which may use only rows 6-11.
    sampler = HardNegativeSampler(store, num_negatives=3, range_min=2, range_max=6, max_score=0.87, seed=seed)
    rows = sampler.sample(query, [[]])[0].tolist()
    assert set(rows) <= set(range(6, 12)), f"a row the window rejected came back through the fill: {rows}"


def test_fill_raises_and_counts_when_too_few_rows_pass():
    store, query = _ranked_store(n=12)
    # max_score=0.69 rejects rows 0-10 (scores 1.0..0.70): only row 11 (0.67) is left for 3 negatives.
    sampler = HardNegativeSampler(store, num_negatives=3, max_score=0.69, range_max=5, seed=0)
    with pytest.raises(ValueError, match="Cannot sample 3 negatives for query 0: only 1 rows"):
        sampler.sample(query, [[]])
    assert sampler.stats["unfillable_queries"] == 1


def test_fill_when_window_is_all_positives_but_one():
    store = CorrectedCacheStore(torch.randn(6, 4))
    sampler = HardNegativeSampler(store, num_negatives=2, range_max=2, seed=1)
    negatives = sampler.sample(torch.randn(1, 4), [[0, 1, 2, 3]])
    assert sorted(negatives[0].tolist()) == [4, 5]


def test_gumbel_samples_follow_the_softmax():
    # k = 1 Gumbel-max draws are exact samples from softmax(score / temperature): compare frequencies.
    store = CorrectedCacheStore(torch.eye(5), similarity="dot")
    query = torch.tensor([[0.0, 0.05, 0.1, 0.15, 0.2]])
    sampler = HardNegativeSampler(
        store, num_negatives=1, sampling_strategy="gumbel", temperature=0.05, range_max=5, seed=0
    )
    counts = torch.zeros(5)
    draws = 4000
    for _ in range(draws):
        counts[sampler.sample(query, [[]])[0, 0]] += 1
    expected = torch.softmax(query[0] / 0.05, dim=0)
    assert torch.allclose(counts / draws, expected, atol=0.03)


def test_seed_makes_sampling_reproducible():
    store = _store()
    q = torch.randn(4, 8)
    a = HardNegativeSampler(store, 3, sampling_strategy="random", range_max=30, seed=5).sample(q, [[0]] * 4)
    b = HardNegativeSampler(store, 3, sampling_strategy="random", range_max=30, seed=5).sample(q, [[0]] * 4)
    assert torch.equal(a, b)


def test_view_rescore_depth_samples_from_an_old_view_as_the_exact_scan_would():
    from haystack_corrector import CorrectorTrainer

    store = _store(n=80)
    store.materialize()
    trainer = CorrectorTrainer(store, lr=0.05)
    for _ in range(2):
        trainer.observe(torch.arange(30), torch.randn(30, 8))
    q = torch.randn(5, 8)
    positives = [[0], [1, 2], [3], [], [79]]
    exact = HardNegativeSampler(store, 4, range_max=12, seed=1).sample(q, positives)
    viewed = HardNegativeSampler(store, 4, range_max=12, seed=1, max_view_age=4)
    rescored = HardNegativeSampler(store, 4, range_max=12, seed=1, max_view_age=4, view_rescore_depth=len(store))
    assert torch.equal(rescored.sample(q, positives), exact)
    assert not torch.equal(viewed.sample(q, positives), exact)  # the two-updates-old view ranks otherwise
    assert store.view_age == 2 and rescored.get_config_dict()["view_rescore_depth"] == len(store)
    with pytest.raises(ValueError, match="view_rescore_depth must be > 0"):
        HardNegativeSampler(store, 4, view_rescore_depth=0)


def test_stale_vs_corrected_scores_differ():
    store = _store()
    q = torch.randn(4, 8)
    corrected = HardNegativeSampler(store, 5, corrected=True).sample(q, [[]] * 4)
    stale = HardNegativeSampler(store, 5, corrected=False).sample(q, [[]] * 4)
    assert torch.equal(corrected, store.search(q, 5)[1])
    assert torch.equal(stale, store.search(q, 5, corrected=False)[1])
    # The store's corrector is far from the identity: the two rankings must differ, or corrected= is ignored.
    assert not torch.equal(corrected, stale)
    assert not torch.equal(store.search(q, 5)[0], store.search(q, 5, corrected=False)[0])


def test_default_window():
    store = _store()
    assert HardNegativeSampler(store, 4).window == 4
    assert HardNegativeSampler(store, 4, range_min=2).window == 6
    assert HardNegativeSampler(store, 4, sampling_strategy="gumbel").window == 40
    assert HardNegativeSampler(store, 4, max_score=0.9).window == 40


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_negatives": 0}, ValueError, "num_negatives must be > 0, got 0"),
        ({"num_negatives": -3}, ValueError, "num_negatives must be > 0, got -3"),
        ({"sampling_strategy": "hardest"}, ValueError, "Unknown sampling_strategy 'hardest'"),
        ({"temperature": 0}, ValueError, "temperature must be > 0, got 0"),
        ({"temperature": -1.0}, ValueError, "temperature must be > 0"),
        ({"range_min": 5, "range_max": 5}, ValueError, "range_min must be smaller than range_max"),
        ({"range_min": 10, "range_max": 3}, ValueError, "range_min must be smaller than range_max"),
        ({"range_min": -1}, ValueError, "range_min must be >= 0"),
        ({"num_negatives": 5, "range_min": 2, "range_max": 4}, ValueError, "does not fit the window"),
        ({"absolute_margin": float("nan")}, ValueError, "absolute_margin must be finite"),
        ({"max_score": "high"}, TypeError, "max_score must be a float"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        HardNegativeSampler(_store(), **kwargs)


def test_bad_sample_input():
    store = _store(n=10)
    sampler = HardNegativeSampler(store, num_negatives=4)
    with pytest.raises(ValueError, match="dimension 3"):
        sampler.sample(torch.randn(2, 3), [[], []])
    with pytest.raises(IndexError, match="row index 10"):
        sampler.sample(torch.randn(1, 8), [[10]])
    with pytest.raises(ValueError, match="one collection per query"):
        sampler.sample(torch.randn(2, 8), [[1]])
    with pytest.raises(ValueError, match="num_negatives=4 is larger than the rows that are not positives"):
        sampler.sample(torch.randn(1, 8), [list(range(7))])
    with pytest.raises(TypeError, match="store must be"):
        HardNegativeSampler(torch.randn(3, 3))


def test_copies_of_a_positive_are_never_sampled():
    # Row 7 holds the same text (hence the same embedding) as positive row 0: the hardest "negative" of a query
    # that points at row 0 is row 7, a false negative, unless copies are excluded.
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(40, 8, generator=generator)
    embeddings[7] = embeddings[0]
    texts = [f"text {i}" for i in range(40)]
    texts[7] = texts[0]
    store = CorrectedCacheStore(embeddings, texts=texts)
    query = embeddings[0:1] + 0.01 * torch.randn(1, 8, generator=generator)
    kept = HardNegativeSampler(store, num_negatives=3, corrected=False, exclude_text_copies=False)
    assert kept.sample(query, [[0]])[0, 0].item() == 7
    sampler = HardNegativeSampler(store, num_negatives=3, corrected=False)
    assert sampler.exclude_text_copies and sampler.get_config_dict()["exclude_text_copies"] is True
    assert sampler.sample(query, [[0]])[0].tolist() == oracle_window(store, query[0], {0, 7}, sampler)[:3]
    with pytest.raises(TypeError, match="exclude_text_copies must be a bool"):
        HardNegativeSampler(store, exclude_text_copies="yes")


def test_min_score_and_max_score_keep_the_band_between_them():
    """Oracle: the top-k of the rows whose score lies in [min_score, max_score], as mine_hard_negatives keeps them."""
    store = CorrectedCacheStore(torch.eye(8), similarity="dot")
    query = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]])
    sampler = HardNegativeSampler(store, num_negatives=2, min_score=0.45, max_score=0.75, range_max=8)
    assert sampler.sample(query, [[]]).tolist() == [[2, 3]]  # 0.9 and 0.8 too similar; 0.7 and 0.6 the best left
    assert sampler.stats["skipped_max_score"] == 2
    only_min = HardNegativeSampler(store, num_negatives=3, min_score=0.55, range_max=8, seed=0)
    rows = only_min.sample(query, [[]])[0].tolist()
    assert rows == [0, 1, 2]
    assert only_min.stats["skipped_min_score"] == 4  # 0.5 .. 0.2 are too dissimilar
    with pytest.raises(ValueError, match="must not exceed max_score"):
        HardNegativeSampler(store, min_score=0.8, max_score=0.2)
