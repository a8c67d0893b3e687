from __future__ import annotations

import math

import pytest
import torch

from haystack_corrector.evaluation import overlap_at_k, relative_error, retrieval_metrics, run_from_search


def test_overlap_and_relative_error_hand_cases():
    a = torch.tensor([[1, 2, 3], [4, 5, 6]])
    b = torch.tensor([[3, 2, 9], [7, 8, 9]])
    assert overlap_at_k(a, b, 2) == pytest.approx((1 + 0) / 4)
    assert overlap_at_k(a, b, 3) == pytest.approx((2 + 0) / 6)
    fresh = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    estimate = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert relative_error(estimate, fresh) == pytest.approx((16 / 25 + 0) / 2)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        overlap_at_k(a, b, 4)


def test_retrieval_metrics_match_hand_computed_values():
    pytest.importorskip("pytrec_eval")
    qrels = {"q1": {"d1": 1, "d2": 0, "d3": 2}, "q2": {"d9": 1}, "q3": {"d5": 0}}  # q3 has no relevant doc: ignored
    run = {
        "q1": {"d1": 0.9, "d4": 0.8, "d2": 0.7, "d3": 0.1},  # relevant at ranks 1 (grade 1) and 4 (grade 2)
        "q2": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"d9": 0.001},  # relevant doc at rank 11
    }
    means, per_query = retrieval_metrics(run, qrels)
    # trec_eval nDCG uses linear gains: DCG = 1/log2(2) + 2/log2(5); ideal = 2/log2(2) + 1/log2(3)
    expected_q1 = (1 + 2 / math.log2(5)) / (2 + 1 / math.log2(3))
    assert per_query["q1"]["ndcg@10"] == pytest.approx(expected_q1)
    assert per_query["q1"]["mrr@10"] == 1.0 and per_query["q1"]["recall@100"] == 1.0
    assert per_query["q2"] == {"ndcg@10": 0.0, "recall@100": 1.0, "mrr@10": 0.0}  # rank 11: beyond the cut-offs of 10
    assert set(per_query) == {"q1", "q2"}
    assert means["ndcg@10"] == pytest.approx(expected_q1 / 2)
    assert means["mrr@10"] == pytest.approx(0.5)


def test_query_missing_from_run_scores_zero():
    pytest.importorskip("pytrec_eval")
    means, per_query = retrieval_metrics({}, {"q1": {"d1": 1}})
    assert per_query["q1"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}


def test_run_from_search():
    run = run_from_search(torch.tensor([[0.9, 0.5]]), torch.tensor([[2, 0]]), ["q"], ["a", "b", "c"])
    assert run == {"q": {"c": pytest.approx(0.9), "a": 0.5}}
    with pytest.raises(ValueError):
        run_from_search(torch.zeros(1, 2), torch.zeros(1, 3, dtype=torch.long), ["q"], ["a"])


def _hardest_rank_oracle(queries, cache, fresh, relevant, depth):
    """A plain loop: the fresh best non-relevant row, then its position in the cache's non-relevant ranking."""
    ranks = []
    for q, rows in zip(queries.tolist(), relevant):
        allowed = [r for r in range(len(cache)) if r not in rows]
        score = lambda matrix, r, q=q: sum(a * b for a, b in zip(q, matrix[r].tolist()))  # noqa: E731
        hardest = max(allowed, key=lambda r: (score(fresh, r), -r))
        order = sorted(allowed, key=lambda r: (-score(cache, r), r))
        position = order.index(hardest)
        ranks.append(position if position < depth else depth)
    return ranks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardest_negative_rank_equals_a_plain_loop(seed):
    from haystack_corrector.evaluation import hardest_negative_rank

    generator = torch.Generator().manual_seed(seed)
    fresh = torch.randn(60, 8, generator=generator)
    cache = fresh + 0.8 * torch.randn(60, 8, generator=generator)  # a stale cache: ranks spread from 0 to > depth
    queries = torch.randn(70, 8, generator=generator)
    relevant = [sorted({int(r) for r in torch.randint(60, (i % 4,), generator=generator)}) for i in range(70)]
    ranks = hardest_negative_rank(queries, cache, fresh, relevant, depth=5, block=16)
    expected = _hardest_rank_oracle(queries, cache, fresh, relevant, depth=5)
    assert ranks.tolist() == expected
    assert 0 < sum(r == 5 for r in expected) < len(expected)  # both found and missed cases are exercised
    assert hardest_negative_rank(queries, fresh, fresh, relevant, depth=5).tolist() == [0] * 70  # fresh finds it first
