"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2``: the stock SentenceTransformerTrainer with
the corrected loss under DDP (gloo, CPU). Each rank writes what it saw to ``<output>/rank<r>.json``."""

from __future__ import annotations

import json
import os
import sys

import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from haystack_corrector import Corrector
from haystack_corrector.beir import document_text
from haystack_corrector.distributed import ShardedCacheStore
from haystack_corrector.sentence_transformers import (
    CorrectedMultipleNegativesRankingLoss,
    CorrectorCallback,
    build_training_dataset,
    encode_corpus,
)
from tests.tiny_model import load_tiny_model, toy_corpus


def main(model_folder: str, output: str) -> None:
    model = load_tiny_model(model_folder)
    corpus, queries, qrels = toy_corpus(num_docs=200, num_queries=48)
    ids = list(corpus)
    store = encode_corpus(model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    torch.manual_seed(0)
    store.corrector = Corrector(store.dim, hidden_dim=32)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, corrector_lr=5e-3
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=output,
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
        logging_steps=2,
        save_strategy="no",
        batch_sampler="no_duplicates",
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[CorrectorCallback(loss)]
    )
    trainer.train()
    rank = int(os.environ["RANK"])
    result = {
        "world_size": int(os.environ["WORLD_SIZE"]),
        "sharded": isinstance(loss.store, ShardedCacheStore),
        "corrector_steps": loss.corrector_trainer.steps,
        "corrector": [p.detach().reshape(-1).tolist() for p in loss.store.corrector.parameters()],
        "logged_staleness": [e["corrector/staleness"] for e in trainer.state.log_history if "corrector/staleness" in e],
    }
    with open(os.path.join(output, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
