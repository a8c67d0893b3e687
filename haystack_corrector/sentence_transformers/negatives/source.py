"""NegativeSource: what every negative source is, its cost counters, and the no-grad encoder they share.

A source is built by the user (``negatives=RerankedNegatives(depth=3)``) or from an arm name
(``negatives="corrector+rerank:3"``, :func:`~haystack_corrector.sentence_transformers.negatives.parse_negatives`), with
its own options checked at construction. :class:`~haystack_corrector.sentence_transformers.CorrectedNegativesLoss`
then binds it once (:meth:`NegativeSource.bind`), handing over the store, the number of negatives and the rest of
the loss's setting, and asks it each training step for ``num_negatives`` store rows per anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from haystack_corrector.precision import bf16_encodes

Encode = Callable[[Sequence[str]], Tensor]  # texts -> (n, dim) float32 CPU embeddings by the current model
MISSING = -1  # a negative the filters could not fill: the loss skips that anchor's extra columns for the step


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
    """Gives ``num_negatives`` store rows per anchor, never one in that anchor's ``exclude`` set.

    Subclasses set :attr:`name` (the harness's arm name), :attr:`searches_corrected` (whether the corrected cache is
    ever searched: the loss's corrector warm-up and view options apply only then) and :attr:`draws_random` (whether
    the loss's ``seed`` changes anything), and implement :meth:`negatives`.
    """

    name = "source"
    adds_columns = True  # False only for in-batch negatives: the wrapped loss runs on the dataset's columns alone

    def __init__(self) -> None:
        self.costs = Costs()
        self.loss: Any = None

    @property
    def searches_corrected(self) -> bool:
        return False

    @property
    def draws_random(self) -> bool:
        return False

    @property
    def encodes_texts(self) -> bool:
        """Whether the source runs texts through the model without gradient (the loss's encode options apply)."""
        return False

    def bind(self, loss: Any) -> None:
        """Take the loss's store, ``num_negatives``, ``range_min``, seed and encoder; called once, at construction."""
        if self.loss is not None and self.loss is not loss:
            raise ValueError(f"{self!r} already serves another loss: build one negative source per loss")
        self.loss = loss

    @property
    def store(self) -> Any:
        return self.loss.store

    @property
    def last_corrected(self) -> bool:
        """Whether the last call searched the corrected cache (False during a corrector warm-up)."""
        return False

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        """(B, num_negatives) int64 rows for these anchor embeddings at optimiser step ``step``; :data:`MISSING`
        where the filters left too few candidates."""
        raise NotImplementedError

    def take_fresh_pairs(self) -> tuple[Tensor, Tensor] | None:
        """(rows, fresh embeddings) this source embedded without gradient in its last call, for the corrector's
        drift step, handed over once (None when it embedded nothing)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for a resumed run to continue exactly (beyond the loss's own state)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def get_config_dict(self) -> dict[str, Any]:
        """The options that shape the negatives, for the model card (only those that have an effect)."""
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config_dict().items())
        return f"{type(self).__name__}({options})"


class InBatchNegatives(NegativeSource):
    """No sampled negatives: exactly the wrapped loss on the dataset's columns (the arm ``inbatch``)."""

    name = "inbatch"
    adds_columns = False

    def negatives(self, anchors: Tensor, exclude: list[set[int]], step: int, anchor_keys: Sequence[Any]) -> Tensor:
        return torch.empty((anchors.shape[0], 0), dtype=torch.int64)


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
