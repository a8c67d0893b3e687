from __future__ import annotations

import pytest
import torch

pytest.importorskip("sentence_transformers")

from haystack_corrector import CorrectedCacheStore  # noqa: E402
from haystack_corrector.beir import document_text  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    build_training_dataset,
    encode_corpus,
)
from haystack_corrector.sentence_transformers._compat import multiple_negatives_ranking_loss  # noqa: E402
from tests.tiny_model import toy_corpus  # noqa: E402


@pytest.fixture
def setup(tiny_model):
    corpus, queries, qrels = toy_corpus()
    ids = list(corpus)
    store = encode_corpus(tiny_model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    return tiny_model, store, dataset, qrels


def _features(model, texts):
    return model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def test_dataset_columns_and_labels(setup):
    _, store, dataset, qrels = setup
    assert dataset.column_names == ["anchor", "positive", "label"]
    relevant_pairs = sum(1 for judged in qrels.values() for grade in judged.values() if grade > 0)
    assert len(dataset) == relevant_pairs  # grade-0 judgments are not positives
    for row in dataset.select(range(5)):
        assert store.texts[row["label"] % len(store)] == row["positive"]


def test_loss_with_fixed_negatives_equals_mnrl_value_and_gradients(setup):
    model, store, dataset, _ = setup
    model.train()
    batch = dataset.select(range(6))
    k = 3
    fixed = torch.tensor([[(7 * i + j) % len(store) for j in range(k)] for i in range(6)])
    loss = CorrectedMultipleNegativesRankingLoss(model, store, dataset, num_negatives=k, corrector_lr=1e-3)
    loss.sampler.sample = lambda queries, positives: fixed
    labels = torch.tensor(batch["label"])
    model.zero_grad()
    ours = loss([_features(model, batch["anchor"]), _features(model, batch["positive"])], labels)
    ours["infonce"].backward()
    our_grads = _grads(model)

    negative_columns = [[store.texts[r] for r in fixed[:, j].tolist()] for j in range(k)]
    mnrl = multiple_negatives_ranking_loss()(model)
    model.zero_grad()
    features = [_features(model, batch["anchor"]), _features(model, batch["positive"])]
    features += [_features(model, column) for column in negative_columns]
    reference = mnrl(features, None)
    reference.backward()
    torch.testing.assert_close(ours["infonce"], reference, atol=1e-5, rtol=1e-5)
    for a, b in zip(our_grads, _grads(model)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_negatives_none_equals_mnrl(setup):
    model, store, dataset, _ = setup
    batch = dataset.select(range(8))
    loss = CorrectedMultipleNegativesRankingLoss(model, store, dataset, negatives="inbatch")
    features = [_features(model, batch["anchor"]), _features(model, batch["positive"])]
    ours = loss(features, torch.tensor(batch["label"]))
    reference = multiple_negatives_ranking_loss()(model)(features, None)
    torch.testing.assert_close(ours["infonce"], reference, atol=1e-6, rtol=1e-6)
    assert set(ours) == {"infonce", "drift"}


@pytest.mark.parametrize("negatives", ["corrector", "stale"])
def test_sampled_negative_is_never_relevant(setup, negatives):
    model, store, dataset, qrels = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, dataset, num_negatives=5, negatives=negatives, strategy="random", range_max=40, seed=0
    )
    seen = []
    original = loss.sampler.sample

    def recording(queries, positives):
        rows = original(queries, positives)
        seen.append((rows, positives))
        return rows

    loss.sampler.sample = recording
    relevant_by_query = {
        query: {store.rows_of([d])[0] for d, g in judged.items() if g > 0} for query, judged in qrels.items()
    }
    for start in range(0, len(dataset), 8):
        batch = dataset.select(range(start, min(start + 8, len(dataset))))
        loss([_features(model, batch["anchor"]), _features(model, batch["positive"])], torch.tensor(batch["label"]))
    all_relevant_sets = [frozenset(s) for s in relevant_by_query.values()]
    for rows, positives in seen:
        for query_rows, query_positives in zip(rows.tolist(), positives):
            assert frozenset(query_positives) in all_relevant_sets  # the loss excludes ALL relevant rows of the query
            assert not set(query_rows) & set(query_positives)
    assert any(len(p) > 1 for _, ps in seen for p in ps), "the toy data must contain multi-positive queries"


def test_only_the_corrector_is_trained_by_the_drift_loss(setup):
    model, store, dataset, _ = setup
    # Make the cache stale (fresh != stale), so the drift loss is non-zero and the corrector has to move.
    noise = torch.randn(len(store), store.dim, generator=torch.Generator().manual_seed(0)) * 0.05
    store.replace_embeddings(store.stale_embeddings() + noise)
    loss = CorrectedMultipleNegativesRankingLoss(model, store, dataset, num_negatives=2, corrector_lr=1e-2)
    assert not any(p is q for p in loss.parameters() for q in store.corrector.parameters())
    before = [p.detach().clone() for p in store.corrector.parameters()]
    batch = dataset.select(range(4))
    model.train()
    loss([_features(model, batch["anchor"]), _features(model, batch["positive"])], torch.tensor(batch["label"]))
    assert all(p.grad is None for p in model.parameters())  # the drift step does not touch the encoder
    after = list(store.corrector.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the drift step must train the corrector"
    metrics = loss.pop_metrics()
    assert metrics["corrector/staleness"] > 1e-4 and metrics["corrector/drift_loss"] > 0


def test_config_and_citation(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, dataset, num_negatives=2, strategy="gumbel", range_max=10
    )
    config = loss.get_config_dict()
    assert config["num_negatives"] == 2 and config["negatives"] == "corrector" and config["strategy"] == "gumbel"
    assert config["similarity_fct"] == "cos_sim" and config["corrector"]["dim"] == 64
    assert "monath2024fresh" in loss.citation and "2409.01890" in loss.citation


def test_bad_inputs(setup, tiny_model_folder):
    model, store, dataset, _ = setup
    with pytest.raises(ValueError, match="store has dimension 8 but the model embeds into dimension 64"):
        CorrectedMultipleNegativesRankingLoss(model, CorrectedCacheStore(torch.randn(60, 8), texts=["t"] * 60), dataset)
    with pytest.raises(ValueError, match="num_negatives=58 is larger than the corpus minus the positives"):
        CorrectedMultipleNegativesRankingLoss(model, store, dataset, num_negatives=58)
    with pytest.raises(ValueError, match="must have the columns"):
        CorrectedMultipleNegativesRankingLoss(model, store, dataset.rename_column("anchor", "query"))
    with pytest.raises(ValueError, match="Unknown negatives 'fresh'"):
        CorrectedMultipleNegativesRankingLoss(model, store, dataset, negatives="fresh")
    with pytest.raises(ValueError, match="no texts"):
        CorrectedMultipleNegativesRankingLoss(model, CorrectedCacheStore(store.stale_embeddings()), dataset)
    loss = CorrectedMultipleNegativesRankingLoss(model, store, dataset, num_negatives=2)
    batch = dataset.select(range(2))
    features = [_features(model, batch["anchor"]), _features(model, batch["positive"])]
    with pytest.raises(ValueError, match="was not made by build_training_dataset"):
        loss(features, torch.tensor([5, 7]))  # query 0 does not own rows 5 and 7
    with pytest.raises(ValueError, match="needs the 'label' column"):
        loss(features, None)
    with pytest.raises(ValueError, match="Expected 2 text columns"):
        loss(features + [features[1]], torch.tensor(batch["label"]))
    other = encode_corpus(model, ["x"] * 60, show_progress_bar=False)
    with pytest.raises(ValueError, match="built for another store"):
        CorrectedMultipleNegativesRankingLoss(model, other, dataset)


def _batch_call(loss, model, batch):
    return loss([_features(model, batch["anchor"]), _features(model, batch["positive"])], torch.tensor(batch["label"]))


def test_static_negatives_are_mined_once_with_the_initial_model(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(model, store, dataset, num_negatives=2, negatives="static")
    batch = dataset.select(range(4))
    anchors = model.encode(batch["anchor"], convert_to_tensor=True).cpu()
    relevant = [loss._relevant[label // len(store)] for label in batch["label"]]
    expected = store.search(anchors, 2, exclude=relevant, corrected=False)[1]
    recorded = []
    original = loss._embed_texts
    loss._embed_texts = lambda texts, like: (recorded.append(texts), original(texts, like))[1]
    model.train()
    _batch_call(loss, model, batch)
    texts = store.texts
    assert recorded[0] == [texts[r] for r in expected.T.reshape(-1).tolist()]
    assert loss.corpus_encodes == 0


def test_refresh_re_encodes_the_corpus_every_n_steps(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, dataset, num_negatives=2, negatives="refresh", refresh_every=2
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(5):
        batch = dataset.select(range(4 * step, 4 * step + 4))
        out = _batch_call(loss, model, batch)
        optimizer.zero_grad()
        out["infonce"].backward()
        optimizer.step()
    assert loss.corpus_encodes == 2  # before steps 2 and 4
    # The cache now holds the model's embeddings as of the last refresh (before the 5th step's update).
    assert loss.target_forward_passes == 5 * 4 * 3 + 2 * len(store)


def test_rerank_picks_the_best_candidates_by_fresh_score(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, dataset, num_negatives=2, negatives="rerank", rerank_depth=10
    )
    batch = dataset.select(range(3))
    anchors = model.encode(batch["anchor"], convert_to_tensor=True).cpu()
    relevant = [loss._relevant[label // len(store)] for label in batch["label"]]
    rows = loss._negative_rows(anchors, relevant, torch.tensor(batch["label"]), {})
    _, candidates = store.search(anchors, 10, exclude=relevant, corrected=False)
    for query in range(3):
        fresh = model.encode([store.texts[r] for r in candidates[query].tolist()], convert_to_tensor=True).cpu()
        scores = torch.nn.functional.cosine_similarity(anchors[query : query + 1], fresh)
        best = candidates[query][torch.argsort(scores, descending=True)[:2]].tolist()
        assert rows[query].tolist() == best
    with pytest.raises(ValueError, match="refresh_every"):
        CorrectedMultipleNegativesRankingLoss(model, store, dataset, negatives="refresh")


def test_sharded_encoding_resumes_without_re_encoding_finished_shards(tiny_model, tmp_path):
    texts = [f"text number {i}" for i in range(25)]
    calls = []
    real_encode = tiny_model.encode

    def flaky_encode(chunk, **kwargs):
        calls.append(list(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-encode")
        return real_encode(chunk, **kwargs)

    tiny_model.encode = flaky_encode
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(tiny_model, texts, shard_dir=tmp_path / "shards", shard_size=10, show_progress_bar=False)
    assert sorted(p.name for p in (tmp_path / "shards").glob("shard-*.npy")) == ["shard-000000.npy", "shard-000001.npy"]
    calls.clear()
    store = encode_corpus(tiny_model, texts, shard_dir=tmp_path / "shards", shard_size=10, show_progress_bar=False)
    assert calls == [texts[20:]]  # only the unfinished shard was encoded again
    tiny_model.encode = real_encode
    torch.testing.assert_close(store.stale_embeddings(), torch.as_tensor(real_encode(texts)), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="holds shards of another encode"):
        encode_corpus(tiny_model, texts[:5], shard_dir=tmp_path / "shards", shard_size=10, show_progress_bar=False)


@pytest.mark.parametrize("negatives", ["static", "rerank"])
def test_copies_of_a_positive_are_relevant_too(tiny_model, negatives):
    corpus, queries, qrels = toy_corpus()
    positives = sorted({d for judged in qrels.values() for d, g in judged.items() if g > 0})
    for doc in positives[:10]:
        corpus[f"copy-of-{doc}"] = dict(corpus[doc])  # same text under another id, as in CoSQA
    ids = list(corpus)
    store = encode_corpus(tiny_model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        tiny_model, store, dataset, num_negatives=3, negatives=negatives, rerank_depth=10
    )
    texts = store.texts
    labels = dataset["label"]
    query_of_text = {text: query_id for query_id, text in queries.items()}
    assert len(query_of_text) == len(queries)
    for anchor, label in zip(dataset["anchor"], labels):
        judged = qrels[query_of_text[anchor]]
        positive_texts = {document_text(corpus[d]) for d, grade in judged.items() if grade > 0}
        assert loss._relevant[label // len(store)] == {r for r, text in enumerate(texts) if text in positive_texts}
    assert any(len(rows) > 1 and len({texts[r] for r in rows}) < len(rows) for rows in loss._relevant.values())
    anchors = tiny_model.encode(dataset["anchor"], convert_to_tensor=True).cpu()
    relevant = [loss._relevant[label // len(store)] for label in labels]
    rows = loss._negative_rows(anchors, relevant, torch.tensor(labels), {})
    for query_rows, label in zip(rows.tolist(), labels):
        query_positive_texts = {texts[r] for r in loss._relevant[label // len(store)]}
        assert not {texts[r] for r in query_rows} & query_positive_texts


def test_replacing_the_stores_corrector_keeps_the_loss_training_it(setup):
    model, store, dataset, _ = setup
    noise = torch.randn(len(store), store.dim, generator=torch.Generator().manual_seed(1)) * 0.05
    store.replace_embeddings(store.stale_embeddings() + noise)  # stale, so the drift step has work to do
    loss = CorrectedMultipleNegativesRankingLoss(model, store, dataset, num_negatives=1, corrector_lr=1e-2)
    from haystack_corrector import Corrector

    replacement = Corrector(store.dim)
    store.corrector = replacement
    before = [p.detach().clone() for p in replacement.parameters()]
    batch = dataset.select(range(4))
    model.train()
    loss([_features(model, batch["anchor"]), _features(model, batch["positive"])], torch.tensor(batch["label"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, replacement.parameters()))
    assert loss.corrector_trainer.corrector is replacement


@pytest.mark.parametrize("after", ["keep", "reset"])
def test_corrector_with_a_rare_refresh(setup, after):
    """The hybrid arm: corrector negatives, the cache re-encoded every N steps; after it the corrector keeps or resets."""
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, dataset, num_negatives=1, refresh_every=2, corrector_after_refresh=after, corrector_lr=1e-2
    )
    model.train()
    with torch.no_grad():  # move the encoder so that the refreshed cache differs from the initial one
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 1e-2)
    for start in (0, 4, 8):
        batch = dataset.select(range(start, start + 4))
        loss([_features(model, batch["anchor"]), _features(model, batch["positive"])], torch.tensor(batch["label"]))
    assert loss.corpus_encodes == 1 and loss.sampler.corrected  # refreshed once, at step 2; still corrector sampling
    model.eval()
    fresh = torch.tensor(model.encode(store.texts, convert_to_numpy=True))
    torch.testing.assert_close(store.stale_embeddings(), fresh, atol=1e-5, rtol=1e-4)
    steps = {int(state["step"]) for state in loss.corrector_trainer.optimizer.state.values()}
    assert steps == ({1} if after == "reset" else {3}), "reset starts a fresh optimiser at the refresh"
    with pytest.raises(ValueError, match="refresh_every applies to negatives='refresh' or 'corrector'"):
        CorrectedMultipleNegativesRankingLoss(model, store, dataset, negatives="stale", refresh_every=2)
