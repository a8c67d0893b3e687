"""RelevanceIndex: which store rows a batch's texts are, and which rows are relevant to its anchors.

The trainer hands a loss token ids, not texts, so texts are recognised by their tokens: a text's *key* is its token
ids under the attention mask, as the model's own ``preprocess`` makes them (same truncation, same prompt). From a
user's ordinary dataset the index learns, once:

- for every target text (the positive column and any negative columns) that is in the store: its rows, i.e. every
  row holding that exact text (copies of a document are one text: a copy of the positive is never a negative);
- for every anchor: the rows of every positive the dataset pairs with that anchor text, plus ``relevant`` (qrels by
  document id) if given.

A target text the index has not seen (no ``train_dataset``, or a dataset the index was not built from) makes it index
the store's own texts once, then look again. Two texts that tokenise to the same key (identical up to truncation)
share their rows: the model cannot tell them apart, so neither may be the other's negative.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.sentence_transformers import _compat

logger = logging.getLogger(__name__)

TokenKey = tuple[int, ...]
LABEL_COLUMNS = ("label", "labels", "score", "scores")  # the columns sentence-transformers' collator passes as labels
_TOKENIZE_BATCH = 1024


def token_keys(features: Mapping[str, Any]) -> list[TokenKey]:
    """The key of each row of a tokenised column: its token ids where the attention mask is set."""
    ids = features.get("input_ids")
    if not isinstance(ids, Tensor) or ids.ndim != 2:
        raise ValueError(
            "corrector negatives need text columns tokenised into 2-d 'input_ids' (got "
            f"{type(ids).__name__ if ids is not None else 'no input_ids'}); image or flattened inputs are not supported"
        )
    ids = ids.detach().cpu()
    mask = features.get("attention_mask")
    if not isinstance(mask, Tensor):
        return [tuple(row.tolist()) for row in ids]
    mask = mask.detach().cpu().bool()
    return [tuple(row[keep].tolist()) for row, keep in zip(ids, mask)]


def text_columns(dataset: Any) -> list[str]:
    """The dataset's text columns in order (what the collator tokenises): every column but labels and dataset_name."""
    columns = list(getattr(dataset, "column_names", None) or [])
    return [c for c in columns if c not in LABEL_COLUMNS and c != "dataset_name"]


def each_dataset(train_dataset: Any) -> list[Any]:
    """The datasets of a trainer's ``train_dataset``: a ``Dataset``, or each of a ``DatasetDict``'s (none for None)."""
    if train_dataset is None:
        return []
    return list(train_dataset.values()) if isinstance(train_dataset, Mapping) else [train_dataset]


def column_prompt(prompts: str | Mapping[str, str] | None, column: str) -> str | None:
    """The prompt the trainer prepends to ``column`` (``prompts`` as in ``SentenceTransformerTrainingArguments``)."""
    if prompts is None or isinstance(prompts, str):
        return prompts
    return prompts.get(column)


@dataclass
class BatchRelevance:
    """What a training step knows of its batch: anchor keys, the store rows of each target column, relevant rows."""

    anchor_keys: list[TokenKey]
    known_rows: list[list[list[int]]]  # [target column][anchor] -> rows holding that text
    relevant: list[set[int]]  # per anchor: rows never to give it as a negative

    def exclude(self) -> list[set[int]]:
        """Per anchor: its relevant rows and the rows of its own negative columns."""
        return [rows | {r for column in self.known_rows[1:] for r in column[i]} for i, rows in enumerate(self.relevant)]

    def select(self, keep: list[int]) -> BatchRelevance:
        """The same for the anchors at positions ``keep``."""
        return BatchRelevance(
            [self.anchor_keys[i] for i in keep],
            [[column[i] for i in keep] for column in self.known_rows],
            [self.relevant[i] for i in keep],
        )


class RelevanceIndex:
    """Token keys → store rows, and anchor keys → relevant rows (see the module docstring).

    Args:
        model: the SentenceTransformer whose ``preprocess`` the trainer tokenises with.
        store: the cache negatives are sampled from (it must hold texts).
        train_dataset: the trainer's ``datasets.Dataset`` (or a dict of them): text columns (anchor, positive,
            negative_1, ...) in that order, any label/score column; optional.
        relevant: ``{anchor text: [document id, ...]}``: more rows never to sample as that anchor's negatives.
        prompts: the trainer's ``prompts`` (a string, or ``{column: prompt}``), so that keys match its tokens.
    """

    def __init__(
        self,
        model: Any,
        store: CorrectedCacheStore,
        train_dataset: Any = None,
        relevant: Mapping[str, Iterable[str]] | None = None,
        prompts: str | Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.prompts = prompts
        self._texts: list[str] = list(store.texts or [])
        self._rows_of_text: dict[str, list[int]] | None = None
        self._target_rows: dict[TokenKey, list[int]] = {}
        self._anchor_relevant: dict[TokenKey, set[int]] = {}
        self._store_indexed = False
        self.anchor_column, self.positive_column = "anchor", "positive"
        self.train_dataset = train_dataset
        for dataset in each_dataset(train_dataset):
            self._read_dataset(dataset)
        if relevant is not None:
            self._read_relevant(relevant)

    # -------------------------------------------------------------------------------------------------- build
    def rows_of_text(self, text: str) -> list[int]:
        """Every store row holding exactly ``text`` (empty when the store does not hold it)."""
        if self._rows_of_text is None:
            self._rows_of_text = {}
            for row, stored in enumerate(self._texts):
                self._rows_of_text.setdefault(stored, []).append(row)
        return self._rows_of_text.get(text, [])

    def keys(self, texts: Sequence[str], prompt: str | None = None) -> list[TokenKey]:
        """The token key of each text, tokenised as the trainer's collator would (a progress bar above 20,000)."""
        from tqdm.auto import tqdm

        keys: list[TokenKey] = []
        starts = range(0, len(texts), _TOKENIZE_BATCH)
        for start in tqdm(starts, desc="Indexing texts by tokens", unit="batch", disable=len(texts) <= 20_000):
            chunk = list(texts[start : start + _TOKENIZE_BATCH])
            keys += token_keys(_compat.preprocess(self.model, chunk, prompt=prompt))
        return keys

    def _add_targets(self, texts: Iterable[str], prompt: str | None) -> None:
        distinct = sorted({t for t in texts if self.rows_of_text(t)})
        for text, key in zip(distinct, self.keys(distinct, prompt)):
            rows = self._target_rows.setdefault(key, [])
            rows.extend(r for r in self.rows_of_text(text) if r not in rows)

    def _read_dataset(self, dataset: Any) -> None:
        if not hasattr(dataset, "__len__"):  # an IterableDataset: reading it here would consume it
            logger.info("train_dataset is iterable: its texts are recognised through the store's texts instead")
            return
        columns = text_columns(dataset)
        if len(columns) < 2:
            raise ValueError(
                f"train_dataset needs at least two text columns (anchor, positive[, negative_1, ...]), got "
                f"{list(getattr(dataset, 'column_names', []) or [])}"
            )
        if len(dataset) == 0:
            raise ValueError("train_dataset is empty")
        for column in columns:  # every row, not the first only: a bad row would otherwise fail mid-training
            bad = next(((row, value) for row, value in enumerate(dataset[column]) if not isinstance(value, str)), None)
            if bad is not None:
                raise ValueError(
                    f"train_dataset column {column!r} must hold texts, got {type(bad[1]).__name__} (row {bad[0]})"
                )
        self.anchor_column, self.positive_column = columns[0], columns[1]
        anchors, positives = list(dataset[columns[0]]), list(dataset[columns[1]])
        relevant_by_text: dict[str, set[int]] = {}
        for anchor, positive in zip(anchors, positives):
            relevant_by_text.setdefault(anchor, set()).update(self.rows_of_text(positive))
        self._add_anchor_rows(relevant_by_text)
        for column in columns[1:]:
            self._add_targets(dataset[column], column_prompt(self.prompts, column))
        found = sum(1 for rows in relevant_by_text.values() if rows)
        logger.info(
            "Indexed %d anchors (%d with a positive in the store) and %d target texts by their tokens",
            len(relevant_by_text),
            found,
            len(self._target_rows),
        )

    def _add_anchor_rows(self, relevant_by_text: Mapping[str, set[int]]) -> None:
        texts = list(relevant_by_text)
        for text, key in zip(texts, self.keys(texts, column_prompt(self.prompts, self.anchor_column))):
            self._anchor_relevant.setdefault(key, set()).update(relevant_by_text[text])

    def _read_relevant(self, relevant: Mapping[str, Iterable[str]]) -> None:
        if not isinstance(relevant, Mapping):
            raise TypeError(f"relevant must map anchor texts to document ids, got {type(relevant).__name__}")
        by_text: dict[str, set[int]] = {}
        for anchor, ids in relevant.items():
            if isinstance(ids, str):
                raise TypeError(f"relevant[{anchor!r}] must be a list of document ids, got the string {ids!r}")
            try:
                rows = self.store.rows_of(list(ids))
            except KeyError as exc:
                raise ValueError(f"relevant[{anchor!r}] names a document that is not in the store: {exc}") from None
            by_text[anchor] = {r for row in rows for r in self.rows_of_text(self._texts[row])} | set(rows)
        self._add_anchor_rows(by_text)

    def _index_store(self) -> None:
        prompt = column_prompt(self.prompts, self.positive_column)
        logger.info("Indexing the store's %d texts by their tokens (once)", len(self._texts))
        self._add_targets(self._texts, prompt)
        self._store_indexed = True

    # ------------------------------------------------------------------------------------------------- lookup
    def rows(self, keys: Sequence[TokenKey]) -> list[list[int]]:
        """For each key: the store rows holding that text (empty if the store does not hold it)."""
        if not self._store_indexed and any(key not in self._target_rows for key in keys):
            self._index_store()
        return [self._target_rows.get(key, []) for key in keys]

    def relevant_sets(self, anchor_keys: Sequence[TokenKey], positive_rows: Sequence[Sequence[int]]) -> list[set[int]]:
        """Rows relevant to each anchor: the dataset's and ``relevant``'s, plus the batch's positives of that anchor."""
        in_batch: dict[TokenKey, set[int]] = {}
        for key, rows in zip(anchor_keys, positive_rows):
            in_batch.setdefault(key, set()).update(rows)
        return [self._anchor_relevant.get(key, set()) | in_batch[key] for key in anchor_keys]

    def read_batch(self, features: Sequence[Mapping[str, Any]]) -> BatchRelevance:
        """The relevance of a batch's columns (anchor, positive[, negatives...]) as the trainer tokenised them."""
        anchor_keys = token_keys(features[0])
        known_rows = [self.rows(token_keys(column)) for column in features[1:]]
        return BatchRelevance(anchor_keys, known_rows, self.relevant_sets(anchor_keys, known_rows[0]))

    def training_anchors(self) -> dict[TokenKey, tuple[str, set[int]]]:
        """``{anchor key: (text, rows never to give it)}`` for every anchor of ``train_dataset`` (empty without one)."""
        texts = sorted({text for dataset in each_dataset(self.train_dataset) for text in dataset[self.anchor_column]})
        keys = self.keys(texts, column_prompt(self.prompts, self.anchor_column))
        return {key: (text, self.anchor_relevant(key)) for text, key in zip(texts, keys)}

    def anchor_relevant(self, key: TokenKey) -> set[int]:
        return set(self._anchor_relevant.get(key, set()))
