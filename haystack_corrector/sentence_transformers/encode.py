"""encode_corpus: the one initial cache of a corpus, encoded with a SentenceTransformer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector

logger = logging.getLogger(__name__)


def encode_corpus(
    model: Any,
    corpus_texts: Sequence[str],
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = True,
    dtype: str = "float32",
    hidden_dim: int | None = None,
    prompt: str | None = None,
) -> CorrectedCacheStore:
    """Encode ``corpus_texts`` with ``model`` into a :class:`CorrectedCacheStore` (texts kept for re-encoding).

    The store's similarity follows the model's (``cosine`` or ``dot``); its corrector is a fresh identity
    ``Corrector(dim, hidden_dim)``.

    Example:
        >>> store = encode_corpus(model, ["doc one", "doc two"], ids=["d1", "d2"])  # doctest: +SKIP
    """
    if isinstance(corpus_texts, str) or not isinstance(corpus_texts, Sequence):
        raise TypeError(f"corpus_texts must be a sequence of strings, got {type(corpus_texts).__name__}")
    texts = list(corpus_texts)
    if not texts:
        raise ValueError("corpus_texts is empty: need at least one text to build a cache")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"corpus_texts[{position}] must be a string, got {type(text).__name__}")
    similarity = getattr(model, "similarity_fn_name", None) or "cosine"
    if similarity == "dot_product":  # sentence-transformers' name
        similarity = "dot"
    if similarity not in ("cosine", "dot"):
        raise ValueError(
            f"The model compares embeddings with {similarity!r}; the corrector cache supports 'cosine' and 'dot'"
        )
    kwargs: dict[str, Any] = {}
    if prompt is not None:
        kwargs["prompt"] = prompt
    with torch.no_grad():
        embeddings = model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            convert_to_numpy=True,
            normalize_embeddings=False,
            **kwargs,
        )
    embeddings = np.asarray(embeddings, dtype=np.float32)
    logger.info("Encoded %d texts into a %s cache of dimension %d", len(texts), similarity, embeddings.shape[1])
    return CorrectedCacheStore(
        embeddings,
        ids=ids,
        corrector=Corrector(embeddings.shape[1], hidden_dim=hidden_dim),
        similarity=similarity,
        dtype=dtype,
        texts=texts,
    )
