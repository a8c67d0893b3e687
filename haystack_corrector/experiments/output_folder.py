"""The ``--output`` folder of the demo, the experiment and the fidelity run: ours to write, never anyone else's.

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
from pathlib import Path

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
