from __future__ import annotations

import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector.replay import ReplayBuffer
from haystack_corrector.synthetic import make_synthetic_drift


def test_buffer_keeps_the_latest_entry_per_row_and_its_capacity():
    buffer = ReplayBuffer(capacity=4, dim=1)
    buffer.add(torch.tensor([0, 1, 0]), torch.tensor([[1.0], [2.0], [3.0]]), step=1)  # row 0 twice: last wins
    assert sorted(zip(buffer.rows.tolist(), buffer.fresh[:, 0].tolist())) == [(0, 3.0), (1, 2.0)]
    buffer.add(torch.tensor([1, 2, 3, 4]), torch.tensor([[5.0], [6.0], [7.0], [8.0]]), step=2)
    assert len(buffer) == 4  # capacity: the oldest (row 0) went first
    assert sorted(zip(buffer.rows.tolist(), buffer.fresh[:, 0].tolist())) == [(1, 5.0), (2, 6.0), (3, 7.0), (4, 8.0)]
    assert buffer.computed_at.tolist() == [2, 2, 2, 2]


def test_buffer_ages_out_old_pairs():
    buffer = ReplayBuffer(capacity=10, dim=1, max_age=2)
    for step in range(1, 6):
        buffer.add(torch.tensor([step]), torch.tensor([[float(step)]]), step=step)
        buffer.evict_older_than(step)
    assert sorted(buffer.rows.tolist()) == [3, 4, 5]  # computed at steps >= 5 - 2
    rows, fresh = buffer.sample(10, torch.Generator().manual_seed(0))
    assert sorted(rows.tolist()) == [3, 4, 5] and torch.equal(fresh[:, 0], rows.float())


def test_replay_takes_extra_corrector_steps_and_fits_better_at_equal_encoder_cost():
    drift = make_synthetic_drift(num_rows=400, dim=16, num_queries=8, strength=0.6, seed=0)

    def run(replay_steps):
        torch.manual_seed(0)
        store = CorrectedCacheStore(drift.stale, corrector=Corrector(16, hidden_dim=32), similarity="dot")
        trainer = CorrectorTrainer(
            store, lr=3e-3, replay_size=400 if replay_steps else 0, replay_steps=replay_steps, replay_batch_size=64
        )
        generator = torch.Generator().manual_seed(1)
        for _ in range(40):  # the same 40 online batches of 16 fresh pairs: the same encoder work in both runs
            rows = torch.randint(400, (16,), generator=generator)
            trainer.observe(rows, drift.fresh[rows])
        error = (store.corrected_embeddings() - drift.fresh).pow(2).sum(1).mean().item()
        return store.corrector.steps, error

    steps_plain, error_plain = run(0)
    steps_replay, error_replay = run(3)
    assert steps_plain == 40 and steps_replay == 40 * 4
    assert error_replay < 0.8 * error_plain, (error_plain, error_replay)


def test_replay_state_round_trip_continues_identically():
    drift = make_synthetic_drift(num_rows=100, dim=8, num_queries=4, seed=2)

    def trainer_for():
        torch.manual_seed(0)
        store = CorrectedCacheStore(drift.stale, corrector=Corrector(8), similarity="dot")
        return store, CorrectorTrainer(store, lr=1e-2, replay_size=50, replay_steps=2, replay_batch_size=8)

    store_a, a = trainer_for()
    batches = [torch.arange(i * 10, i * 10 + 10) for i in range(6)]
    for rows in batches[:3]:
        a.observe(rows, drift.fresh[rows])
    state = a.state_dict()
    for rows in batches[3:]:
        a.observe(rows, drift.fresh[rows])
    store_b, b = trainer_for()
    b.load_state_dict(state)
    for rows in batches[3:]:
        b.observe(rows, drift.fresh[rows])
    for p, q in zip(store_a.corrector.parameters(), store_b.corrector.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(a.replay.rows, b.replay.rows) and a.steps == b.steps == 18


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"replay_steps": 2}, ValueError, "replay_steps=2 needs a buffer: set replay_size > 0"),
        ({"replay_size": -1}, ValueError, "replay_size must be >= 0, got -1"),
        ({"replay_size": 8, "replay_batch_size": 0}, ValueError, "replay_batch_size must be > 0"),
        ({"replay_size": 8, "replay_max_age": 1.5}, TypeError, "replay_max_age must be an int"),
    ],
)
def test_replay_options_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        CorrectorTrainer(CorrectedCacheStore(torch.randn(10, 4)), **kwargs)


def test_checkpoint_restores_the_replay_buffer(tmp_path, tiny_model):
    from haystack_corrector.sentence_transformers import CorrectorCallback
    from tests.tiny_model import toy_loss

    loss, _, dataset = toy_loss(tiny_model, num_negatives=1, replay_size=64, replay_steps=2)
    tiny_model.train()
    batch = dataset.select(range(4))
    features = [tiny_model.preprocess(batch[c]) for c in ("anchor", "positive")]
    loss(features, None)
    assert len(loss.corrector_trainer.replay) > 0 and loss.corrector_trainer.steps == 3
    CorrectorCallback(loss).save_state(tmp_path)
    restored, _, _ = toy_loss(tiny_model, num_negatives=1, replay_size=64, replay_steps=2)
    CorrectorCallback(restored).load_state(tmp_path)
    assert torch.equal(restored.corrector_trainer.replay.rows, loss.corrector_trainer.replay.rows)
    assert torch.equal(restored.corrector_trainer.replay.fresh, loss.corrector_trainer.replay.fresh)
    assert restored.corrector_trainer.observed == loss.corrector_trainer.observed == 1


def test_a_checkpoint_without_loss_state_still_restores_the_corrector(tmp_path, tiny_model, caplog):
    """Checkpoints written before the loss state existed (0.1) restore the corrector and say what starts afresh."""
    import logging

    from haystack_corrector.sentence_transformers import CorrectorCallback
    from tests.tiny_model import toy_loss

    loss, store, dataset = toy_loss(tiny_model, num_negatives=1)
    tiny_model.train()
    loss([tiny_model.preprocess(dataset.select(range(4))[c]) for c in ("anchor", "positive")], None)
    CorrectorCallback(loss).save_state(tmp_path)
    (tmp_path / "corrector_state" / "loss_state.pt").unlink()
    restored, restored_store, _ = toy_loss(tiny_model, num_negatives=1)
    with caplog.at_level(logging.WARNING, logger="haystack_corrector"):
        CorrectorCallback(restored).load_state(tmp_path)
    assert any("saved by an older version" in r.getMessage() for r in caplog.records)
    for key, value in store.corrector.state_dict().items():
        assert torch.equal(restored_store.corrector.state_dict()[key], value)
