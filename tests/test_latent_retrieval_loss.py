"""LatentRetrievalLoss against oracles: the reader's own cross-entropy, a brute-force marginal, and where gradients go."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

pytest.importorskip("sentence_transformers")

from haystack_corrector.sentence_transformers import encode_corpus  # noqa: E402
from haystack_corrector.sentence_transformers.latent_retrieval_loss import (  # noqa: E402
    CrossEncoderReader,
    LatentRetrievalLoss,
)

TEXTS = [
    f"document about {w} and {v}"
    for w, v in zip("cell gene drug trial brain heart liver bone".split(), "a b c d e f g h".split())
]
CLAIMS = ["cell gene", "drug trial effects", "brain and heart"]
LABELS = torch.tensor([0, 2, 1])
NUM_LABELS = 3


class QueryOnlyReader(nn.Module):
    """p(y | x, z) = p(y | x): logits from the query alone (a bias and the query's length)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
        self.scale = nn.Parameter(torch.tensor([0.05, -0.02, 0.01]))

    def logits(self, queries):
        return self.bias + self.scale * torch.tensor([[float(len(q))] for q in queries])

    def forward(self, queries, documents):
        return self.logits(queries)[:, None, :].expand(-1, len(documents[0]), -1)


class TableReader(nn.Module):
    """p(y | x, z) from a learned table over documents (depends on z only)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = {text: i for i, text in enumerate(TEXTS)}
        self.table = nn.Parameter(torch.randn(len(TEXTS), NUM_LABELS, generator=torch.Generator().manual_seed(3)))

    def forward(self, queries, documents):
        return torch.stack([self.table[[self.index[d] for d in docs]] for docs in documents])


@pytest.fixture
def model_and_store(tiny_model):
    store = encode_corpus(tiny_model, TEXTS, show_progress_bar=False)
    return tiny_model, store


def _features(model, texts):
    return [model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)]


def test_a_reader_that_ignores_the_document_gives_its_own_cross_entropy(model_and_store):
    model, store = model_and_store
    reader = QueryOnlyReader()
    loss = LatentRetrievalLoss(model, reader, store, top_k=3, train_corrector=False)
    value = loss(_features(model, CLAIMS), LABELS)
    anchors = loss.anchor_texts(_features(model, CLAIMS)[0])
    assert anchors == CLAIMS  # the uncased tokenizer round-trips these lower-case claims
    expected = nn.functional.cross_entropy(reader.logits(anchors), LABELS)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)


def test_with_k_the_whole_corpus_the_marginal_is_the_brute_force_sum(model_and_store):
    model, store = model_and_store
    model.eval()
    reader = TableReader()
    loss = LatentRetrievalLoss(model, reader, store, top_k=len(TEXTS), temperature=0.1, train_corrector=False)
    with torch.no_grad():
        value = loss(_features(model, CLAIMS), LABELS).item()
        q = model.encode(CLAIMS, convert_to_tensor=True, normalize_embeddings=True).double()
        d = model.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True).double()
        p_z = torch.softmax(q @ d.T / 0.1, dim=1)  # (B, N)
        p_y = torch.softmax(reader.table.double(), dim=1)[:, LABELS].T  # (B, N): p(y_b | z_n)
    brute = -sum(math.log(float((p_z[b] * p_y[b]).sum())) for b in range(len(CLAIMS))) / len(CLAIMS)
    assert value == pytest.approx(brute, abs=1e-5)


def test_gradients_reach_the_encoder_and_the_reader_and_never_the_corrector(model_and_store):
    model, store = model_and_store
    reader = TableReader()
    loss = LatentRetrievalLoss(model, reader, store, top_k=3)
    corrector_ids = {id(p) for p in store.corrector.parameters()}
    assert not corrector_ids & {id(p) for p in loss.parameters()}  # not in what the trainer's optimiser sees
    assert {id(p) for p in reader.parameters()} <= {id(p) for p in loss.parameters()}
    before = [p.detach().clone() for p in store.corrector.parameters()]
    with torch.no_grad():  # the encoder has moved since the cache was built: there is drift to correct
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    loss.train()
    value = loss(_features(model, CLAIMS), LABELS)  # the corrector's drift step happens here, with its own grads
    drift_grads = [None if p.grad is None else p.grad.clone() for p in store.corrector.parameters()]
    value.backward()
    assert reader.table.grad is not None and reader.table.grad.abs().sum() > 0
    encoder_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert encoder_grads and sum(float(g.abs().sum()) for g in encoder_grads) > 0
    for drift, p in zip(drift_grads, store.corrector.parameters()):  # the task loss adds nothing to them
        assert (drift is None and p.grad is None) or torch.equal(drift, p.grad)
    # ... the corrector moved only by its own drift step on the retrieved documents' fresh embeddings
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, store.corrector.parameters()))
    assert set(loss.pop_metrics()) >= {"corrector/staleness", "corrector/corrected_error"} and not loss.pop_metrics()


def test_during_the_warm_up_only_the_reader_learns(model_and_store):
    """retriever_warmup_steps=1: the first training step gives the encoder no gradient and leaves the corrector as it
    was; the second trains both, as without a warm-up."""
    model, store = model_and_store
    reader = TableReader()
    loss = LatentRetrievalLoss(model, reader, store, top_k=3, retriever_warmup_steps=1)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    loss.train()
    before = [p.detach().clone() for p in store.corrector.parameters()]
    loss(_features(model, CLAIMS), LABELS).backward()
    assert reader.table.grad is not None and reader.table.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, store.corrector.parameters()))
    reader.zero_grad()
    loss(_features(model, CLAIMS), LABELS).backward()
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, store.corrector.parameters()))


def test_wrong_input(model_and_store, tmp_path):
    model, store = model_and_store
    with pytest.raises(ValueError, match="top_k=99 is larger than the store"):
        LatentRetrievalLoss(model, TableReader(), store, top_k=99)
    with pytest.raises(TypeError, match="reader must be a torch.nn.Module"):
        LatentRetrievalLoss(model, lambda q, d: None, store)
    loss = LatentRetrievalLoss(model, TableReader(), store, top_k=2)
    with pytest.raises(ValueError, match="integer 'label' column"):
        loss(_features(model, CLAIMS), torch.tensor([0.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="one text column"):
        loss(_features(model, CLAIMS) * 2, LABELS)


def test_cross_encoder_reader_gives_pair_logits(tiny_model_folder):
    reader = CrossEncoderReader(str(tiny_model_folder), num_labels=NUM_LABELS, max_length=32)
    logits = reader(CLAIMS, [TEXTS[:2]] * len(CLAIMS))
    assert logits.shape == (len(CLAIMS), 2, NUM_LABELS)
    logits.sum().backward()
    assert any(p.grad is not None for p in reader.parameters())


def test_trains_in_the_stock_trainer_and_updates_the_reader(model_and_store, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model, store = model_and_store
    reader = TableReader()
    before = reader.table.detach().clone()
    loss = LatentRetrievalLoss(model, reader, store, top_k=2)
    dataset = Dataset.from_dict({"anchor": CLAIMS * 2, "label": LABELS.tolist() * 2})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=3,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    assert not torch.equal(before, reader.table.detach())  # the reader's parameters were in the optimiser
    assert loss.corrector_trainer.observed == 2


def test_predict_labels_refuses_a_store_without_texts():
    from haystack_corrector import CorrectedCacheStore
    from haystack_corrector.sentence_transformers.latent_retrieval_loss import predict_labels

    store = CorrectedCacheStore(torch.randn(5, 8))
    with pytest.raises(ValueError, match="no texts"):
        predict_labels(lambda q, d: torch.zeros(len(q), 3), ["a claim"], torch.randn(1, 8), store, 2, 0.05)


def test_under_bf16_autocast_search_corrector_and_marginal_stay_float32(model_and_store, monkeypatch):
    """The encoder and reader may compute in bfloat16; the cache search, the corrector's drift step and the marginal
    must not (autocast is off inside them), and gradients still reach encoder and reader."""
    model, store = model_and_store
    reader = TableReader()
    loss = LatentRetrievalLoss(model, reader, store, top_k=3)
    seen: dict[str, bool] = {}
    search, observe, marginal = store.search, loss.corrector_trainer.observe, loss.marginal_log_likelihood

    def spy(name, function):
        def wrapped(*args, **kwargs):
            seen[name] = torch.is_autocast_enabled("cpu")
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(store, "search", spy("search", search))
    monkeypatch.setattr(loss.corrector_trainer, "observe", spy("observe", observe))
    linear_outputs = []  # autocast is really on for the encoder: its linear layers compute in bfloat16
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    first_linear.register_forward_hook(lambda module, args, output: linear_outputs.append(output.dtype))
    loss.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(_features(model, CLAIMS), LABELS)
    assert linear_outputs and set(linear_outputs) == {torch.bfloat16}
    assert seen == {"search": False, "observe": False}
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert reader.table.grad is not None and reader.table.grad.abs().sum() > 0
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
    # The marginal is the float32 one of its inputs, also when handed bfloat16 tensors under autocast.
    q, d = torch.randn(2, 8), torch.randn(2, 3, 8)
    logits, labels = torch.randn(2, 3, NUM_LABELS), torch.tensor([0, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = marginal(q.bfloat16(), d.bfloat16(), logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    assert torch.allclose(low, marginal(q.bfloat16().float(), d.bfloat16().float(), logits.bfloat16().float(), labels))


@pytest.mark.parametrize("reader_autocast", [None, torch.bfloat16])
def test_reader_autocast_runs_the_reader_in_bfloat16_outside_any_autocast(model_and_store, reader_autocast):
    """transformers 5's trainer autocasts only the model's forward, not a reader the loss owns: ``reader_autocast``
    runs the reader in bfloat16 even with no autocast around the loss, and None leaves it to the ambient one."""
    model, store = model_and_store

    class LinearReader(nn.Module):  # a linear layer over per-pair features: what autocast casts
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, NUM_LABELS)

        def forward(self, queries, documents):
            pairs = torch.tensor(
                [[[float(len(q)), float(len(d))] for d in docs] for q, docs in zip(queries, documents)]
            )
            return self.linear(pairs)

    reader = LinearReader()
    dtypes = []
    handle = reader.linear.register_forward_hook(lambda _module, _inputs, output: dtypes.append(output.dtype))
    try:
        loss = LatentRetrievalLoss(
            model, reader, store, top_k=2, train_corrector=False, reader_autocast=reader_autocast
        )
        loss(_features(model, CLAIMS), LABELS)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # an ambient autocast still reaches a reader left to it
            loss(_features(model, CLAIMS), LABELS)
    finally:
        handle.remove()
    assert dtypes == [torch.float32 if reader_autocast is None else torch.bfloat16, torch.bfloat16]
    with pytest.raises(ValueError, match="reader_autocast must be"):
        LatentRetrievalLoss(model, reader, store, reader_autocast=torch.float64)
