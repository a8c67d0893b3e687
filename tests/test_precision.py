"""Precision: the loss's no-grad encodes run in bfloat16, the search and the corrector stay float32 under any autocast.

``bf16_supported`` is forced on where a test needs the bfloat16 path, so these tests mean the same on a machine
without bfloat16 units (torch's CPU autocast computes bfloat16 there too, only slower).
"""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer, precision

pytest.importorskip("sentence_transformers")

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402

from haystack_corrector.beir import document_text  # noqa: E402
from haystack_corrector.sentence_transformers import (  # noqa: E402
    CorrectedMultipleNegativesRankingLoss,
    CorrectorCallback,
    build_training_dataset,
    encode_corpus,
)
from tests.tiny_model import build_tiny_model_folder, load_tiny_model, toy_corpus  # noqa: E402


@pytest.fixture
def bf16_hardware(monkeypatch):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)


@contextlib.contextmanager
def linear_output_dtypes(module: torch.nn.Module):
    """Collects the dtype of every nn.Linear output computed inside ``module`` while the context is open."""
    seen: list[torch.dtype] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def _random_store(rows=400, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corrector = Corrector(dim, hidden_dim=32)
    with torch.no_grad():
        for parameter in corrector.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    store = CorrectedCacheStore(torch.randn(rows, dim, generator=generator), corrector=corrector, block_size=64)
    return store, torch.randn(5, dim, generator=generator)


def test_bf16_encodes_is_bfloat16_autocast_on_bfloat16_hardware_and_float32_elsewhere(bf16_hardware, monkeypatch):
    a = torch.randn(8, 8)
    with precision.bf16_encodes("cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with precision.bf16_encodes("cpu", enabled=False), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16  # an inner autocast is the inner caller's choice
    with torch.autocast("cpu", dtype=torch.bfloat16), precision.bf16_encodes("cpu", enabled=False):
        assert (a @ a).dtype == torch.float32  # enabled=False means float32, not "whatever is around"
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with precision.bf16_encodes("cpu"):
        assert (a @ a).dtype == torch.float32


@pytest.mark.parametrize("corrected", [True, False])
def test_search_inside_autocast_equals_float32_search(corrected):
    store, queries = _random_store()
    expected = store.search(queries, 10, exclude=[{0}, set(), {3, 4}, set(), {399}], corrected=corrected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = store.search(queries, 10, exclude=[{0}, set(), {3, 4}, set(), {399}], corrected=corrected)
        corrected_rows = store.corrected_embeddings([1, 2, 3])
    assert torch.equal(found[1], expected[1])
    assert torch.equal(found[0], expected[0])  # the same float32 scores, bit for bit
    assert corrected_rows.dtype == torch.float32
    torch.testing.assert_close(corrected_rows, store.corrected_embeddings([1, 2, 3]), rtol=0, atol=0)


def test_corrector_step_inside_autocast_equals_float32_step():
    runs = []
    for autocast in (False, True):
        store, queries = _random_store()
        trainer = CorrectorTrainer(store, lr=1e-2, listwise_weight=0.5, seed=0)
        fresh = store.stale_embeddings([5, 6, 7, 8, 9]) + 0.1
        with (
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
            linear_output_dtypes(store.corrector) as seen,
        ):
            metrics = trainer.observe([5, 6, 7, 8, 9], fresh, query_embeddings=queries)
        assert set(seen) == {torch.float32}
        runs.append((metrics, {k: v.clone() for k, v in store.corrector.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key


def _setup(model):
    corpus, queries, qrels = toy_corpus(num_docs=300, num_queries=48)
    ids = list(corpus)
    store = encode_corpus(model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    return store, build_training_dataset(queries, corpus, qrels, store)


def test_bf16_reranking_picks_the_float32_negatives_where_scores_are_well_separated(tmp_path, bf16_hardware):
    """The candidates are re-encoded in bfloat16 (every Linear of the model outputs bfloat16 during those encodes:
    removing the autocast fails this), and where the float32 fresh scores separate an anchor's best candidate from
    its second by more than bfloat16 moved any candidate's score, its negative is the float32 run's."""
    model = load_tiny_model(build_tiny_model_folder(tmp_path / "spread", initializer_range=1.0))
    store, dataset = _setup(model)
    model.train()
    batch = dataset.select(range(32))
    depth = 4
    chosen, dtypes, fresh = {}, {}, {}
    for bf16 in (False, True):
        loss = CorrectedMultipleNegativesRankingLoss(
            model,
            store,
            num_negatives=1,
            train_dataset=dataset,
            negatives=f"corrector+rerank:{depth}",
            bf16_encodes=bf16,
        )
        encode, seen = loss.source.encode, []

        def spy(texts, encode=encode, seen=seen, bf16=bf16):
            with linear_output_dtypes(model) as inside:
                out = encode(texts)
            seen.extend(inside)
            fresh[bf16] = out
            return out

        loss.source.encode = spy
        loss([model.preprocess(batch["anchor"]), model.preprocess(batch["positive"])], None)
        chosen[bf16], dtypes[bf16] = loss.last_negative_rows[:, 0], set(seen)
    assert dtypes[True] == {torch.bfloat16}
    assert dtypes[False] == {torch.float32}
    assert fresh[True].dtype == fresh[False].dtype == torch.float32  # handed back as float32 either way
    with torch.no_grad():
        anchors = torch.nn.functional.normalize(model.encode(batch["anchor"], convert_to_tensor=True).float(), dim=1)

    def scores(embeddings):
        candidates = torch.nn.functional.normalize(embeddings, dim=1).reshape(len(anchors), depth, -1)
        return torch.einsum("bd,bld->bl", anchors, candidates)

    error = float((scores(fresh[True]) - scores(fresh[False])).abs().max())
    assert 0 < error < 0.05  # really computed in bfloat16, and bfloat16-sized
    best_two = scores(fresh[False]).topk(2, dim=1).values
    separated = (best_two[:, 0] - best_two[:, 1]) > 2 * error
    assert int(separated.sum()) >= len(anchors) // 4, "the fixture must separate enough anchors' candidates"
    assert torch.equal(chosen[True][separated], chosen[False][separated])


def _run(model, output_dir, max_steps, resume=None, bf16=True):
    store, dataset = _setup(model)
    torch.manual_seed(0)
    store.corrector = Corrector(store.dim, hidden_dim=128)
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=1, train_dataset=dataset, corrector_lr=5e-3
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        logging_steps=2,
        save_steps=3,
        save_strategy="steps",
        batch_sampler="no_duplicates",
        seed=0,
        report_to=[],
        use_cpu=True,
        bf16=bf16,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=loss,
        callbacks=[CorrectorCallback(loss, resume_from_checkpoint=resume)],
    )
    with linear_output_dtypes(model[0]) as model_dtypes, linear_output_dtypes(store.corrector) as corrector_dtypes:
        trainer.train(resume_from_checkpoint=resume)
    return trainer, store, set(model_dtypes), set(corrector_dtypes)


def test_trainer_bf16_trains_in_bfloat16_keeps_the_corrector_float32_and_resumes_exactly(
    tiny_model_folder, tmp_path, bf16_hardware
):
    initial = {k: v.clone() for k, v in load_tiny_model(tiny_model_folder).state_dict().items()}
    trainer, store, model_dtypes, corrector_dtypes = _run(load_tiny_model(tiny_model_folder), tmp_path / "run", 6)
    assert torch.bfloat16 in model_dtypes  # the trainer's autocast is on for the training forwards
    assert corrector_dtypes == {torch.float32}  # every corrector forward (search and drift step) in float32
    assert all(p.dtype == torch.float32 for p in store.corrector.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast, not bfloat16 weights
    assert store.corrector.steps == 6
    assert any(not torch.equal(v, initial[k]) for k, v in trainer.model.state_dict().items())  # it trained
    final_model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final_corrector = {k: v.clone() for k, v in store.corrector.state_dict().items()}

    moved = tmp_path / "moved" / "checkpoint-3"
    shutil.copytree(tmp_path / "run" / "checkpoint-3", moved)
    shutil.rmtree(tmp_path / "run")
    resumed, resumed_store, _, _ = _run(load_tiny_model(tiny_model_folder), tmp_path / "run2", 6, resume=str(moved))
    assert resumed.state.global_step == 6
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, final_model[key], atol=1e-6, rtol=1e-5)
    for key, value in resumed_store.corrector.state_dict().items():
        torch.testing.assert_close(value, final_corrector[key], atol=1e-6, rtol=1e-5)
