"""Saved correctors as the components use them: loading one, and a fingerprint recorded in document meta."""

from __future__ import annotations

import hashlib
from pathlib import Path

from haystack_corrector import Corrector

# Meta keys recording which corrector produced a document's embedding (flat strings: every store keeps them).
CORRECTOR_META = "corrector"  # the fingerprint of its weights
CORRECTOR_PATH_META = "corrector_path"


def load_corrector(corrector_path: str | None) -> Corrector | None:
    if corrector_path is None:
        return None
    return Corrector.load(corrector_path)


def corrector_fingerprint(corrector_path: str) -> str:
    """Short SHA-256 of a saved corrector's weights, recorded in document meta."""
    weights = Path(corrector_path) / "corrector.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
