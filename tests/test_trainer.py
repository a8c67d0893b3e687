from __future__ import annotations

import logging

import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector.evaluation import overlap_at_k, relative_error
from haystack_corrector.offline_fit import sample_neighbourhoods
from haystack_corrector.synthetic import make_synthetic_drift


def test_fit_on_five_percent_recovers_ranking_on_unseen_queries_and_rows():
    n = 5000
    drift = make_synthetic_drift(num_rows=n, dim=32, num_queries=200, strength=0.3, seed=0)
    store = CorrectedCacheStore(drift.stale, corrector=Corrector(32, hidden_dim=128))
    _, fresh_top = CorrectedCacheStore(drift.fresh).search(drift.queries, 100, corrected=False)
    _, stale_top = store.search(drift.queries, 100, corrected=False)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: n // 20]
    metrics = CorrectorTrainer(store, lr=3e-3).fit(rows, drift.fresh[rows], epochs=100, batch_size=64)
    _, corrected_top = store.search(drift.queries, 100)

    stale_overlap = overlap_at_k(stale_top, fresh_top, 100)
    corrected_overlap = overlap_at_k(corrected_top, fresh_top, 100)
    assert corrected_overlap >= 0.9
    assert stale_overlap <= 0.7
    unseen = torch.ones(n, dtype=torch.bool)
    unseen[rows] = False
    unseen_rows = unseen.nonzero().squeeze(1)
    unseen_error = relative_error(store.corrected_embeddings(unseen_rows), drift.fresh[unseen_rows])
    assert unseen_error < 0.1 * relative_error(drift.stale[unseen_rows], drift.fresh[unseen_rows])
    assert metrics["corrected_error"] < metrics["staleness"]


def test_observe_reports_metrics_before_the_step_and_learns():
    stale = torch.randn(64, 8)
    fresh = stale * 1.5 + 0.1
    store = CorrectedCacheStore(stale, similarity="dot")
    trainer = CorrectorTrainer(store, lr=1e-2)
    first = trainer.observe(torch.arange(64), fresh)
    # At the identity, the corrected error measured before the step equals the staleness.
    assert first["corrected_error"] == pytest.approx(first["staleness"])
    assert first["staleness"] == pytest.approx(relative_error(stale, fresh), rel=1e-5)
    for _ in range(300):
        last = trainer.observe(torch.arange(64), fresh)
    assert last["corrected_error"] < 0.05 * first["corrected_error"]
    assert trainer.steps == 301


def test_only_the_corrector_is_updated_and_fresh_embeddings_are_constants():
    encoder = torch.nn.Linear(8, 8)
    inputs = torch.randn(16, 8)
    fresh = encoder(inputs)  # requires grad, as in a training loop
    store = CorrectedCacheStore(torch.randn(16, 8), similarity="dot")
    before = [p.detach().clone() for p in store.corrector.parameters()]
    trainer = CorrectorTrainer(store, lr=1e-2, listwise_weight=1.0, score_weight=1.0)
    metrics = trainer.observe(torch.arange(16), fresh, query_embeddings=encoder(torch.randn(4, 8)))
    assert encoder.weight.grad is None  # no gradient leaked into the encoder
    assert any(not torch.equal(a, b) for a, b in zip(before, store.corrector.parameters()))
    assert {"listwise_loss", "score_loss", "embedding_loss"} <= set(metrics)


def test_listwise_term_is_zero_when_corrected_equals_fresh():
    from haystack_corrector import drift_losses

    g = torch.randn(10, 8)
    q = torch.randn(3, 8)
    assert float(drift_losses.listwise_loss(g, g, q)) == pytest.approx(0.0, abs=1e-6)
    # ... and only then: a ranking that differs gives a positive KL (a loss that is always 0 fails here).
    shuffled = g[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    assert float(drift_losses.listwise_loss(shuffled, g, q)) > 1e-3
    assert float(drift_losses.score_loss(shuffled, g, q)) > 1e-3
    assert float(drift_losses.score_loss(g, g, q)) == 0.0
    assert float(drift_losses.mse(g, g)) == 0.0
    assert float(drift_losses.cosine(g, g)) == pytest.approx(0.0, abs=1e-6)
    # mse is the mean over rows of the squared L2 distance
    assert float(drift_losses.mse(g, torch.zeros_like(g))) == pytest.approx(float(g.pow(2).sum(1).mean()), rel=1e-5)


def test_cosine_loss_trains():
    stale = torch.nn.functional.normalize(torch.randn(128, 8), dim=-1)
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    fresh = stale @ rotation
    store = CorrectedCacheStore(stale)
    result = CorrectorTrainer(store, lr=1e-2, loss="cosine").fit(torch.arange(128), fresh, epochs=100, batch_size=32)
    cos = torch.nn.functional.cosine_similarity(store.corrected_embeddings(), fresh).mean()
    assert cos > 0.95 and result["steps"] == 400


def test_state_dict_round_trip_continues_identically():
    stale, fresh = torch.randn(32, 6), torch.randn(32, 6)
    a = CorrectorTrainer(CorrectedCacheStore(stale, similarity="dot"), lr=1e-2)
    for _ in range(3):
        a.observe(torch.arange(32), fresh)
    b = CorrectorTrainer(CorrectedCacheStore(stale, similarity="dot"), lr=1e-2)
    b.load_state_dict(a.state_dict())
    a.observe(torch.arange(32), fresh)
    b.observe(torch.arange(32), fresh)
    for p, q in zip(a.store.corrector.parameters(), b.store.corrector.parameters()):
        assert torch.equal(p, q)
    assert b.steps == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "l1"}, ValueError, "Unknown loss 'l1'"),
        ({"lr": 0}, ValueError, "lr must be > 0"),
        ({"lr": -1.0}, ValueError, "lr must be > 0, got -1.0"),  # was ">= 0", although 0 is rejected too
        ({"weight_decay": "x"}, TypeError, "weight_decay must be a float"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay must be finite"),
        ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        CorrectorTrainer(CorrectedCacheStore(torch.randn(4, 2)), **kwargs)


def test_bad_observe_input():
    trainer = CorrectorTrainer(CorrectedCacheStore(torch.randn(10, 4)))
    with pytest.raises(ValueError, match="fresh_embeddings has 2 rows but indices has 3"):
        trainer.observe([0, 1, 2], torch.randn(2, 4))
    with pytest.raises(ValueError, match="dimension 5"):
        trainer.observe([0], torch.randn(1, 5))
    with pytest.raises(IndexError, match="row index 10"):
        trainer.observe([10], torch.randn(1, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        trainer.observe([0], torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="indices is empty"):
        trainer.observe([], torch.randn(0, 4))
    with pytest.raises(ValueError, match="epochs must be > 0"):
        trainer.fit([0], torch.randn(1, 4), epochs=0)
    with pytest.raises(TypeError, match="store must be"):
        CorrectorTrainer(torch.randn(3, 3))


def test_neighbourhood_listwise_fit_learns_local_rankings():
    drift = make_synthetic_drift(num_rows=2000, dim=16, num_queries=300, strength=0.5, seed=2)
    rows = torch.arange(400)
    store = CorrectedCacheStore(drift.stale, corrector=Corrector(16, hidden_dim=64))
    trainer = CorrectorTrainer(store, lr=3e-3, listwise_weight=1.0)
    # The neighbourhoods are each query's best sample rows by fresh score.
    hoods = sample_neighbourhoods(drift.queries[:5], drift.fresh[rows], 7, store.similarity)
    expected = torch.topk(torch.nn.functional.normalize(drift.queries[:5], dim=-1) @ drift.fresh[rows].T, 7).indices
    assert torch.equal(hoods, expected)
    first = trainer.observe(rows[:64], drift.fresh[rows[:64]])
    result = trainer.fit(
        rows, drift.fresh[rows], epochs=30, batch_size=64, query_embeddings=drift.queries, listwise_candidates=20
    )
    assert result["corrected_error"] < 0.2 * first["staleness"]
    with pytest.raises(ValueError, match="listwise_candidates needs query_embeddings"):
        trainer.fit(rows, drift.fresh[rows], epochs=1, listwise_candidates=5)
    with pytest.raises(ValueError, match="listwise_weight > 0"):
        CorrectorTrainer(store).fit(
            rows, drift.fresh[rows], epochs=1, query_embeddings=drift.queries, listwise_candidates=5
        )


def test_listwise_over_the_whole_sample_equals_neighbourhoods_as_large_as_the_sample():
    # "all" ranks every sample row for each query with one matrix product; neighbourhoods of size N hold the same
    # rows in another order (a KL over a set does not depend on the order), gathered per query: same steps.
    drift = make_synthetic_drift(num_rows=300, dim=16, num_queries=40, strength=0.5, seed=3)
    rows = torch.arange(0, 300, 3)
    fitted = []
    for candidates in ("all", rows.numel()):
        torch.manual_seed(0)
        store = CorrectedCacheStore(drift.stale, corrector=Corrector(16, hidden_dim=32))
        trainer = CorrectorTrainer(store, lr=1e-2, listwise_weight=1.0)
        result = trainer.fit(
            rows,
            drift.fresh[rows],
            epochs=2,
            batch_size=32,
            query_embeddings=drift.queries,
            listwise_candidates=candidates,
            query_batch_size=8,
        )
        fitted.append((result, store.corrected_embeddings()))
    assert fitted[0][0]["drift_loss"] == pytest.approx(fitted[1][0]["drift_loss"], rel=1e-4)
    assert torch.allclose(fitted[0][1], fitted[1][1], atol=1e-4)
    # ... and the ranking term really acts: without it the corrector ends elsewhere.
    torch.manual_seed(0)
    plain = CorrectedCacheStore(drift.stale, corrector=Corrector(16, hidden_dim=32))
    CorrectorTrainer(plain, lr=1e-2).fit(rows, drift.fresh[rows], epochs=2, batch_size=32)
    assert not torch.allclose(plain.corrected_embeddings(), fitted[0][1], atol=1e-3)
    store = CorrectedCacheStore(drift.stale, corrector=Corrector(16, hidden_dim=32))
    with pytest.raises(ValueError, match="positive int, 'all' or None"):
        CorrectorTrainer(store, listwise_weight=1.0).fit(
            rows, drift.fresh[rows], query_embeddings=drift.queries, listwise_candidates="every"
        )


def test_replacing_store_corrector_rebinds_the_trainer(caplog):
    torch.manual_seed(0)
    stale = torch.randn(40, 8)
    store = CorrectedCacheStore(stale, similarity="dot")
    trainer = CorrectorTrainer(store, lr=1e-2)
    trainer.observe(torch.arange(10), stale[:10] * 1.2)
    replacement = Corrector(8)
    store.corrector = replacement
    before = [p.detach().clone() for p in replacement.parameters()]
    with caplog.at_level(logging.WARNING, logger="haystack_corrector.trainer"):
        trainer.observe(torch.arange(10), stale[:10] * 1.2)
    moved = [not torch.equal(a, b) for a, b in zip(before, replacement.parameters())]
    assert any(moved), "the new corrector must be the one trained"
    assert trainer.corrector is replacement and replacement.steps == 1
    assert sum("rebinding its optimiser" in r.getMessage() for r in caplog.records) == 1
    assert trainer.state_dict()["corrector"].keys() == replacement.state_dict().keys()


def test_fresh_embeddings_whose_squares_overflow_are_refused_before_training():
    # Found by the fuzz test: a value of 2**64 squares to inf in float32, so the drift loss is inf whatever the lr.
    store = CorrectedCacheStore(torch.randn(8, 4))
    trainer = CorrectorTrainer(store, lr=1e-2)
    before = [p.detach().clone() for p in store.corrector.parameters()]
    fresh = torch.zeros(2, 4)
    fresh[1, 3] = 2.0**64
    with pytest.raises(ValueError, match="fresh_embeddings are too large for float32"):
        trainer.observe([0, 1], fresh)
    assert all(torch.equal(a, b) for a, b in zip(before, store.corrector.parameters()))
    trainer.observe([0, 1], torch.randn(2, 4))  # ordinary values still train


def test_query_embeddings_whose_squares_overflow_are_refused_before_training():
    # The listwise and score terms multiply queries with embeddings: 2**64 would make them inf, not the lr.
    store = CorrectedCacheStore(torch.randn(8, 4))
    trainer = CorrectorTrainer(store, lr=1e-2, listwise_weight=1.0)
    before = [p.detach().clone() for p in store.corrector.parameters()]
    queries = torch.randn(2, 4)
    queries[0, 0] = 2.0**64
    with pytest.raises(ValueError, match="query_embeddings are too large for float32"):
        trainer.observe([0, 1], torch.randn(2, 4), queries)
    assert all(torch.equal(a, b) for a, b in zip(before, store.corrector.parameters()))
    trainer.observe([0, 1], torch.randn(2, 4), torch.randn(2, 4))
