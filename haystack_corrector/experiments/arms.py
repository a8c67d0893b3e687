"""Arms: what the harness compares, by name (the names are a contract), for both tasks.

The contrastive task compares negative strategies (:data:`ARM_HELP`); the latent task compares how the retriever's
top k is found (:data:`LATENT_ARM_HELP`: ``frozen``, ``stale``, ``corrector``, ``refresh:N``). One grammar parses
both (:func:`parse_arm`); each task names the kinds it runs (:data:`CONTRASTIVE_KINDS`, :data:`LATENT_KINDS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ARM_HELP = (
    "inbatch (in-batch negatives only), static (mined once before training), stale (dynamic from the stale cache), "
    "refresh:N (whole cache re-encoded every N steps), rerank:L (top L of the stale cache re-scored with the "
    "current model), corrector (dynamic from the corrected cache), corrector+refresh:N (the corrector between "
    "re-encodes every N steps; it keeps training after each), corrector+refresh:N:reset (back to the identity after "
    "each re-encode), corrector+side (the corrector also reads side features kept by the initial pass, "
    "--side-layers; standardised to the corpus's statistics, corrector+side:raw reads them as stored), "
    "corrector+replay:K (K extra corrector steps per training step on a buffer of recent pairs), "
    "corrector+listwise:W (the corrector's drift loss adds W x the listwise term: the batch's anchors rank its "
    "targets, or with replay the buffered rows, by fresh vs corrected scores), corrector+rerank:L (the top L of the "
    "corrected cache re-scored with the current model; every candidate's fresh embedding trains the corrector); "
    "corrector levers combine, e.g. corrector+side+replay:4"
)
LATENT_ARM_HELP = (
    "frozen (the zero-shot retriever is never updated; only the reader learns), stale (top k from the initial "
    "cache), corrector (top k from the corrected cache), refresh:N (the corpus re-encoded every N steps)"
)
CONTRASTIVE_KINDS = frozenset({"inbatch", "static", "stale", "refresh", "rerank", "corrector"})
LATENT_KINDS = frozenset({"frozen", "stale", "corrector", "refresh"})
REPLAY_SIZE = 8192  # rows buffered by the corrector+replay arms


@dataclass(frozen=True)
class Arm:
    name: str  # as written by the user, e.g. "refresh:50"
    negatives: str  # the loss's `negatives` mode (the arm's name without its parameter)
    refresh_every: int | None = None
    rerank_depth: int | None = None
    after_refresh: str | None = None  # corrector+refresh arms: "keep" or "reset"
    replay_steps: int | None = None  # corrector+replay arms
    side_features: bool = False  # corrector+side: the corrector reads the side features of the initial cache
    raw_side_features: bool = False  # corrector+side:raw: ... without standardising them (runs before 2026-12-03)
    listwise_weight: float | None = None  # corrector+listwise:W (overrides --listwise-weight for this arm)
    rerank_candidates: str | None = None  # "stale" for rerank:L (the raw cache's), "corrected" for corrector+rerank:L

    @property
    def negatives_name(self) -> str:
        """The loss's ``negatives`` for this arm: the name of its negative source (the corrector levers aside)."""
        if self.negatives == "rerank":
            return f"{'rerank' if self.rerank_candidates == 'stale' else 'corrector+rerank'}:{self.rerank_depth}"
        if self.negatives == "refresh":
            return f"refresh:{self.refresh_every}"
        if self.negatives == "corrector" and self.refresh_every is not None:
            return f"corrector+refresh:{self.refresh_every}" + (":reset" if self.after_refresh == "reset" else "")
        return self.negatives

    def loss_kwargs(self) -> dict[str, Any]:
        """The corrector's training levers of this arm, as loss options (its negatives are :attr:`negatives_name`)."""
        kwargs: dict[str, Any] = {}
        if self.replay_steps is not None:
            kwargs.update(replay_steps=self.replay_steps, replay_size=REPLAY_SIZE)
        if self.listwise_weight is not None:
            kwargs["listwise_weight"] = self.listwise_weight
        return kwargs

    @property
    def slug(self) -> str:
        return self.name.replace(":", "-").replace("+", "_")

    @property
    def has_levers(self) -> bool:
        """A corrector arm with levers (``corrector+...``)."""
        return self.name.startswith("corrector+")


def parse_arm(text: str, kinds: frozenset[str] = CONTRASTIVE_KINDS, levers: bool = True) -> Arm:
    """One arm of a task that runs the arm ``kinds`` (default the contrastive task's), with corrector levers or not.

    ``"inbatch"``, ``"static"``, ``"stale"``, ``"refresh:N"``, ``"rerank:L"``, ``"corrector"``, or the corrector
    with levers joined by ``+`` in any order: ``side`` (or ``side:raw``), ``replay:K``, ``listwise:W``,
    ``refresh:N`` or ``refresh:N:reset``, ``rerank:L`` (not with ``refresh``) (e.g. ``"corrector+side+replay:4"``);
    ``"frozen"`` for the latent task (``parse_arm(text, LATENT_KINDS, levers=False)``)."""
    help_text = ARM_HELP if levers else LATENT_ARM_HELP
    try:
        arm: Arm | None = _parse(text)
    except ValueError:
        if levers:
            raise  # the lever's own message
        arm = None
    if arm is None or arm.negatives not in kinds or (arm.has_levers and not levers):
        raise ValueError(f"Unknown arm {text!r}; expected one of: {help_text}")
    return arm


def _parse(text: str) -> Arm:
    if text.strip().startswith("corrector+"):
        return _corrector_arm(text.strip())
    name, _, value = text.strip().partition(":")
    simple = {"inbatch": "inbatch", "static": "static", "stale": "stale", "corrector": "corrector", "frozen": "frozen"}
    if name in simple and not value:
        return Arm(text.strip(), simple[name])
    if name in ("refresh", "rerank"):
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(
                f"Arm {text!r} needs a positive integer after the colon, e.g. {name}:{50 if name == 'refresh' else 30}"
            )
        if name == "refresh":
            return Arm(text.strip(), "refresh", refresh_every=int(value))
        return Arm(text.strip(), "rerank", rerank_depth=int(value), rerank_candidates="stale")
    raise ValueError(f"Unknown arm {text!r}; expected one of: {ARM_HELP}")


def _corrector_arm(name: str) -> Arm:
    levers: dict[str, Any] = {}
    seen: set[str] = set()
    for lever in name.split("+")[1:]:
        key, _, value = lever.partition(":")
        if key in seen:
            raise ValueError(f"Arm {name!r} names the lever {key!r} twice")
        seen.add(key)
        if key == "side" and value in ("", "raw"):
            levers.update(side_features=True, raw_side_features=value == "raw")
        elif key == "replay":
            if not value.isdigit() or int(value) <= 0:
                raise ValueError(f"Arm {name!r}: expected corrector+replay:K with K > 0 replay steps per training step")
            levers["replay_steps"] = int(value)
        elif key == "listwise":
            try:
                weight = float(value)
            except ValueError:
                weight = 0.0
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(
                    f"Arm {name!r}: expected corrector+listwise:W with a positive weight W, e.g. listwise:1"
                )
            levers["listwise_weight"] = weight
        elif key == "refresh":
            steps, _, mode = value.partition(":")
            if not steps.isdigit() or int(steps) <= 0 or mode not in ("", "reset"):
                raise ValueError(f"Arm {name!r}: expected corrector+refresh:N or corrector+refresh:N:reset with N > 0")
            levers.update(refresh_every=int(steps), after_refresh=mode or "keep")
        elif key == "rerank":
            if not value.isdigit() or int(value) <= 0:
                raise ValueError(f"Arm {name!r}: expected corrector+rerank:L with L > 0 candidates per anchor")
            levers.update(rerank_depth=int(value), rerank_candidates="corrected")
        else:
            raise ValueError(
                f"Arm {name!r}: unknown corrector lever {lever!r}; expected side, side:raw, replay:K, listwise:W, "
                "refresh:N or rerank:L"
            )
    if "rerank" in seen and "refresh" in seen:
        raise ValueError(f"Arm {name!r}: rerank:L and refresh:N do not combine (re-ranking never re-encodes the cache)")
    return Arm(name, "rerank" if "rerank" in seen else "corrector", **levers)
