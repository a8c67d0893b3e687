"""CorrectorFitter: fit a corrector from documents embedded by the old and the new encoder, and save it."""

from __future__ import annotations

import logging
from typing import Any

import torch
from haystack import Document, component, default_from_dict, default_to_dict
from haystack_integrations.common.corrector.documents import embedding_matrix

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector._validation import check_choice, check_path_string, check_positive_int
from haystack_corrector.drift_losses import DRIFT_LOSSES

logger = logging.getLogger(__name__)


@component
class CorrectorFitter:
    """Fits a ``Corrector`` mapping old-encoder embeddings to new-encoder embeddings, writes it, returns its path.

    Feed it a small sample of your corpus twice: ``stale_documents`` with the embeddings in your index (old encoder)
    and ``fresh_documents`` re-embedded with the new encoder. Documents are paired by id; ids present on one side only
    are ignored (and counted in the metrics). The fitted corrector then upgrades the rest of the index through
    ``EmbeddingCorrector`` or ``CorrectedEmbeddingRetriever`` without re-embedding it.

    Usage example:
    ```python
    from haystack import Document
    from haystack_integrations.components.embedders.corrector import CorrectorFitter

    stale = [Document(id=str(i), content="x", embedding=[float(i), 1.0]) for i in range(20)]
    fresh = [Document(id=str(i), content="x", embedding=[float(i), 2.0]) for i in range(20)]
    result = CorrectorFitter("fitted-corrector", epochs=5).run(stale_documents=stale, fresh_documents=fresh)
    print(result["corrector_path"], sorted(result["metrics"]))
    ```
    """

    def __init__(
        self,
        output_path: str,
        epochs: int = 50,
        hidden_dim: int | None = None,
        lr: float = 1e-3,
        batch_size: int = 256,
        loss: str = "mse",
        seed: int = 0,
    ) -> None:
        """
        :param output_path: directory the fitted corrector is written to (atomically).
        :param epochs: passes over the paired sample.
        :param hidden_dim: corrector width (default: the embedding dimension).
        :param lr: corrector learning rate.
        :param batch_size: pairs per optimiser step.
        :param loss: drift loss, ``"mse"`` or ``"cosine"``.
        :param seed: seed of the corrector's initialisation and of the batch order.
        """
        self.output_path = check_path_string(output_path, "output_path")
        self.epochs = check_positive_int(epochs, "epochs")
        check_positive_int(batch_size, "batch_size")
        check_choice(loss, "loss", DRIFT_LOSSES)
        self.hidden_dim = hidden_dim
        self.lr = lr
        self.batch_size = batch_size
        self.loss = loss
        self.seed = seed

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            output_path=self.output_path,
            epochs=self.epochs,
            hidden_dim=self.hidden_dim,
            lr=self.lr,
            batch_size=self.batch_size,
            loss=self.loss,
            seed=self.seed,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectorFitter:
        return default_from_dict(cls, data)

    @component.output_types(corrector_path=str, metrics=dict)
    def run(self, stale_documents: list[Document], fresh_documents: list[Document]) -> dict[str, Any]:
        """Pair by id, fit, save.

        :param stale_documents: documents with their old-encoder embeddings.
        :param fresh_documents: the same documents (same ids) with new-encoder embeddings.
        :returns: ``corrector_path`` and ``metrics`` (``staleness`` and ``corrected_error`` on the pairs, pair counts).
        """
        fresh_by_id = {doc.id: doc for doc in fresh_documents}
        pairs = [(doc, fresh_by_id[doc.id]) for doc in stale_documents if doc.id in fresh_by_id]
        if not pairs:
            raise ValueError(
                f"No document id is shared by stale_documents ({len(stale_documents)}) and fresh_documents "
                f"({len(fresh_documents)}): the fitter pairs documents by id"
            )
        stale = embedding_matrix([s for s, _ in pairs], "stale_documents")
        fresh = embedding_matrix([f for _, f in pairs], "fresh_documents")
        if stale.shape[1] != fresh.shape[1]:
            raise ValueError(
                f"stale embeddings have dimension {stale.shape[1]} but fresh ones {fresh.shape[1]}: a corrector maps "
                "between spaces of the same dimension"
            )
        # The corrector's initialisation is seeded without touching the caller's global RNG: a pipeline component
        # must not change what the rest of the program draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            corrector = Corrector(stale.shape[1], hidden_dim=self.hidden_dim)
        store = CorrectedCacheStore(stale, corrector=corrector, similarity="dot")
        trainer = CorrectorTrainer(store, lr=self.lr, loss=self.loss)
        metrics = trainer.fit(
            torch.arange(len(pairs)), fresh, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed
        )
        store.corrector.save(self.output_path)
        metrics.update(
            {
                "pairs": float(len(pairs)),
                "unpaired_stale": float(len(stale_documents) - len(pairs)),
                "unpaired_fresh": float(len(fresh_documents) - len(pairs)),
            }
        )
        logger.info("Fitted a corrector on %d document pairs and wrote it to %s", len(pairs), self.output_path)
        return {"corrector_path": self.output_path, "metrics": metrics}
