"""Saved correctors as the components use them: loading one, and a fingerprint recorded in document meta."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from haystack_integrations.common.corrector.documents import CORRECTOR_META  # noqa: F401  (the fingerprint of its weights)

from haystack_corrector import Corrector

# Meta keys recording which corrector produced a document's embedding (flat strings: every store keeps them).
CORRECTOR_PATH_META = "corrector_path"


def load_corrector(corrector_path: str | None) -> Corrector | None:
    if corrector_path is None:
        return None
    return Corrector.load(corrector_path)


def pinned_fingerprint(corrector_path: Any, expected: str | None, *, loading: bool = False) -> str | None:
    """The fingerprint a component records beside its ``corrector_path`` (None without a corrector).

    ``corrector_path`` must be None or a non-empty path; ``expected`` (what a saved pipeline recorded) must match the
    corrector found there now, so a YAML pointing at another corrector, or a re-fit into the same folder, is refused
    instead of silently changing rankings. Before ``loading`` (at ``__init__``) a folder that does not exist yet (a
    fitter earlier in the pipeline writes it) is accepted and checked again at ``warm_up``.
    """
    if corrector_path is None:
        if expected is not None:
            raise ValueError(f"corrector_fingerprint={expected!r} was given without a corrector_path")
        return None
    if not isinstance(corrector_path, (str, os.PathLike)) or not str(corrector_path).strip():
        raise TypeError(f"corrector_path must be a folder path (a non-empty string) or None, got {corrector_path!r}")
    weights = Path(corrector_path) / "corrector.safetensors"
    if not weights.is_file():
        if not loading:
            return expected
        raise FileNotFoundError(f"corrector_path {corrector_path} holds no saved corrector (no {weights.name})")
    actual = corrector_fingerprint(str(corrector_path))
    if expected is not None and expected != actual:
        raise ValueError(
            f"The corrector at {corrector_path} has fingerprint {actual}, but this component was saved with "
            f"{expected}: the folder now holds another corrector. Re-export the pipeline to use it"
        )
    return actual


def corrector_fingerprint(corrector_path: str) -> str:
    """Short SHA-256 of a saved corrector's weights, recorded in document meta."""
    weights = Path(corrector_path) / "corrector.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
