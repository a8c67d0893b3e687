"""LossState: what CorrectedNegativesLoss carries between steps: counters, seed, metrics, checkpoint state, model card."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

CITATION = """
@inproceedings{monath2024fresh,
    title = {A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks},
    author = {Monath, Nicholas and Grathwohl, Will and Boratko, Michael and Fergus, Rob and McCallum, Andrew and Zaheer, Manzil},
    booktitle = {Proceedings of the 41st International Conference on Machine Learning},
    year = {2024},
    url = {https://arxiv.org/abs/2409.01890},
}
"""
STAT_KEYS = ("anchors", "skipped_anchors", "inbatch_steps")


def wrapped_loss_config(loss: Any) -> dict[str, Any]:
    """The wrapped loss's own model-card parameters, plus what sentence-transformers leaves out of them: a
    gradient-cache loss's ``mini_batch_size`` and a guided loss's guide model."""
    config = dict(loss.get_config_dict()) if hasattr(loss, "get_config_dict") else {}
    if isinstance(getattr(loss, "mini_batch_size", None), int):
        config.setdefault("mini_batch_size", loss.mini_batch_size)
    guide = getattr(loss, "guide", None)
    if guide is not None and "guide" not in config:
        card = getattr(guide, "model_card_data", None)
        config["guide"] = getattr(card, "base_model", None) or type(guide).__name__
    inner = getattr(loss, "loss", None)
    if inner is not None and hasattr(inner, "get_config_dict"):  # MatryoshkaLoss(CachedMNRL(...)) and the like
        config["loss"] = {"name": type(inner).__name__, **wrapped_loss_config(inner)}
    return config


class LossState:
    """Mixed into :class:`CorrectedNegativesLoss` (which provides ``source``, ``generator``, ``corrector_trainer``,
    ``store``, ``loss`` and the options named in :meth:`get_config_dict`)."""

    source: Any
    generator: Any
    corrector_trainer: Any
    store: Any
    loss: Any
    seed: int | None

    def init_state(self) -> None:
        # Optimiser steps done, as the trainer counts them: kept by CorrectorCallback. Without it the loss counts its
        # own training forwards, which equals optimiser steps only without gradient accumulation.
        self.optimizer_step = 0
        self.training_forwards = 0
        self.callback_attached = False
        self._warned: set[str] = set()
        self.last_negative_rows: Any = None
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.reset_metrics()

    @property
    def sampling_corrected(self) -> bool:
        """Whether the last negatives were chosen through the corrector."""
        return bool(self.source.last_corrected)

    @property
    def step(self) -> int:
        """The optimiser step the current forward belongs to (refreshes and warm-up count these)."""
        return self.optimizer_step if self.callback_attached else self.training_forwards

    def reseed(self, seed: int | None) -> None:
        """Seed the loss's random choices (the negative source's draws, the corrector's replay); None: from entropy."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self.corrector_trainer.reseed(seed)

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # ------------------------------------------------------------------------------------------------ metrics
    def record(self, metrics: dict[str, float]) -> None:
        for key in self._drift_metric_keys():
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + metrics[key]
        self._metric_count += 1

    def _drift_metric_keys(self) -> tuple[str, ...]:
        trainer = self.corrector_trainer
        # Under MSE alone the drift loss is the corrected error of unit-norm targets: logging both says it twice.
        plain_mse = trainer.loss == "mse" and not trainer.listwise_weight and not trainer.score_weight
        return ("staleness", "corrected_error") if plain_mse else ("drift_loss", "staleness", "corrected_error")

    def reset_metrics(self) -> None:
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0
        self._stats_at_reset = dict(getattr(self, "stats", {}))

    def pop_metrics(self) -> dict[str, float]:
        """Mean drift metrics since the last call (training steps only), anchors skipped since then, and the costs."""
        metrics = (
            {f"corrector/{k}": v / self._metric_count for k, v in self._metric_sums.items()}
            if self._metric_count
            else {}
        )
        since = {key: self.stats[key] - self._stats_at_reset.get(key, 0) for key in STAT_KEYS}
        metrics["corrector/skipped_anchors"] = float(since["skipped_anchors"])
        if since["skipped_anchors"]:
            logger.info(
                "Skipped %d of %d anchors since the last log (%d steps trained in-batch only): %r left them fewer than "
                "num_negatives=%d candidates. Loosen its filters or widen range_max to keep them",
                since["skipped_anchors"],
                since["anchors"],
                since["inbatch_steps"],
                self.source,
                self.num_negatives,  # type: ignore[attr-defined]
            )
        sampler_stats = getattr(self.source, "stats", {})
        if sampler_stats.get("filled_negatives"):
            metrics["corrector/filled_negatives"] = float(sampler_stats["filled_negatives"])
        metrics.update({f"corrector/{k}": float(v) for k, v in self.source.costs.as_dict().items()})
        self.reset_metrics()
        return metrics

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Everything besides the corrector and its optimiser that a resumed run needs to continue exactly."""
        return {
            "optimizer_step": self.optimizer_step,
            "training_forwards": self.training_forwards,
            "stats": dict(self.stats),
            "sampler_stats": dict(getattr(self.source, "stats", {})),
            "generator": self.generator.get_state(),
            "costs": self.source.costs.as_dict(),
            "source": self.source.state_dict(),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.optimizer_step = int(state["optimizer_step"])
        self.training_forwards = int(state["training_forwards"])
        self.stats.update(state.get("stats", {}))
        getattr(self.source, "stats", {}).update(state.get("sampler_stats", {}))
        self.generator.set_state(state["generator"].cpu())
        self.source.costs.load(state["costs"])
        self.source.load_state_dict(state["source"])
        self.reset_metrics()

    # ------------------------------------------------------------------------------------------- model card
    def get_config_dict(self) -> dict[str, Any]:
        """The wrapped loss's parameters, the negative source's and the corrector's: only options with an effect."""
        trainer = self.corrector_trainer
        wrapped = wrapped_loss_config(self.loss)
        config: dict[str, Any] = {
            "loss": type(self.loss).__name__,
            **({"loss_config": wrapped} if wrapped else {}),
            "num_negatives": self.num_negatives,  # type: ignore[attr-defined]
            "negatives": self.source.name,
            **{f"negatives_{k}": v for k, v in self.source.get_config_dict().items()},
        }
        for key in ("range_min", "corrector_warmup_steps", "max_view_age", "view_rescore_depth", "seed"):
            value = getattr(self, key)
            if value not in (0, None):
                config[key] = value
        config["corrector"] = {
            **self.store.corrector.get_config_dict(),
            "lr": trainer.lr,
            "drift_loss": trainer.loss,
            **{
                k: getattr(trainer, k)
                for k in ("listwise_weight", "score_weight", "replay_size", "replay_steps")
                if getattr(trainer, k)
            },
        }
        if trainer.listwise_weight:
            config["corrector"]["drift_temperature"] = trainer.temperature
        config["bf16_encodes"] = self.bf16_encodes  # type: ignore[attr-defined]
        return config

    @property
    def citation(self) -> str:
        return CITATION
