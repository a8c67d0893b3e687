"""Side features: the corrector reads per-row features kept from the initial encoder's one pass, h(g', s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from tests.oracles import assert_topk_matches, naive_scores


def _trained_corrector(dim=6, side_dim=5, seed=0):
    corrector = Corrector(dim, hidden_dim=12, side_dim=side_dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return corrector


def test_identity_at_init_and_side_input_checked():
    corrector = Corrector(6, side_dim=5)
    z, s = torch.randn(4, 6), torch.randn(4, 5)
    assert torch.equal(corrector(z, s), z)  # bit-exact identity at initialisation, whatever the side features
    with pytest.raises(ValueError, match="reads side features of width 5 for each row, got none"):
        corrector(z)
    with pytest.raises(ValueError, match="reads side features of width 5"):
        corrector(z, torch.randn(4, 3))
    with pytest.raises(ValueError, match="reads no side features"):
        Corrector(6)(z, s)
    assert (
        Corrector(6, side_dim=5).get_config_dict()["side_dim"] == 5 and "side_dim" not in Corrector(6).get_config_dict()
    )


def test_store_scans_read_the_side_features_exactly():
    stale, side = torch.randn(40, 6), torch.randn(40, 5)
    store = CorrectedCacheStore(
        stale, corrector=_trained_corrector(), similarity="dot", side_features=side, block_size=7
    )
    expected = store.corrector(stale, side.half().float()).detach()  # side features are stored in float16
    torch.testing.assert_close(store.corrected_embeddings(), expected)
    torch.testing.assert_close(store.corrected_embeddings([3, 9]), expected[[3, 9]])
    queries = torch.randn(3, 6)
    exclude = [[0], [], [5, 6]]
    scores, rows = store.search(queries, 4, exclude=exclude)
    assert_topk_matches(scores, rows, naive_scores(queries, expected, "dot"), 4, exclude)
    store.materialize()
    torch.testing.assert_close(store.search(queries, 4, exclude=exclude)[0], scores, atol=1e-2, rtol=1e-2)
    plain = store.without_side_features()
    assert plain.side_dim == 0 and plain.corrector.side_dim == 0 and list(plain.ids) == list(store.ids)


def test_side_features_are_saved_memory_mapped_and_validated(tmp_path):
    side = torch.randn(30, 5)
    store = CorrectedCacheStore(torch.randn(30, 6), corrector=_trained_corrector(), side_features=side)
    store.save(tmp_path / "s")
    for mmap in (True, False):
        loaded = CorrectedCacheStore.load(tmp_path / "s", mmap=mmap)
        assert loaded.side_dim == 5 and isinstance(loaded.rows.side, np.memmap) == mmap
        torch.testing.assert_close(loaded.side_features(), side.half().float())
        torch.testing.assert_close(loaded.corrected_embeddings(), store.corrected_embeddings())
    assert loaded.shard(10, 20).side_dim == 5
    with pytest.raises(ValueError, match="side_features must have one row per cache row"):
        CorrectedCacheStore(torch.randn(30, 6), side_features=torch.randn(29, 5))
    with pytest.raises(ValueError, match="side_features contains NaN or inf"):
        CorrectedCacheStore(torch.randn(3, 6), side_features=torch.tensor([[1.0], [float("nan")], [0.0]]))
    with pytest.raises(ValueError, match="corrector reads side features of width 0 but the cache keeps 5"):
        CorrectedCacheStore(torch.randn(30, 6), corrector=Corrector(6), side_features=side)


def test_side_features_recover_what_the_stale_embedding_lost():
    """Oracle task: fine-tuning moved embeddings along a direction the stale one never encoded; the side features
    kept it. A corrector of g' alone cannot recover it, one that also reads s can."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(600, 8, generator=generator)
    stale = latent[:, :6].clone()  # the old embedding: the first 6 latent factors
    fresh = stale + 0.8 * latent[:, 6:7] * torch.ones(1, 6)  # the new one moved along a factor g' discarded
    side = latent[:, 6:]  # ... which the initial pass kept as a side feature

    def fitted_error(with_side):
        torch.manual_seed(0)
        store = CorrectedCacheStore(
            stale,
            corrector=Corrector(6, hidden_dim=32, side_dim=2 if with_side else 0),
            similarity="dot",
            side_features=side if with_side else None,
        )
        CorrectorTrainer(store, lr=1e-2).fit(torch.arange(500), fresh[:500], epochs=60, batch_size=100)
        held_out = torch.arange(500, 600)
        return (store.corrected_embeddings(held_out) - fresh[held_out]).pow(2).sum(1).mean().item()

    without, with_side = fitted_error(False), fitted_error(True)
    assert with_side < 0.2 * without, (without, with_side)


def test_encode_corpus_keeps_mean_pooled_hidden_states(tiny_model):
    from haystack_corrector.sentence_transformers import encode_corpus

    texts = ["alpha beta gamma", "delta", "alpha beta gamma", "epsilon zeta"]
    store = encode_corpus(tiny_model, texts, side_layers=[1, 2], show_progress_bar=False, batch_size=2)
    assert store.side_dim == 2 * 64 and store.corrector.side_dim == 128
    plain = encode_corpus(tiny_model, texts, show_progress_bar=False)
    torch.testing.assert_close(store.stale_embeddings(), plain.stale_embeddings(), atol=1e-5, rtol=1e-4)
    # Oracle: one text at a time, hidden states from the transformer, mean over its tokens.
    hf = tiny_model[0].auto_model
    hf.config.output_hidden_states = True
    try:
        for row, text in enumerate(texts):
            with torch.no_grad():
                out = tiny_model(tiny_model.preprocess([text]))
            expected = torch.cat([out["all_layer_embeddings"][layer][0].mean(0) for layer in (1, 2)])
            torch.testing.assert_close(store.side_features([row])[0], expected, atol=2e-3, rtol=2e-3)
    finally:
        hf.config.output_hidden_states = False
    assert encode_corpus(tiny_model, texts, side_layers="all", show_progress_bar=False).side_dim == 3 * 64
    with pytest.raises(ValueError, match="out of range: the model has hidden states 0..2"):
        encode_corpus(tiny_model, texts, side_layers=[3], show_progress_bar=False)


def test_side_arm_needs_side_layers(tmp_path):
    from haystack_corrector.experiments.arms import parse_arm
    from haystack_corrector.experiments.config import ExperimentConfig

    assert parse_arm("corrector+side").side_features and not parse_arm("corrector").side_features
    with pytest.raises(ValueError, match="a \\+side arm needs side features"):
        ExperimentConfig(data=str(tmp_path), arms=("corrector+side",)).validate()


def test_side_feature_statistics_match_the_full_matrix_in_every_block_size(tmp_path):
    generator = torch.Generator().manual_seed(1)
    stale, side = torch.randn(37, 6, generator=generator), 4.0 + 2.0 * torch.randn(37, 5, generator=generator)
    exact = side.half().double()  # stored in float16
    for block_size in (1, 7, 64):
        store = CorrectedCacheStore(stale, side_features=side, block_size=block_size)
        mean, std, norm = store.side_feature_statistics()
        torch.testing.assert_close(mean.double(), exact.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std.double(), exact.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
        assert norm == pytest.approx(stale.double().square().sum(1).mean().sqrt().item(), rel=1e-6)
    store.save(tmp_path / "s")
    mapped = CorrectedCacheStore.load(tmp_path / "s", mmap=True)
    torch.testing.assert_close(mapped.side_feature_statistics()[1], std)
    with pytest.raises(ValueError, match="keeps no side features"):
        CorrectedCacheStore(stale).side_feature_statistics()


def test_standardised_side_input_is_the_raw_corrector_on_standardised_features():
    """Oracle: a standardised corrector equals the same weights reading (s - mean) / (std · sqrt(s_dim) / norm)."""
    generator = torch.Generator().manual_seed(2)
    stale, side = torch.randn(40, 6, generator=generator), 3.0 + torch.randn(40, 5, generator=generator) * 2.0
    store = CorrectedCacheStore(stale, side_features=side, similarity="dot")
    assert store.corrector.side_standardized  # the default corrector of a side-feature store is standardised
    assert torch.equal(store.corrector(stale, side), stale)  # still the identity at init
    trained = _trained_corrector()
    store.corrector = trained
    assert not trained.side_standardized  # a corrector given by the user reads raw features until asked
    raw_output = trained(stale, side).detach()
    store.standardize_side_features()
    mean, std, norm = store.side_feature_statistics()
    standardised = (side - mean) / (std * 5**0.5 / norm)
    torch.testing.assert_close(trained(stale, side), _trained_corrector()(stale, standardised))
    assert not torch.allclose(trained(stale, side), raw_output)
    # Together the standardised features weigh about as much as the embedding: mean squared norm = norm².
    stored = (store.side_features() - mean) / trained.side_scale
    assert stored.square().sum(1).mean().item() == pytest.approx(norm**2, rel=1e-3)


def test_standardisation_is_validated_saved_and_old_saves_read_raw_features(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from haystack_corrector._validation import with_config_checksum

    corrector = _trained_corrector()
    with pytest.raises(ValueError, match="a mean and a std of width 5"):
        corrector.standardize_side(torch.zeros(4), torch.ones(5))
    with pytest.raises(ValueError, match="finite, non-negative std"):
        corrector.standardize_side(torch.zeros(5), -torch.ones(5))
    with pytest.raises(ValueError, match="embedding_norm must be a positive finite number"):
        corrector.standardize_side(torch.zeros(5), torch.ones(5), embedding_norm=0.0)
    with pytest.raises(ValueError, match="reads no side features"):
        Corrector(6).standardize_side(torch.zeros(5), torch.ones(5))
    corrector.standardize_side(torch.arange(5.0), torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0]))
    assert corrector.side_scale[2] == 1.0  # a constant feature only shifts
    corrector.save(tmp_path / "c")
    loaded = Corrector.load(tmp_path / "c")
    assert torch.equal(loaded.side_shift, corrector.side_shift) and torch.equal(loaded.side_scale, corrector.side_scale)
    # A save written before standardisation existed has no shift/scale tensors: it loads reading raw features.
    weights = tmp_path / "c" / "corrector.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("side_")}
    save_file(state, str(weights), metadata={"format": "haystack-corrector/corrector"})
    config_path = tmp_path / "c" / "corrector_config.json"
    config = {
        k: v for k, v in json.loads(config_path.read_text()).items() if k not in ("weights_sha256", "config_sha256")
    }
    config_path.write_text(json.dumps(with_config_checksum(config)))
    with pytest.raises(ValueError, match="no weights_sha256.*accept_missing_checksums=True"):
        Corrector.load(tmp_path / "c")
    old = Corrector.load(tmp_path / "c", accept_missing_checksums=True)
    assert not old.side_standardized
    z, s = torch.randn(3, 6), torch.randn(3, 5)
    torch.testing.assert_close(old(z, s), _trained_corrector()(z, s))


def test_side_arm_can_read_raw_features():
    from haystack_corrector.experiments.arms import parse_arm

    raw, standard = parse_arm("corrector+side:raw"), parse_arm("corrector+side+replay:4")
    assert raw.side_features and raw.raw_side_features and raw.slug == "corrector_side-raw"
    assert standard.side_features and not standard.raw_side_features and standard.replay_steps == 4
    with pytest.raises(ValueError, match="unknown corrector lever 'side:log'"):
        parse_arm("corrector+side:log")
