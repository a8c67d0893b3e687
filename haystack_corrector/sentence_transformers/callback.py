"""CorrectorCallback: checkpoint the corrector with the trainer, restore it on resume, log drift metrics."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from haystack_corrector import corrector_persistence
from haystack_corrector._atomic import atomic_directory, fault_point, previous_directory
from haystack_corrector._validation import check_saved_config, with_config_checksum
from haystack_corrector.saved_folder import SavedFolder, read_one_generation
from haystack_corrector.sentence_transformers import _compat
from haystack_corrector.sentence_transformers.corrected_negatives_loss import CorrectedNegativesLoss

logger = logging.getLogger(__name__)

STATE_DIR = "corrector_state"
STATE_FILE = "state.json"
STATE_FORMAT = "haystack-corrector/trainer-state"
STATE_LAYOUT: dict[str, frozenset[str] | None] = {
    "corrector": corrector_persistence.FILES,
    "corrector_optimizer.pt": None,
    "loss_state.pt": None,
    STATE_FILE: None,
}
_STATE_KEYS = ("format", "corrector_steps", "optimizer_step", "sha256", "sampler_stats")
_TrainerCallback = _compat.trainer_callback_base()


def has_state(checkpoint: str | os.PathLike[str]) -> bool:
    """True when ``checkpoint`` holds a corrector state (or the previous one, left by a save killed mid-swap)."""
    state = Path(checkpoint) / STATE_DIR
    return state.is_dir() or previous_directory(state).is_dir()


def resumed_checkpoint(args: Any, global_step: int, explicit: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint a run resuming at ``global_step`` started from, told by the trainer's own arguments and state.

    In order: ``explicit`` (``CorrectorCallback(loss, resume_from_checkpoint=...)``), the trainer's
    ``args.resume_from_checkpoint``, then ``args.output_dir/checkpoint-<global_step>`` (the trainer's own naming) when
    its ``trainer_state.json`` is at that step. ``TrainerCallback`` events are not told the path
    ``trainer.train(resume_from_checkpoint=...)`` was given, so a checkpoint elsewhere must be named explicitly: a
    ``ValueError`` says so rather than guessing.
    """
    for given in (explicit, getattr(args, "resume_from_checkpoint", None)):
        if isinstance(given, (str, os.PathLike)):
            return Path(given)
    candidate = Path(args.output_dir) / f"checkpoint-{global_step}"
    try:
        saved_step = json.loads((candidate / "trainer_state.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        saved_step = None
    if saved_step == global_step:
        return candidate
    raise ValueError(
        f"The trainer resumes at step {global_step}, but the corrector's checkpoint cannot be told: "
        f"{candidate} is not a checkpoint of that step and no path was given. Pass the folder given to "
        "trainer.train(resume_from_checkpoint=...) to the callback as well: "
        "CorrectorCallback(loss, resume_from_checkpoint=path)"
    )


class CorrectorCallback(_TrainerCallback):  # type: ignore[misc, valid-type]
    """Keeps the corrector's life in step with the trainer's.

    - **Checkpoints**: on every trainer save, writes ``corrector_state/`` into the checkpoint folder: the corrector
      (safetensors + JSON), its optimiser state, step count and replay buffer, the sampler's random state and
      counters, the loss's step counters, and the negative source's state (for ``refresh``, the re-encoded cache).
    - **Resume**: when training starts from a checkpoint, restores all of that from the checkpoint's
      ``corrector_state/``, so the run continues exactly. The checkpoint is ``resume_from_checkpoint`` given here,
      else the trainer's ``args.resume_from_checkpoint``, else ``output_dir/checkpoint-<step>`` (what
      ``trainer.train(resume_from_checkpoint=True)`` resumes); a checkpoint elsewhere must be named here too.
    - **Seed**: a loss without its own ``seed`` takes the trainer's ``args.seed`` at the start of training.
    - **Steps**: keeps the loss's step counter on the trainer's optimiser steps (``refresh_every`` and
      ``corrector_warmup_steps`` count optimiser steps, also under gradient accumulation).
    - **Logging**: on every trainer log, adds the mean drift metrics of the steps since the last log
      (``corrector/staleness``, ``corrector/corrected_error``; ``corrector/drift_loss`` when it is more than MSE),
      the anchors skipped for want of negatives (``corrector/skipped_anchors``) and the costs to the log record (so
      they are in ``trainer.state.log_history`` and ``trainer_state.json``) and to the ``haystack_corrector`` logger.

    A materialised corrected view refreshed every K corrector steps is the loss's ``max_view_age=K`` option.
    """

    def __init__(
        self, loss: CorrectedNegativesLoss, resume_from_checkpoint: str | os.PathLike[str] | None = None
    ) -> None:
        if not isinstance(loss, CorrectedNegativesLoss):
            raise TypeError(f"loss must be a CorrectedNegativesLoss, got {type(loss).__name__}")
        self.loss = loss
        self.resume_from_checkpoint = resume_from_checkpoint
        loss.callback_attached = True
        self._restored_step: int | None = None

    # -------------------------------------------------------------------------------------------- save/restore
    def save_state(self, directory: str | os.PathLike[str]) -> None:
        """Write ``corrector_state/`` into ``directory`` atomically: a kill mid-save leaves the previous state whole."""
        with atomic_directory(
            Path(directory) / STATE_DIR, kind=STATE_FORMAT, config_file=STATE_FILE, layout=STATE_LAYOUT
        ) as target:
            (target / "corrector").mkdir()
            self.loss.store.corrector.save_to(target / "corrector")
            trainer_state = self.loss.corrector_trainer.state_dict()
            torch.save(
                {
                    "optimizer": trainer_state["optimizer"],
                    # the replay buffer and its clock, so a resumed run replays what the uninterrupted one would
                    "replay": {k: trainer_state[k] for k in ("observed", "replay", "replay_generator")},
                },
                target / "corrector_optimizer.pt",
            )
            fault_point("wrote corrector_optimizer.pt")
            torch.save(self.loss.state_dict_for_checkpoint(), target / "loss_state.pt")
            fault_point("wrote loss_state.pt")
            meta = {
                "format": STATE_FORMAT,
                "corrector_steps": trainer_state["steps"],
                "optimizer_step": self.loss.optimizer_step,
                "sha256": {
                    name: hashlib.sha256((target / name).read_bytes()).hexdigest()
                    for name in ("corrector_optimizer.pt", "loss_state.pt")
                },
            }
            (target / STATE_FILE).write_text(json.dumps(with_config_checksum(meta), indent=2))
            fault_point(f"wrote {STATE_FILE}")

    def load_state(self, directory: str | os.PathLike[str]) -> None:
        """Restore everything :meth:`save_state` wrote (one generation; every file checked against its checksum)."""
        if not has_state(directory):
            raise FileNotFoundError(f"{directory} has no {STATE_DIR}/: it was not saved with a CorrectorCallback")
        # A save killed mid-swap leaves the previous state under a hidden name; the read falls back to it.
        read_one_generation(Path(directory) / STATE_DIR, self._restore)

    def _restore(self, folder: SavedFolder) -> None:
        meta_file = folder.file(STATE_FILE)
        raw = folder.read_json(STATE_FILE, "corrector state")
        old = isinstance(raw, dict) and "sha256" not in raw  # written by 0.1-0.2: no checksums yet
        meta = check_saved_config(
            raw, meta_file, STATE_FORMAT, _STATE_KEYS, "corrector state", accept_missing_checksums=old
        )
        payloads = {}
        for name in ("corrector_optimizer.pt", "loss_state.pt"):
            if not folder.exists(name):
                continue
            data = folder.read_bytes(name)
            expected = meta.get("sha256", {}).get(name)
            if not old and hashlib.sha256(data).hexdigest() != expected:
                raise ValueError(f"{folder.file(name)} is corrupted: its SHA-256 checksum does not match {meta_file}")
            payloads[name] = data
        with folder.sub("corrector") as inner:
            corrector = corrector_persistence.read_corrector(inner, "cpu", accept_missing_checksums=old)
        store_corrector = self.loss.store.corrector
        if corrector.get_config_dict() != store_corrector.get_config_dict():
            raise ValueError(
                f"The checkpoint's corrector {corrector.get_config_dict()} does not match the store's "
                f"{store_corrector.get_config_dict()}"
            )
        device = store_corrector.device
        store_corrector.load_state_dict({k: v.to(device) for k, v in corrector.state_dict().items()})
        state = torch.load(io.BytesIO(payloads["corrector_optimizer.pt"]), map_location=device, weights_only=True)
        self.loss.corrector_trainer.load_state_dict(
            {
                "corrector": store_corrector.state_dict(),
                "optimizer": state["optimizer"],
                "steps": meta["corrector_steps"],
                **state.get("replay", {}),
            }
        )
        if "loss_state.pt" in payloads:
            self.loss.load_checkpoint_state(
                torch.load(io.BytesIO(payloads["loss_state.pt"]), map_location="cpu", weights_only=True)
            )
        else:  # saved by haystack-corrector 0.1: the sampler's state only
            if "generator" in state:
                self.loss.generator.set_state(state["generator"].cpu())
            getattr(self.loss.source, "stats", {}).update(meta.get("sampler_stats", {}))
            logger.warning(
                "%s was saved by an older version: step counters and the negative source's state start afresh",
                folder.path,
            )
        logger.info("Restored the corrector from %s (after %d corrector steps)", folder.path, meta["corrector_steps"])

    # ----------------------------------------------------------------------------------------------- events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.loss.seed is None and self._restored_step is None:
            self.loss.reseed(args.seed)  # one seed for the run: the trainer's
        if state.global_step > 0 and self._restored_step != state.global_step:
            checkpoint = resumed_checkpoint(args, state.global_step, self.resume_from_checkpoint)
            if has_state(checkpoint):
                self.load_state(checkpoint)
                self._restored_step = state.global_step
            else:
                logger.warning(
                    "Resuming at step %d but %s has no %s/ (saved without CorrectorCallback): the corrector starts "
                    "from its current weights",
                    state.global_step,
                    checkpoint,
                    STATE_DIR,
                )
        self.loss.optimizer_step = state.global_step

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.loss.optimizer_step = state.global_step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            self.save_state(checkpoint)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:
            return
        metrics = {k: round(v, 6) for k, v in self.loss.pop_metrics().items()}
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)
        logger.info("step %d: %s", state.global_step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
