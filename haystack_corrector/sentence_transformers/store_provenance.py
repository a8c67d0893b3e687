"""What built a store: the encoder record ``encode_corpus`` writes, and the loss's check of it against the model.

A store is stale by design: the model it trains keeps changing its weights, and may have been saved and reloaded
under another path. What must not change is the setting that makes the cached rows comparable with the model's
embeddings: the architecture (model type, hidden size, layers, vocabulary), ``max_seq_length``, whether the model
normalises its embeddings and its similarity function (the prompt is recorded, not checked). A mismatch there is
refused (``check_model=False`` to train anyway); a different model name or path is only logged, since a fine-tuned
and reloaded model is the usual case.
"""

from __future__ import annotations

import logging
from typing import Any

from haystack_corrector.sentence_transformers import _compat

logger = logging.getLogger(__name__)

# The entries that must match for the cached rows to be comparable with the model's embeddings.
MUST_MATCH = ("architecture", "max_seq_length", "normalize", "similarity")


def _transformer_config(model: Any) -> Any:
    for module in getattr(model, "_modules", {}).values():
        auto = getattr(module, "auto_model", None) or getattr(module, "model", None)
        if auto is not None and hasattr(auto, "config"):
            return auto.config
    return None


def encoder_record(model: Any, prompt: str | None = None) -> dict[str, Any]:
    """The record of ``model``'s setting that ``encode_corpus`` saves with a store."""
    config = _transformer_config(model)
    architecture = None
    if config is not None:
        parts = [
            getattr(config, name, None) for name in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
        ]
        architecture = "/".join(str(part) for part in parts)
    modules = [type(module).__name__ for module in getattr(model, "_modules", {}).values()]
    similarity = getattr(model, "similarity_fn_name", None)
    return {
        "model": getattr(config, "_name_or_path", None) if config is not None else None,
        "architecture": architecture,
        "max_seq_length": getattr(model, "max_seq_length", None),
        "normalize": "Normalize" in modules,
        "similarity": None if similarity is None else str(similarity),
        "prompt": prompt,
    }


def check_store_matches(store: Any, model: Any, *, enabled: bool = True, prompt: str | None = None) -> None:
    """Refuse a store whose encoder record disagrees with ``model`` on what makes rows comparable (see module)."""
    model_dim = _compat.embedding_dimension(model)
    if model_dim is not None and model_dim != store.dim:
        raise ValueError(f"The store has dimension {store.dim} but the model embeds into dimension {model_dim}")
    recorded = getattr(store, "encoder", None)
    if recorded is None:
        if enabled:
            logger.info(
                "The store has no record of the model that built it (built by an earlier version, or from arrays)"
            )
        return
    current = encoder_record(model, recorded.get("prompt") if prompt is None else prompt)
    differences = [
        f"{key}: store {recorded.get(key)!r}, model {current[key]!r}"
        for key in MUST_MATCH
        if recorded.get(key) is not None and current[key] is not None and recorded.get(key) != current[key]
    ]
    if differences and enabled:
        raise ValueError(
            "The store was built with another encoder setting than the model being trained ("
            + "; ".join(differences)
            + "): its rows are not comparable with the model's embeddings. Rebuild it with encode_corpus(model, ...) "
            "or pass check_model=False if the difference is deliberate"
        )
    if differences:
        logger.warning("Training with a store built another way (check_model=False): %s", "; ".join(differences))
    if recorded.get("model") and current["model"] and recorded["model"] != current["model"]:
        logger.info(
            "The store was encoded by %s and the model was loaded from %s: fine when it is that model fine-tuned",
            recorded["model"],
            current["model"],
        )
