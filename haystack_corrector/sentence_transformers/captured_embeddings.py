"""Capture the embeddings a wrapped loss computes, so the drift step needs no second forward pass.

Every sentence-transformers loss embeds its columns by calling the model: one forward per column, one merged forward
of several columns (column-major), or, for the cached (GradCache) losses, one no-grad forward per mini-batch of each
column in order. A forward hook on the model therefore sees every row of every column, in column order, once; the
cached losses' second, gradient-carrying pass runs later, inside ``backward()``, after the hook is gone.

The other way round, :func:`served_forward` hands the wrapped loss an anchor forward the loss already ran for
sampling, so the anchors are embedded once per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


@contextmanager
def captured_embeddings(model: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, every ``sentence_embedding`` the model outputs is appended (detached) to the yielded list."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        # The output is the features mapping the modules filled in (a dict, or the tokenizer's BatchEncoding).
        if isinstance(output, Mapping) and isinstance(output.get("sentence_embedding"), Tensor):
            captured.append(output["sentence_embedding"].detach())

    handle = model.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def split_columns(captured: list[Tensor], batch_size: int, num_columns: int) -> list[Tensor] | None:
    """The captured rows as one (batch_size, dim) tensor per column, or None when they are not exactly the columns
    (a loss that embeds some column twice, skips one, or runs the same model as its guide)."""
    if not captured:
        return None
    if any(t.ndim != 2 or t.shape[1] != captured[0].shape[1] for t in captured):
        return None
    rows = torch.cat(captured)
    if rows.shape[0] != batch_size * num_columns:
        return None
    return list(rows.reshape(num_columns, batch_size, -1).unbind(0))


@contextmanager
def served_forward(model: nn.Module, features: Mapping[str, Any], output: Any) -> Iterator[list[bool]]:
    """Within the block, the first ``model(features)`` call with this very ``features`` object returns ``output``
    (computed earlier, with its autograd graph) instead of running the model again; every other call runs as usual.
    Forward hooks still see it. The yielded list holds ``True`` once the output was served.

    This lets the loss embed the anchors once: for sampling (detached) and for the wrapped loss (with gradient).
    """
    served: list[bool] = []
    original = model.forward
    own = model.__dict__.get("forward")  # an instance-level forward someone set before us, kept as it was

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not served and len(args) == 1 and not kwargs and args[0] is features:
            served.append(True)
            return output
        return original(*args, **kwargs)

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield served
    finally:
        if own is None:
            del model.forward  # back to the class's forward
        else:
            model.forward = own  # type: ignore[method-assign]
