from __future__ import annotations

import json

import pytest
import torch

from haystack_corrector import Corrector


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_identity_at_init_is_exact(num_layers):
    corrector = Corrector(16, hidden_dim=32, num_layers=num_layers)
    z = torch.randn(50, 16) * 10
    assert torch.equal(corrector(z), z)


def test_normalize_identity_on_unit_inputs_up_to_rounding():
    corrector = Corrector(16, normalize=True)
    z = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    torch.testing.assert_close(corrector(z), z)
    assert torch.allclose(corrector(torch.randn(5, 16) * 3).norm(dim=-1), torch.ones(5))


def test_hidden_dim_defaults_to_dim_and_config():
    corrector = Corrector(12)
    assert corrector.get_config_dict() == {"dim": 12, "hidden_dim": 12, "num_layers": 2, "normalize": False}


def test_snapshot_sees_every_kind_of_weight_change():
    corrector = Corrector(4)
    snapshot = corrector.weights_snapshot()
    assert corrector.matches_snapshot(snapshot)
    with torch.no_grad():
        corrector.residual[-1].bias.add_(1.0)
    assert not corrector.matches_snapshot(snapshot)
    snapshot = corrector.weights_snapshot()
    corrector.load_state_dict(Corrector(4).state_dict())
    assert not corrector.matches_snapshot(snapshot)
    snapshot = corrector.weights_snapshot()
    corrector.residual[0].weight.data.mul_(2.0)  # invisible to torch's version counters
    assert not corrector.matches_snapshot(snapshot)


def test_save_load_round_trip(tmp_path):
    corrector = Corrector(8, hidden_dim=24, num_layers=3, normalize=True)
    with torch.no_grad():
        for p in corrector.parameters():
            p.normal_()
    corrector.save(tmp_path / "h")
    loaded = Corrector.load(tmp_path / "h")
    assert loaded.get_config_dict() == corrector.get_config_dict()
    z = torch.randn(10, 8)
    assert torch.equal(loaded(z), corrector(z))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dim": 0}, ValueError, "dim must be > 0, got 0"),
        ({"dim": 8, "hidden_dim": -3}, ValueError, "hidden_dim must be > 0, got -3"),
        ({"dim": 8, "num_layers": 0}, ValueError, "num_layers must be > 0"),
        ({"dim": 8.5}, TypeError, "dim must be an int"),
        ({"dim": 8, "normalize": "yes"}, TypeError, "normalize must be a bool"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Corrector(**kwargs)


def test_wrong_input_dimension():
    with pytest.raises(ValueError, match="dimension 8"):
        Corrector(8)(torch.randn(3, 5))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Corrector.load(tmp_path / "missing")
    Corrector(4).save(tmp_path / "h")
    weights = tmp_path / "h" / "corrector.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ValueError, match="Corrupted corrector weights"):
        Corrector.load(tmp_path / "h")
    Corrector(4).save(tmp_path / "h2")
    config = tmp_path / "h2" / "corrector_config.json"
    config.write_text(config.read_text().replace('"dim": 4', '"dim": 6'))
    with pytest.raises(ValueError, match="corrector_config.json is corrupted: its content does not match"):
        Corrector.load(tmp_path / "h2")
    # A consistent config (checksum recomputed) that disagrees with the weights is caught by the shape check.
    from haystack_corrector._validation import CONFIG_CHECKSUM_KEY, with_config_checksum

    edited = json.loads(config.read_text())
    edited.pop(CONFIG_CHECKSUM_KEY)
    config.write_text(json.dumps(with_config_checksum(edited)))
    with pytest.raises(
        ValueError, match=r"does not hold the tensors .* describes .*residual.0.weight.*\(4, 4\) in the file, \(4, 6\)"
    ):
        Corrector.load(tmp_path / "h2")
