"""CorrectedNegativesLoss / CorrectedMultipleNegativesRankingLoss, one forward at a time, against the host's losses."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("sentence_transformers")

from datasets import Dataset  # noqa: E402
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402

from haystack_corrector import CorrectedCacheStore, Corrector  # noqa: E402
from haystack_corrector.beir import document_text  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    CorrectedNegativesLoss,
    RefreshedNegatives,
    RerankedNegatives,
    SampledNegatives,
    build_training_dataset,
    encode_corpus,
)
from tests.tiny_model import load_tiny_model, toy_corpus  # noqa: E402


@pytest.fixture
def setup(toy_training):
    return toy_training


def _features(model, texts):
    return model.preprocess(list(texts))


def _columns(model, batch, names=("anchor", "positive")):
    return [_features(model, batch[name]) for name in names]


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _stale(store, seed=0, scale=0.05):
    """Make the cache stale (fresh != stale), so the drift loss is non-zero and the corrector has to move."""
    noise = torch.randn(len(store), store.dim, generator=torch.Generator().manual_seed(seed)) * scale
    store.replace_embeddings(store.stale_embeddings() + noise)


def test_build_training_dataset_gives_plain_pairs(setup):
    _, store, dataset, qrels = setup
    assert dataset.column_names == ["anchor", "positive"]
    relevant_pairs = sum(1 for judged in qrels.values() for grade in judged.values() if grade > 0)
    assert len(dataset) == relevant_pairs  # grade-0 judgments are not positives
    assert set(dataset["positive"]) <= set(store.texts)


@pytest.mark.parametrize("mode", [{}, {"negatives": SampledNegatives(range_max=20)}], ids=["default", "corrector"])
def test_wrapped_mnrl_equals_mnrl_on_the_sampled_negatives_value_and_gradients(setup, mode):
    model, store, dataset, _ = setup
    model.train()
    batch = dataset.select(range(6))
    loss = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=3, train_dataset=dataset, **mode)
    model.zero_grad()
    ours = loss(_columns(model, batch), None)
    assert isinstance(ours, torch.Tensor) and ours.ndim == 0  # the logged loss is the retrieval loss alone
    ours.backward()
    our_grads = _grads(model)
    rows = loss.last_negative_rows
    assert rows.shape == (6, 3)

    reference_loss = st_losses.MultipleNegativesRankingLoss(model)
    model.zero_grad()
    features = _columns(model, batch) + [
        _features(model, [store.texts[r] for r in rows[:, j].tolist()]) for j in range(3)
    ]
    reference = reference_loss(features, None)
    reference.backward()
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-6)
    for a, b in zip(our_grads, _grads(model)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_inbatch_is_exactly_the_wrapped_loss(setup):
    model, store, dataset, _ = setup
    model.train()
    batch = dataset.select(range(8))
    loss = CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives="inbatch")
    ours = loss(_columns(model, batch), None)
    reference = st_losses.MultipleNegativesRankingLoss(model)(_columns(model, batch), None)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-6)
    assert loss.last_negative_rows is None


def _relevant_rows(store, qrels, queries):
    by_text = {}
    for query_id, judged in qrels.items():
        positive_texts = {store.texts[store.rows_of([d])[0]] for d, g in judged.items() if g > 0}
        by_text[queries[query_id]] = {r for r, text in enumerate(store.texts) if text in positive_texts}
    return by_text


@pytest.mark.parametrize("negatives", ["corrector", "stale"])
def test_a_multi_positive_anchor_never_gets_its_other_positives(tiny_model, negatives):
    """A plain (anchor, positive) Dataset, a batch holding one positive per anchor: the others are never sampled."""
    corpus, queries, qrels = toy_corpus()
    ids = list(corpus)
    store = encode_corpus(tiny_model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    pairs = [(queries[q], document_text(corpus[d])) for q, judged in qrels.items() for d, g in judged.items() if g > 0]
    dataset = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    loss = CorrectedMultipleNegativesRankingLoss(
        tiny_model,
        store,
        num_negatives=8,
        train_dataset=dataset,
        negatives=SampledNegatives(negatives == "corrector", sampling_strategy="random", range_max=40),
        seed=0,
    )
    relevant = _relevant_rows(store, qrels, queries)
    assert any(len(rows) > 1 for rows in relevant.values()), "the toy data must contain multi-positive anchors"
    tiny_model.train()
    first_positive = {}
    for anchor, positive in pairs:
        first_positive.setdefault(anchor, positive)
    anchors = list(first_positive)
    for start in range(0, len(anchors), 8):
        chunk = anchors[start : start + 8]
        loss([_features(tiny_model, chunk), _features(tiny_model, [first_positive[a] for a in chunk])], None)
        for anchor, rows in zip(chunk, loss.last_negative_rows.tolist()):
            assert not set(rows) & relevant[anchor], anchor


@pytest.mark.parametrize("mode", [{}, {"negatives": SampledNegatives(range_max=30)}], ids=["default", "corrector"])
def test_without_train_dataset_the_batch_positive_and_its_copies_are_excluded(tiny_model, mode):
    corpus, queries, qrels = toy_corpus()
    for doc in list(corpus)[:20]:
        corpus[f"copy-of-{doc}"] = dict(corpus[doc])  # same text under another id, as in CoSQA
    ids = list(corpus)
    store = encode_corpus(tiny_model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    loss = CorrectedMultipleNegativesRankingLoss(tiny_model, store, num_negatives=10, **mode)
    tiny_model.train()
    anchors = [document_text(corpus[f"d{i}"]) for i in range(8)]  # anchor = the document itself: its hardest match
    loss([_features(tiny_model, anchors), _features(tiny_model, anchors)], None)
    for i, rows in enumerate(loss.last_negative_rows.tolist()):
        text = anchors[i]
        assert all(store.texts[r] != text for r in rows), "the positive or a copy of it was sampled as a negative"


def test_relevant_by_id_adds_rows_never_sampled(setup):
    model, store, dataset, _ = setup
    model.train()
    anchor = dataset[0]["anchor"]
    plain = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=3, train_dataset=dataset)
    plain([_features(model, [anchor]), _features(model, [dataset[0]["positive"]])], None)
    banned = [store.ids[r] for r in plain.last_negative_rows[0].tolist()]
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=3, train_dataset=dataset, relevant={anchor: banned}
    )
    loss([_features(model, [anchor]), _features(model, [dataset[0]["positive"]])], None)
    assert not set(loss.last_negative_rows[0].tolist()) & set(store.rows_of(banned))
    with pytest.raises(ValueError, match="not in the store"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, relevant={anchor: ["nope"]})


def test_mine_hard_negatives_output_trains_and_its_negatives_are_kept(setup):
    from sentence_transformers.util import mine_hard_negatives

    model, store, dataset, _ = setup
    mined = mine_hard_negatives(
        dataset,
        model,
        corpus=list(store.texts),
        num_negatives=2,
        output_format="n-tuple",
        verbose=False,
        range_max=10,
    )
    assert mined.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    model.train()
    loss = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=2, train_dataset=mined)
    batch = mined.select(range(6))
    columns = _columns(model, batch, mined.column_names)
    value = loss(columns, None)
    rows = loss.last_negative_rows
    for i in range(6):
        existing = {batch[i]["negative_1"], batch[i]["negative_2"]}
        assert not {store.texts[r] for r in rows[i].tolist()} & existing, "a kept negative was sampled again"
    reference = st_losses.MultipleNegativesRankingLoss(model)(
        columns + [_features(model, [store.texts[r] for r in rows[:, j].tolist()]) for j in range(2)], None
    )
    torch.testing.assert_close(value, reference, atol=1e-6, rtol=1e-6)


def test_drift_step_uses_the_embeddings_the_wrapped_loss_computed(setup):
    model, store, dataset, _ = setup
    _stale(store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, negatives="corrector", corrector_lr=1e-2
    )
    assert not any(p is q for p in loss.parameters() for q in store.corrector.parameters())
    observed = []
    observe = loss.corrector_trainer.observe
    loss.corrector_trainer.observe = lambda rows, fresh, **kw: (
        observed.append((rows, fresh)),
        observe(rows, fresh, **kw),
    )[1]
    calls, computed = [], []
    handle = model.register_forward_hook(lambda module, inputs, output: calls.append(1))
    inner = model[0].register_forward_hook(lambda module, inputs, output: computed.append(1))
    before = [p.detach().clone() for p in store.corrector.parameters()]
    batch = dataset.select(range(4))
    model.train()
    loss(_columns(model, batch), None)
    handle.remove()
    inner.remove()
    # The anchors' forward (with gradient) samples the negatives and is served to MNRL when it embeds the anchor
    # column; MNRL's merged forward of the candidates is the only other one. No re-encoding for the drift step.
    assert len(calls) == 3 and len(computed) == 2
    rows, fresh = observed[0]
    assert rows.numel() == 4 * 3  # 4 positives + 4 x 2 sampled negatives
    model.eval()
    expected = model.encode([store.texts[r] for r in rows.tolist()], convert_to_tensor=True).cpu()
    torch.testing.assert_close(fresh, expected, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # the drift step does not touch the encoder
    assert any(not torch.equal(a, b) for a, b in zip(before, store.corrector.parameters()))
    metrics = loss.pop_metrics()
    assert metrics["corrector/staleness"] > 1e-4 and metrics["corrector/corrected_error"] > 0
    # Why 8: under MSE alone the drift loss is the corrected error again; it is logged only when it adds a term.
    assert "corrector/drift_loss" not in metrics
    assert metrics["corrector/target_forward_passes"] == 12


def _run_one_step(model, store, inner_factory, batch, seed=0):
    loss = CorrectedNegativesLoss(
        model,
        inner_factory(model),
        store,
        num_negatives=2,
        negatives=SampledNegatives(range_max=20, sampling_strategy="gumbel"),
        seed=seed,
        corrector_lr=1e-2,
    )
    model.train()
    model.zero_grad()
    value = loss(_columns(model, batch), None)
    value.backward()
    return (
        value.detach(),
        _grads(model),
        loss.last_negative_rows,
        {k: v.clone() for k, v in store.corrector.state_dict().items()},
    )


def test_wrapped_cached_mnrl_equals_wrapped_mnrl(setup, tiny_model_folder):
    _, store, dataset, _ = setup
    _stale(store)
    batch = dataset.select(range(12))
    results = []
    for factory in (
        lambda m: st_losses.MultipleNegativesRankingLoss(m),
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=4),
    ):
        model = load_tiny_model(tiny_model_folder)
        torch.manual_seed(0)
        store.corrector = Corrector(store.dim)  # the same initial corrector for both
        results.append(_run_one_step(model, store, factory, batch))
    (v1, g1, r1, c1), (v2, g2, r2, c2) = results
    assert torch.equal(r1, r2)  # same anchors, same sampler seed: same negatives
    torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-5)
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for key in c1:  # the drift step saw the same fresh embeddings
        torch.testing.assert_close(c1[key], c2[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cached", [False, True])
def test_wrapped_gist_filters_as_unwrapped_gist(setup, tiny_model_folder, cached):
    model, store, dataset, _ = setup
    torch.manual_seed(3)
    guide = load_tiny_model(tiny_model_folder)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # a different model as the guide

    def gist():
        if cached:
            return st_losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=3)
        return st_losses.GISTEmbedLoss(model, guide)

    _stale(store)
    # GISTEmbedLoss takes (anchor, positive[, negative]): one sampled negative.
    loss = CorrectedNegativesLoss(model, gist(), store, num_negatives=1, train_dataset=dataset)
    batch = dataset.select(range(8))
    model.train()
    before = [p.detach().clone() for p in store.corrector.parameters()]
    value = loss(_columns(model, batch), None)
    rows = loss.last_negative_rows
    columns = _columns(model, batch) + [_features(model, [store.texts[r] for r in rows[:, 0].tolist()])]
    reference = gist()(columns, None)
    torch.testing.assert_close(value, reference, atol=1e-6, rtol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, store.corrector.parameters()))
    assert loss.get_config_dict()["loss"] == type(gist()).__name__


def test_evaluation_neither_samples_nor_trains(setup):
    model, store, dataset, _ = setup
    _stale(store)
    loss = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=2, train_dataset=dataset)
    generator_state = loss.generator.get_state()
    weights = {k: v.clone() for k, v in store.corrector.state_dict().items()}
    unseen = Dataset.from_dict({"anchor": ["a question never seen", "another one"], "positive": ["text x", "text y"]})
    model.eval()
    with torch.no_grad():
        value = loss(_columns(model, unseen), None)
        reference = st_losses.MultipleNegativesRankingLoss(model)(_columns(model, unseen), None)
    torch.testing.assert_close(value, reference)
    assert loss.last_negative_rows is None and loss.training_forwards == 0
    assert torch.equal(loss.generator.get_state(), generator_state)
    assert all(torch.equal(weights[k], v) for k, v in store.corrector.state_dict().items())


def test_config_and_citation(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        negatives=SampledNegatives(sampling_strategy="gumbel", range_max=10, min_score=0.1),
        max_view_age=5,
        view_rescore_depth=50,
    )
    config = loss.get_config_dict()
    assert config["max_view_age"] == 5 and config["view_rescore_depth"] == 50
    assert loss.source.sampler.view_rescore_depth == 50
    assert config["num_negatives"] == 2 and config["negatives"] == "corrector"
    assert config["negatives_sampling_strategy"] == "gumbel" and config["negatives_min_score"] == 0.1
    assert config["negatives_temperature"] == 0.05  # gumbel's, by default
    assert config["loss"] == "MultipleNegativesRankingLoss" and config["loss_config"]["similarity_fct"] == "cos_sim"
    assert config["corrector"]["dim"] == 64 and config["corrector"]["lr"] == 1e-3
    assert "monath2024fresh" in loss.citation and "2409.01890" in loss.citation
    # Nothing that had no effect: no re-ranking options, no seed, no refresh, no max_score.
    flat = str(config)
    for absent in ("'negatives_depth'", "candidates", "every", "max_score", "'seed'", "range_min", "warmup"):
        assert absent not in flat, absent


def test_the_default_is_corrected_re_ranking_of_num_negatives_plus_two_candidates(setup):
    model, store, dataset, _ = setup
    default = CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset)
    assert default.num_negatives == 1 and default.get_config_dict()["negatives"] == "corrector+rerank:3"
    for num_negatives, range_min, depth in ((1, 0, 3), (2, 0, 4), (2, 1, 5), (4, 0, 6)):
        loss = CorrectedMultipleNegativesRankingLoss(
            model, store, num_negatives=num_negatives, range_min=range_min, train_dataset=dataset
        )
        config = loss.get_config_dict()
        assert config["negatives"] == f"corrector+rerank:{depth}" and config["negatives_candidates"] == "corrected"
        assert loss.source.depth == depth and loss.source.searches_corrected
    stale = CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives="rerank:3")
    assert stale.source.depth == 3 and not stale.source.searches_corrected


@pytest.mark.parametrize(
    "option",
    ["sampling_strategy", "temperature", "range_max", "absolute_margin", "relative_margin", "max_score", "min_score"],
)
def test_sampler_options_are_refused_by_the_loss_and_named_where_they_live(setup, option):
    model, store, dataset, _ = setup
    with pytest.raises(TypeError, match=f"no longer takes {option}: it is an option of the negative source"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, **{option: 0.1})


def test_options_without_effect_are_refused_whichever_source(setup):
    """Why 6: re-ranking took temperature and seed, inbatch ignored sampling options, margins out of range passed."""
    model, store, dataset, _ = setup
    build = lambda **kw: CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="seed=0 \\(this setting draws no random numbers\\)"):
        build(seed=0)  # the default re-ranking is deterministic
    with pytest.raises(ValueError, match="temperature applies to sampling_strategy='gumbel' only"):
        SampledNegatives(temperature=0.1)
    with pytest.raises(ValueError, match="range_min=1 \\(in-batch negatives"):
        build(negatives="inbatch", range_min=1)
    with pytest.raises(ValueError, match="applies to the sources that sample"):
        build(
            negatives=__import__("haystack_corrector.sentence_transformers.negatives", fromlist=["x"]).parse_negatives(
                "inbatch", range_max=5
            )
        )
    for name in ("corrector_warmup_steps", "max_view_age"):
        with pytest.raises(ValueError, match=f"{name}=2 \\(the corrected cache is never searched\\)"):
            build(negatives="stale", **{name: 2})
    with pytest.raises(ValueError, match="encode_batch_size=8 \\(this source encodes no texts"):
        build(negatives="corrector", encode_batch_size=8)
    assert build(encode_batch_size=8).encode_batch_size == 8  # re-ranking encodes its candidates: accepted
    with pytest.raises(ValueError, match="view_rescore_depth without max_view_age"):
        build(view_rescore_depth=4)
    with pytest.raises(ValueError, match="relative_margin must be in \\[0, 1\\)"):
        SampledNegatives(relative_margin=1.5)
    with pytest.raises(ValueError, match="absolute_margin must be >= 0"):
        SampledNegatives(absolute_margin=-0.2)
    assert build(negatives=SampledNegatives(sampling_strategy="gumbel"), seed=0).seed == 0  # it draws: accepted
    assert build(replay_size=64, replay_steps=1, seed=0).seed == 0  # the replay draws: accepted


def test_bad_inputs(setup):
    model, store, dataset, _ = setup
    with pytest.raises(TypeError, match="pass the dataset as train_dataset"):
        CorrectedMultipleNegativesRankingLoss(model, store, dataset)
    with pytest.raises(ValueError, match="store has dimension 8 but the model embeds into dimension 64"):
        CorrectedMultipleNegativesRankingLoss(model, CorrectedCacheStore(torch.randn(60, 8), texts=["t"] * 60))
    with pytest.raises(ValueError, match="at least two text columns"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset.select_columns(["anchor"]))
    with pytest.raises(ValueError, match="Unknown negatives 'fresh'"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives="fresh")
    with pytest.raises(ValueError, match="'rerank' meant corrected re-ranking in earlier versions"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives="rerank")
    with pytest.raises(ValueError, match="no texts"):
        CorrectedMultipleNegativesRankingLoss(model, CorrectedCacheStore(store.stale_embeddings()))
    with pytest.raises(TypeError, match="an nn.Module"):
        CorrectedNegativesLoss(model, "MultipleNegativesRankingLoss", store)
    with pytest.raises(ValueError, match="needs the loss's train_dataset"):
        CorrectedMultipleNegativesRankingLoss(model, store, negatives="static")
    with pytest.raises(ValueError, match="min_score"):
        SampledNegatives(min_score=0.9, max_score=0.1)
    loss = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=2, train_dataset=dataset)
    with pytest.raises(ValueError, match="at least 2 text columns"):
        loss([_features(model, dataset["anchor"][:2])], None)
    with pytest.raises(ValueError, match="already serves another loss"):
        source = SampledNegatives()
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives=source)
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives=source)


def test_warns_once_without_the_callback(setup, caplog):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(model, store, num_negatives=1, train_dataset=dataset)
    model.train()
    with caplog.at_level(logging.WARNING, logger="haystack_corrector"):
        for start in (0, 4):
            loss(_columns(model, dataset.select(range(start, start + 4))), None)
    warnings = [r for r in caplog.records if "without CorrectorCallback" in r.getMessage()]
    assert len(warnings) == 1


def test_static_negatives_are_mined_once_with_the_initial_model(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, negatives="static"
    )
    batch = dataset.select(range(4))
    anchors = model.encode(batch["anchor"], convert_to_tensor=True).cpu()
    relevant = [loss.relevance.anchor_relevant(k) for k in loss.relevance.keys(batch["anchor"])]
    expected = store.search(anchors, 2, exclude=relevant, corrected=False)[1]
    with torch.no_grad():  # move the model: static negatives must not follow it
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()
    loss(_columns(model, batch), None)
    assert torch.equal(loss.last_negative_rows, expected)
    assert loss.costs.corpus_encodes == 0


def test_refresh_re_encodes_the_corpus_every_n_steps(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, negatives="refresh:2"
    )
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(5):
        value = loss(_columns(model, dataset.select(range(4 * step, 4 * step + 4))), None)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert loss.costs.corpus_encodes == 2  # before steps 2 and 4
    assert loss.costs.target_forward_passes == 5 * 4 * 3 + 2 * len(set(store.texts))
    with pytest.raises(ValueError, match=r"give the steps between re-encodes: 'refresh:N'"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives="refresh")


def test_rerank_picks_the_best_candidates_by_fresh_score(setup):
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, negatives="rerank:10"
    )
    batch = dataset.select(range(3))
    model.train()
    loss(_columns(model, batch), None)
    rows = loss.last_negative_rows
    model.eval()
    anchors, relevant = _anchors_and_relevant(model, loss, batch)
    _, candidates = store.search(anchors, 10, exclude=relevant, corrected=False)
    for query in range(3):
        fresh = model.encode([store.texts[r] for r in candidates[query].tolist()], convert_to_tensor=True).cpu()
        scores = torch.nn.functional.cosine_similarity(anchors[query : query + 1], fresh)
        assert rows[query].tolist() == candidates[query][torch.argsort(scores, descending=True)[:2]].tolist()


def _perturbed_corrector(store, seed=0, scale=0.5):
    """A corrector far from the identity, so the corrected and raw rankings of the cache differ."""
    corrector = Corrector(store.dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in corrector.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    store.corrector = corrector


def _anchors_and_relevant(model, loss, batch):
    """The batch's anchors as the model embeds them now, and each anchor's rows the loss never samples."""
    anchors = model.encode(batch["anchor"], convert_to_tensor=True).cpu()
    relevant = loss.relevance.relevant_sets(
        loss.relevance.keys(batch["anchor"]), loss.relevance.rows(loss.relevance.keys(batch["positive"]))
    )
    return anchors, relevant


def test_corrected_rerank_picks_the_best_of_the_corrected_top_l_by_fresh_score(setup):
    model, store, dataset, _ = setup
    _perturbed_corrector(store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        negatives="corrector+rerank:6",
    )
    batch = dataset.select(range(4))
    model.eval()
    anchors, relevant = _anchors_and_relevant(model, loss, batch)
    _, corrected = store.search(anchors, 6, exclude=relevant, corrected=True)
    _, raw = store.search(anchors, 6, exclude=relevant, corrected=False)
    assert not torch.equal(corrected, raw)  # (otherwise this test could not tell the two candidate sources apart)
    model.train()
    loss(_columns(model, batch), None)
    rows = loss.last_negative_rows
    for query in range(4):
        fresh = model.encode([store.texts[r] for r in corrected[query].tolist()], convert_to_tensor=True).cpu()
        scores = torch.nn.functional.cosine_similarity(anchors[query : query + 1], fresh)
        assert rows[query].tolist() == corrected[query][torch.argsort(scores, descending=True)[:2]].tolist()


def test_corrected_rerank_takes_raw_candidates_during_the_corrector_warm_up(setup):
    model, store, dataset, _ = setup
    _perturbed_corrector(store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, negatives=RerankedNegatives(6), corrector_warmup_steps=1
    )
    searches = []
    search = store.search
    store.search = lambda *args, **kwargs: (searches.append(kwargs.get("corrected", True)), search(*args, **kwargs))[1]
    model.train()
    for start in (0, 4):
        loss(_columns(model, dataset.select(range(start, start + 4))), None)
        assert loss.sampling_corrected == (start > 0)
    assert searches == [False, True]  # step 0: the raw cache's candidates; step 1: the corrected cache's


def test_corrected_rerank_reads_a_view_young_enough_like_the_sampler(setup):
    # max_view_age applies to the re-ranked candidates too: with a view one corrector update old and K = 5 they are
    # the view's top L (the old corrector's), not a scan with the current corrector (at 1M rows, a fused scan).
    model, store, dataset, _ = setup
    _perturbed_corrector(store, seed=0)
    store.materialize()
    batch = dataset.select(range(4))
    with torch.no_grad():  # one update of the corrector: the view is 1 step old now
        for parameter in store.corrector.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    store.corrector.steps += 1
    kwargs = dict(num_negatives=2, train_dataset=dataset, negatives="corrector+rerank:6")
    loss = CorrectedMultipleNegativesRankingLoss(model, store, max_view_age=5, **kwargs)
    model.eval()
    anchors, relevant = _anchors_and_relevant(model, loss, batch)
    _, from_view = store.search(anchors, 6, exclude=relevant, max_view_age=5)
    _, current = store.search(anchors, 6, exclude=relevant)
    assert store.view_age == 1 and not torch.equal(from_view, current)
    model.train()
    loss(_columns(model, batch), None)
    for query in range(4):
        fresh = model.encode([store.texts[r] for r in from_view[query].tolist()], convert_to_tensor=True).cpu()
        scores = torch.nn.functional.cosine_similarity(anchors[query : query + 1], fresh)
        expected = from_view[query][torch.argsort(scores, descending=True)[:2]]
        assert loss.last_negative_rows[query].tolist() == expected.tolist()


@pytest.mark.parametrize("candidates", ["stale", "corrected"])
def test_rerank_candidates_train_the_corrector_once_each(setup, candidates):
    model, store, dataset, _ = setup
    _perturbed_corrector(store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=1,
        train_dataset=dataset,
        negatives=RerankedNegatives(5, candidates=candidates),
        bf16_encodes=False,  # float32 encodes, compared exactly below (bfloat16: tests/test_precision.py)
    )
    observed = []
    original = loss.corrector_trainer.observe

    def recording(rows, fresh, query_embeddings=None):
        observed.append((torch.as_tensor(rows).clone(), torch.as_tensor(fresh).clone()))
        return original(rows, fresh, query_embeddings=query_embeddings)

    loss.corrector_trainer.observe = recording
    batch = dataset.select(range(4))
    model.train()
    loss(_columns(model, batch), None)
    rows, fresh = observed[-1]
    found = [rows[:1] for rows in loss.relevance.rows(loss.relevance.keys(batch["positive"])) if rows]
    positives = {r for rows in found for r in rows}
    negatives = set(loss.last_negative_rows.reshape(-1).tolist())
    targets = len(found) + loss.last_negative_rows.numel()  # the columns' targets come first, as before
    added = rows[targets:].tolist()
    assert len(set(added)) == len(added) and not set(added) & set(rows[:targets].tolist())  # each candidate once
    model.eval()
    anchors, relevant = _anchors_and_relevant(model, loss, batch)
    _, searched = store.search(anchors, 5, exclude=relevant, corrected=candidates == "corrected")
    candidate_rows = set(searched.reshape(-1).tolist())
    assert set(rows.tolist()) == positives | negatives | candidate_rows
    extra = list(range(targets, len(rows)))
    assert extra  # (5 candidates for each of 4 anchors cannot all be targets)
    expected = model.encode([store.texts[rows[i]] for i in extra], convert_to_tensor=True).cpu()
    torch.testing.assert_close(fresh[extra], expected, atol=1e-5, rtol=1e-4)  # their no-grad fresh embeddings


def test_rerank_candidates_is_validated(setup):
    model, store, dataset, _ = setup
    with pytest.raises(ValueError, match="Unknown candidates 'fresh'"):
        RerankedNegatives(3, candidates="fresh")
    with pytest.raises(TypeError, match="no longer takes rerank_candidates.*RerankedNegatives"):
        CorrectedMultipleNegativesRankingLoss(
            model, store, train_dataset=dataset, negatives="corrector", rerank_candidates="corrected"
        )


@pytest.mark.parametrize("negatives", ["static", "rerank:10", "corrector"])
def test_copies_of_a_positive_are_relevant_too(tiny_model, negatives):
    corpus, queries, qrels = toy_corpus()
    positives = sorted({d for judged in qrels.values() for d, g in judged.items() if g > 0})
    for doc in positives[:10]:
        corpus[f"copy-of-{doc}"] = dict(corpus[doc])
    ids = list(corpus)
    store = encode_corpus(tiny_model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        tiny_model, store, num_negatives=3, train_dataset=dataset, negatives=negatives
    )
    relevant = _relevant_rows(store, qrels, queries)
    assert any(len(rows) > len({store.texts[r] for r in rows}) for rows in relevant.values())
    tiny_model.train()
    for start in range(0, len(dataset), 8):
        batch = dataset.select(range(start, min(start + 8, len(dataset))))
        loss(_columns(tiny_model, batch), None)
        for anchor, rows in zip(batch["anchor"], loss.last_negative_rows.tolist()):
            assert not set(rows) & relevant[anchor]


def test_replacing_the_stores_corrector_keeps_the_loss_training_it(setup):
    model, store, dataset, _ = setup
    _stale(store, seed=1)
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=1, train_dataset=dataset, corrector_lr=1e-2
    )
    replacement = Corrector(store.dim)
    store.corrector = replacement
    before = [p.detach().clone() for p in replacement.parameters()]
    model.train()
    loss(_columns(model, dataset.select(range(4))), None)
    assert any(not torch.equal(a, b) for a, b in zip(before, replacement.parameters()))
    assert loss.corrector_trainer.corrector is replacement


@pytest.mark.parametrize("after", ["keep", "reset"])
def test_corrector_with_a_rare_refresh(setup, after):
    """The hybrid arm: corrector negatives, the cache re-encoded every N steps; after it the corrector keeps or resets."""
    model, store, dataset, _ = setup
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=1,
        train_dataset=dataset,
        negatives=RefreshedNegatives(2, corrected=True, after_refresh=after),
        corrector_lr=1e-2,
        bf16_encodes=False,  # the re-encoded cache is compared exactly with a float32 encode below
    )
    model.train()
    with torch.no_grad():  # move the encoder so that the refreshed cache differs from the initial one
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 1e-2)
    for start in (0, 4, 8):
        loss(_columns(model, dataset.select(range(start, start + 4))), None)
    assert loss.costs.corpus_encodes == 1 and loss.sampling_corrected  # refreshed once, at step 2
    model.eval()
    fresh = torch.tensor(model.encode(store.texts, convert_to_numpy=True))
    torch.testing.assert_close(store.stale_embeddings(), fresh, atol=1e-5, rtol=1e-4)
    steps = {int(state["step"]) for state in loss.corrector_trainer.optimizer.state.values()}
    assert steps == ({1} if after == "reset" else {3}), "reset starts a fresh optimiser at the refresh"
    with pytest.raises(ValueError, match="after_refresh applies to corrected=True"):
        RefreshedNegatives(2, after_refresh="reset")


class _CopyingMNRL(st_losses.MultipleNegativesRankingLoss):
    """MNRL that embeds copies of its columns: the anchors' forward cannot be served to it."""

    def forward(self, sentence_features, labels):
        return super().forward([dict(f) for f in sentence_features], labels)


def test_a_loss_that_embeds_anchors_another_way_gets_its_own_forward(setup):
    """The served anchor forward is an optimisation only: a wrapped loss that does not call the model with the anchor
    column as given runs its own forward, the loss stops trying after that step, and values stay those of MNRL."""
    model, store, dataset, _ = setup
    model.train()
    batch = dataset.select(range(6))
    loss = CorrectedNegativesLoss(
        model, _CopyingMNRL(model), store, num_negatives=2, negatives=SampledNegatives(range_max=20)
    )
    assert loss._reuse_anchor_forward is None
    model.zero_grad()
    ours = loss(_columns(model, batch), None)
    ours.backward()
    our_grads = _grads(model)
    assert loss._reuse_anchor_forward is False
    rows = loss.last_negative_rows
    model.zero_grad()
    features = _columns(model, batch) + [
        _features(model, [store.texts[r] for r in rows[:, j].tolist()]) for j in range(2)
    ]
    reference = st_losses.MultipleNegativesRankingLoss(model)(features, None)
    reference.backward()
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-6)
    for a, b in zip(our_grads, _grads(model)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    computed = []
    inner = model[0].register_forward_hook(lambda module, inputs, output: computed.append(1))
    loss(_columns(model, batch), None)
    inner.remove()
    assert len(computed) == 3  # no-grad anchors for sampling, then the copying loss's anchors and candidates
