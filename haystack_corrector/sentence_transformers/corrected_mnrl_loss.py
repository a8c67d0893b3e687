"""CorrectedMultipleNegativesRankingLoss: MultipleNegativesRankingLoss with hard negatives from a corrected cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.sentence_transformers import _compat
from haystack_corrector.sentence_transformers.corrected_negatives_loss import CorrectedNegativesLoss


class CorrectedMultipleNegativesRankingLoss(CorrectedNegativesLoss):
    """:class:`CorrectedNegativesLoss` around sentence-transformers' ``MultipleNegativesRankingLoss`` (InfoNCE).

    Args:
        model: the SentenceTransformer being trained.
        store: the stale cache (e.g. from :func:`encode_corpus`); it must hold texts.
        num_negatives: hard negatives per anchor (default 1, the measured setting). By default each is the best by
            fresh score of the corrected cache's ``num_negatives + 2`` best candidates, re-encoded without gradient
            (``negatives="corrector+rerank"``); ``negatives="corrector"`` samples them from the corrected cache with
            no extra encode (the paper's method).
        scale: inverse temperature of the softmax (MNRL's ``scale``).
        similarity_fct: MNRL's similarity; default ``cos_sim``, as ``MultipleNegativesRankingLoss(model)``.
        mnrl_kwargs: more options of ``MultipleNegativesRankingLoss`` (e.g. ``hardness_mode``,
            ``gather_across_devices``), passed through as they are.
        **kwargs: every other option of :class:`CorrectedNegativesLoss` (``train_dataset``, ``negatives``,
            ``range_min``, ``seed``, ``check_model``, ...).

    References:
        Monath et al., "A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks",
        ICML 2024. https://arxiv.org/abs/2409.01890

    Requirements:
        1. (anchor, positive) text columns, optionally existing negative columns and a label column (ignored).
        2. A :class:`~haystack_corrector.CorrectedCacheStore` of the corpus, with texts.

    Inputs:
        +-------------------------------------------------+--------+
        | Texts                                           | Labels |
        +=================================================+========+
        | (anchor, positive) pairs                        | none   |
        +-------------------------------------------------+--------+
        | (anchor, positive, negative_1, ..., negative_n) | none   |
        +-------------------------------------------------+--------+

    Recommendations:
        - Add :class:`CorrectorCallback` to the trainer.
        - Use ``BatchSamplers.NO_DUPLICATES``.

    Relations:
        - ``negatives="inbatch"`` is ``MultipleNegativesRankingLoss`` on the same pairs.

    Example:
        ::

            from datasets import Dataset
            from haystack_corrector.sentence_transformers import (
                CorrectedMultipleNegativesRankingLoss, CorrectorCallback, encode_corpus)

            store = encode_corpus(model, corpus_texts, ids=corpus_ids)
            train_dataset = Dataset.from_dict({"anchor": questions, "positive": answers})
            loss = CorrectedMultipleNegativesRankingLoss(model, store, train_dataset=train_dataset)
            trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss,
                                                 callbacks=[CorrectorCallback(loss)])
            trainer.train()
    """

    def __init__(
        self,
        model: Any,
        store: CorrectedCacheStore,
        num_negatives: int = 1,
        *,
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        mnrl_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        if similarity_fct is None:
            similarity_fct = _compat.similarity_functions()[0]  # cos_sim: MultipleNegativesRankingLoss's default
        mnrl = _compat.multiple_negatives_ranking_loss()(
            model, scale=scale, similarity_fct=similarity_fct, **(mnrl_kwargs or {})
        )
        super().__init__(model, mnrl, store, num_negatives, **kwargs)
        self.scale = scale
        self.similarity_fct = similarity_fct
