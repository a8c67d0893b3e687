"""Nested corpus subsets: judged documents always kept, smaller sizes inside larger ones, corpus order preserved."""

from __future__ import annotations

import pytest

from haystack_corrector.experiments.corpus_subset import judged_documents, nested_subset

CORPUS = [f"d{i}" for i in range(100)]
JUDGED = {"d3", "d50", "d99", "not-in-corpus"}


def test_judged_documents_takes_positive_grades_of_every_qrels():
    train = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    test = {"q9": {"d4": 1}}
    assert judged_documents(train, test) == {"d1", "d3", "d4"}


def test_subsets_are_nested_keep_the_judged_documents_and_the_corpus_order():
    subsets = [nested_subset(CORPUS, JUDGED, size) for size in (10, 30, 60)]
    for smaller, larger in zip(subsets, subsets[1:]):
        assert set(smaller) < set(larger)
    for size, subset in zip((10, 30, 60), subsets):
        assert len(subset) == size
        assert {"d3", "d50", "d99"} <= set(subset)
        assert subset == sorted(subset, key=CORPUS.index)
    assert nested_subset(CORPUS, JUDGED, 30) == subsets[1]  # deterministic
    assert nested_subset(CORPUS, JUDGED, 30, seed=1) != subsets[1]  # the seed draws the others
    assert nested_subset(CORPUS, JUDGED, 100) == CORPUS == nested_subset(CORPUS, JUDGED, 500)


@pytest.mark.parametrize("size", [0, -1, 2])
def test_a_size_below_the_judged_documents_is_refused(size):
    with pytest.raises(ValueError, match="size"):
        nested_subset(CORPUS, JUDGED, size)
