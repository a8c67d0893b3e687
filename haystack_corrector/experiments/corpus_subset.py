"""Nested corpus subsets: the same documents at every size, so a measurement can follow the corpus as it grows.

A subset of ``size`` documents keeps every document in ``keep`` (the judged ones: the evaluation queries' relevant
documents and the training positives) and fills the rest with the first unjudged documents of one seeded permutation
of the corpus. For one seed the subsets are nested: the 20k subset is inside the 50k one, which is inside the 100k
one. Documents keep their order in the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["judged_documents", "nested_subset"]


def judged_documents(*qrels: Mapping[str, Mapping[str, int]]) -> set[str]:
    """Every document with a grade > 0 in any of these qrels."""
    return {doc for judged in qrels for per_query in judged.values() for doc, grade in per_query.items() if grade > 0}


def nested_subset(corpus_ids: Sequence[str], keep: Iterable[str], size: int, seed: int = 0) -> list[str]:
    """``size`` ids of ``corpus_ids`` in corpus order: all of ``keep`` that are in the corpus, then the first others of
    a permutation drawn with ``seed`` (so that a smaller size is always a subset of a larger one)."""
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    kept = set(keep) & set(corpus_ids)
    if size < len(kept):
        raise ValueError(
            f"size {size} is smaller than the {len(kept)} judged documents every subset keeps; use at least {len(kept)}"
        )
    if size >= len(corpus_ids):
        return list(corpus_ids)
    others = [position for position, doc in enumerate(corpus_ids) if doc not in kept]
    order = np.random.default_rng(seed).permutation(len(others))
    chosen = {others[i] for i in order[: size - len(kept)].tolist()}
    return [doc for position, doc in enumerate(corpus_ids) if doc in kept or position in chosen]
