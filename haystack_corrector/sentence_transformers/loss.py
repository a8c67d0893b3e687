"""CorrectedMultipleNegativesRankingLoss: InfoNCE with hard negatives sampled from a corrected stale cache."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from haystack_corrector import drift_losses
from haystack_corrector._validation import check_bool, check_choice, check_non_negative_int, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.distinct_texts import distinct_texts, encode_distinct
from haystack_corrector.distributed import ShardedCacheStore, is_distributed
from haystack_corrector.evaluation import relative_error
from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.scoring import similarity_scores
from haystack_corrector.sentence_transformers import _compat
from haystack_corrector.sentence_transformers.training_data import COLUMNS, decode_label
from haystack_corrector.trainer import CorrectorTrainer

logger = logging.getLogger(__name__)

NEGATIVE_MODES = ("corrector", "stale", "inbatch", "static", "refresh", "rerank")  # the arm names of the harness

CITATION = """
@inproceedings{monath2024fresh,
    title = {A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks},
    author = {Monath, Nicholas and Grathwohl, Will and Boratko, Michael and Fergus, Rob and McCallum, Andrew and Zaheer, Manzil},
    booktitle = {Proceedings of the 41st International Conference on Machine Learning},
    year = {2024},
    url = {https://arxiv.org/abs/2409.01890},
}
"""


class CorrectedMultipleNegativesRankingLoss(nn.Module):
    """MultipleNegativesRankingLoss whose hard negatives are sampled, every step, from a corrected stale cache.

    Each forward pass: embeds anchors and positives with the current model; samples ``num_negatives`` rows per anchor
    from ``store`` by the corrected scores <q, h(g')> (no gradient), never a relevant row of that anchor's query;
    embeds the sampled negatives' texts with the current model (with gradient); computes InfoNCE over positives,
    in-batch targets and sampled negatives (exactly sentence-transformers' ``MultipleNegativesRankingLoss``); then
    takes one corrector step on the drift loss between h(g') and the fresh, detached embeddings of every target it
    just embedded (positives and negatives). Only the corrector receives the drift gradient, through its own optimiser.

    Args:
        model: the SentenceTransformer being trained.
        store: the stale cache (e.g. from :func:`encode_corpus`); it must hold texts.
        train_dataset: the dataset from :func:`build_training_dataset` (its labels identify rows and queries).
        num_negatives: hard negatives sampled per anchor.
        negatives: where the hard negatives come from —
            ``"corrector"`` (the paper: sampled from the corrected cache every step);
            ``"stale"`` (same sampling from the raw cache, the ablation);
            ``"inbatch"`` (in-batch negatives only: equals ``MultipleNegativesRankingLoss``);
            ``"static"`` (mined once from the initial cache with the initial model, before training, and reused:
            the ``mine_hard_negatives`` baseline);
            ``"refresh"`` (sampled from the raw cache, which is re-encoded with the current model every
            ``refresh_every`` training steps: ANCE-style, the quality reference);
            ``"rerank"`` (the ``rerank_depth`` best rows of the raw cache are re-encoded with the current model
            without gradient and the negatives are the best of them by fresh score: Atlas-style).
            In every mode the corrector keeps learning from the targets embedded each step, so drift is measured.
        scale: inverse temperature of the InfoNCE softmax (as in MNRL).
        similarity_fct: similarity of the InfoNCE; default follows the store (``cos_sim`` or ``dot_score``).
        strategy, temperature, range_min, range_max, absolute_margin, relative_margin, max_score, seed,
            max_view_age: passed to :class:`~haystack_corrector.HardNegativeSampler` under the same names
            (``max_view_age=K`` samples from a materialised corrected view refreshed every K corrector steps).
        exclude_text_copies: never sample a row whose text is identical to one of the query's positives (default
            True): corpora with duplicate documents otherwise yield copies of the positive as its hardest
            "negatives". Applies to every mode that samples (static, stale, corrected, refresh, rerank).
        corrector_lr: learning rate of the corrector's own optimiser.
        drift_loss: ``"mse"`` (the paper's) or ``"cosine"``.
        listwise_weight, score_weight, drift_temperature: ranking-aware drift terms using the batch's anchors
            (see :class:`~haystack_corrector.CorrectorTrainer`).
        corrector_warmup_steps: for this many first training steps, sample from the stale cache while the corrector
            learns (the warm-up DESIGN.md allows); ``"corrector"`` sampling starts afterwards.
        negative_prompt: prompt to prepend to sampled negative texts, if the positive column is trained with one.
        refresh_every: training steps between full corpus re-encodes: needed by ``negatives="refresh"``, and
            allowed with ``negatives="corrector"`` (the hybrid budget: the corrector between rare refreshes; after each
            refresh the new cache is its stale input).
        replay_size, replay_steps: replay for the corrector (:mod:`haystack_corrector.replay`): keep the latest fresh
            embedding of up to ``replay_size`` rows and take ``replay_steps`` extra corrector steps per training
            step on samples of them (no extra encoder pass). Default 0: one corrector step per training step.
        corrector_after_refresh: with ``negatives="corrector"`` and ``refresh_every``, what the corrector does after a
            refresh: ``"keep"`` (keeps its weights and optimiser; default) or ``"reset"`` (back to the identity, with
            a fresh optimiser, since the fresh cache needs no correction yet).
        rerank_depth: for ``negatives="rerank"``, candidates re-scored with the current model per anchor.
        encode_batch_size: batch size of the no-gradient encodes (static mining, refreshes, re-ranking).
        sharded: under DDP (``torchrun``; an initialised torch.distributed group of several processes), sample from
            the global cache through :class:`~haystack_corrector.distributed.ShardedCacheStore`: each rank scans
            only its shard, every rank keeps the same corrector (gradients averaged over ranks). ``None`` (default):
            switch to it at the first forward pass when a group of several processes is running; ``False``: each
            rank searches its own full copy with its own corrector. (The ``refresh`` baseline then re-encodes the
            whole corpus on every rank.)

    References:
        Monath et al., "A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks",
        ICML 2024. https://arxiv.org/abs/2409.01890

    Requirements:
        1. (anchor, positive) pairs with a ``label`` column made by :func:`build_training_dataset`.
        2. A :class:`~haystack_corrector.CorrectedCacheStore` of the corpus, with texts.

    Inputs:
        +------------------------------------------+-----------------------------------------------+
        | Texts                                    | Labels                                        |
        +==========================================+===============================================+
        | (anchor, positive) pairs                 | row/query id from ``build_training_dataset``  |
        +------------------------------------------+-----------------------------------------------+

    Recommendations:
        - Add :class:`CorrectorCallback` to the trainer: it checkpoints the corrector and logs drift metrics.
        - Use ``BatchSamplers.NO_DUPLICATES`` so a query does not meet its own other positives as in-batch negatives.

    Relations:
        - ``negatives="inbatch"`` is ``MultipleNegativesRankingLoss`` on the same pairs.
        - ``MultipleNegativesRankingLoss`` on (anchor, positive, negative_1..k) columns mined once with
          ``mine_hard_negatives`` is the static-negatives baseline; this loss re-samples them every step.

    Example:
        ::

            from haystack_corrector.sentence_transformers import (
                CorrectedMultipleNegativesRankingLoss, CorrectorCallback, build_training_dataset, encode_corpus)

            store = encode_corpus(model, corpus_texts, ids=corpus_ids)
            train_ds = build_training_dataset(queries, corpus, qrels, store)
            loss = CorrectedMultipleNegativesRankingLoss(model, store, train_ds, num_negatives=4)
            trainer = SentenceTransformerTrainer(model=model, train_dataset=train_ds, loss=loss,
                                                 callbacks=[CorrectorCallback(loss)])
            trainer.train()
    """

    def __init__(
        self,
        model: Any,
        store: CorrectedCacheStore,
        train_dataset: Any,
        num_negatives: int = 4,
        negatives: str = "corrector",
        scale: float = 20.0,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] | None = None,
        strategy: str = "top",
        temperature: float = 0.05,
        range_min: int = 0,
        range_max: int | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        seed: int | None = None,
        max_view_age: int | None = None,
        exclude_text_copies: bool = True,
        corrector_lr: float = 1e-3,
        drift_loss: str = "mse",
        listwise_weight: float = 0.0,
        score_weight: float = 0.0,
        drift_temperature: float = 0.05,
        corrector_warmup_steps: int = 0,
        negative_prompt: str | None = None,
        refresh_every: int | None = None,
        corrector_after_refresh: str = "keep",
        replay_size: int = 0,
        replay_steps: int = 0,
        rerank_depth: int = 100,
        encode_batch_size: int = 64,
        sharded: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        check_choice(negatives, "negatives", NEGATIVE_MODES)
        check_non_negative_int(corrector_warmup_steps, "corrector_warmup_steps")
        check_bool(exclude_text_copies, "exclude_text_copies")
        self.model = model
        # The store is a plain object, so its corrector is NOT a registered submodule: the trainer's optimiser must
        # not see the corrector's parameters, which only the drift loss trains, through their own optimiser.
        self.store = store
        self.num_negatives = num_negatives
        self.negatives = negatives
        self.scale = scale
        self.corrector_warmup_steps = corrector_warmup_steps
        self.negative_prompt = negative_prompt
        if negatives == "refresh" and refresh_every is None:
            raise ValueError("negatives='refresh' needs refresh_every (training steps between corpus re-encodes)")
        if refresh_every is not None:
            check_positive_int(refresh_every, "refresh_every")
            if negatives not in ("refresh", "corrector"):
                raise ValueError(f"refresh_every applies to negatives='refresh' or 'corrector', not {negatives!r}")
        self.corrector_after_refresh = check_choice(
            corrector_after_refresh, "corrector_after_refresh", ("keep", "reset")
        )
        if check_positive_int(rerank_depth, "rerank_depth") < num_negatives:
            raise ValueError(f"rerank_depth must be >= num_negatives ({num_negatives}), got {rerank_depth!r}")
        self.refresh_every = refresh_every
        self.rerank_depth = rerank_depth
        check_bool(sharded, "sharded", optional=True)
        self.sharded = sharded
        self.encode_batch_size = encode_batch_size
        # Cost accounting for comparisons between negative strategies.
        self.corpus_encodes = 0  # full passes over the corpus after the initial cache
        self.target_forward_passes = 0  # target texts run through the model (with or without gradient)
        self._last_refresh = -1
        self.touched_rows: set[int] = set()  # every row whose fresh embedding trained the corrector
        model_dim = _compat.embedding_dimension(model)
        if model_dim is not None and model_dim != store.dim:
            raise ValueError(f"The store has dimension {store.dim} but the model embeds into dimension {model_dim}")
        if store.texts is None:
            raise ValueError(
                "The store has no texts, so sampled negatives cannot be re-encoded: build it with encode_corpus, "
                "or pass it through build_training_dataset with the corpus"
            )
        cos_sim, dot_score = _compat.similarity_functions()
        if similarity_fct is None:
            similarity_fct = cos_sim if store.similarity == "cosine" else dot_score
        self.similarity_fct = similarity_fct
        mnrl_class = _compat.multiple_negatives_ranking_loss()
        # The InfoNCE itself is sentence-transformers' own implementation, fed with our embeddings.
        self._infonce = mnrl_class(model, scale=scale, similarity_fct=similarity_fct)
        self.sampler = HardNegativeSampler(
            store,
            num_negatives=num_negatives,
            strategy=strategy,
            temperature=temperature,
            range_min=range_min,
            range_max=range_max,
            absolute_margin=absolute_margin,
            relative_margin=relative_margin,
            max_score=max_score,
            corrected=negatives == "corrector",
            seed=seed,
            max_view_age=max_view_age,
            # The loss expands each query's relevant rows with their copies once, below, and hands the sampler
            # the expanded sets: the sampler need not look the copies up again at every step.
            exclude_text_copies=False,
        )
        self.exclude_text_copies = exclude_text_copies
        self._static_table: dict[int, list[int]] | None = None
        self.corrector_trainer = CorrectorTrainer(
            store,
            lr=corrector_lr,
            loss=drift_loss,
            listwise_weight=listwise_weight,
            score_weight=score_weight,
            temperature=drift_temperature,
            replay_size=replay_size,
            replay_steps=replay_steps,
            seed=seed,
        )
        self._relevant = self._read_dataset(train_dataset, store)
        if exclude_text_copies:
            # A copy of a positive (same text, another id) is relevant too: it must never be a hard negative.
            self._relevant = {query: store.with_text_copies(rows) for query, rows in self._relevant.items()}
        most_relevant = max(len(rows) for rows in self._relevant.values())
        if negatives != "inbatch" and num_negatives > len(store) - most_relevant:
            raise ValueError(
                f"num_negatives={num_negatives} is larger than the corpus minus the positives "
                f"({len(store)} rows, up to {most_relevant} relevant to one query)"
            )
        self.training_steps = 0
        self.reset_metrics()
        if negatives == "static":
            self._static_table = self._mine_static(train_dataset)

    # ------------------------------------------------------------------------------------------------- dataset
    @staticmethod
    def _read_dataset(train_dataset: Any, store: CorrectedCacheStore) -> dict[int, set[int]]:
        columns = list(getattr(train_dataset, "column_names", []) or [])
        if columns[:3] != list(COLUMNS):
            raise ValueError(
                f"train_dataset must have the columns {list(COLUMNS)} (in that order) made by build_training_dataset, "
                f"got {columns}"
            )
        num_rows = len(store)
        texts = store.texts or []
        relevant: dict[int, set[int]] = {}
        for position, (label, positive) in enumerate(zip(train_dataset["label"], train_dataset["positive"])):
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise ValueError(
                    f"train_dataset label {label!r} (row {position}) was not made by build_training_dataset"
                )
            query, row = decode_label(label, num_rows)
            if texts[row] != positive:
                raise ValueError(
                    f"train_dataset row {position}: its label points at store row {row}, whose text differs from the "
                    "positive: the dataset was built for another store (rebuild it with build_training_dataset)"
                )
            relevant.setdefault(query, set()).add(row)
        if not relevant:
            raise ValueError("train_dataset is empty")
        return relevant

    # ------------------------------------------------------------------------------------------------- forward
    def _decode(self, labels: Tensor | None, batch_size: int) -> tuple[list[int], list[set[int]]]:
        if labels is None:
            raise ValueError("CorrectedMultipleNegativesRankingLoss needs the 'label' column of build_training_dataset")
        values = labels.reshape(-1).tolist()
        if len(values) != batch_size:
            raise ValueError(f"Got {len(values)} labels for {batch_size} anchors")
        rows, positives = [], []
        for value in values:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"Label {value!r} was not made by build_training_dataset")
            query, row = decode_label(int(value), len(self.store))
            if query not in self._relevant or row not in self._relevant[query]:
                raise ValueError(
                    f"Label {int(value)} was not made by build_training_dataset for this loss's train_dataset"
                )
            rows.append(row)
            positives.append(self._relevant[query])
        return rows, positives

    def _embed_texts(self, texts: list[str], like: dict[str, Any]) -> Tensor:
        device = next(self.model.parameters()).device
        features = _compat.preprocess(self.model, texts, prompt=self.negative_prompt, task=like.get("task"))
        features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    @property
    def sampling_corrected(self) -> bool:
        return self.negatives == "corrector" and self.training_steps >= self.corrector_warmup_steps

    def _distribute(self) -> None:
        """Switch to sharded sampling under DDP (once, at the first forward pass, when every rank is running)."""
        if isinstance(self.store, ShardedCacheStore) or self.sharded is False:
            return
        if not is_distributed():
            if self.sharded:
                raise RuntimeError("sharded=True needs an initialised torch.distributed group of several processes")
            return
        self.store = ShardedCacheStore(self.store)
        self.sampler.store = self.store
        self.corrector_trainer.store = self.store
        logger.info("Sampling through sharded search: %r", self.store)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> dict[str, Tensor]:
        self._distribute()
        features = list(sentence_features)
        if len(features) != 2:
            raise ValueError(
                f"Expected 2 text columns (anchor, positive) besides 'label', got {len(features)}: use the dataset "
                "from build_training_dataset"
            )
        anchors, positives = _compat.embed_columns(self.model, features)
        positive_rows, relevant = self._decode(labels, anchors.shape[0])
        embeddings = [anchors, positives]
        target_rows = torch.tensor(positive_rows, dtype=torch.int64)
        fresh_targets = positives
        if self.negatives != "inbatch":
            negative_rows = self._negative_rows(anchors.detach().float().cpu(), relevant, labels, features[1])
            texts = self.store.texts or []
            # Column-major (all first negatives, then all second negatives, ...) as MNRL's negative_i columns.
            order = negative_rows.T.reshape(-1)
            negative_embeddings = self._embed_texts([texts[row] for row in order.tolist()], features[1])
            self.target_forward_passes += order.numel()
            embeddings += list(negative_embeddings.reshape(self.num_negatives, anchors.shape[0], -1).unbind(0))
            target_rows = torch.cat([target_rows, order])
            fresh_targets = torch.cat([positives, negative_embeddings])
        self.target_forward_passes += positives.shape[0]
        infonce = self._infonce.compute_loss_from_embeddings(embeddings, labels)
        drift = self._drift(target_rows, fresh_targets.detach().float(), anchors.detach().float())
        return {"infonce": infonce, "drift": torch.tensor(drift, device=infonce.device, dtype=infonce.dtype)}

    # ------------------------------------------------------------------------------------- negative sources
    def _negative_rows(
        self, anchors: Tensor, relevant: list[set[int]], labels: Tensor | None, like: dict[str, Any]
    ) -> Tensor:
        if self.negatives == "static":
            table = self._static_table or {}
            return torch.tensor([table[int(label)] for label in labels.reshape(-1).tolist()], dtype=torch.int64)  # type: ignore[union-attr]
        if self.refresh_every and self._is_training() and self.training_steps > 0:
            if (
                self.refresh_every
                and self.training_steps % self.refresh_every == 0
                and self._last_refresh != self.training_steps
            ):
                self._refresh_cache()
        if self.negatives == "rerank":
            return self._rerank(anchors, relevant, like)
        self.sampler.corrected = self.sampling_corrected
        with torch.no_grad():
            return self.sampler.sample(anchors, relevant)

    @property
    def _unwrapped_model(self) -> Any:
        """The SentenceTransformer itself (the trainer swaps in its DDP wrapper, which has no ``encode``)."""
        return getattr(self.model, "module", self.model)

    def _is_training(self) -> bool:
        return bool(self.model.training) and torch.is_grad_enabled()

    def _encode_no_grad(self, texts: list[str]) -> Tensor:
        was_training = self.model.training
        kwargs: dict[str, Any] = {
            "batch_size": self.encode_batch_size,
            "convert_to_tensor": True,
            "show_progress_bar": False,
        }
        if self.negative_prompt is not None:
            kwargs["prompt"] = self.negative_prompt
        try:
            with torch.no_grad():
                embeddings = self._unwrapped_model.encode(texts, **kwargs)
        finally:
            self.model.train(was_training)
        return embeddings.detach().float().cpu()

    def _refresh_cache(self) -> None:
        logger.info("Re-encoding the corpus (%d texts) at training step %d", len(self.store), self.training_steps)
        texts = list(self.store.texts or [])
        self.store.replace_embeddings(encode_distinct(texts, self._encode_no_grad))
        self.corpus_encodes += 1
        self.target_forward_passes += len(distinct_texts(texts)[0])  # each distinct text is encoded once
        if self.negatives == "corrector" and self.corrector_after_refresh == "reset":
            self.store.corrector.reset_to_identity()  # the new cache is fresh: nothing to correct yet
            self.corrector_trainer.reset_optimizer()
        self._last_refresh = self.training_steps

    def _rerank(self, anchors: Tensor, relevant: list[set[int]], like: dict[str, Any]) -> Tensor:
        depth = min(self.rerank_depth, len(self.store) - max(len(r) for r in relevant))
        _, candidates = self.store.search(anchors, depth, exclude=relevant, corrected=False)
        texts = self.store.texts or []
        flat = candidates.reshape(-1)
        fresh = self._encode_no_grad([texts[row] for row in flat.tolist()]).reshape(candidates.shape[0], depth, -1)
        self.target_forward_passes += flat.numel()
        scores = similarity_scores(anchors, fresh, normalize=self.store.similarity == "cosine")
        order = torch.argsort(scores, dim=1, descending=True)[
            :, self.sampler.range_min : self.sampler.range_min + self.num_negatives
        ]
        if order.shape[1] < self.num_negatives:
            order = torch.argsort(scores, dim=1, descending=True)[:, : self.num_negatives]
        return torch.gather(candidates, 1, order)

    def _mine_static(self, train_dataset: Any) -> dict[int, list[int]]:
        """Negatives for every training row, mined once from the initial cache with the initial model."""
        labels = list(train_dataset["label"])
        anchors = list(train_dataset["anchor"])
        was_training = self.model.training
        try:
            with torch.no_grad():
                embeddings = (
                    self._unwrapped_model.encode(
                        anchors, batch_size=self.encode_batch_size, convert_to_tensor=True, show_progress_bar=False
                    )
                    .detach()
                    .float()
                    .cpu()
                )
        finally:
            self.model.train(was_training)
        self.sampler.corrected = False
        table: dict[int, list[int]] = {}
        for start in range(0, len(labels), 256):
            chunk = labels[start : start + 256]
            relevant = [self._relevant[decode_label(label, len(self.store))[0]] for label in chunk]
            rows = self.sampler.sample(embeddings[start : start + 256], relevant)
            table.update({label: row for label, row in zip(chunk, rows.tolist())})
        logger.info("Mined %d static negatives per row for %d training rows", self.num_negatives, len(table))
        return table

    def _drift(self, rows: Tensor, fresh: Tensor, queries: Tensor) -> float:
        if self._is_training():
            metrics = self.corrector_trainer.observe(rows, fresh, query_embeddings=queries)
            self.touched_rows.update(rows.tolist())
            self.training_steps += 1
        else:
            with torch.no_grad():
                corrector = self.store.corrector
                device = next(corrector.parameters()).device
                stale = self.store.stale_embeddings(rows).to(device)
                side = self.store.side_features(rows)
                corrected = corrector(stale, None if side is None else side.to(device))
                fresh = fresh.to(device)
                metrics = {
                    "drift_loss": float(drift_losses.drift_loss(self.corrector_trainer.loss, corrected, fresh)),
                    "staleness": relative_error(stale, fresh),
                    "corrected_error": relative_error(corrected, fresh),
                }
            return metrics["drift_loss"]
        for key in ("drift_loss", "staleness", "corrected_error"):
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + metrics[key]
        self._metric_count += 1
        return metrics["drift_loss"]

    # ------------------------------------------------------------------------------------------------ metrics
    def reset_metrics(self) -> None:
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    def pop_metrics(self) -> dict[str, float]:
        """Mean drift metrics since the last call (training steps only), plus the sampler's fallback counters."""
        metrics = (
            {f"corrector/{k}": v / self._metric_count for k, v in self._metric_sums.items()}
            if self._metric_count
            else {}
        )
        metrics["corrector/filled_negatives"] = float(self.sampler.stats["filled_negatives"])
        metrics["corrector/filled_queries"] = float(self.sampler.stats["filled_queries"])
        metrics["corrector/corpus_encodes"] = float(self.corpus_encodes)
        metrics["corrector/target_forward_passes"] = float(self.target_forward_passes)
        self.reset_metrics()
        return metrics

    # ----------------------------------------------------------------------------------------- model card
    def get_config_dict(self) -> dict[str, Any]:
        return {
            "num_negatives": self.num_negatives,
            "negatives": self.negatives,
            "scale": self.scale,
            "similarity_fct": getattr(self.similarity_fct, "__name__", str(self.similarity_fct)),
            **{k: v for k, v in self.sampler.get_config_dict().items() if k not in ("num_negatives", "corrected")},
            "exclude_text_copies": self.exclude_text_copies,
            "corrector_lr": self.corrector_trainer.lr,
            "drift_loss": self.corrector_trainer.loss,
            "listwise_weight": self.corrector_trainer.listwise_weight,
            "score_weight": self.corrector_trainer.score_weight,
            "drift_temperature": self.corrector_trainer.temperature,
            "corrector": self.store.corrector.get_config_dict(),
            "corrector_warmup_steps": self.corrector_warmup_steps,
            "refresh_every": self.refresh_every,
            "replay_size": self.corrector_trainer.replay_size,
            "replay_steps": self.corrector_trainer.replay_steps,
            "corrector_after_refresh": self.corrector_after_refresh,
            "rerank_depth": self.rerank_depth,
            "sharded": self.sharded,
        }

    @property
    def citation(self) -> str:
        return CITATION
