"""The ``--output`` folder of the demo, the experiments and the fidelity run: ours to write, never anyone else's.

:class:`OutputFolder` is what both experiment tasks (contrastive and latent) run in: claimed, its config and resume
rule, atomic JSON, the initial cache, and one result file per finished (arm, seed).


A folder is claimed for results when it does not exist, is empty, or already holds results of ours (the marker
file, or the ``config.json`` of an earlier experiment). Any other folder is refused before anything is written, so
a mistyped ``--output ~/data`` cannot mix our files into, or delete from, a user's folder. Clearing a folder
(``demo --fresh``) removes only the entries the harness writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from haystack_corrector.corrector import Corrector

logger = logging.getLogger(__name__)

MARKER_FILE = ".haystack-corrector-output.json"
MARKER_FORMAT = "haystack-corrector/experiment-output"
# Every top-level entry the harness, the report and the fidelity run write.
OUTPUT_ENTRIES = frozenset(
    {
        MARKER_FILE,
        "config.json",
        "initial-cache",
        "zero_shot.json",
        "arms",
        "work",
        "results.json",
        "results.md",
        "quality_vs_encodes.png",
        "drift.png",
        "fidelity.json",
        "fidelity.md",
        "run.log",
        "logs",
        "models",
        "embeddings",
    }
)


def _is_results_folder(folder: Path) -> bool:
    marker = folder / MARKER_FILE
    if marker.is_file():
        try:
            return json.loads(marker.read_text()).get("format") == MARKER_FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    config = folder / "config.json"  # results written before the marker existed
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and {"data", "arms", "seeds", "output"} <= set(data)
    return False


def claim_output_folder(path: str | os.PathLike[str]) -> Path:
    """Create or accept ``path`` as a results folder; :class:`FileExistsError` if it holds anything else."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output {folder} is a file; give a folder for the results")
    if folder.is_dir() and any(folder.iterdir()) and not _is_results_folder(folder):
        first = sorted(os.listdir(folder))[0]
        raise FileExistsError(
            f"Refusing to write results into {folder}: it holds {first!r} and no results of haystack-corrector. "
            "Choose a new or empty --output folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER_FILE
    if not marker.is_file():
        tmp = folder / (MARKER_FILE + ".tmp")
        tmp.write_text(json.dumps({"format": MARKER_FORMAT}))
        os.replace(tmp, marker)
    return folder


def clear_output_folder(path: str | os.PathLike[str]) -> None:
    """Remove the harness' own entries from a results folder (``demo --fresh``); everything else stays."""
    folder = Path(path)
    if not folder.exists():
        return
    claim_output_folder(folder)  # refuses a folder that is not ours
    kept = []
    for name in sorted(os.listdir(folder)):
        entry = folder / name
        if name not in OUTPUT_ENTRIES:
            kept.append(name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if kept:
        logger.info("Kept %d entries of %s that the demo did not write (first: %s)", len(kept), folder, kept[0])


class OutputFolder:
    """A claimed ``--output`` folder of an experiment, whichever task runs in it (contrastive or latent).

    It holds the run's ``config.json`` and the rule for resuming into it, the one initial cache and the zero-shot
    figures every arm shares, and one JSON per finished (arm, seed) under ``arms/``, each written atomically as soon
    as it exists, so a killed run resumes with the next (arm, seed) and never redoes a finished one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Absolute, so that the paths it hands out (arm_file, ...) can be given back to write_json from any cwd.
        self.path = claim_output_folder(path).absolute()  # refuses a folder that holds anything but our results

    @property
    def initial_cache(self) -> Path:
        return self.path / "initial-cache"

    @property
    def zero_shot_file(self) -> Path:
        return self.path / "zero_shot.json"

    def write_json(self, path: str | os.PathLike[str], data: Any) -> Path:
        """Write ``data`` as JSON to ``path`` (relative to the folder, or absolute) atomically; returns the path."""
        target = self.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, target)
        return target

    def check_resumable(
        self,
        settings: dict[str, Any],
        defaults: dict[str, Any],
        resumable: Iterable[str],
        renamed: dict[str, str] | None = None,
    ) -> None:
        """Refuse to add arms to this folder when its finished arms were run with other settings.

        ``settings`` are this run's (JSON types), ``defaults`` the task's defaults: a setting missing from an older
        folder's ``config.json`` did not exist yet, so it was at its default. Only the ``resumable`` settings (what
        is run, and how it is logged) may differ. ``renamed`` maps old setting names to new ones.
        """
        path = self.path / "config.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        for old, new in (renamed or {}).items():
            if old in saved and new not in saved:
                saved[new] = saved.pop(old)
        saved = {key: saved.get(key, defaults.get(key)) for key in set(saved) | set(settings)}
        allowed = set(resumable)
        changed = sorted(key for key in settings if key not in allowed and saved[key] != settings[key])
        if changed:
            details = ", ".join(f"{key}: {saved[key]!r} there, {settings[key]!r} now" for key in changed)
            raise ValueError(
                f"{self.path} holds arms run with other settings ({details}). "
                "Use the same settings to resume, or a new --output folder."
            )

    def arm_file(self, slug: str, seed: int) -> Path:
        """Where the result of one (arm, seed) is kept (``slug``: the arm's name made a file name)."""
        return self.path / "arms" / f"{slug}__seed{seed}.json"

    def arm_folder(self, kind: str, slug: str, seed: int) -> Path:
        """A per-(arm, seed) folder or file stem under ``kind`` (``work``, ``logs``, ``models``, ``embeddings``)."""
        return self.path / kind / f"{slug}__seed{seed}"

    def keep_embeddings(
        self, slug: str, seed: int, documents: torch.Tensor, queries: torch.Tensor, corrector: Corrector
    ) -> Path:
        """An arm's end state for offline analysis, in ``embeddings/<arm>__seed<N>/``: fresh document embeddings
        (float16, corpus order), fresh evaluation query embeddings (float32, query order) and the corrector as
        training left it."""
        folder = self.arm_folder("embeddings", slug, seed)
        folder.mkdir(parents=True, exist_ok=True)
        for name, matrix in (("documents.npy", documents.half()), ("queries.npy", queries.float())):
            tmp = folder / (name + ".tmp.npy")
            np.save(tmp, matrix.numpy())
            os.replace(tmp, folder / name)
        corrector.save(folder / "corrector", overwrite=True)
        return folder

    def finished_seeds(self, slug: str) -> list[int]:
        """Seeds of the arm ``slug`` already finished here (runs of earlier calls included)."""
        seeds = []
        for path in (self.path / "arms").glob(f"{slug}__seed*.json"):
            suffix = path.stem.rpartition("__seed")[2]
            if suffix.lstrip("-").isdigit():
                seeds.append(int(suffix))
        return sorted(seeds)
