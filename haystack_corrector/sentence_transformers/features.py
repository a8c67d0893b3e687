"""Sentence features (the token dicts the trainer hands a loss): rows of a batch, and texts tokenised like a column."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from haystack_corrector.sentence_transformers import _compat


def select_rows(features: dict[str, Any], index: Tensor) -> dict[str, Any]:
    """The same features for the batch rows ``index`` (every tensor with the batch as its first dimension)."""
    batch = int(features["input_ids"].shape[0])
    return {
        key: value[index.to(value.device)]
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == batch
        else value
        for key, value in features.items()
    }


def tokenize(model: Any, texts: list[str], device: Any) -> dict[str, Any]:
    """``texts`` tokenised for ``model``'s forward (whatever the installed sentence-transformers calls it), on
    ``device``."""
    features = _compat.preprocess(model, texts)
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}


def tokenize_like(model: Any, texts: list[str], like: dict[str, Any], prompt: str | None) -> dict[str, Any]:
    """``texts`` tokenised for ``model``'s forward as the column ``like`` was: same device, prompt and task."""
    device = like["input_ids"].device
    features = _compat.preprocess(model, texts, prompt=prompt, task=like.get("task"))
    features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
    if "task" in like:
        features.setdefault("task", like["task"])
    return features
