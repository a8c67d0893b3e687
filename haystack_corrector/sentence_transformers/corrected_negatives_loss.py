"""CorrectedNegativesLoss: add hard negatives sampled from a corrected stale cache to any sentence-transformers loss."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from haystack_corrector import precision
from haystack_corrector._validation import check_bool, check_choice, check_non_negative_int, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.distributed import ShardedCacheStore, is_distributed
from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.sentence_transformers import _compat
from haystack_corrector.sentence_transformers.captured_embeddings import (
    captured_embeddings,
    served_forward,
    split_columns,
)
from haystack_corrector.sentence_transformers.negatives import (
    Costs,
    NegativeSource,
    RefreshedNegatives,
    RerankedNegatives,
    SampledNegatives,
    StaticNegatives,
)
from haystack_corrector.sentence_transformers.negatives.rerank import rerank_options
from haystack_corrector.sentence_transformers.negatives.source import no_grad_encoder
from haystack_corrector.sentence_transformers.relevance import (
    RelevanceIndex,
    column_prompt,
    each_dataset,
    token_keys,
)
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


class CorrectedNegativesLoss(nn.Module):
    """Wraps a sentence-transformers loss, the way ``MatryoshkaLoss`` does, adding hard negatives from a corrected cache.

    Each training step (the default, corrected re-ranking): embeds the anchors without gradient; takes each anchor's
    ``rerank_depth`` best store rows by the corrected scores <q, h(g')> (3 per negative by default), never a row
    relevant to that anchor (its positives and their text copies, every positive the training dataset pairs with the
    same anchor text, ``relevant``) nor one of the batch's own negative columns; re-encodes those candidates without
    gradient and keeps the ``num_negatives`` best by fresh score; appends their texts as extra negative columns; calls
    the wrapped loss on all columns; then takes one corrector step on the drift loss between h(g') and the fresh
    embeddings of every target the wrapped loss computed (captured from its forward passes: no second encoder pass)
    and of every candidate. The corrector trains only through its own optimiser. ``negatives="corrector"`` samples
    the negatives from the corrected scores directly, with no encode beyond the wrapped loss's own (the paper's
    method, cheaper per step and measurably worse: docs/results.md).

    In evaluation (``model.eval()`` or no gradient: the trainer's ``eval_dataset``) the wrapped loss runs on the
    columns as given: nothing is sampled, the corrector does not move, and ``eval_loss`` is the wrapped loss's value.

    Args:
        model: the SentenceTransformer being trained.
        loss: the wrapped loss; it must accept (anchor, positive, negative_1, ..., negative_n) columns, as
            ``MultipleNegativesRankingLoss``, ``CachedMultipleNegativesRankingLoss``, ``GISTEmbedLoss`` and
            ``CachedGISTEmbedLoss`` do. Its options (``scale``, ``hardness_mode``, ``gather_across_devices``, ...)
            stay its own.
        store: the stale cache (e.g. from :func:`encode_corpus`); it must hold texts.
        num_negatives: negatives sampled per anchor and appended after the dataset's own columns.
        train_dataset: the trainer's training dataset (optional): its anchors' other positives are never sampled
            as their negatives, and the static baseline mines its anchors. Any text columns (anchor, positive[,
            negatives...]) with or without a label/score column.
        relevant: ``{anchor text: [document id, ...]}`` (qrels): more rows never sampled for that anchor.
        negatives: where the hard negatives come from —
            ``"rerank"`` (default: each anchor's ``rerank_depth`` best rows of the corrected cache, or of the raw
            one with ``rerank_candidates="stale"``, re-encoded without gradient; the negatives are the best of them
            by fresh score, and every candidate's fresh embedding also trains the corrector; its cost is
            ``rerank_depth`` no-grad encodes per anchor per step, whatever the corpus size);
            ``"corrector"`` (the paper: sampled from the corrected cache every step, no extra encode);
            ``"stale"`` (same sampling from the raw cache, the ablation);
            ``"inbatch"`` (no sampled negatives: exactly the wrapped loss);
            ``"static"`` (mined once from the initial cache with the initial model: the ``mine_hard_negatives``
            baseline; needs ``train_dataset``);
            ``"refresh"`` (sampled from the raw cache re-encoded with the current model every ``refresh_every``
            optimiser steps: the quality reference).
            In every mode the corrector keeps learning from the targets embedded each step, so drift is measured.
        sampling_strategy, range_min, range_max, max_score, min_score, absolute_margin, relative_margin: as in
            ``mine_hard_negatives`` (see :class:`~haystack_corrector.HardNegativeSampler`); ``sampling_strategy`` also
            takes ``"gumbel"`` (sample from softmax(score / ``temperature``)). These choose among the cache's
            scores, so they apply to the sampled modes; with ``"rerank"`` only ``range_min`` does (the best
            candidates by fresh score it skips), and the others are refused.
        seed: seed of the sampler's random generator.
        max_view_age: sample from a materialised corrected view refreshed every K corrector steps.
        view_rescore_depth: with ``max_view_age``, re-score each anchor's L best rows of the view with the current
            corrector before choosing (L × batch corrected rows per step), so an older view keeps the exact ranking
            of the candidates it holds (``benchmarks/loss_step_overhead.py --view-rescore-depth``). Default None.
        corrector_lr, drift_loss, listwise_weight, score_weight, drift_temperature, replay_size, replay_steps: the
            corrector's training (:class:`~haystack_corrector.CorrectorTrainer`).
        corrector_warmup_steps: for this many first optimiser steps sample (or, re-ranking, take the candidates)
            from the stale cache while the corrector learns.
        refresh_every: optimiser steps between corpus re-encodes: needed by ``"refresh"``; with ``"corrector"`` it
            is the hybrid budget (the corrector between rare refreshes), ``corrector_after_refresh`` ``"keep"`` or
            ``"reset"`` saying whether the corrector keeps its weights after a refresh or restarts at the identity.
        rerank_depth: candidates re-encoded per anchor for ``"rerank"``; default ``3 * (range_min + num_negatives)``
            (3 with one negative, the measured setting).
        rerank_candidates: where ``"rerank"`` takes its candidates: ``"corrected"`` (default: the corrected cache, so
            the corrector picks what is worth re-encoding) or ``"stale"`` (the raw cache: Atlas-style re-ranking).
        prompts: the trainer's ``prompts`` (string or ``{column: prompt}``), so texts are recognised by their tokens
            and sampled negatives get the positive column's prompt.
        encode_batch_size: batch size of the no-grad encodes (static mining, refreshes, re-ranking).
        bf16_encodes: run those no-grad encodes (and the anchors' sampling pass when it is a separate one) under
            bfloat16 autocast where the model's device has bfloat16 units (CUDA, or a CPU with AVX512-BF16/AMX;
            float32 elsewhere): they feed only a ranking, and run several times faster (docs/performance.md).
            ``False``: float32, also inside the trainer's ``bf16=True``. Whatever the precision of the training
            step, the cache search, the re-ranking scores and the corrector compute in float32.
        sharded: under DDP, sample through :class:`~haystack_corrector.distributed.ShardedCacheStore` (``None``:
            when a group of several processes is running; ``False``: each rank searches its own full copy).

    References:
        Monath et al., "A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks",
        ICML 2024. https://arxiv.org/abs/2409.01890

    Requirements:
        1. A wrapped loss that takes (anchor, positive, negative_1, ..., negative_n) text columns.
        2. A :class:`~haystack_corrector.CorrectedCacheStore` of the corpus, with texts.

    Inputs:
        +------------------------------------------------------+--------------------------------------+
        | Texts                                                | Labels                               |
        +======================================================+======================================+
        | (anchor, positive) pairs                             | whatever the wrapped loss takes      |
        +------------------------------------------------------+--------------------------------------+
        | (anchor, positive, negative_1, ..., negative_n)      | whatever the wrapped loss takes      |
        +------------------------------------------------------+--------------------------------------+

    Recommendations:
        - Add :class:`CorrectorCallback` to the trainer: checkpoints then hold the corrector, its optimiser and the
          step counters, a resumed run restores them, and drift metrics are logged.
        - Use ``BatchSamplers.NO_DUPLICATES`` so an anchor does not meet its own other positives in the batch.

    Relations:
        - :class:`CorrectedMultipleNegativesRankingLoss` is this wrapper around ``MultipleNegativesRankingLoss``.
        - ``negatives="static"`` is ``mine_hard_negatives`` once, before training.

    Example:
        ::

            from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
            from haystack_corrector.sentence_transformers import CorrectedNegativesLoss, CorrectorCallback

            inner = CachedMultipleNegativesRankingLoss(model, mini_batch_size=16)
            loss = CorrectedNegativesLoss(model, inner, store, num_negatives=4, train_dataset=train_dataset)
            trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss,
                                                 callbacks=[CorrectorCallback(loss)])
    """

    def __init__(
        self,
        model: Any,
        loss: nn.Module,
        store: CorrectedCacheStore,
        num_negatives: int = 4,
        *,
        train_dataset: Any = None,
        relevant: Mapping[str, Iterable[str]] | None = None,
        negatives: str = "rerank",
        sampling_strategy: str = "top",
        temperature: float = 0.05,
        range_min: int = 0,
        range_max: int | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        seed: int | None = None,
        max_view_age: int | None = None,
        view_rescore_depth: int | None = None,
        corrector_lr: float = 1e-3,
        drift_loss: str = "mse",
        listwise_weight: float = 0.0,
        score_weight: float = 0.0,
        drift_temperature: float = 0.05,
        replay_size: int = 0,
        replay_steps: int = 0,
        corrector_warmup_steps: int = 0,
        refresh_every: int | None = None,
        corrector_after_refresh: str = "keep",
        rerank_depth: int | None = None,
        rerank_candidates: str | None = None,
        prompts: str | Mapping[str, str] | None = None,
        encode_batch_size: int = 64,
        bf16_encodes: bool = True,
        sharded: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"loss must be a sentence-transformers loss (an nn.Module), got {type(loss).__name__}")
        if isinstance(loss, CorrectedNegativesLoss):
            raise TypeError("loss is already a CorrectedNegativesLoss: wrap the inner loss once")
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        if hasattr(num_negatives, "column_names"):
            raise TypeError(
                "The third argument is num_negatives; train_dataset is a keyword argument now: "
                f"{type(self).__name__}(model, ..., store, num_negatives=4, train_dataset=train_dataset)"
            )
        check_positive_int(num_negatives, "num_negatives")
        check_choice(negatives, "negatives", NEGATIVE_MODES)
        check_non_negative_int(corrector_warmup_steps, "corrector_warmup_steps")
        check_choice(corrector_after_refresh, "corrector_after_refresh", ("keep", "reset"))
        check_bool(sharded, "sharded", optional=True)
        check_bool(bf16_encodes, "bf16_encodes")
        if negatives == "refresh" and refresh_every is None:
            raise ValueError("negatives='refresh' needs refresh_every (optimiser steps between corpus re-encodes)")
        if refresh_every is not None:
            check_positive_int(refresh_every, "refresh_every")
            if negatives not in ("refresh", "corrector"):
                raise ValueError(f"refresh_every applies to negatives='refresh' or 'corrector', not {negatives!r}")
        if rerank_depth is not None and check_positive_int(rerank_depth, "rerank_depth") < num_negatives:
            raise ValueError(f"rerank_depth must be >= num_negatives ({num_negatives}), got {rerank_depth!r}")
        if rerank_candidates is not None:
            check_choice(rerank_candidates, "rerank_candidates", ("stale", "corrected"))
            if negatives != "rerank":
                raise ValueError(f"rerank_candidates applies to negatives='rerank', not {negatives!r}")
        if negatives == "rerank":
            rerank_depth, rerank_candidates = rerank_options(
                num_negatives,
                check_non_negative_int(range_min, "range_min"),
                rerank_depth,
                rerank_candidates,
                sampling_strategy=sampling_strategy,
                range_max=range_max,
                absolute_margin=absolute_margin,
                relative_margin=relative_margin,
                max_score=max_score,
                min_score=min_score,
            )
        model_dim = _compat.embedding_dimension(model)
        if model_dim is not None and model_dim != store.dim:
            raise ValueError(f"The store has dimension {store.dim} but the model embeds into dimension {model_dim}")
        if store.texts is None:
            raise ValueError(
                "The store has no texts, so sampled negatives cannot be re-encoded: build it with encode_corpus"
            )
        self.model = model
        self.loss = loss
        # Reuse the sampling forward of the anchors inside the wrapped loss: None until a step shows it works.
        self._reuse_anchor_forward: bool | None = None
        # The store is a plain attribute, so its corrector is NOT a registered submodule: the trainer's optimiser must
        # not see the corrector's parameters, which only the drift loss trains, through their own optimiser.
        self.store = store
        self.num_negatives = num_negatives
        self.negatives = negatives
        self.corrector_warmup_steps = corrector_warmup_steps
        self.refresh_every = refresh_every
        self.corrector_after_refresh = corrector_after_refresh
        self.rerank_depth = rerank_depth
        self.rerank_candidates = rerank_candidates
        self.prompts = prompts
        self.encode_batch_size = encode_batch_size
        self.bf16_encodes = bf16_encodes
        self.sharded = sharded
        self.relevance = RelevanceIndex(model, store, train_dataset=train_dataset, relevant=relevant, prompts=prompts)
        self.sampler = HardNegativeSampler(
            store,
            num_negatives=num_negatives,
            sampling_strategy=sampling_strategy,
            temperature=temperature,
            range_min=range_min,
            range_max=range_max,
            absolute_margin=absolute_margin,
            relative_margin=relative_margin,
            max_score=max_score,
            min_score=min_score,
            corrected=negatives == "corrector",
            seed=seed,
            max_view_age=max_view_age,
            view_rescore_depth=view_rescore_depth,
            exclude_text_copies=False,  # the relevance index already counts every copy of a positive's text
        )
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
        self.source = self._make_source(train_dataset)
        # The run's costs: the negative source counts its re-encodes into them, the loss its target passes.
        self.costs = self.source.costs if self.source is not None else Costs()
        # Optimiser steps done, as the trainer counts them: kept by CorrectorCallback. Without it the loss counts its
        # own training forwards, which equals optimiser steps only without gradient accumulation.
        self.optimizer_step = 0
        self.training_forwards = 0
        self.callback_attached = False
        self._warned: set[str] = set()
        self.last_negative_rows: Tensor | None = None
        self.reset_metrics()

    # --------------------------------------------------------------------------------------------- sources
    def _make_source(self, train_dataset: Any) -> NegativeSource | None:
        mode = self.negatives
        if mode == "inbatch":
            return None
        encode = no_grad_encoder(self.model, self.encode_batch_size, self.negative_prompt, bf16=self.bf16_encodes)
        if mode == "static":
            if train_dataset is None:
                raise ValueError("negatives='static' needs train_dataset: its anchors are mined once, before training")
            anchor_column = self.relevance.anchor_column
            prompt = column_prompt(self.prompts, anchor_column)
            texts = sorted({text for dataset in each_dataset(train_dataset) for text in dataset[anchor_column]})
            anchors = {
                key: (text, self.relevance.anchor_relevant(key))
                for text, key in zip(texts, self.relevance.keys(texts, prompt))
            }
            anchor_encoder = no_grad_encoder(self.model, self.encode_batch_size, prompt, bf16=self.bf16_encodes)
            return StaticNegatives(self.sampler, anchor_encoder, anchors)
        if mode == "rerank":
            assert self.rerank_depth is not None  # (resolved in __init__ for this mode)
            return RerankedNegatives(
                self.sampler,
                encode,
                self.rerank_depth,
                corrected=self.rerank_candidates == "corrected",
                warmup_steps=self.corrector_warmup_steps,
            )
        if self.refresh_every is not None:
            return RefreshedNegatives(
                self.sampler,
                encode,
                self.refresh_every,
                corrected=mode == "corrector",
                after_refresh=self.corrector_after_refresh,
                corrector_trainer=self.corrector_trainer,
                warmup_steps=self.corrector_warmup_steps,
            )
        return SampledNegatives(self.sampler, corrected=mode == "corrector", warmup_steps=self.corrector_warmup_steps)

    @property
    def negative_prompt(self) -> str | None:
        """The prompt of the positive column, given to sampled negatives as well."""
        return column_prompt(self.prompts, self.relevance.positive_column)

    @property
    def sampling_corrected(self) -> bool:
        return self.source is not None and self.source.corrected

    @property
    def step(self) -> int:
        """The optimiser step the current forward belongs to (refresh_every and warm-up count these)."""
        return self.optimizer_step if self.callback_attached else self.training_forwards

    # --------------------------------------------------------------------------------------------- forward
    @property
    def _unwrapped_model(self) -> Any:
        """The SentenceTransformer itself (the trainer swaps in its DDP wrapper, which has no ``encode``)."""
        return getattr(self.model, "module", self.model)

    def _is_training(self) -> bool:
        return bool(self.model.training) and torch.is_grad_enabled()

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

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _tokenize(self, texts: list[str], like: dict[str, Any]) -> dict[str, Any]:
        device = like["input_ids"].device
        features = _compat.preprocess(self._unwrapped_model, texts, prompt=self.negative_prompt, task=like.get("task"))
        features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
        if "task" in like:
            features.setdefault("task", like["task"])
        return features

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Any:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(
                f"Expected at least 2 text columns (anchor, positive[, negatives...]), got {len(features)}"
            )
        if not self._is_training():
            return self.loss(features, labels)  # evaluation: the wrapped loss on the columns as given
        self._distribute()
        if not self.callback_attached:
            self._warn_once(
                "callback",
                "%s is training without CorrectorCallback: checkpoints will not hold the corrector, a resumed run "
                "starts a fresh one, and steps are counted per forward pass, not per optimiser step. Add "
                "callbacks=[CorrectorCallback(loss)] to the trainer.",
                type(self).__name__,
            )
        batch = int(features[0]["input_ids"].shape[0])
        anchor_keys = token_keys(features[0])
        known_rows = [self.relevance.rows(token_keys(column)) for column in features[1:]]
        if not any(known_rows[0]):
            self._warn_once(
                "positives",
                "None of this batch's positives was found in the store by its tokens: if the trainer adds prompts, "
                "pass the same prompts= to the loss; otherwise the positives are not in the store",
            )
        relevant = self.relevance.relevant_sets(anchor_keys, known_rows[0])
        reuse = self.source is not None and self._reuse_anchor_forward is not False and self._may_reuse_anchor_forward()
        anchor_output = None
        if reuse:  # the anchors' forward with gradient, served to the wrapped loss when it embeds the anchor column
            anchor_output = self._unwrapped_model(dict(features[0]))
        negative_rows = (
            self._sample(features, anchor_keys, relevant, known_rows, anchor_output)
            if self.source is not None
            else None
        )
        self.last_negative_rows = negative_rows
        columns = list(features) + self._negative_columns(negative_rows, like=features[1])
        with captured_embeddings(self._unwrapped_model) as captured:
            if anchor_output is None:
                value = self.loss(columns, labels)
            else:
                with served_forward(self._unwrapped_model, features[0], anchor_output) as served:
                    value = self.loss(columns, labels)
                if not served:  # this loss embeds the anchors some other way: sample with a no-grad pass from now on
                    self._reuse_anchor_forward = False
                    logger.debug("%s did not embed the anchor column as given; not reusing its forward", self.loss)
                else:
                    self._reuse_anchor_forward = True
        embedded = split_columns(captured, batch, len(columns))
        if embedded is None:
            self._warn_once(
                "capture",
                "Could not follow how %s embeds its columns; the drift step re-encodes the targets without gradient "
                "(one extra forward pass per step)",
                type(self.loss).__name__,
            )
            embedded = self._re_encode(columns)
        self.costs.target_forward_passes += batch * (len(columns) - 1)
        extra = self.source.take_fresh_pairs() if self.source is not None else None
        rows, fresh = self._targets(known_rows, negative_rows, embedded[1:], extra)
        if rows.numel():
            self._drift(rows, fresh, embedded[0].float())
        self.training_forwards += 1
        return value

    def _may_reuse_anchor_forward(self) -> bool:
        """Whether the anchors' forward for sampling can be the one the wrapped loss trains on: not under a DDP
        wrapper (its gradient sync needs its own forward), not for the cached (GradCache) losses, which embed in
        mini-batches without gradient first, and not after a step showed the loss embeds anchors another way."""
        return self.model is self._unwrapped_model and not hasattr(self.loss, "mini_batch_size")

    def _sample(
        self,
        features: list[dict[str, Any]],
        anchor_keys: list[Any],
        relevant: list[set[int]],
        known_rows: list[list[list[int]]],
        anchor_output: dict[str, Any] | None = None,
    ) -> Tensor:
        """(B, num_negatives) store rows: never relevant to the anchor, never one of its row's own negatives.
        ``anchor_output``: the anchors' forward already computed (with gradient); else a no-grad pass embeds them."""
        exclude = [rows | {r for column in known_rows[1:] for r in column[i]} for i, rows in enumerate(relevant)]
        if anchor_output is not None:
            anchors = anchor_output["sentence_embedding"].detach().float().cpu()
        else:
            device = features[0]["input_ids"].device
            with torch.no_grad(), precision.bf16_encodes(device, enabled=self.bf16_encodes):
                # the current anchors, to sample with (the wrapped loss embeds them again)
                anchors = self._unwrapped_model(dict(features[0]))["sentence_embedding"].detach().float().cpu()
        with precision.float32():  # the choice among scores is float32 whatever the trainer's precision
            return self.source.negatives(anchors, exclude, self.step, anchor_keys)  # type: ignore[union-attr]

    def _negative_columns(self, negative_rows: Tensor | None, like: dict[str, Any]) -> list[dict[str, Any]]:
        """The sampled rows' texts, tokenised as extra negative columns (column j: every anchor's j-th negative)."""
        if negative_rows is None:
            return []
        texts = self.store.texts or []
        return [
            self._tokenize([texts[r] for r in negative_rows[:, j].tolist()], like) for j in range(self.num_negatives)
        ]

    @staticmethod
    def _targets(
        known_rows: list[list[list[int]]],
        negative_rows: Tensor | None,
        embedded: list[Tensor],
        extra: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(rows, fresh embeddings) of every target in the store: the dataset's columns, then the sampled ones, then
        the ``extra`` pairs the negative source embedded without gradient (re-ranked candidates) whose row is not
        already a target."""
        rows: list[int] = []
        fresh: list[Tensor] = []
        for column_rows, column in zip(known_rows, embedded):
            for found, embedding in zip(column_rows, column):
                if found:
                    rows.append(found[0])  # copies of one text share their stale embedding: train on one
                    fresh.append(embedding)
        if negative_rows is not None:
            for j, column in enumerate(embedded[len(known_rows) :]):
                rows += negative_rows[:, j].tolist()
                fresh += list(column)
        if extra is not None:
            targets = set(rows)
            device = fresh[0].device if fresh else extra[1].device  # (the no-grad encodes come back on CPU)
            for row, embedding in zip(extra[0].tolist(), extra[1].to(device)):
                if row not in targets:  # each extra row once, and never one the columns already embedded
                    targets.add(row)
                    rows.append(row)
                    fresh.append(embedding)
        if not rows:
            return torch.empty(0, dtype=torch.int64), torch.empty(0)
        return torch.tensor(rows, dtype=torch.int64), torch.stack(fresh).float()

    def _re_encode(self, columns: list[dict[str, Any]]) -> list[Tensor]:
        device = columns[0]["input_ids"].device
        with torch.no_grad(), precision.bf16_encodes(device, enabled=self.bf16_encodes):
            return [self._unwrapped_model(dict(column))["sentence_embedding"].detach() for column in columns]

    def _drift(self, rows: Tensor, fresh: Tensor, queries: Tensor) -> None:
        metrics = self.corrector_trainer.observe(rows, fresh, query_embeddings=queries)
        for key in ("drift_loss", "staleness", "corrected_error"):
            self._metric_sums[key] = self._metric_sums.get(key, 0.0) + metrics[key]
        self._metric_count += 1

    # --------------------------------------------------------------------------------------------- metrics
    def reset_metrics(self) -> None:
        self._metric_sums: dict[str, float] = {}
        self._metric_count = 0

    def pop_metrics(self) -> dict[str, float]:
        """Mean drift metrics since the last call (training steps only), the sampler's fallbacks and the costs."""
        metrics = (
            {f"corrector/{k}": v / self._metric_count for k, v in self._metric_sums.items()}
            if self._metric_count
            else {}
        )
        metrics["corrector/filled_negatives"] = float(self.sampler.stats["filled_negatives"])
        metrics["corrector/filled_queries"] = float(self.sampler.stats["filled_queries"])
        metrics.update({f"corrector/{k}": float(v) for k, v in self.costs.as_dict().items()})
        self.reset_metrics()
        return metrics

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Everything besides the corrector and its optimiser that a resumed run needs to continue exactly."""
        return {
            "optimizer_step": self.optimizer_step,
            "training_forwards": self.training_forwards,
            "sampler_stats": dict(self.sampler.stats),
            "generator": self.sampler.generator.get_state(),
            "costs": self.costs.as_dict(),
            "source": self.source.state_dict() if self.source is not None else {},
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.optimizer_step = int(state["optimizer_step"])
        self.training_forwards = int(state["training_forwards"])
        self.sampler.stats.update(state["sampler_stats"])
        self.sampler.generator.set_state(state["generator"].cpu())
        self.costs.load(state["costs"])
        if self.source is not None:
            self.source.load_state_dict(state["source"])

    # ------------------------------------------------------------------------------------------- model card
    def get_config_dict(self) -> dict[str, Any]:
        sampler = {k: v for k, v in self.sampler.get_config_dict().items() if k not in ("num_negatives", "corrected")}
        sampler.pop("exclude_text_copies", None)
        return {
            "loss": type(self.loss).__name__,
            "num_negatives": self.num_negatives,
            "negatives": self.negatives,
            **sampler,
            "corrector_lr": self.corrector_trainer.lr,
            "drift_loss": self.corrector_trainer.loss,
            "listwise_weight": self.corrector_trainer.listwise_weight,
            "score_weight": self.corrector_trainer.score_weight,
            "drift_temperature": self.corrector_trainer.temperature,
            "replay_size": self.corrector_trainer.replay_size,
            "replay_steps": self.corrector_trainer.replay_steps,
            "corrector": self.store.corrector.get_config_dict(),
            "corrector_warmup_steps": self.corrector_warmup_steps,
            "refresh_every": self.refresh_every,
            "corrector_after_refresh": self.corrector_after_refresh,
            "rerank_depth": self.rerank_depth,
            "rerank_candidates": self.rerank_candidates,
            "bf16_encodes": self.bf16_encodes,
            "sharded": self.sharded,
        }

    @property
    def citation(self) -> str:
        return CITATION
