"""The training path with the encoder (and optionally the corrector) on a GPU.

Skipped where CUDA is absent, as in CI. On a GPU machine: ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

pytest.importorskip("sentence_transformers")

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402

from haystack_corrector import CorrectedCacheStore, Corrector  # noqa: E402
from haystack_corrector.beir import document_text  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    CorrectorCallback,
    build_training_dataset,
    encode_corpus,
)
from haystack_corrector.sentence_transformers._compat import multiple_negatives_ranking_loss  # noqa: E402
from haystack_corrector.sentence_transformers.callback import STATE_DIR  # noqa: E402
from tests.tiny_model import load_tiny_model, toy_corpus  # noqa: E402


def test_search_with_the_corrector_on_cuda_equals_cpu():
    generator = torch.Generator().manual_seed(0)
    corrector = Corrector(16)
    with torch.no_grad():
        for parameter in corrector.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    embeddings = torch.randn(500, 16, generator=generator)
    queries = torch.randn(7, 16, generator=generator)
    exclude = [{0, 1}, set(), {5}, {9, 10, 11}, set(), {499}, {2}]
    cpu = CorrectedCacheStore(embeddings, corrector=corrector, block_size=64)
    cpu_scores, cpu_rows = cpu.search(queries, 20, exclude=exclude)
    gpu = CorrectedCacheStore(embeddings, corrector=copy.deepcopy(corrector).to("cuda"), block_size=64)
    gpu_scores, gpu_rows = gpu.search(queries.cuda(), 20, exclude=exclude)
    assert torch.equal(cpu_rows, gpu_rows.cpu())
    torch.testing.assert_close(cpu_scores, gpu_scores.cpu(), rtol=1e-4, atol=1e-4)


def test_loss_without_negatives_equals_mnrl_on_cuda(tiny_model_folder):
    model = load_tiny_model(tiny_model_folder, device="cuda")
    corpus, queries, qrels = toy_corpus()
    ids = list(corpus)
    store = encode_corpus(model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store).select(range(8))
    ours = CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=dataset, negatives="inbatch")
    reference = multiple_negatives_ranking_loss()(model)
    features = [model.preprocess(dataset["anchor"]), model.preprocess(dataset["positive"])]
    features = [{k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in f.items()} for f in features]
    model.train()
    value = ours(features, None)
    assert value.device.type == "cuda"
    torch.testing.assert_close(value, reference(features, None))


@pytest.mark.parametrize("mode", [{"negatives": "corrector", "seed": 0}, {}], ids=["corrector", "default"])
@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
@pytest.mark.parametrize("corrector_device", ["cpu", "cuda"])
def test_corrected_training_runs_on_cuda(tiny_model_folder, tmp_path, corrector_device, bf16, mode):
    model = load_tiny_model(tiny_model_folder, device="cuda")
    corpus, queries, qrels = toy_corpus(num_docs=300, num_queries=48)
    ids = list(corpus)
    texts = [document_text(corpus[i]) for i in ids]
    store = encode_corpus(model, texts, ids=ids, show_progress_bar=False)
    store.corrector = Corrector(store.dim, hidden_dim=128).to(corrector_device)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model,
        store,
        num_negatives=2,
        train_dataset=dataset,
        **mode,
        corrector_lr=5e-3,
        listwise_weight=0.1,
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        logging_steps=2,
        save_steps=3,
        save_strategy="steps",
        batch_sampler="no_duplicates",
        seed=0,
        report_to=[],
        bf16=bf16,
        disable_tqdm=True,
    )
    before = [p.detach().clone() for p in store.corrector.parameters()]
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[CorrectorCallback(loss)]
    )
    trainer.train()
    assert next(model.parameters()).device.type == "cuda"
    assert all(p.device.type == corrector_device for p in store.corrector.parameters())
    assert store.corrector.steps == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, store.corrector.parameters()))
    logged = [entry for entry in trainer.state.log_history if "corrector/staleness" in entry]
    assert logged and logged[-1]["corrector/staleness"] > 0
    for key in ("corrector/drift_loss", "corrector/staleness", "corrector/corrected_error"):
        assert all(math.isfinite(entry[key]) for entry in logged), key
    assert all(p.dtype == torch.float32 for p in store.corrector.parameters())  # bf16 autocast, float32 corrector
    # The checkpointed corrector is the one trained on the GPU.
    saved = Corrector.load(tmp_path / "run" / "checkpoint-6" / STATE_DIR / "corrector")
    for ours, theirs in zip(store.corrector.state_dict().values(), saved.state_dict().values()):
        torch.testing.assert_close(ours.cpu(), theirs)
