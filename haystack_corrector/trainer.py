"""CorrectorTrainer: fit the corrector h of a store from (row, fresh embedding) pairs.

Online (``observe``): a training loop already computes fresh embeddings g(y) of the positives and negatives it
encodes; one optimiser step on those pairs per training step costs no extra encoder pass. Offline (``fit``): epochs
over a paired sample, e.g. a few percent of the corpus re-embedded after fine-tuning.

Only the corrector's parameters are updated; fresh embeddings (and queries) are detached, so no gradient ever
reaches the encoder that produced them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch

from haystack_corrector import drift_losses
from haystack_corrector._validation import (
    ArrayLike,
    as_float_matrix,
    as_index_tensor,
    check_choice,
    check_float,
    check_non_negative_int,
    check_positive_int,
    check_squared_norms_finite,
)
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.evaluation import relative_error
from haystack_corrector.offline_fit import fit_corrector
from haystack_corrector.precision import float32
from haystack_corrector.replay import ReplayBuffer

logger = logging.getLogger(__name__)


class CorrectorTrainer:
    """Trains ``store.corrector`` with its own Adam(W) optimiser.

    Args:
        store: the store whose corrector is trained (the stale rows are read from it).
        lr: learning rate of the corrector's optimiser (separate from the encoder's).
        loss: embedding drift loss, ``"mse"`` (the paper's) or ``"cosine"``.
        weight_decay: AdamW weight decay.
        listwise_weight: weight of the listwise ranking term (KL between softmax(<q, g>/τ) and softmax(<q, h(g')>/τ)
            over the batch's rows); used when ``query_embeddings`` are passed to :meth:`observe`.
        score_weight: weight of the score-level term (<q, h(g')> - <q, g>)², also needing ``query_embeddings``.
        temperature: τ of the listwise term.
        replay_size: keep the latest fresh embedding of up to this many rows (:mod:`haystack_corrector.replay`);
            0 (default) keeps none.
        replay_steps: extra corrector steps per :meth:`observe`, each on ``replay_batch_size`` random buffered pairs
            (when ``query_embeddings`` are given and ``listwise_weight > 0``, the batch's queries rank the sampled
            rows in the listwise term: the online counterpart of ``fit(listwise_candidates=...)``).
        replay_batch_size: pairs per replay step.
        replay_max_age: drop buffered pairs computed more than this many :meth:`observe` calls ago (None: never).

    Example:
        >>> import torch
        >>> from haystack_corrector import CorrectedCacheStore, CorrectorTrainer
        >>> stale = torch.randn(50, 8)
        >>> store = CorrectedCacheStore(stale, similarity="dot")
        >>> trainer = CorrectorTrainer(store, lr=1e-2)
        >>> metrics = trainer.observe(torch.arange(10), stale[:10] * 1.1)
        >>> sorted(metrics)[:3]
        ['corrected_error', 'drift_loss', 'staleness']
    """

    def __init__(
        self,
        store: CorrectedCacheStore,
        lr: float = 1e-3,
        loss: str = "mse",
        weight_decay: float = 0.0,
        listwise_weight: float = 0.0,
        score_weight: float = 0.0,
        temperature: float = 0.05,
        replay_size: int = 0,
        replay_steps: int = 0,
        replay_batch_size: int = 256,
        replay_max_age: int | None = None,
        seed: int | None = 0,
    ) -> None:
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        self.store = store
        self.lr = check_float(lr, "lr", minimum=0.0, strict=True)
        self.loss = check_choice(loss, "loss", drift_losses.DRIFT_LOSSES)
        self.weight_decay = check_float(weight_decay, "weight_decay", minimum=0.0)
        self.listwise_weight = check_float(listwise_weight, "listwise_weight", minimum=0.0)
        self.score_weight = check_float(score_weight, "score_weight", minimum=0.0)
        self.temperature = check_float(temperature, "temperature", minimum=0.0, strict=True)
        self.replay_size = check_non_negative_int(replay_size, "replay_size")
        self.replay_steps = check_non_negative_int(replay_steps, "replay_steps")
        self.replay_batch_size = check_positive_int(replay_batch_size, "replay_batch_size")
        self.replay_max_age = (
            None if replay_max_age is None else check_non_negative_int(replay_max_age, "replay_max_age")
        )
        if self.replay_steps and not self.replay_size:
            raise ValueError(f"replay_steps={self.replay_steps} needs a buffer: set replay_size > 0")
        self.replay = ReplayBuffer(self.replay_size, store.dim, self.replay_max_age) if self.replay_size else None
        self.observed = 0  # observe() calls: the clock of replay_max_age
        self._replay_generator = torch.Generator()
        self.reseed(seed)
        self._bind(store.corrector)

    def reseed(self, seed: int | None) -> None:
        """Seed the replay buffer's draws (None: from entropy)."""
        if seed is None:
            self._replay_generator.seed()
        else:
            self._replay_generator.manual_seed(int(seed))

    def _bind(self, corrector: Corrector) -> None:
        self._corrector = corrector
        self.optimizer = torch.optim.AdamW(corrector.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    @property
    def steps(self) -> int:
        """Optimiser steps taken on the bound corrector (``corrector.steps``: one counter, not two)."""
        return self.corrector.steps

    @property
    def corrector(self) -> Corrector:
        """The corrector this trainer's optimiser updates: always ``store.corrector`` (see :meth:`_rebind_if_replaced`)."""
        self._rebind_if_replaced()
        return self._corrector

    def reset_optimizer(self) -> None:
        """A fresh optimiser over the same corrector (its moments belonged to weights that were just reset)."""
        self._bind(self.corrector)

    def _rebind_if_replaced(self) -> None:
        """After ``store.corrector = other``, train ``other``: a fresh optimiser over its parameters.

        Without this the optimiser would keep stepping the old module while the store searched with the new one, and
        training would silently stop. The optimiser's moments belong to the old weights, so they start again.
        """
        current = self.store.corrector
        if current is not self._corrector:
            logger.warning(
                "store.corrector was replaced after this CorrectorTrainer was created; rebinding its optimiser to "
                "the new corrector (optimiser state starts again; steps counts the new corrector's, %d)",
                current.steps,
            )
            self._bind(current)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "loss": self.loss,
            "weight_decay": self.weight_decay,
            "listwise_weight": self.listwise_weight,
            "score_weight": self.score_weight,
            "temperature": self.temperature,
            "replay_size": self.replay_size,
            "replay_steps": self.replay_steps,
            "replay_batch_size": self.replay_batch_size,
            "replay_max_age": self.replay_max_age,
        }

    # ------------------------------------------------------------------------------------------------- training
    def checked_pairs(
        self, indices: ArrayLike | Sequence[int], fresh_embeddings: ArrayLike, query_embeddings: ArrayLike | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(rows, fresh, queries)`` as tensors, checked: rows of this store, one fresh embedding per row of the
        store's dimension, norms that the drift loss can square (queries likewise, when given)."""
        rows = as_index_tensor(indices, "indices", num_rows=len(self.store))
        if rows.numel() == 0:
            raise ValueError("indices is empty: need at least one (row, fresh embedding) pair")
        fresh = as_float_matrix(fresh_embeddings, "fresh_embeddings", dim=self.store.dim)
        check_squared_norms_finite(fresh, "fresh_embeddings")  # the drift loss would overflow, not the lr
        if fresh.shape[0] != rows.numel():
            raise ValueError(
                f"fresh_embeddings has {fresh.shape[0]} rows but indices has {rows.numel()}: they must be paired"
            )
        queries = None
        if query_embeddings is not None:
            queries = as_float_matrix(query_embeddings, "query_embeddings", dim=self.store.dim)
            check_squared_norms_finite(queries, "query_embeddings")  # the ranking terms would overflow
        return rows, fresh, queries

    def observe(
        self,
        indices: ArrayLike | Sequence[int],
        fresh_embeddings: ArrayLike,
        query_embeddings: ArrayLike | None = None,
    ) -> dict[str, float]:
        """One optimiser step of the corrector on these (row, fresh embedding) pairs.

        Returns floats: ``drift_loss`` (the total loss of the step), ``staleness`` (mean ||g'-g||²/||g||² on these
        rows), ``corrected_error`` (mean ||h(g')-g||²/||g||², measured before the step), and ``embedding_loss``,
        ``listwise_loss``/``score_loss`` when those terms are on. Computed in float32, also inside a caller's
        autocast region (a trainer's ``bf16=True``).
        """
        with float32():
            return self._observe(indices, fresh_embeddings, query_embeddings)

    def _observe(
        self,
        indices: ArrayLike | Sequence[int],
        fresh_embeddings: ArrayLike,
        query_embeddings: ArrayLike | None,
    ) -> dict[str, float]:
        rows, fresh, queries = self.checked_pairs(indices, fresh_embeddings, query_embeddings)
        metrics = self.train_step(rows, fresh, queries)
        self.observed += 1
        if self.replay is not None:
            self.replay.add(rows, fresh, self.observed)
            self.replay.evict_older_than(self.observed)
            for _ in range(self.replay_steps):
                replay_rows, replay_fresh = self.replay.sample(self.replay_batch_size, self._replay_generator)
                local = None
                if queries is not None and self.listwise_weight > 0:
                    local = (queries, replay_rows, replay_fresh)  # the batch's queries rank the buffered rows
                self.train_step(replay_rows, replay_fresh, None, local)
            metrics["replay_buffer"] = float(len(self.replay))
        return metrics

    def fit(
        self,
        indices: ArrayLike | Sequence[int],
        fresh_embeddings: ArrayLike,
        epochs: int = 10,
        batch_size: int = 256,
        query_embeddings: ArrayLike | None = None,
        seed: int | None = 0,
        show_progress_bar: bool | None = None,
        listwise_candidates: int | Literal["all"] | None = None,
        query_batch_size: int = 64,
    ) -> dict[str, float]:
        """Offline fit on a paired sample: ``epochs`` shuffled passes in mini-batches of ``batch_size`` rows.

        ``query_embeddings`` (optional) are queries for the ranking terms; ``listwise_candidates=M`` (or ``"all"``)
        ranks each query's M best sample rows (or the whole sample) in the listwise term instead of the step's rows.
        Returns ``staleness`` and ``corrected_error`` over all given rows after the fit, the last step's
        ``drift_loss``, ``epochs`` and ``steps``. Every option: :func:`~haystack_corrector.offline_fit.fit_corrector`.
        """
        return fit_corrector(
            self,
            indices,
            fresh_embeddings,
            epochs=epochs,
            batch_size=batch_size,
            query_embeddings=query_embeddings,
            seed=seed,
            show_progress_bar=show_progress_bar,
            listwise_candidates=listwise_candidates,
            query_batch_size=query_batch_size,
        )

    def train_step(
        self,
        rows: torch.Tensor,
        fresh: torch.Tensor,
        queries: torch.Tensor | None,
        local: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One optimiser step on pairs already checked (:meth:`checked_pairs`); ``local`` is ``(queries, rows,
        fresh)`` for a listwise term over those rows instead of the step's. Returns the step's metrics."""
        corrector = self.corrector
        device = corrector.device
        stale = self.store.stale_embeddings(rows).to(device)
        side = self.store.side_features(rows)
        fresh = fresh.to(device)
        corrector.train()
        corrected = corrector(stale, None if side is None else side.to(device))
        embedding_loss = drift_losses.drift_loss(self.loss, corrected, fresh)
        total = embedding_loss
        metrics = {
            "staleness": relative_error(stale, fresh),
            "corrected_error": relative_error(corrected.detach(), fresh),
            "embedding_loss": float(embedding_loss.detach()),
        }
        normalize = self.store.similarity == "cosine"
        if local is not None:
            listwise = self._local_listwise(*local, device=device, normalize=normalize)
            total = total + self.listwise_weight * listwise
            metrics["listwise_loss"] = float(listwise.detach())
        elif queries is not None and self.listwise_weight > 0:
            listwise = drift_losses.listwise_loss(
                corrected, fresh, queries.to(device), temperature=self.temperature, normalize=normalize
            )
            total = total + self.listwise_weight * listwise
            metrics["listwise_loss"] = float(listwise.detach())
        if queries is not None and self.score_weight > 0:
            score = drift_losses.score_loss(corrected, fresh, queries.to(device), normalize=normalize)
            total = total + self.score_weight * score
            metrics["score_loss"] = float(score.detach())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"The corrector's drift loss is {float(total)}; lower the corrector learning rate (lr={self.lr})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        # A sharded store averages the gradients over its ranks, so every rank takes the same step; a no-op otherwise.
        self.store.reduce_corrector_gradients()
        self.optimizer.step()
        corrector.steps += 1
        metrics["drift_loss"] = float(total.detach())
        return metrics

    def _local_listwise(
        self,
        queries: torch.Tensor,
        candidates: torch.Tensor,
        candidate_fresh: torch.Tensor,
        *,
        device: torch.device,
        normalize: bool,
    ) -> torch.Tensor:
        """KL(softmax(fresh scores / τ) || softmax(corrected scores / τ)) over each query's own candidate rows.

        ``candidates`` is (Q, M) row indices (each query's own rows), or (N,) rows shared by every query: then the
        scores are one matrix product instead of a (Q, M, d) gather.
        """
        if candidates.dim() == 1:
            corrected = self._corrected_with_grad(candidates, device)
        else:  # (Q, M, d): each query ranks its own rows; each distinct row is corrected once
            unique, inverse = torch.unique(candidates.reshape(-1), return_inverse=True)
            corrected = self._corrected_with_grad(unique, device)[inverse]
            corrected = corrected.reshape(*candidates.shape, -1)
        return drift_losses.listwise_loss(
            corrected, candidate_fresh.to(device), queries.to(device), temperature=self.temperature, normalize=normalize
        )

    def _corrected_with_grad(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """h(g', s) of these rows with gradients to the corrector (side features when the store keeps them)."""
        side = self.store.side_features(rows)
        return self.store.corrector(
            self.store.stale_embeddings(rows).to(device), None if side is None else side.to(device)
        )

    # ------------------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Corrector weights, optimiser state and step count, for checkpoints (a deep copy, not live tensors)."""
        return copy.deepcopy(
            {
                "corrector": self.corrector.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "steps": self.steps,
                "observed": self.observed,
                "replay": None if self.replay is None else self.replay.state_dict(),
                "replay_generator": self._replay_generator.get_state(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.corrector.load_state_dict(state["corrector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.corrector.steps = int(state["steps"])
        self.observed = int(state.get("observed", 0))
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])
        if state.get("replay_generator") is not None:
            self._replay_generator.set_state(state["replay_generator"].cpu())
