"""What a person sees while the harness runs: one progress bar per arm, a few lines at arm boundaries, logs in a file.

- :class:`ArmProgress` (a trainer callback): one bar per arm over its training steps, with the current loss and
  corrector error in the postfix; every trainer log record goes to ``<output>/logs/<arm>__seed<N>.jsonl``.
- :func:`run_log`: while a run lasts, every INFO record of every library goes to ``<output>/run.log``.
- ``progress`` (the ``haystack_corrector.progress`` logger) carries the lines that reach the console at arm
  boundaries; with ``verbose`` off the CLI shows only those and warnings (:func:`console_filter`).

Imported lazily by the harness (it needs transformers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

PROGRESS_LOGGER = "haystack_corrector.progress"
progress = logging.getLogger(PROGRESS_LOGGER)


class ArmProgress(TrainerCallback):  # type: ignore[misc]
    """One tqdm bar for one arm's training; the trainer's log records go to a JSON-lines file instead of the console."""

    def __init__(self, label: str, log_file: str | Path, enabled: bool = True) -> None:
        self.label = label
        self.log_file = Path(log_file)
        self.enabled = enabled
        self._bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc=self.label, unit="step", disable=not self.enabled
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        with self.log_file.open("a") as handle:
            handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        postfix = {}
        if "loss" in logs:
            postfix["loss"] = f"{logs['loss']:.3f}"
        if "corrector/corrected_error" in logs:
            postfix["corr.err"] = f"{logs['corrector/corrected_error']:.4f}"
        if postfix and self._bar is not None:
            self._bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def console_filter(record: logging.LogRecord) -> bool:
    """The console's share of the log without ``--verbose``: warnings, and the harness' arm-boundary lines."""
    return record.levelno >= logging.WARNING or record.name == PROGRESS_LOGGER


@contextmanager
def run_log(output: str | Path) -> Iterator[Path]:
    """Copy every INFO (and higher) record that reaches the root logger to ``<output>/run.log`` while the block runs.

    (Loggers the CLI quietens, e.g. ``transformers``, stay quiet: ``--verbose`` shows them.)
    """
    path = Path(output) / "run.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous_level)
