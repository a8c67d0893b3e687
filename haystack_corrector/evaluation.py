"""Fidelity metrics (how close a corrected or stale cache is to the fresh one, in embedding and in ranking terms),
retrieval metrics over BEIR qrels, and macro-F1 for classification."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from haystack_corrector.cache_store import CorrectedCacheStore

__all__ = [
    "fidelity_of",
    "hardest_negative_rank",
    "macro_f1",
    "overlap_at_k",
    "relative_error",
    "retrieval_metrics",
    "run_from_search",
]


def relative_error(estimate: torch.Tensor, fresh: torch.Tensor) -> float:
    """Mean over rows of ||estimate - fresh||² / ||fresh||² (staleness when ``estimate`` is the stale cache)."""
    if estimate.shape != fresh.shape:
        raise ValueError(f"estimate has shape {tuple(estimate.shape)} but fresh has {tuple(fresh.shape)}")
    estimate, fresh = estimate.float(), fresh.float()
    denominator = fresh.pow(2).sum(dim=-1).clamp_min(1e-12)
    return float(((estimate - fresh).pow(2).sum(dim=-1) / denominator).mean())


def overlap_at_k(ranking: torch.Tensor, reference: torch.Tensor, k: int) -> float:
    """Mean over queries of |top-k(ranking) ∩ top-k(reference)| / k, for (B, >=k) tensors of row indices."""
    if ranking.ndim != 2 or reference.ndim != 2 or ranking.shape[0] != reference.shape[0]:
        raise ValueError(
            f"rankings must be (B, n) with the same B, got {tuple(ranking.shape)} and {tuple(reference.shape)}"
        )
    if k <= 0 or k > min(ranking.shape[1], reference.shape[1]):
        raise ValueError(f"k must be in 1..{min(ranking.shape[1], reference.shape[1])}, got {k}")
    total = 0
    for mine, theirs in zip(ranking[:, :k].tolist(), reference[:, :k].tolist()):
        total += len(set(mine) & set(theirs))
    return total / (k * ranking.shape[0])


# ------------------------------------------------------------------------------------------------- IR metrics
Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def hardest_negative_rank(
    queries: torch.Tensor,
    cache: torch.Tensor,
    fresh: torch.Tensor,
    relevant: Sequence[Sequence[int]],
    depth: int,
    block: int = 64,
) -> torch.Tensor:
    """Where each query's fresh hardest negative sits in the cache's ranking: a re-ranking step that re-encodes the
    cache's top L candidates finds it when the rank is < L.

    The fresh hardest negative of query i is its best row by ``queries @ fresh.T`` outside ``relevant[i]``; its rank
    is its 0-based position among the query's rows by ``queries @ cache.T``, relevant rows left out, or ``depth``
    when it is not in the top ``depth``. Scores are dot products (pass unit rows for cosine). Returns (B,) int64.
    """
    ranks = []
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        fresh_scores, cache_scores = q @ fresh.T, q @ cache.T
        for i, rows in enumerate(relevant[start : start + block]):
            fresh_scores[i, list(rows)] = float("-inf")
            cache_scores[i, list(rows)] = float("-inf")
        hardest = fresh_scores.argmax(dim=1)
        found = cache_scores.topk(min(depth, cache.shape[0]), dim=1).indices == hardest[:, None]
        ranks.append(torch.where(found.any(dim=1), found.int().argmax(dim=1), torch.tensor(depth)))
    return torch.cat(ranks).long()


def run_from_search(scores: torch.Tensor, indices: torch.Tensor, query_ids: Sequence[str], ids: Sequence[str]) -> Run:
    """Turn ``store.search`` output into a TREC-style run ``{query_id: {doc_id: score}}``."""
    if scores.shape != indices.shape or scores.shape[0] != len(query_ids):
        raise ValueError(
            f"scores {tuple(scores.shape)}, indices {tuple(indices.shape)} and {len(query_ids)} query ids do not match"
        )
    return {
        query_id: {ids[row]: float(score) for score, row in zip(query_scores, query_rows)}
        for query_id, query_scores, query_rows in zip(query_ids, scores.tolist(), indices.tolist())
    }


def retrieval_metrics(run: Run, qrels: Qrels) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """nDCG@10, Recall@100 and MRR@10 with trec_eval's definitions (via ``pytrec_eval``), as BEIR reports them.

    Returns ``(means, per_query)``; means are over the queries of ``qrels`` that have at least one relevant document
    (a query missing from ``run`` scores 0). Needs ``pytrec-eval-terrier`` (the ``demo`` extra).
    """
    try:
        import pytrec_eval
    except ImportError as exc:
        raise ImportError(
            'retrieval_metrics needs pytrec-eval-terrier: pip install "haystack-corrector[demo]"'
        ) from exc
    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if any(g > 0 for g in docs.values())}
    if not judged:
        raise ValueError("qrels has no query with a relevant document")
    full_run = {q: dict(run.get(q, {})) for q in judged}
    # trec_eval cannot evaluate an empty ranking; a dummy non-relevant entry scores 0 everywhere.
    for docs in full_run.values():
        if not docs:
            docs["__no_result__"] = 0.0
    top10 = {q: dict(sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:10]) for q, docs in full_run.items()}
    deep = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100"}).evaluate(full_run)
    shallow = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    per_query = {
        q: {"ndcg@10": deep[q]["ndcg_cut_10"], "recall@100": deep[q]["recall_100"], "mrr@10": shallow[q]["recip_rank"]}
        for q in judged
    }
    means = {
        name: sum(v[name] for v in per_query.values()) / len(per_query) for name in ("ndcg@10", "recall@100", "mrr@10")
    }
    return means, per_query


def fidelity_of(
    store: CorrectedCacheStore,
    fresh_docs: torch.Tensor,
    queries: torch.Tensor,
    fresh_rows: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> dict[str, float]:
    """Overlap@10/@100 of the stale and corrected rankings with the fresh one, and relative errors (on ``rows``)."""
    k = min(100, len(store))
    _, stale_rows = store.search(queries, k, corrected=False)
    _, corrected_rows = store.search(queries, k, corrected=True)
    selected = torch.arange(len(store)) if rows is None else rows
    return {
        "staleness": relative_error(store.stale_embeddings(selected), fresh_docs[selected]),
        "corrected_error": relative_error(store.corrected_embeddings(selected), fresh_docs[selected]),
        "stale_overlap@10": overlap_at_k(stale_rows, fresh_rows, min(10, k)),
        "corrected_overlap@10": overlap_at_k(corrected_rows, fresh_rows, min(10, k)),
        "stale_overlap@100": overlap_at_k(stale_rows, fresh_rows, k),
        "corrected_overlap@100": overlap_at_k(corrected_rows, fresh_rows, k),
    }


def macro_f1(predicted: Sequence[int], gold: Sequence[int], classes: int | None = None) -> float:
    """Mean over ``classes`` classes (default: the largest label seen + 1) of F1; a class never predicted nor present
    counts 0, as scikit-learn's default."""
    classes = max([*predicted, *gold], default=-1) + 1 if classes is None else classes
    scores = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0
