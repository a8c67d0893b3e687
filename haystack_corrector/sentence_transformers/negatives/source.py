"""NegativeSource: the interface every negative source implements, its cost counters, and the no-grad encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.precision import bf16_encodes
from haystack_corrector.sampler import HardNegativeSampler

Encode = Callable[[Sequence[str]], Tensor]  # texts -> (n, dim) float32 CPU embeddings by the current model


@dataclass
class Costs:
    """What a run spent on targets, in the units the comparison of negative strategies needs."""

    corpus_encodes: int = 0  # full passes over the corpus after the initial cache
    target_forward_passes: int = 0  # target texts run through the model (with or without gradient)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def load(self, saved: dict[str, int]) -> None:
        """Take the counts of a checkpoint, in place (the loss and its source share this object)."""
        for key, value in saved.items():
            setattr(self, key, int(value))


class NegativeSource:
    """Gives ``sampler.num_negatives`` store rows per anchor, never one in that anchor's ``exclude`` set.

    Args:
        sampler: the :class:`~haystack_corrector.HardNegativeSampler` whose window, filters and strategy apply.
    """

    name = "source"

    def __init__(self, sampler: HardNegativeSampler) -> None:
        self.sampler = sampler
        self.costs = Costs()

    @property
    def store(self) -> Any:
        return self.sampler.store

    @property
    def corrected(self) -> bool:
        """Whether the last negatives were scored against the corrected cache."""
        return False

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        """(B, num_negatives) int64 rows for these anchor embeddings at optimiser step ``step``."""
        raise NotImplementedError

    def take_fresh_pairs(self) -> tuple[Tensor, Tensor] | None:
        """(rows, fresh embeddings) this source embedded without gradient in its last call, for the corrector's
        drift step, handed over once (None when it embedded nothing)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for a resumed run to continue exactly, beyond the sampler's generator and the
        costs (the loss saves those)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def no_grad_encoder(model: Any, batch_size: int, prompt: str | None = None, bf16: bool = False) -> Encode:
    """``texts -> embeddings`` by the model as it is now, without gradient; leaves the model's train/eval mode as is.

    ``bf16``: encode under bfloat16 autocast where the model's device has bfloat16 units
    (:func:`~haystack_corrector.precision.bf16_encodes`); otherwise, and with ``bf16=False``, in float32 even inside
    a caller's autocast region. The embeddings come back float32 either way."""
    unwrapped = getattr(model, "module", model)  # the trainer may swap in a DDP wrapper, which has no encode

    def encode(texts: Sequence[str]) -> Tensor:
        was_training = model.training
        kwargs: dict[str, Any] = {"batch_size": batch_size, "convert_to_tensor": True, "show_progress_bar": False}
        if prompt is not None:
            kwargs["prompt"] = prompt
        device = next(unwrapped.parameters()).device
        try:
            with torch.no_grad(), bf16_encodes(device, enabled=bf16):
                embeddings = unwrapped.encode(list(texts), **kwargs)
        finally:
            model.train(was_training)
        return embeddings.detach().float().cpu()

    return encode
