"""End to end: the stock SentenceTransformerTrainer with the corrected loss, its callback, checkpoints and resume."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("sentence_transformers")

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402

from haystack_corrector import Corrector  # noqa: E402
from haystack_corrector.beir import document_text  # noqa: E402
from haystack_corrector.evaluation import relative_error  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    CorrectorCallback,
    RefreshedNegatives,
    SampledNegatives,
    build_training_dataset,
    encode_corpus,
)
from tests.tiny_model import load_tiny_model, toy_corpus  # noqa: E402

SOURCES = {
    "corrector": lambda: SampledNegatives(sampling_strategy="gumbel", range_max=20),
    "refresh": lambda: RefreshedNegatives(3, sampling_strategy="gumbel", range_max=20),
    "rerank": lambda: "corrector+rerank",
}


def _run(
    model,
    output_dir,
    max_steps,
    save_steps=2,
    resume=None,
    record_rows=None,
    negatives="corrector",
    tell_callback=True,
    loss_seed=0,
    trainer_seed=0,
    record_negatives=None,
    **extra,
):
    corpus, queries, qrels = toy_corpus(num_docs=300, num_queries=48)
    ids = list(corpus)
    texts = [document_text(corpus[i]) for i in ids]
    store = encode_corpus(model, texts, ids=ids, show_progress_bar=False)
    torch.manual_seed(0)
    store.corrector = Corrector(store.dim, hidden_dim=128)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        negatives=SOURCES[negatives](),
        seed=None if negatives == "rerank" else loss_seed,  # (re-ranking draws nothing at random)
        corrector_lr=5e-3,
    )
    if record_negatives is not None:
        choose = loss.source.negatives
        loss.source.negatives = lambda *a: (lambda rows: (record_negatives.append(rows.tolist()), rows)[1])(choose(*a))
    if record_rows is not None:
        original = loss.corrector_trainer.observe

        def observe(rows, fresh, query_embeddings=None):
            record_rows.update(torch.as_tensor(rows).tolist())
            return original(rows, fresh, query_embeddings=query_embeddings)

        loss.corrector_trainer.observe = observe
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=5e-4,
        logging_steps=2,
        save_steps=save_steps,
        save_strategy="steps",
        batch_sampler="no_duplicates",
        seed=trainer_seed,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = CorrectorCallback(loss, resume_from_checkpoint=resume if tell_callback else None)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[callback], **extra
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, store, texts


def test_training_logs_drift_and_corrector_generalises_to_unseen_rows(tiny_model_folder, tmp_path):
    model = load_tiny_model(tiny_model_folder)
    touched: set[int] = set()
    trainer, store, texts = _run(model, tmp_path / "run", max_steps=12, save_steps=100, record_rows=touched)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged, trainer.state.log_history
    assert "infonce" not in logged[-1] and "drift" not in logged[-1]  # the logged loss is the retrieval loss alone
    for key in (
        "corrector/staleness",
        "corrector/corrected_error",
        "corrector/skipped_anchors",
        "corrector/target_forward_passes",
    ):
        assert key in logged[-1], (key, logged[-1])
    assert logged[-1]["corrector/staleness"] > 0  # the encoder really moved
    fresh = torch.as_tensor(model.encode(texts, convert_to_numpy=True))
    unseen = sorted(set(range(len(store))) - touched)
    assert len(unseen) >= 10, "the run must leave rows the corrector never trained on"
    stale_error = relative_error(store.stale_embeddings(unseen), fresh[unseen])
    corrected_error = relative_error(store.corrected_embeddings(unseen), fresh[unseen])
    assert corrected_error < stale_error, (corrected_error, stale_error)


@pytest.mark.parametrize("negatives", ["corrector", "refresh", "rerank"])
def test_resume_from_a_copied_checkpoint_ends_as_the_uninterrupted_run(tiny_model_folder, tmp_path, negatives):
    """Gradient accumulation 2; the checkpoint is copied to another folder before resuming from it."""
    import shutil

    trainer, store, _ = _run(
        load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=6, save_steps=3, negatives=negatives
    )
    final_corrector = {k: v.clone() for k, v in store.corrector.state_dict().items()}
    final_encoder = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final_cache = store.stale_embeddings().clone()
    assert trainer.loss.optimizer_step == 5  # counted in optimiser steps (the last forward belongs to step 5)
    if negatives == "refresh":
        assert trainer.loss.costs.corpus_encodes == 1  # at optimiser step 3, not at micro-batch 3
    elsewhere = tmp_path / "moved" / "checkpoint-3"
    shutil.copytree(tmp_path / "run" / "checkpoint-3", elsewhere)
    shutil.rmtree(tmp_path / "run")
    resumed, resumed_store, _ = _run(
        load_tiny_model(tiny_model_folder),
        tmp_path / "run2",
        max_steps=6,
        save_steps=3,
        resume=str(elsewhere),
        negatives=negatives,
    )
    assert resumed.state.global_step == 6
    for key, value in resumed_store.corrector.state_dict().items():
        torch.testing.assert_close(value, final_corrector[key], atol=1e-6, rtol=1e-5)
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, final_encoder[key], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(resumed_store.stale_embeddings(), final_cache)  # refresh: the re-encoded cache is back


def test_resume_from_elsewhere_without_telling_the_callback_is_a_clear_error(tiny_model_folder, tmp_path, caplog):
    """Why 7: resume no longer reads transformers' stack frames; a checkpoint the trainer's arguments and output_dir
    do not name is refused before any step, saying how to name it. One under output_dir is found by itself."""
    import shutil

    _run(load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=4, save_steps=2, negatives="rerank")
    elsewhere = tmp_path / "moved" / "checkpoint-2"
    shutil.copytree(tmp_path / "run" / "checkpoint-2", elsewhere)
    with pytest.raises(ValueError, match="CorrectorCallback\\(loss, resume_from_checkpoint=path\\)"):
        _run(
            load_tiny_model(tiny_model_folder),
            tmp_path / "other",
            max_steps=4,
            resume=str(elsewhere),
            negatives="rerank",
            tell_callback=False,
        )
    with caplog.at_level(logging.INFO, logger="haystack_corrector"):
        trainer, _, _ = _run(
            load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=6, resume=True, negatives="rerank"
        )
    assert trainer.state.global_step == 6
    restored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Restored the corrector")]
    assert len(restored) == 1 and "checkpoint-4" in restored[0]  # the trainer's own last checkpoint, found by name


def test_the_loss_follows_the_trainers_seed(tiny_model_folder, tmp_path):
    """Why 5: a loss without its own seed samples with the trainer's: same seed, same negatives; another, others."""

    def negatives_of(trainer_seed, folder):
        seen = []
        _run(
            load_tiny_model(tiny_model_folder),
            tmp_path / folder,
            max_steps=2,
            save_steps=100,
            loss_seed=None,
            trainer_seed=trainer_seed,
            record_negatives=seen,
        )
        return seen

    first, again, other = negatives_of(3, "a"), negatives_of(3, "b"), negatives_of(4, "c")
    assert first and first == again
    assert first != other


def test_eval_dataset_and_evaluator_run_during_training(tiny_model_folder, tmp_path):
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    corpus, queries, qrels = toy_corpus(num_docs=300, num_queries=48)
    eval_dataset = Dataset.from_dict(
        {"anchor": ["an unseen question about the heart", "and one on sleep"], "positive": ["heart text", "sleep"]}
    )
    evaluator = InformationRetrievalEvaluator(
        queries={q: queries[q] for q in list(queries)[:8]},
        corpus={d: document_text(corpus[d]) for d in corpus},
        relevant_docs={q: {d for d, g in qrels[q].items() if g > 0} for q in list(queries)[:8]},
        name="toy",
        show_progress_bar=False,
    )
    trainer, store, _ = _run(
        load_tiny_model(tiny_model_folder),
        tmp_path / "run",
        max_steps=4,
        save_steps=100,
        eval_dataset=eval_dataset,
        evaluator=evaluator,
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_toy_cosine_ndcg@10" in metrics
    # eval_loss is the wrapped loss on the eval columns as given (nothing sampled, nothing trained)
    steps_before = trainer.loss.corrector_trainer.steps
    again = trainer.evaluate()
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert trainer.loss.corrector_trainer.steps == steps_before


def test_callback_load_state_restores_weights_exactly(tiny_model_folder, tmp_path):
    _, store, _ = _run(load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=2, save_steps=2)
    saved = Corrector.load(tmp_path / "run" / "checkpoint-2" / "corrector_state" / "corrector")
    for key, value in store.corrector.state_dict().items():
        assert torch.equal(saved.state_dict()[key], value)


def test_saved_model_loads_without_this_package(tiny_model_folder, tmp_path):
    import subprocess
    import sys
    import textwrap

    trainer, _, _ = _run(load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=2, save_steps=100)
    trainer.model.save(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "CorrectedMultipleNegativesRankingLoss" in card and "monath2024fresh" in card
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "haystack_corrector":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from sentence_transformers import SentenceTransformer
        model = SentenceTransformer({str(tmp_path / "saved")!r}, device="cpu")
        print(model.encode(["a sentence"]).shape)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1, 64)" in result.stdout
