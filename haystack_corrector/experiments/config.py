"""What defines a comparison: :class:`ExperimentConfig`, its checks, and when a run may resume into an output folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haystack_corrector.experiments.arms import Arm, parse_arm

if TYPE_CHECKING:
    from haystack_corrector.experiments.output_folder import OutputFolder


@dataclass
class ExperimentConfig:
    """Everything that defines a comparison; saved next to its results."""

    data: str
    model: str | None = None
    arms: Sequence[str] = ("inbatch", "static", "stale", "refresh:50", "rerank:30", "corrector")
    seeds: Sequence[int] = (0,)
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 32
    num_negatives: int = 1
    max_seq_length: int = 128
    lr: float = 2e-5
    output: str = "runs/experiment"
    sampling_strategy: str = "top"
    range_min: int = 0
    range_max: int | None = 30
    corrector_lr: float = 1e-3
    hidden_dim: int | None = 768
    side_layers: Sequence[int] | str | None = None  # hidden states kept as side features in the initial cache
    listwise_weight: float = 0.0
    train_split: str = "train"
    max_train_queries: int | None = None  # a seeded random subset of the train queries (same for every arm and seed)
    eval_split: str = "test"
    encode_batch_size: int = 64
    bf16: bool = False  # every encode and training step under bfloat16 autocast where the hardware has it
    corpus_size: int | None = None  # a nested subset of the corpus: every judged document, then seeded others
    keep_embeddings: bool = False  # write each arm's fresh document/query embeddings and its corrector
    warmup_ratio: float = 0.1
    logging_steps: int = 5
    verbose: bool = False  # every library's log lines and every progress bar on the console
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> list[Arm]:
        arms = [parse_arm(a) for a in self.arms]
        if any(arm.side_features for arm in arms) and self.side_layers is None:
            raise ValueError("a +side arm needs side features in the initial cache: set side_layers (--side-layers)")
        if not arms:
            raise ValueError("arms is empty: name at least one arm")
        if len({a.name for a in arms}) != len(arms):
            raise ValueError(f"arms has duplicates: {list(self.arms)}")
        for name, value in (
            ("batch_size", self.batch_size),
            ("num_negatives", self.num_negatives),
            ("max_seq_length", self.max_seq_length),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")
        if self.steps is None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not self.seeds:
            raise ValueError("seeds is empty")
        if self.corpus_size is not None and self.corpus_size <= 0:
            raise ValueError(f"corpus_size must be > 0, got {self.corpus_size}")
        if self.max_train_queries is not None and self.max_train_queries <= 0:
            raise ValueError(f"max_train_queries must be > 0, got {self.max_train_queries}")
        if not Path(self.data).is_dir():
            raise FileNotFoundError(f"--data {self.data} is not a folder (expected a BEIR folder)")
        return arms


# Settings that may change between two runs into one output folder: what is run, and how it is logged or batched
# for encoding. Everything else defines the comparison, and mixing arms trained under different values would be wrong.
RESUMABLE_SETTINGS = frozenset(
    {"arms", "seeds", "output", "logging_steps", "encode_batch_size", "verbose", "keep_embeddings"}
)


def check_resumable(config: ExperimentConfig, folder: OutputFolder | None = None) -> None:
    """Refuse to add arms to an output folder whose finished arms were trained with other settings
    (:meth:`OutputFolder.check_resumable`; folders written before the rename knew ``sampling_strategy`` as
    ``strategy``)."""
    if folder is None:  # the run's folder, claimed here when the caller has none yet
        from haystack_corrector.experiments.output_folder import OutputFolder

        folder = OutputFolder(config.output)
    folder.check_resumable(
        json.loads(json.dumps(asdict(config))),  # tuples -> lists, as saved
        json.loads(json.dumps(asdict(ExperimentConfig(data=config.data)))),
        RESUMABLE_SETTINGS,
        renamed={"strategy": "sampling_strategy"},
    )
