"""End to end: the stock SentenceTransformerTrainer with the corrected loss, its callback, checkpoints and resume."""

from __future__ import annotations

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
    build_training_dataset,
    encode_corpus,
)
from tests.tiny_model import load_tiny_model, toy_corpus  # noqa: E402


def _run(model, output_dir, max_steps, save_steps=2, resume=None, record_rows=None):
    corpus, queries, qrels = toy_corpus(num_docs=300, num_queries=48)
    ids = list(corpus)
    texts = [document_text(corpus[i]) for i in ids]
    store = encode_corpus(model, texts, ids=ids, show_progress_bar=False)
    store.corrector = Corrector(store.dim, hidden_dim=128)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, dataset, num_negatives=2, strategy="gumbel", range_max=20, seed=0, corrector_lr=5e-3
    )
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
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    callback = CorrectorCallback(loss)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, store, texts


def test_training_logs_drift_and_corrector_generalises_to_unseen_rows(tiny_model_folder, tmp_path):
    model = load_tiny_model(tiny_model_folder)
    touched: set[int] = set()
    trainer, store, texts = _run(model, tmp_path / "run", max_steps=12, save_steps=100, record_rows=touched)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged, trainer.state.log_history
    for key in (
        "infonce",
        "drift",
        "corrector/staleness",
        "corrector/corrected_error",
        "corrector/drift_loss",
        "corrector/filled_negatives",
    ):
        assert key in logged[-1], (key, logged[-1])
    assert logged[-1]["corrector/staleness"] > 0  # the encoder really moved
    fresh = torch.as_tensor(model.encode(texts, convert_to_numpy=True))
    unseen = sorted(set(range(len(store))) - touched)
    assert len(unseen) >= 10, "the run must leave rows the corrector never trained on"
    stale_error = relative_error(store.stale_embeddings(unseen), fresh[unseen])
    corrected_error = relative_error(store.corrected_embeddings(unseen), fresh[unseen])
    assert corrected_error < stale_error, (corrected_error, stale_error)


def test_checkpoint_resume_restores_the_corrector_exactly(tiny_model_folder, tmp_path):
    trainer, store, _ = _run(load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=4, save_steps=2)
    final_uninterrupted = {k: v.clone() for k, v in store.corrector.state_dict().items()}
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = Corrector.load(checkpoint / "corrector_state" / "corrector")
    assert any(not torch.equal(saved.state_dict()[k], final_uninterrupted[k]) for k in final_uninterrupted)

    # A new process would start from a fresh model, store and loss; resume from step 2.
    resumed_trainer, resumed_store, _ = _run(
        load_tiny_model(tiny_model_folder), tmp_path / "run", max_steps=4, save_steps=2, resume=str(checkpoint)
    )
    assert resumed_trainer.state.global_step == 4
    for key, value in resumed_store.corrector.state_dict().items():
        torch.testing.assert_close(value, final_uninterrupted[key], atol=1e-6, rtol=1e-5)


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
