"""CorrectorFitter: fit a corrector from documents embedded by the old and the new encoder, and save it."""

from __future__ import annotations

from typing import Any

import torch
from haystack import Document, component, default_from_dict, default_to_dict, logging
from haystack_integrations.common.corrector.documents import embedding_matrix

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer
from haystack_corrector._validation import (
    check_bool,
    check_choice,
    check_float,
    check_path_string,
    check_positive_int,
)
from haystack_corrector.drift_losses import DRIFT_LOSSES
from haystack_corrector.evaluation import overlap_at_k, relative_error
from haystack_corrector.scoring import normalize_rows

logger = logging.getLogger(__name__)


@component
class CorrectorFitter:
    """Fits a ``Corrector`` mapping old-encoder embeddings to new-encoder embeddings, writes it, returns its path.

    Feed it a small sample of your corpus twice: ``stale_documents`` with the embeddings in your index (old encoder)
    and ``fresh_documents`` re-embedded with the new encoder. Documents are paired by id; ids present on one side only
    are ignored (and counted in the metrics). The fitted corrector then upgrades the rest of the index through
    ``EmbeddingCorrector`` or ``CorrectedEmbeddingRetriever`` without re-embedding it.

    The fit is judged on pairs it never saw: ``holdout_fraction`` of the pairs are held out, training stops when
    their error has not improved for ``patience`` epochs, and the best epoch's corrector is kept. The metrics report,
    on the held-out pairs, the stale and corrected errors and a ranking proxy: with each held-out document's fresh
    embedding as a query over the whole sample, the overlap@10 of the stale and of the corrected ranking with the
    fresh one. A corrector that does not beat the stale embeddings on both is refused (``require_improvement=True``:
    a ``ValueError`` carrying the report, nothing written) or written with a warning (``False``).

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
        holdout_fraction: float = 0.2,
        patience: int = 10,
        require_improvement: bool = True,
    ) -> None:
        """
        :param output_path: directory the fitted corrector is written to (atomically).
        :param epochs: passes over the paired sample.
        :param hidden_dim: corrector width (default: the embedding dimension).
        :param lr: corrector learning rate.
        :param batch_size: pairs per optimiser step.
        :param loss: drift loss, ``"mse"`` or ``"cosine"``.
        :param seed: seed of the corrector's initialisation, the held-out split and the batch order.
        :param holdout_fraction: share of the pairs held out to judge the fit (in (0, 1); at least one pair).
        :param patience: epochs without a better held-out error before training stops.
        :param require_improvement: refuse to write a corrector whose held-out error is not below the stale one or
            whose held-out overlap@10 does not rise above the stale ranking's; ``False`` writes it with a warning.
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
        self.holdout_fraction = check_float(holdout_fraction, "holdout_fraction", minimum=0.0, strict=True)
        if self.holdout_fraction >= 1:
            raise ValueError(f"holdout_fraction must be < 1, got {holdout_fraction}")
        self.patience = check_positive_int(patience, "patience")
        self.require_improvement = check_bool(require_improvement, "require_improvement")

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
            holdout_fraction=self.holdout_fraction,
            patience=self.patience,
            require_improvement=self.require_improvement,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectorFitter:
        return default_from_dict(cls, data)

    @component.output_types(corrector_path=str, metrics=dict)
    def run(self, stale_documents: list[Document], fresh_documents: list[Document]) -> dict[str, Any]:
        """Pair by id, fit, save.

        :param stale_documents: documents with their old-encoder embeddings.
        :param fresh_documents: the same documents (same ids) with new-encoder embeddings.
        :returns: ``corrector_path`` and ``metrics``: ``staleness`` and ``corrected_error`` on the training pairs,
            ``held_out_staleness``, ``held_out_corrected_error``, ``held_out_stale_overlap@10`` and
            ``held_out_corrected_overlap@10`` on the held-out ones, ``improves`` (1.0 when the corrector beats the
            stale embeddings on both held-out measures), pair and epoch counts.
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
        train, held_out = self._split(len(pairs))
        # The corrector's initialisation is seeded without touching the caller's global RNG: a pipeline component
        # must not change what the rest of the program draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            corrector = Corrector(stale.shape[1], hidden_dim=self.hidden_dim)
        store = CorrectedCacheStore(stale, corrector=corrector, similarity="dot")
        trainer = CorrectorTrainer(store, lr=self.lr, loss=self.loss)
        fresh_tensor = torch.from_numpy(fresh)
        best_error, best_state, best_epoch, epochs_run = float("inf"), None, 0, 0
        for epoch in range(self.epochs):
            trainer.fit(
                train,
                fresh_tensor[train],
                epochs=1,
                batch_size=self.batch_size,
                seed=self.seed + epoch,
                show_progress_bar=False,
            )
            epochs_run = epoch + 1
            error = relative_error(store.corrected_embeddings(held_out), fresh_tensor[held_out])
            if error < best_error:
                best_error, best_epoch = error, epoch + 1
                best_state = {k: v.detach().clone() for k, v in store.corrector.state_dict().items()}
            elif epoch + 1 - best_epoch >= self.patience:
                break
        assert best_state is not None
        store.corrector.load_state_dict(best_state)
        metrics = self._report(store, fresh_tensor, train, held_out)
        metrics.update(
            {
                "pairs": float(len(pairs)),
                "held_out_pairs": float(len(held_out)),
                "epochs_run": float(epochs_run),
                "best_epoch": float(best_epoch),
                "unpaired_stale": float(len(stale_documents) - len(pairs)),
                "unpaired_fresh": float(len(fresh_documents) - len(pairs)),
            }
        )
        # Better on held-out pairs: a lower error, and a ranking closer to the fresh one (or already the same). A lower
        # error alone is not enough: shrinking towards the mean lowers it without ranking any better.
        corrected_overlap, stale_overlap = (
            metrics["held_out_corrected_overlap@10"],
            metrics["held_out_stale_overlap@10"],
        )
        better = metrics["held_out_corrected_error"] < metrics["held_out_staleness"] and (
            corrected_overlap > stale_overlap or corrected_overlap == 1.0
        )
        metrics["improves"] = float(better)  # 1.0: beats the stale embeddings on both held-out measures
        report = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("held_out"))
        if not better and self.require_improvement:
            raise ValueError(
                f"The fitted corrector does not beat the stale embeddings on the {len(held_out)} held-out pairs "
                f"({report}); nothing was written to {self.output_path}. Fit on a larger sample, or pass "
                "require_improvement=False to write it anyway"
            )
        if not better:
            logger.warning(
                "Writing a corrector that does not beat the stale embeddings on held-out pairs: {report}", report=report
            )
        store.corrector.save(self.output_path)
        logger.info(
            "Fitted a corrector on {pairs} document pairs ({held_out} held out: {report}) and wrote it to {path}",
            pairs=len(train),
            held_out=len(held_out),
            report=report,
            path=self.output_path,
        )
        return {"corrector_path": self.output_path, "metrics": metrics}

    def _split(self, num_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(train rows, held-out rows): a seeded ``holdout_fraction`` of the pairs, at least one on each side."""
        held = max(1, round(self.holdout_fraction * num_pairs))
        if num_pairs - held < 1:
            raise ValueError(
                f"{num_pairs} document pairs cannot be split into training and held-out pairs: give more documents"
            )
        order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(self.seed))
        return order[held:].sort().values, order[:held].sort().values

    @staticmethod
    def _report(
        store: CorrectedCacheStore, fresh: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor
    ) -> dict[str, float]:
        """Errors on the training and held-out pairs, and the held-out ranking proxy (overlap@10 with fresh)."""
        k = min(10, len(store) - 1)
        with torch.no_grad():
            stale, corrected = store.stale_embeddings().float(), store.corrected_embeddings().float()
            queries = fresh[held_out]
            rankings = {}
            for name, matrix in (("fresh", fresh), ("stale", stale), ("corrected", corrected)):
                scores = normalize_rows(queries, True) @ normalize_rows(matrix, True).T
                scores[torch.arange(len(held_out)), held_out] = -torch.inf  # a document is not its own neighbour
                rankings[name] = torch.topk(scores, k, dim=1).indices
        return {
            "staleness": relative_error(stale[train], fresh[train]),
            "corrected_error": relative_error(corrected[train], fresh[train]),
            "held_out_staleness": relative_error(stale[held_out], fresh[held_out]),
            "held_out_corrected_error": relative_error(corrected[held_out], fresh[held_out]),
            "held_out_stale_overlap@10": overlap_at_k(rankings["stale"], rankings["fresh"], k),
            "held_out_corrected_overlap@10": overlap_at_k(rankings["corrected"], rankings["fresh"], k),
        }
