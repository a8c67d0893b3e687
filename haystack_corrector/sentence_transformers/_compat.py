"""One place for the differences between sentence-transformers 5.x and 6.x (module paths moved in 5.4/6.0)."""

from __future__ import annotations

import importlib
from typing import Any

INSTALL_HINT = 'pip install "haystack-corrector[sentence-transformers]"'


def require_sentence_transformers() -> None:
    try:
        importlib.import_module("sentence_transformers")
    except ImportError as exc:
        raise ImportError(
            f"haystack_corrector.sentence_transformers needs sentence-transformers (>= 5). Install it with: {INSTALL_HINT}"
        ) from exc


def _first_attribute(candidates: list[tuple[str, str]]) -> Any:
    errors = []
    for module_name, attribute in candidates:
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module_name}.{attribute}: {exc}")
    raise ImportError("Unsupported sentence-transformers version; tried " + "; ".join(errors))


def multiple_negatives_ranking_loss() -> type:
    return _first_attribute(
        [
            ("sentence_transformers.sentence_transformer.losses", "MultipleNegativesRankingLoss"),
            ("sentence_transformers.losses", "MultipleNegativesRankingLoss"),
        ]
    )


def embed_columns(model: Any, features: list[dict[str, Any]]) -> list[Any]:
    """Embed each feature column as the stock losses do (merged forwards on 6.x, one forward per column on 5.x)."""
    try:
        from sentence_transformers.base.losses.merged_forward import embed_columns as merged
    except ImportError:
        return [model(f)["sentence_embedding"] for f in features]
    return merged(model, features)


def preprocess(model: Any, texts: list[str], **kwargs: Any) -> dict[str, Any]:
    """Tokenise texts for a forward pass: ``model.preprocess`` (6.x) or ``model.tokenize`` (5.x)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if hasattr(model, "preprocess"):
        return model.preprocess(texts, **kwargs)
    if "prompt" in kwargs:
        texts = [kwargs.pop("prompt") + text for text in texts]
    return model.tokenize(texts, **kwargs)


def embedding_dimension(model: Any) -> int | None:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, name):
            return getattr(model, name)()
    return None


def similarity_functions() -> tuple[Any, Any]:
    util = importlib.import_module("sentence_transformers.util")
    return util.cos_sim, util.dot_score


def trainer_callback_base() -> type:
    return _first_attribute([("transformers", "TrainerCallback")])
