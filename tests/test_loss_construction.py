"""What CorrectedNegativesLoss refuses or records when it is built: issue 36's "Why" cases 1, 3, 4, 6 and 7.

Each test names the case; on the main this issue was filed against each of them fails (the setting trained, or
failed at the first step inside torch or sentence-transformers, instead of being refused here).
"""

from __future__ import annotations

import pytest

pytest.importorskip("sentence_transformers")

from datasets import Dataset  # noqa: E402
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402

from haystack_corrector import CorrectedCacheStore  # noqa: E402
from haystack_corrector.cli import build_parser  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    CorrectedNegativesLoss,
    encode_corpus,
)
from tests.tiny_model import load_tiny_model  # noqa: E402


@pytest.fixture
def setup(toy_training):
    return toy_training[:3]


def test_why_1_one_negative_is_the_default_everywhere():
    from haystack_integrations.components.retrievers.corrector import CorrectedHardNegativeMiner

    assert CorrectedNegativesLoss.__init__.__defaults__[0] == 1
    assert CorrectedMultipleNegativesRankingLoss.__init__.__defaults__[0] == 1
    assert build_parser().parse_args(["mine", "--store", "s", "--data", "d", "--output", "o"]).num_negatives == 1
    assert CorrectedHardNegativeMiner.__init__.__defaults__[2] == 1  # (document_store, corrector_path, num_negatives)


def test_why_3_more_negatives_than_the_store_holds_is_refused_at_construction(setup):
    model, _, dataset = setup
    small = encode_corpus(model, [f"text {i}" for i in range(5)], show_progress_bar=False)
    with pytest.raises(ValueError, match="range_min \\+ num_negatives = 5 but the store has 5 rows"):
        CorrectedMultipleNegativesRankingLoss(model, small, num_negatives=5)
    with pytest.raises(ValueError, match="range_min \\+ num_negatives = 5"):
        CorrectedMultipleNegativesRankingLoss(model, small, num_negatives=3, range_min=2, negatives="corrector")
    with pytest.raises(ValueError, match="re-ranks more candidates than the store's 5 rows"):
        CorrectedMultipleNegativesRankingLoss(model, small, negatives="corrector+rerank:5")
    loss = CorrectedMultipleNegativesRankingLoss(model, small, num_negatives=4, negatives="corrector+rerank:4")
    model.train()
    loss([model.preprocess(["text 0", "text 1"]), model.preprocess(["text 0", "text 1"])], None)  # no IndexError
    assert loss.last_negative_rows.shape == (2, 4)


def test_why_4_a_store_built_by_another_setting_is_refused_and_the_record_is_saved(setup, tiny_model_folder, tmp_path):
    model, store, dataset = setup
    assert store.encoder["architecture"] == "bert/64/2/30522" and store.encoder["normalize"] is True
    store.save(tmp_path / "store")
    loaded = CorrectedCacheStore.load(tmp_path / "store")
    assert loaded.encoder == store.encoder
    CorrectedMultipleNegativesRankingLoss(model, loaded, train_dataset=dataset)  # the same setting: fine
    unnormalised = load_tiny_model(tiny_model_folder, normalize=False)
    with pytest.raises(ValueError, match="normalize: store True, model False"):
        CorrectedMultipleNegativesRankingLoss(unnormalised, loaded, train_dataset=dataset)
    model.max_seq_length = 32
    with pytest.raises(ValueError, match="max_seq_length: store 64, model 32.*check_model=False"):
        CorrectedMultipleNegativesRankingLoss(model, loaded, train_dataset=dataset)
    CorrectedMultipleNegativesRankingLoss(model, loaded, train_dataset=dataset, check_model=False)  # deliberate
    model.max_seq_length = 64
    other_folder = tmp_path / "other"
    other_folder.mkdir()
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(tiny_model_folder))
    config.num_hidden_layers = 3
    BertModel(config).save_pretrained(str(other_folder))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_model_folder / name).exists():
            (other_folder / name).write_bytes((tiny_model_folder / name).read_bytes())
    other = load_tiny_model(other_folder)
    with pytest.raises(ValueError, match="architecture: store 'bert/64/2/30522', model 'bert/64/3/30522'"):
        CorrectedMultipleNegativesRankingLoss(other, loaded, train_dataset=dataset)


def test_why_4_the_ready_made_mnrl_uses_mnrls_similarity(setup):
    model, store, dataset = setup
    store.similarity = "dot"
    loss = CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, check_model=False)
    assert loss.loss.similarity_fct is st_losses.MultipleNegativesRankingLoss(model).similarity_fct


def test_why_6_guided_losses_get_at_most_one_negative_column(setup, tiny_model_folder):
    model, store, dataset = setup
    guide = load_tiny_model(tiny_model_folder)
    with pytest.raises(ValueError, match="GISTEmbedLoss takes \\(anchor, positive\\[, negative\\]\\).*num_negatives=1"):
        CorrectedNegativesLoss(model, st_losses.GISTEmbedLoss(model, guide), store, num_negatives=2)
    with pytest.raises(ValueError, match="CachedGISTEmbedLoss takes"):
        triples = Dataset.from_dict({**dataset[:4], "negative": dataset["positive"][4:8]})
        CorrectedNegativesLoss(model, st_losses.CachedGISTEmbedLoss(model, guide), store, train_dataset=triples)
    CorrectedNegativesLoss(model, st_losses.GISTEmbedLoss(model, guide), store, train_dataset=dataset)


def test_why_6_every_row_of_a_text_column_is_checked(setup):
    model, store, dataset = setup
    rows = dataset.to_dict()
    rows["positive"][7] = None
    with pytest.raises(ValueError, match="column 'positive' must hold texts, got NoneType \\(row 7\\)"):
        CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=Dataset.from_dict(rows))


def test_why_7_gradient_caching_is_recognised_through_wrappers(setup):
    model, store, dataset = setup
    cached = st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4)
    wrapped = st_losses.MatryoshkaLoss(
        model, st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4), [64, 32]
    )
    assert CorrectedNegativesLoss(model, cached, store).gradient_cached
    assert CorrectedNegativesLoss(model, wrapped, store).gradient_cached  # hasattr(mini_batch_size) missed this
    assert not CorrectedNegativesLoss(model, st_losses.MultipleNegativesRankingLoss(model), store).gradient_cached


def test_why_7_the_model_card_carries_the_wrapped_losss_parameters(setup, tiny_model_folder):
    model, store, dataset = setup
    cached = CorrectedNegativesLoss(
        model, st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4), store
    )
    config = cached.get_config_dict()
    assert config["loss"] == "CachedMultipleNegativesRankingLoss" and config["loss_config"]["mini_batch_size"] == 4
    guide = load_tiny_model(tiny_model_folder)
    gist = CorrectedNegativesLoss(model, st_losses.GISTEmbedLoss(model, guide), store).get_config_dict()
    assert "guide" in gist["loss_config"]
