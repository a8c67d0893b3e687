"""The corrector network h: maps a stale cached embedding g'(y) to an estimate of the current one, h(g') ≈ g."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from haystack_corrector._atomic import atomic_directory
from haystack_corrector._validation import check_non_negative_int, check_positive_int, describe
from haystack_corrector.corrector_persistence import (
    CONFIG_FILE,
    FORMAT,
    LAYOUT,
    read_corrector,
    write_corrector,
)
from haystack_corrector.saved_folder import read_one_generation

# Rows per corrector call when a store corrects a block (and materialises its view). A block of 65,536 rows makes
# hidden activations of ~200 MB that glibc allocates with fresh mmaps (page faults on every call); 8,192 rows keep
# them under its 32 MB threshold, and the corrector over a block runs 1.2x (float32) to 1.5x (bfloat16 autocast)
# faster (measured on the 2-core machine).
CORRECTOR_CHUNK_ROWS = 8192


class Corrector(nn.Module):
    """Residual MLP ``h(z) = z + MLP(z)`` whose last layer starts at zero, so ``h`` is exactly the identity at init.

    With ``side_dim > 0`` the residual branch also reads per-row side features ``s`` kept from the initial encoder's
    one pass (e.g. mean-pooled hidden states of some layers): ``h(z, s) = z + MLP([z, s])``, still the identity at
    init. Fine-tuning adds to an embedding what the old final embedding had already discarded; side features keep
    some of it (FCT, Ramanujan et al., CVPR 2022, corrects old embeddings from stored side information).

    Args:
        dim: embedding dimension d (input and output).
        hidden_dim: width of the hidden layers; default ``dim`` (DESIGN.md suggests 1-2x ``dim``).
        num_layers: number of linear layers in the residual branch (1 = an affine correction ``z + Wz + b``).
        normalize: L2-normalise the output (for cosine models). On unit-norm inputs the initial map is then the
            identity up to float rounding; with ``normalize=False`` it is bit-exact.
        side_dim: width of the side features the corrector reads next to the stale embedding (0: none). The
            residual branch reads them standardised, ``(s - side_shift) / side_scale`` (two fixed buffers; by default
            0 and 1, the raw features): :meth:`standardize_side` sets them from the cache's statistics, which
            :meth:`CorrectedCacheStore.standardize_side_features` does for a store's default corrector.

    Example:
        >>> import torch
        >>> from haystack_corrector import Corrector
        >>> h = Corrector(8)
        >>> z = torch.randn(3, 8)
        >>> bool(torch.equal(h(z), z))  # identity at initialisation
        True
    """

    # Declared for type checkers: buffers registered in __init__ (only when side_dim > 0) and the step counter.
    side_shift: torch.Tensor
    side_scale: torch.Tensor
    steps: int

    def __init__(
        self, dim: int, hidden_dim: int | None = None, num_layers: int = 2, normalize: bool = False, side_dim: int = 0
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.hidden_dim = check_positive_int(hidden_dim if hidden_dim is not None else dim, "hidden_dim")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {describe(normalize)}")
        self.normalize = normalize
        self.side_dim = check_non_negative_int(side_dim, "side_dim")
        layers: list[nn.Module] = []
        width_in = self.dim + self.side_dim
        for _ in range(self.num_layers - 1):
            layers += [nn.Linear(width_in, self.hidden_dim), nn.GELU()]
            width_in = self.hidden_dim
        last = nn.Linear(width_in, self.dim)
        # A zero last layer makes the residual branch output exactly 0: h starts as the identity, which is correct
        # at step 0 where the cache was just computed by the current encoder (g' = g).
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.residual = nn.Sequential(*layers)
        if self.side_dim:
            # Fixed (not trained) input standardisation of the side features; raw features until standardize_side.
            self.register_buffer("side_shift", torch.zeros(self.side_dim))
            self.register_buffer("side_scale", torch.ones(self.side_dim))
        # Optimiser steps taken on this corrector (by CorrectorTrainer): the one step counter of the package; a
        # materialised view's age is counted in these.
        self.steps = 0

    def forward(self, stale: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        if stale.ndim == 0 or stale.shape[-1] != self.dim:
            raise ValueError(f"Corrector expects inputs of dimension {self.dim}, got {describe(stale)}")
        if self.side_dim:
            if side is None or side.shape[-1] != self.side_dim or side.shape[:-1] != stale.shape[:-1]:
                raise ValueError(
                    f"This corrector reads side features of width {self.side_dim} for each row, got "
                    f"{'none' if side is None else describe(side)} for {describe(stale)}"
                )
            side = (side.to(stale.dtype) - self.side_shift.to(stale.dtype)) / self.side_scale.to(stale.dtype)
            out = stale + self.residual(torch.cat([stale, side], dim=-1))
        else:
            if side is not None:
                raise ValueError(f"This corrector reads no side features (side_dim=0), got {describe(side)}")
            out = stale + self.residual(stale)
        if self.normalize:
            out = F.normalize(out, dim=-1)
        return out

    @property
    def device(self) -> torch.device:
        """Where the corrector's weights are (CPU for a corrector without parameters)."""
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @torch.no_grad()
    def correct(self, stale: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """h(g') of rows in any float dtype: float32, without gradients, on :attr:`device`, ``CORRECTOR_CHUNK_ROWS``
        rows per call (every temporary stays small: see the constant)."""
        chunks = [
            self(
                stale[i : i + CORRECTOR_CHUNK_ROWS].to(self.device, torch.float32),
                None if side is None else side[i : i + CORRECTOR_CHUNK_ROWS].to(self.device, torch.float32),
            ).float()
            for i in range(0, max(int(stale.shape[0]), 1), CORRECTOR_CHUNK_ROWS)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    @torch.no_grad()
    def standardize_side(self, mean: torch.Tensor, std: torch.Tensor, embedding_norm: float = 1.0) -> None:
        """Read side features as ``(s - mean) / (std · sqrt(side_dim) / embedding_norm)``.

        Each standardised feature then has spread ``embedding_norm / sqrt(side_dim)``, so the side features together
        weigh about as much as the embedding (of norm ``embedding_norm``) in the residual branch's first layer. Raw
        mean-pooled hidden states are about 12x the norm of a unit embedding and mostly one offset shared by every
        row (measured on SciFact with MiniLM), which makes the branch's first steps large and uninformative.
        The map stays the identity at init (the last layer is zero either way). Features with zero spread get a
        scale of 1 (they only shift).
        """
        if not self.side_dim:
            raise ValueError("This corrector reads no side features (side_dim=0): nothing to standardise")
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.side_dim or std.numel() != self.side_dim:
            raise ValueError(
                f"standardize_side needs a mean and a std of width {self.side_dim}, got {mean.numel()} and {std.numel()}"
            )
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()) and bool((std >= 0).all())):
            raise ValueError("standardize_side needs a finite mean and a finite, non-negative std")
        if not (isinstance(embedding_norm, (int, float)) and math.isfinite(embedding_norm) and embedding_norm > 0):
            raise ValueError(f"embedding_norm must be a positive finite number, got {describe(embedding_norm)}")
        scale = std * math.sqrt(self.side_dim) / float(embedding_norm)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.side_shift.copy_(mean.to(self.side_shift.device))
        self.side_scale.copy_(scale.to(self.side_scale.device))

    @property
    def side_standardized(self) -> bool:
        """True when :meth:`standardize_side` has set the side features' shift and scale (False: raw features)."""
        return bool(self.side_dim) and not (bool((self.side_shift == 0).all()) and bool((self.side_scale == 1).all()))

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        """Zero the residual branch's last layer: h becomes the identity again (the other layers keep their weights)."""
        last = self.residual[-1]
        assert isinstance(last, nn.Linear)  # the branch always ends in a Linear (__init__)
        last.weight.zero_()
        last.bias.zero_()

    def weights_snapshot(self) -> list[tuple[str, torch.Tensor]]:
        """A detached copy of every parameter and buffer, for exact "has anything changed?" comparisons."""
        return [(name, tensor.detach().clone()) for name, tensor in self.state_dict(keep_vars=True).items()]

    def matches_snapshot(self, snapshot: list[tuple[str, torch.Tensor]]) -> bool:
        """True when the weights equal ``snapshot`` exactly (same names, shapes, dtypes, devices and values)."""
        current = self.state_dict(keep_vars=True)
        if len(current) != len(snapshot):
            return False
        for name, saved in snapshot:
            tensor = current.get(name)
            if (
                tensor is None
                or tensor.shape != saved.shape
                or tensor.dtype != saved.dtype
                or tensor.device != saved.device
                or not torch.equal(tensor.detach(), saved)
            ):
                return False
        return True

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "normalize": self.normalize,
            **({"side_dim": self.side_dim} if self.side_dim else {}),  # saves without side features stay as before
        }

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write ``corrector_config.json`` and ``corrector.safetensors`` into the folder ``path``, atomically.

        ``path`` may be new, empty, or a previous corrector save. A folder holding anything else is refused
        (:class:`FileExistsError`) unless ``overwrite=True``, which replaces only the two files and keeps the rest
        (the rules: :mod:`haystack_corrector._atomic`).
        """
        with atomic_directory(path, kind=FORMAT, config_file=CONFIG_FILE, layout=LAYOUT, overwrite=overwrite) as tmp:
            self.save_to(tmp)

    def save_to(self, directory: Path) -> None:
        """Write the two files into an existing folder (no atomicity; used inside other atomic saves)."""
        write_corrector(self, directory)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        map_location: str | torch.device = "cpu",
        accept_missing_checksums: bool = False,
    ) -> Corrector:
        """Load a corrector saved with :meth:`save` (its folder, or a store folder that contains one).

        Every file is checked (:mod:`haystack_corrector.corrector_persistence`): shapes against the weights file
        before anything is allocated, SHA-256 checksums, finite weights. Checksums catch accidental damage, not a
        deliberate edit. ``accept_missing_checksums=True`` loads a save of 0.1, written before checksums.
        """
        return read_one_generation(path, lambda folder: read_corrector(folder, map_location, accept_missing_checksums))

    def extra_repr(self) -> str:
        side = f", side_dim={self.side_dim}" if self.side_dim else ""
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, num_layers={self.num_layers}, normalize={self.normalize}{side}"
