"""Filters that leave an anchor too few candidates: skipped like mine_hard_negatives drops them (issue 36, Why 2).

On the main this issue was filed against, each of these raised `ValueError: Cannot sample ... for query 0` at the
first step, or filled the gap with random rows without being asked to, and `haystack-corrector mine --min-score`
exited 2 having written nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("sentence_transformers")

from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402

from haystack_corrector.cli import main  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    SampledNegatives,
)


@pytest.fixture
def setup(toy_training):
    return toy_training[:3]


def _columns(model, batch):
    return [model.preprocess(batch["anchor"]), model.preprocess(batch["positive"])]


def _best_candidate_scores(model, loss, batch, k):
    """Each anchor's k-th best score among the rows it may get (what a min_score filter is compared with)."""
    model.eval()
    anchors = model.encode(batch["anchor"], convert_to_tensor=True).cpu()
    keys = loss.relevance.keys(batch["anchor"])
    relevant = loss.relevance.relevant_sets(keys, loss.relevance.rows(loss.relevance.keys(batch["positive"])))
    scores, _ = loss.store.search(anchors, k, exclude=relevant, corrected=True)
    model.train()
    return scores[:, k - 1]


def test_short_anchors_are_skipped_and_the_rest_train_as_mnrl_on_their_rows(setup, caplog):
    model, store, dataset = setup
    batch = dataset.select(range(8))
    probe = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=2, train_dataset=dataset)
    kth = _best_candidate_scores(model, probe, batch, 2)
    threshold = float(kth.median())  # about half the anchors have 2 candidates above it
    short = kth < threshold
    assert 0 < int(short.sum()) < 8
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        negatives=SampledNegatives(min_score=threshold, range_max=40),
    )
    model.train()
    value = loss(_columns(model, batch), None)
    kept = torch.nonzero(~short).flatten().tolist()
    rows = loss.last_negative_rows
    assert rows.shape == (len(kept), 2) and bool((rows >= 0).all())
    reference = st_losses.MultipleNegativesRankingLoss(model)(
        _columns(model, batch.select(kept))
        + [model.preprocess([store.texts[r] for r in rows[:, j].tolist()]) for j in range(2)],
        None,
    )
    torch.testing.assert_close(value, reference, atol=1e-6, rtol=1e-6)
    assert loss.stats["skipped_anchors"] == int(short.sum()) and loss.stats["anchors"] == 8
    with caplog.at_level(logging.INFO, logger="haystack_corrector"):
        metrics = loss.pop_metrics()
    assert metrics["corrector/skipped_anchors"] == int(short.sum())
    message = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert message and f"Skipped {int(short.sum())} of 8 anchors" in message[0] and "min_score" in message[0]


def test_a_batch_where_every_anchor_is_short_trains_in_batch(setup):
    model, store, dataset = setup
    batch = dataset.select(range(6))
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=4, train_dataset=dataset, negatives=SampledNegatives(min_score=2.0)
    )
    model.train()
    value = loss(_columns(model, batch), None)  # cosine scores never reach 2: nothing passes
    reference = st_losses.MultipleNegativesRankingLoss(model)(_columns(model, batch), None)
    torch.testing.assert_close(value, reference, atol=1e-6, rtol=1e-6)
    assert loss.last_negative_rows is None
    assert loss.stats == {"anchors": 6, "skipped_anchors": 6, "inbatch_steps": 1}


def test_random_fill_stays_an_explicit_option_and_never_raises(setup):
    model, store, dataset = setup
    batch = dataset.select(range(6))
    fill = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        negatives=SampledNegatives(min_score=-1.0, max_score=0.999, range_max=3, fill_missing=True),
        seed=0,
    )
    model.train()
    fill(_columns(model, batch), None)
    assert fill.last_negative_rows.shape == (6, 2) and fill.stats["skipped_anchors"] == 0
    impossible = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        negatives=SampledNegatives(min_score=2.0, fill_missing=True),
        seed=0,
    )
    impossible(_columns(model, batch), None)  # not even the fill can: skipped, no ValueError mid-training
    assert impossible.stats["skipped_anchors"] == 6


def test_mine_drops_what_it_cannot_fill_and_says_why(capsys, tmp_path, toy_beir, tiny_st_path):
    store = tmp_path / "store"
    assert main(["build-cache", "--data", str(toy_beir), "--model", tiny_st_path, "--output", str(store)]) == 0
    capsys.readouterr()
    out = tmp_path / "negatives.jsonl"
    argv = ["mine", "--store", str(store), "--data", str(toy_beir), "--model", tiny_st_path, "--output", str(out)]
    assert main([*argv, "--max-score", "-1.0", "--num-negatives", "2"]) == 0  # no cosine candidate is <= -1
    printed = capsys.readouterr().out
    all_pairs = sum(1 for line in (Path(toy_beir) / "qrels" / "train.tsv").read_text().splitlines()[1:] if line)
    queries = len(
        {line.split("\t")[0] for line in (Path(toy_beir) / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    )
    assert "Wrote 0 rows" in printed and "Nothing to train on" in printed
    assert "left fewer than 2 candidates" in printed and "0 judged pairs whose positive is not in the store" in printed
    assert out.read_text() == ""
    dropped_queries = int(printed.split("Dropped ")[1].split(" queries")[0])
    assert 0 < dropped_queries <= queries and all_pairs > 0
    assert main([*argv, "--overwrite", "--num-negatives", "2"]) == 0
    assert "Dropped 0 queries (0 pairs)" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["negative_1"] and r["negative_2"] for r in rows)
