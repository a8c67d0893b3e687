"""CorrectedNegativesLoss: add hard negatives from a corrected stale cache to any sentence-transformers loss."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from haystack_corrector import precision
from haystack_corrector._validation import check_bool, check_non_negative_int, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.distributed import ShardedCacheStore, is_distributed
from haystack_corrector.sentence_transformers import loss_checks
from haystack_corrector.sentence_transformers.captured_embeddings import (
    captured_embeddings,
    served_forward,
    split_columns,
)
from haystack_corrector.sentence_transformers.drift_targets import drift_targets
from haystack_corrector.sentence_transformers.features import select_rows, tokenize_like
from haystack_corrector.sentence_transformers.loss_state import LossState
from haystack_corrector.sentence_transformers.negatives import MISSING, NegativeSource, parse_negatives
from haystack_corrector.sentence_transformers.negatives.source import Encode, no_grad_encoder
from haystack_corrector.sentence_transformers.relevance import (
    BatchRelevance,
    RelevanceIndex,
    column_prompt,
    each_dataset,
    text_columns,
)
from haystack_corrector.sentence_transformers.store_provenance import check_store_matches
from haystack_corrector.trainer import CorrectorTrainer

logger = logging.getLogger(__name__)

DEFAULT_NEGATIVES = "corrector+rerank"  # range_min + num_negatives + 2 candidates: 3 with one negative (measured)


class CorrectedNegativesLoss(LossState, nn.Module):
    """Wraps a sentence-transformers loss, the way ``MatryoshkaLoss`` does, adding hard negatives from a corrected cache.

    Each training step embeds the anchors, asks the negative source for ``num_negatives`` store rows per anchor (never
    a row relevant to it: its positives, their text copies, every positive the training dataset pairs with the same
    anchor text, ``relevant``), appends their texts as negative columns, calls the wrapped loss on all columns, and
    takes one corrector step on the drift between h(g') and the fresh embeddings the wrapped loss computed (captured
    from its forward passes). The default, corrected re-ranking (``RerankedNegatives``), re-encodes each anchor's
    ``num_negatives + 2`` best corrected rows without gradient and keeps the best by fresh score. In evaluation the wrapped
    loss runs on the columns as given: nothing is sampled and the corrector does not move.

    An anchor whose filters leave fewer than ``num_negatives`` candidates is skipped for the step, as
    ``mine_hard_negatives`` drops such samples: counted in ``corrector/skipped_anchors`` and logged; a batch where
    every anchor is short trains on its own columns (in-batch negatives). ``SampledNegatives(fill_missing=True)``
    fills the gap with random rows instead.

    Args:
        model: the SentenceTransformer being trained.
        loss: the wrapped loss, taking (anchor, positive, negative_1, ..., negative_n) columns (MNRL, CachedMNRL,
            GIST with one negative, MatryoshkaLoss around them, ...). Its options stay its own.
        store: the stale cache (:func:`encode_corpus`), with texts; built by this model (``check_model``).
        num_negatives: negatives per anchor, appended after the dataset's own columns (default 1, the measured one).
        negatives: a :class:`~haystack_corrector.sentence_transformers.negatives.NegativeSource`, or its name as the
            harness's arms write it: ``"corrector+rerank:L"`` (default, L = num_negatives + 2), ``"rerank:L"``,
            ``"corrector"`` (the paper), ``"stale"``, ``"refresh:N"``, ``"corrector+refresh:N"``, ``"static"``,
            ``"inbatch"``. Sampling strategies, windows and score filters are options of ``SampledNegatives``.
        train_dataset: the trainer's training dataset: its anchors' other positives are never their negatives.
        relevant: ``{anchor text: [document id, ...]}`` (qrels): more rows never given to that anchor.
        range_min: skip this many best candidates (likely false negatives), as in ``mine_hard_negatives``.
        seed: seed of the loss's random choices; None follows the trainer's ``seed`` (through CorrectorCallback).
        corrector_warmup_steps: search the raw cache for this many first optimiser steps while the corrector learns.
        max_view_age, view_rescore_depth: search a materialised corrected view up to K corrector steps old
            (re-scoring each anchor's L best rows of it with the current corrector).
        corrector_lr, drift_loss, listwise_weight, score_weight, drift_temperature, replay_size, replay_steps: the
            corrector's training (:class:`~haystack_corrector.CorrectorTrainer`).
        prompts: the trainer's ``prompts``, so texts are recognised by their tokens.
        encode_batch_size, bf16_encodes: the no-grad encodes (re-ranking, refreshes, static mining): batch size, and
            bfloat16 autocast where the device has bfloat16 units (they feed only a ranking; docs/performance.md).
        sharded: under DDP, search through :class:`~haystack_corrector.distributed.ShardedCacheStore` (None: when a
            group of several processes runs).
        check_model: refuse a store another model (or max_seq_length, normalisation, similarity) built; False for a
            deliberate mismatch.

    References:
        Monath et al., "A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks",
        ICML 2024. https://arxiv.org/abs/2409.01890
    """

    def __init__(
        self,
        model: Any,
        loss: nn.Module,
        store: CorrectedCacheStore,
        num_negatives: int = 1,
        *,
        negatives: str | NegativeSource = DEFAULT_NEGATIVES,
        train_dataset: Any = None,
        relevant: Mapping[str, Iterable[str]] | None = None,
        range_min: int = 0,
        seed: int | None = None,
        corrector_warmup_steps: int = 0,
        max_view_age: int | None = None,
        view_rescore_depth: int | None = None,
        corrector_lr: float = 1e-3,
        drift_loss: str = "mse",
        listwise_weight: float = 0.0,
        score_weight: float = 0.0,
        drift_temperature: float = 0.05,
        replay_size: int = 0,
        replay_steps: int = 0,
        prompts: str | Mapping[str, str] | None = None,
        encode_batch_size: int = 64,
        bf16_encodes: bool = True,
        sharded: bool | None = None,
        check_model: bool = True,
        **moved: Any,
    ) -> None:
        super().__init__()
        loss_checks.refuse_unknown_options(type(self).__name__, moved)
        if not isinstance(store, CorrectedCacheStore):
            raise TypeError(f"store must be a CorrectedCacheStore, got {type(store).__name__}")
        if hasattr(num_negatives, "column_names"):
            raise TypeError("The fourth argument is num_negatives; pass the dataset as train_dataset=...")
        self.source = negatives if isinstance(negatives, NegativeSource) else parse_negatives(negatives)
        self.num_negatives = check_positive_int(num_negatives, "num_negatives")
        self.range_min = check_non_negative_int(range_min, "range_min")
        self.corrector_warmup_steps = check_non_negative_int(corrector_warmup_steps, "corrector_warmup_steps")
        self.max_view_age = None if max_view_age is None else check_non_negative_int(max_view_age, "max_view_age")
        self.view_rescore_depth = (
            None if view_rescore_depth is None else check_positive_int(view_rescore_depth, "view_rescore_depth")
        )
        self.bf16_encodes = check_bool(bf16_encodes, "bf16_encodes")
        self.sharded = check_bool(sharded, "sharded", optional=True)
        self.encode_batch_size = check_positive_int(encode_batch_size, "encode_batch_size")
        columns = len(text_columns(each_dataset(train_dataset)[0])) if train_dataset is not None else 2
        loss_checks.check_wrapped_loss(loss, columns, self.num_negatives, self.source)
        loss_checks.check_options_apply(
            self.source,
            range_min=self.range_min,
            corrector_warmup_steps=self.corrector_warmup_steps,
            max_view_age=self.max_view_age,
            view_rescore_depth=self.view_rescore_depth,
            seed=seed,
            replay_size=replay_size,
            encode_batch_size=self.encode_batch_size,
        )
        loss_checks.check_fits_store(store, self.num_negatives, self.range_min, self.source)
        if store.texts is None:
            raise ValueError("The store has no texts, so negatives cannot be re-encoded: build it with encode_corpus")
        check_store_matches(store, model, enabled=check_bool(check_model, "check_model"))
        self.model, self.loss, self.prompts, self.seed = model, loss, prompts, seed
        # The store is a plain attribute, so its corrector is NOT a registered submodule: the trainer's optimiser must
        # not see the corrector's parameters, which only the drift loss trains, through their own optimiser.
        self.store = store
        self.gradient_cached = loss_checks.uses_gradient_cache(loss)
        self._reuse_anchor_forward: bool | None = None  # reuse the sampling forward: None until a step shows it works
        self.relevance = RelevanceIndex(model, store, train_dataset=train_dataset, relevant=relevant, prompts=prompts)
        self.generator = torch.Generator()
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
        self.reseed(seed)
        self.source.bind(self)
        self.costs = self.source.costs  # the source counts its re-encodes into them, the loss its target passes
        self.init_state()

    # --------------------------------------------------------------------------------------------- for sources
    def encoder(self, prompt: str | None) -> Encode:
        """The current model's no-grad encoder (for re-ranking, refreshes and static mining)."""
        return no_grad_encoder(self.model, self.encode_batch_size, prompt, bf16=self.bf16_encodes)

    @property
    def negative_prompt(self) -> str | None:
        """The prompt of the positive column, given to sampled negatives as well."""
        return column_prompt(self.prompts, self.relevance.positive_column)

    @property
    def anchor_prompt(self) -> str | None:
        return column_prompt(self.prompts, self.relevance.anchor_column)

    # --------------------------------------------------------------------------------------------- forward
    @property
    def _unwrapped_model(self) -> Any:
        """The SentenceTransformer itself (the trainer swaps in its DDP wrapper, which has no ``encode``)."""
        return getattr(self.model, "module", self.model)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Any:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(
                f"Expected at least 2 text columns (anchor, positive[, negatives...]), got {len(features)}"
            )
        if not (self.model.training and torch.is_grad_enabled()):
            return self.loss(features, labels)  # evaluation: the wrapped loss on the columns as given
        self._before_step()
        batch = self._read_batch(features)
        anchor_output = self._anchor_forward(features)
        rows = self._choose_negatives(features, batch, anchor_output) if self.source.adds_columns else None
        features, labels, rows, batch, anchor_output = self._skip_short_anchors(
            features, labels, rows, batch, anchor_output
        )
        self.last_negative_rows = rows
        columns = features + self._negative_columns(rows, like=features[1])
        value, embedded = self._wrapped_loss(columns, labels, anchor_output)
        self._drift_step(batch, rows, embedded)
        self.training_forwards += 1
        return value

    def _before_step(self) -> None:
        """Once, at the first training step: sharded search under DDP, and a warning without CorrectorCallback."""
        if not isinstance(self.store, ShardedCacheStore) and self.sharded is not False:
            if is_distributed():
                self.store = ShardedCacheStore(self.store)
                self.corrector_trainer.store = self.store
                if getattr(self.source, "sampler", None) is not None:
                    self.source.sampler.store = self.store  # type: ignore[attr-defined]
                logger.info("Sampling through sharded search: %r", self.store)
            elif self.sharded:
                raise RuntimeError("sharded=True needs an initialised torch.distributed group of several processes")
        if not self.callback_attached:
            self.warn_once(
                "callback",
                "%s is training without CorrectorCallback: checkpoints will not hold the corrector, a resumed run "
                "starts a fresh one, and steps are counted per forward pass, not per optimiser step. Add "
                "callbacks=[CorrectorCallback(loss)] to the trainer.",
                type(self).__name__,
            )

    def _read_batch(self, features: list[dict[str, Any]]) -> BatchRelevance:
        batch = self.relevance.read_batch(features)
        if not any(batch.known_rows[0]):
            self.warn_once(
                "positives",
                "None of this batch's positives was found in the store by its tokens: if the trainer adds prompts, "
                "pass the same prompts= to the loss; otherwise the positives are not in the store",
            )
        return batch

    def _anchor_forward(self, features: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The anchors' forward with gradient, to sample with and then serve to the wrapped loss, when it can be:
        not under a DDP wrapper, not for gradient-cache losses, not after a step showed the loss embeds otherwise."""
        reusable = self.model is self._unwrapped_model and not self.gradient_cached
        if not (self.source.adds_columns and reusable and self._reuse_anchor_forward is not False):
            return None
        return self._unwrapped_model(dict(features[0]))

    def _choose_negatives(self, features: list[dict[str, Any]], batch: BatchRelevance, anchor_output: Any) -> Tensor:
        """(B, num_negatives) store rows, :data:`MISSING` where the source's filters left too few candidates."""
        if anchor_output is not None:
            anchors = anchor_output["sentence_embedding"].detach().float().cpu()
        else:
            with torch.no_grad(), precision.bf16_encodes(features[0]["input_ids"].device, enabled=self.bf16_encodes):
                anchors = self._unwrapped_model(dict(features[0]))["sentence_embedding"].detach().float().cpu()
        with precision.float32():  # the choice among scores is float32 whatever the trainer's precision
            return self.source.negatives(anchors, batch.exclude(), self.step, batch.anchor_keys)

    def _skip_short_anchors(self, features, labels, rows, batch, anchor_output):  # type: ignore[no-untyped-def]
        """Drop the anchors the source could not fill from this step (all kept if every anchor is short, without
        the sampled columns: in-batch negatives for the step)."""
        if rows is None:
            return features, labels, rows, batch, anchor_output
        short = (rows == MISSING).any(dim=1)
        self.stats["anchors"] += len(short)
        if not bool(short.any()):
            return features, labels, rows, batch, anchor_output
        self.stats["skipped_anchors"] += int(short.sum())
        self.warn_once(
            "short",
            "Some anchors got fewer than num_negatives=%d negatives from %r and are skipped for their step "
            "(corrector/skipped_anchors counts them)",
            self.num_negatives,
            self.source,
        )
        if bool(short.all()):
            self.stats["inbatch_steps"] += 1
            return features, labels, None, batch, anchor_output
        keep = torch.nonzero(~short).flatten()
        kept = [select_rows(column, keep) for column in features]
        labels = labels[keep.to(labels.device)] if isinstance(labels, Tensor) and labels.ndim else labels
        return kept, labels, rows[keep], batch.select(keep.tolist()), None

    def _negative_columns(self, rows: Tensor | None, like: dict[str, Any]) -> list[dict[str, Any]]:
        """The chosen rows' texts, tokenised as extra negative columns (column j: every anchor's j-th negative)."""
        if rows is None:
            return []
        texts = self.store.texts or []
        return [
            tokenize_like(self._unwrapped_model, [texts[r] for r in rows[:, j].tolist()], like, self.negative_prompt)
            for j in range(rows.shape[1])
        ]

    def _wrapped_loss(self, columns: list[dict[str, Any]], labels: Any, anchor_output: Any) -> tuple[Any, list[Tensor]]:
        """The wrapped loss's value, and the embeddings it computed, one (B, dim) tensor per column."""
        with captured_embeddings(self._unwrapped_model) as captured:
            if anchor_output is None:
                value = self.loss(columns, labels)
            else:
                with served_forward(self._unwrapped_model, columns[0], anchor_output) as served:
                    value = self.loss(columns, labels)
                self._reuse_anchor_forward = bool(served)  # False: it embeds anchors some other way
        batch = int(columns[0]["input_ids"].shape[0])
        embedded = split_columns(captured, batch, len(columns))
        if embedded is None:
            self.warn_once(
                "capture",
                "Could not follow how %s embeds its columns; the drift step re-encodes the targets without gradient "
                "(one extra forward pass per step)",
                type(self.loss).__name__,
            )
            with torch.no_grad(), precision.bf16_encodes(columns[0]["input_ids"].device, enabled=self.bf16_encodes):
                embedded = [self._unwrapped_model(dict(c))["sentence_embedding"].detach() for c in columns]
        self.costs.target_forward_passes += batch * (len(columns) - 1)
        return value, embedded

    def _drift_step(self, batch: BatchRelevance, rows: Tensor | None, embedded: list[Tensor]) -> None:
        """One corrector step on every target this step embedded afresh (and the source's no-grad candidates)."""
        targets, fresh = drift_targets(batch.known_rows, rows, embedded[1:], self.source.take_fresh_pairs())
        if targets.numel():
            self.record(self.corrector_trainer.observe(targets, fresh, query_embeddings=embedded[0].float()))
