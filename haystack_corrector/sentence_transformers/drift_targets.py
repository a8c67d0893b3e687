"""drift_targets: which store rows a training step embedded afresh, each paired with its fresh embedding once.

The corrector's drift step learns h(g') -> f(x) from these pairs: the dataset's target columns whose text is in the
store, the sampled negative columns, and the candidates a negative source embedded without gradient (re-ranking).
"""

from __future__ import annotations

import torch
from torch import Tensor


def drift_targets(
    known_rows: list[list[list[int]]],
    negative_rows: Tensor | None,
    embedded: list[Tensor],
    extra: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """(rows, fresh embeddings): the dataset's target columns (``known_rows[c][i]``: the rows of column c's i-th text,
    ``embedded[c]`` its fresh embeddings), then the sampled columns (``negative_rows[:, j]``, embedded after the
    dataset's), then the ``extra`` pairs whose row is not already a target."""
    rows: list[int] = []
    fresh: list[Tensor] = []
    for column_rows, column in zip(known_rows, embedded):
        for found, embedding in zip(column_rows, column):
            if found:
                rows.append(found[0])  # copies of one text share their stale embedding: train on one
                fresh.append(embedding)
    if negative_rows is not None:
        for j, column in enumerate(embedded[len(known_rows) :]):
            rows += negative_rows[:, j].tolist()
            fresh += list(column)
    if extra is not None:
        targets = set(rows)
        device = fresh[0].device if fresh else extra[1].device  # (the no-grad encodes come back on CPU)
        for row, embedding in zip(extra[0].tolist(), extra[1].to(device)):
            if row not in targets:  # each extra row once, and never one the columns already embedded
                targets.add(row)
                rows.append(row)
                fresh.append(embedding)
    if not rows:
        return torch.empty(0, dtype=torch.int64), torch.empty(0)
    return torch.tensor(rows, dtype=torch.int64), torch.stack(fresh).float()
