"""Writing and reading a :class:`~haystack_corrector.Corrector`: ``corrector_config.json`` + ``corrector.safetensors``.

The config carries its own SHA-256 and the weights file's; both are required (``accept_missing_checksums=True``
loads a save of 0.1, which had none). On load, every shape the config implies is compared with the safetensors
header *before* a tensor or a module is allocated, so a forged ``dim`` or ``num_layers`` costs nothing; the weights
are then read once (bytes on disk) and must be finite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from haystack_corrector._atomic import fault_point
from haystack_corrector._validation import (
    check_non_negative_int,
    check_positive_int,
    check_saved_config,
    with_config_checksum,
)
from haystack_corrector.saved_folder import SavedFolder, parse_json

if TYPE_CHECKING:
    from haystack_corrector.corrector import Corrector

CONFIG_FILE = "corrector_config.json"
WEIGHTS_FILE = "corrector.safetensors"
FORMAT = "haystack-corrector/corrector"
FORMAT_VERSION = 1
LAYOUT: dict[str, frozenset[str] | None] = {CONFIG_FILE: None, WEIGHTS_FILE: None}
FILES = frozenset(LAYOUT)  # a corrector sub-folder inside another save (a store, a trainer checkpoint)
_KEYS = ("format", "format_version", "dim", "hidden_dim", "num_layers", "normalize", "side_dim", "weights_sha256")
_MAX_WEIGHTS_BYTES = 1 << 36


def write_corrector(corrector: Corrector, directory: Path) -> None:
    """Write the two files into an existing folder (no atomicity: used inside the atomic saves)."""
    state = {k: v.detach().cpu().contiguous() for k, v in corrector.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    fault_point(f"wrote {WEIGHTS_FILE}")
    config = with_config_checksum(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **corrector.get_config_dict(),
            "weights_sha256": hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest(),
        }
    )
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    fault_point(f"wrote {CONFIG_FILE}")


def parameter_shapes(dim: int, hidden_dim: int, num_layers: int, side_dim: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a corrector's state dict, computed without building it."""
    shapes: dict[str, tuple[int, ...]] = {}
    width = dim + side_dim
    for layer in range(num_layers - 1):
        shapes[f"residual.{2 * layer}.weight"] = (hidden_dim, width)
        shapes[f"residual.{2 * layer}.bias"] = (hidden_dim,)
        width = hidden_dim
    shapes[f"residual.{2 * (num_layers - 1)}.weight"] = (dim, width)
    shapes[f"residual.{2 * (num_layers - 1)}.bias"] = (dim,)
    if side_dim:
        shapes["side_shift"] = (side_dim,)
        shapes["side_scale"] = (side_dim,)
    return shapes


def _header_shapes(data: bytes, file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, each entry checked (float32, non-negative integer dims)."""
    if len(data) < 8 or int.from_bytes(data[:8], "little") > len(data) - 8:
        raise ValueError(f"Corrupted corrector weights {file}: its safetensors header is truncated")
    header = parse_json(data[8 : 8 + int.from_bytes(data[:8], "little")], file, "corrector weights header")
    if not isinstance(header, dict):
        raise ValueError(f"Corrupted corrector weights {file}: its header is not a JSON object")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"Corrupted corrector weights {file}: tensor {name!r} has no valid shape")
        if entry.get("dtype") != "F32":
            raise ValueError(f"{file}: tensor {name!r} is {entry.get('dtype')}, expected F32")
        shapes[str(name)] = tuple(shape)
    return shapes


def read_corrector(
    folder: SavedFolder, map_location: str | torch.device = "cpu", accept_missing_checksums: bool = False
) -> Corrector:
    """A corrector from an opened saved folder (every check of the module docstring)."""
    from haystack_corrector.corrector import Corrector

    if not folder.exists(CONFIG_FILE) and folder.exists(f"corrector/{CONFIG_FILE}"):
        with folder.sub("corrector") as inner:  # a store folder: its corrector
            return read_corrector(inner, map_location, accept_missing_checksums)
    config_path, weights_path = folder.file(CONFIG_FILE), folder.file(WEIGHTS_FILE)
    if not folder.exists(CONFIG_FILE) or not folder.exists(WEIGHTS_FILE):
        raise FileNotFoundError(
            f"{folder.path} is not a saved Corrector: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it"
        )
    config = check_saved_config(
        folder.read_json(CONFIG_FILE, "corrector config"),
        config_path,
        FORMAT,
        _KEYS,
        "corrector config",
        accept_missing_checksums=accept_missing_checksums,
    )
    version = config.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{config_path} was written by a newer haystack-corrector (format {version!r}); upgrade")
    checksum = config.get("weights_sha256")
    if checksum is None and not accept_missing_checksums:
        raise ValueError(
            f"{config_path} has no weights_sha256: every save of this version writes one, so it is an old save or it "
            "was edited. Load it with accept_missing_checksums=True if you trust it"
        )
    data = folder.read_bytes(WEIGHTS_FILE, limit=_MAX_WEIGHTS_BYTES)
    if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
        raise ValueError(
            f"Corrupted corrector weights {weights_path}: its SHA-256 checksum does not match {config_path}"
        )
    stored = _header_shapes(data, weights_path)
    try:
        dim = check_positive_int(config["dim"], "dim")
        hidden_dim = check_positive_int(config["hidden_dim"], "hidden_dim")
        num_layers = check_positive_int(config["num_layers"], "num_layers")
        side_dim = check_non_negative_int(config.get("side_dim", 0), "side_dim")  # saves before side features: 0
        normalize = config["normalize"]
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {normalize!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Corrupted corrector config {config_path}: {exc}") from exc
    if 2 * num_layers > len(stored):  # bounded by the header (so by the file) before any per-layer work
        raise ValueError(f"{config_path} says num_layers={num_layers}, but {weights_path} holds {len(stored)} tensors")
    expected = parameter_shapes(dim, hidden_dim, num_layers, side_dim)
    if side_dim and not {"side_shift", "side_scale"} & set(stored):
        # Saved before side features were standardised: those correctors read the raw features.
        expected = {k: v for k, v in expected.items() if k not in ("side_shift", "side_scale")}
    if stored != expected:
        wrong = sorted(set(stored) ^ set(expected)) or sorted(k for k in stored if stored[k] != expected[k])
        raise ValueError(
            f"{weights_path} does not hold the tensors {config_path} describes (first difference: {wrong[0]!r}: "
            f"{stored.get(wrong[0])} in the file, {expected.get(wrong[0])} from the config)"
        )
    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types for inconsistent offsets
        raise ValueError(f"Corrupted corrector weights {weights_path}: {exc}") from exc
    for key, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{weights_path}: tensor {key!r} holds NaN or inf")
    corrector = Corrector(dim=dim, hidden_dim=hidden_dim, num_layers=num_layers, normalize=normalize, side_dim=side_dim)
    full = corrector.state_dict()
    corrector.load_state_dict({**full, **state})  # side_shift/side_scale of old saves: the defaults (0, 1)
    return corrector.to(map_location)
