"""Encode each distinct text once: corpora repeat texts (CoSQA holds 6,267 distinct texts in 20,604 documents).

Copies get the very same embedding row (bit for bit), ids and order stay as they are, and the encoder runs
``len(distinct)`` times instead of ``len(texts)``. Used by ``encode_corpus``, the harness' evaluation and the loss's
corpus refreshes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


def distinct_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts in order of first occurrence, and for each text the position of its distinct copy."""
    position: dict[str, int] = {}
    inverse = np.fromiter(
        (position.setdefault(text, len(position)) for text in texts), dtype=np.int64, count=len(texts)
    )
    return list(position), inverse


def encode_distinct(texts: Sequence[str], encode: Callable[[list[str]], Rows]) -> Rows:
    """``encode(texts)`` row for row, running ``encode`` on each distinct text once (copies share their row)."""
    unique, inverse = distinct_texts(texts)
    if len(unique) == len(texts):
        return encode(list(texts))
    rows = encode(unique)
    if isinstance(rows, torch.Tensor):
        return rows[torch.from_numpy(inverse).to(rows.device)]
    return rows[inverse]
