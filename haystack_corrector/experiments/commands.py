"""The experiment commands of ``haystack-corrector``: ``demo``, ``experiment`` and ``fidelity``.

Their arguments and handlers; the parser itself and the error handling are in ``haystack_corrector/cli.py``. The heavy
imports (sentence-transformers, the harness) happen inside the handlers, so ``haystack-corrector --help`` stays fast.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _experiment_arguments(parser: argparse.ArgumentParser, *, arms: bool = True) -> None:
    from haystack_corrector.experiments.arms import ARM_HELP

    parser.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    parser.add_argument(
        "--model", default=None, help="local SentenceTransformer folder (default: all-MiniLM-L6-v2 from the demo extra)"
    )
    if arms:
        parser.add_argument(
            "--arms",
            nargs="+",
            default=["inbatch", "static", "stale", "refresh:50", "rerank:3", "corrector", "corrector+rerank:3"],
            help=f"arms to compare: {ARM_HELP}",
        )
        parser.add_argument(
            "--seeds",
            nargs="+",
            type=int,
            default=[0],
            help="seeds to run; the report covers every seed of the named arms finished in --output",
        )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=1.0)
    length.add_argument("--steps", type=int, default=None, help="training steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--sampling-strategy", default="top", choices=["top", "gumbel", "random"])
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--range-max", type=int, default=30)
    parser.add_argument("--corrector-lr", type=float, default=1e-3)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument(
        "--side-layers",
        nargs="+",
        default=None,
        help="hidden states (indices, or 'all') kept as side features in the initial cache, for the +side arms",
    )
    parser.add_argument("--listwise-weight", type=float, default=0.0)
    parser.add_argument("--train-split", default="train")
    parser.add_argument(
        "--max-train-queries",
        type=int,
        default=None,
        help="train on a seeded random subset of this many train queries (the corpus stays whole)",
    )
    parser.add_argument("--eval-split", default="test")
    parser.add_argument(
        "--corpus-size",
        type=int,
        default=None,
        help="a nested subset of the corpus: every judged document (train positives, evaluation qrels), then seeded "
        "others up to this many (the same documents at every size)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="train and encode (initial cache, candidates, refreshes, evaluation) under bfloat16 autocast where the "
        "CPU/GPU has bfloat16 units; search, corrector and metrics stay float32",
    )
    parser.add_argument(
        "--keep-embeddings",
        action="store_true",
        help="write each arm's fresh document and query embeddings and its corrector to <output>/embeddings/",
    )
    parser.add_argument("--output", default="runs/experiment", help="folder for results (resumable)")


def _side_layers(values: Sequence[str] | None) -> list[int] | str | None:
    if values is None:
        return None
    if list(values) == ["all"]:
        return "all"
    if not all(value.isdigit() for value in values):
        raise ValueError(f"--side-layers takes hidden-state indices or 'all', got {' '.join(values)}")
    return [int(value) for value in values]


def _config(args: argparse.Namespace, arms: Sequence[str], seeds: Sequence[int]):  # type: ignore[no-untyped-def]
    from haystack_corrector.experiments.config import ExperimentConfig

    return ExperimentConfig(
        data=args.data,
        model=args.model,
        arms=tuple(arms),
        seeds=tuple(seeds),
        epochs=args.epochs,
        steps=args.steps,
        batch_size=args.batch_size,
        num_negatives=args.num_negatives,
        max_seq_length=args.max_seq_length,
        lr=args.lr,
        output=args.output,
        sampling_strategy=args.sampling_strategy,
        range_min=args.range_min,
        range_max=args.range_max,
        corrector_lr=args.corrector_lr,
        hidden_dim=args.hidden_dim,
        side_layers=_side_layers(args.side_layers),
        listwise_weight=args.listwise_weight,
        train_split=args.train_split,
        max_train_queries=args.max_train_queries,
        eval_split=args.eval_split,
        corpus_size=args.corpus_size,
        bf16=bool(args.bf16),
        keep_embeddings=bool(args.keep_embeddings),
        verbose=bool(getattr(args, "verbose", False)),
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from haystack_corrector.experiments.demo import REFRESH_EVERY, run_demo, summary

    start = time.perf_counter()
    print("haystack-corrector demo: all-MiniLM-L6-v2 on a 1,700-document SciFact subset (CC BY-NC 2.0), offline.")
    print(
        "Fine-tunes four times from the same start: stale negatives from the cache, negatives sampled from the "
        "corrected cache, the corrected cache's candidates re-ranked (the default), and re-encoding the corpus every "
        f"{REFRESH_EVERY} steps.\n"
    )
    results = run_demo(
        output=args.output,
        steps=args.steps,
        fresh=args.fresh,
        model=args.model,
        verbose=bool(args.verbose),
        bf16=bool(args.bf16),
    )
    print(
        f"\nFiles: {Path(args.output) / 'results.md'}, {Path(args.output) / 'quality_vs_encodes.png'}, "
        f"{Path(args.output) / 'drift.png'}, {Path(args.output) / 'results.json'}; logs in "
        f"{Path(args.output) / 'run.log'} and {Path(args.output) / 'logs'}/."
    )
    print(f"Total wall time {time.perf_counter() - start:.0f} s on {results['machine']}.\n")
    print(summary(results))
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from haystack_corrector.experiments.contrastive import run_experiment

    results = run_experiment(_config(args, args.arms, args.seeds))
    print((Path(args.output) / "results.md").read_text())
    print(
        f"Wrote {args.output}/results.json, results.md, quality_vs_encodes.png, drift.png "
        f"({results['session_seconds']:.0f} s this session)"
    )
    return 0


def cmd_fidelity(args: argparse.Namespace) -> int:
    from haystack_corrector.experiments.fidelity import markdown, run_fidelity

    results = run_fidelity(
        _config(args, [args.arm], [args.seed]),
        arm=args.arm,
        seed=args.seed,
        fit_epochs=args.fit_epochs,
        listwise_weights=tuple(args.fit_listwise_weights),
        sample_listwise_weight=args.fit_sample_listwise_weight,
    )
    print(markdown(results))
    return 0


def cmd_latent(args: argparse.Namespace) -> int:
    from haystack_corrector.experiments.latent import LatentConfig, run_latent

    config = LatentConfig(
        data=args.data,
        labels=args.labels,
        model=args.model,
        arms=list(args.arms),
        seeds=list(args.seeds),
        epochs=args.epochs,
        batch_size=args.batch_size,
        top_k=args.top_k,
        temperature=args.temperature,
        max_seq_length=args.max_seq_length,
        reader_max_length=args.reader_max_length,
        lr=args.lr,
        reader_lr=args.reader_lr,
        reader_warmup_steps=args.reader_warmup_steps,
        corrector_lr=args.corrector_lr,
        max_train_claims=args.max_train_claims,
        max_test_claims=args.max_test_claims,
        save_models=args.save_models,
        bf16=args.bf16,
        output=args.output,
    )
    run_latent(config)
    print((Path(args.output) / "results.md").read_text())
    print(f"Wrote {args.output}/results.json and results.md")
    return 0


def add_latent_command(commands: Any) -> None:
    latent = commands.add_parser(
        "latent",
        help="retrieval-augmented claim verification: train the retriever through a reader (latent retrieval)",
        description="Train a retriever and a cross-encoder reader on labelled claims with the evidence as a latent "
        "variable (LatentRetrievalLoss); arms frozen, stale, corrector, refresh:N; resumable.",
    )
    latent.add_argument("--data", required=True, help="BEIR folder (corpus, queries, qrels/train and test)")
    latent.add_argument("--labels", default=None, help="JSON lines _id/split/label (default <data>/claims.jsonl)")
    latent.add_argument("--model", default=None, help="local SentenceTransformer folder (default all-MiniLM-L6-v2)")
    latent.add_argument("--arms", nargs="+", default=["frozen", "stale", "corrector"])
    latent.add_argument("--seeds", type=int, nargs="+", default=[0])
    latent.add_argument("--epochs", type=float, default=1.0)
    latent.add_argument("--batch-size", type=int, default=16)
    latent.add_argument("--top-k", type=int, default=4, help="documents marginalised per claim")
    latent.add_argument("--temperature", type=float, default=0.05)
    latent.add_argument("--max-seq-length", type=int, default=128, help="the retriever's")
    latent.add_argument("--reader-max-length", type=int, default=256, help="tokens per (claim, abstract) pair")
    latent.add_argument("--lr", type=float, default=2e-5, help="the retriever's (and the reader's, by default)")
    latent.add_argument("--reader-lr", type=float, default=None, help="the reader's own learning rate (default --lr)")
    latent.add_argument("--reader-warmup-steps", type=int, default=0, help="first steps with a frozen retriever")
    latent.add_argument("--corrector-lr", type=float, default=1e-3)
    latent.add_argument("--max-train-claims", type=int, default=None)
    latent.add_argument("--max-test-claims", type=int, default=None)
    latent.add_argument(
        "--save-models", action="store_true", help="keep each arm's retriever and reader in <output>/models/"
    )
    latent.add_argument(
        "--bf16",
        action="store_true",
        help="train under bfloat16 autocast (float32 weights) where the CPU/GPU has bfloat16 units; evaluation, "
        "search and corrector stay float32",
    )
    latent.add_argument("--output", default="runs/latent")
    latent.set_defaults(handler=cmd_latent)


def add_experiment_commands(commands: Any) -> None:
    """Add ``demo``, ``experiment``, ``fidelity`` and ``latent`` to the ``haystack-corrector`` sub-command parser."""
    demo = commands.add_parser(
        "demo",
        help="short offline run on the shipped SciFact subset (four arms, about 3-4 minutes on 2 cores)",
        description="Fine-tune all-MiniLM-L6-v2 briefly with static and with corrector negatives "
        "on a shipped SciFact subset; print a table and write plots.",
    )
    demo.add_argument("--output", default="haystack-corrector-demo", help="folder for the demo's files")
    demo.add_argument("--steps", type=int, default=24, help="training steps per run")
    demo.add_argument("--model", default=None, help=argparse.SUPPRESS)
    demo.add_argument("--fresh", action="store_true", help="discard results of an earlier demo in --output")
    demo.add_argument(
        "--bf16",
        action="store_true",
        help="train and encode under bfloat16 autocast where the CPU/GPU has bfloat16 units (a separate --output)",
    )
    demo.set_defaults(handler=cmd_demo)

    experiment = commands.add_parser(
        "experiment",
        help="compare negative strategies (arms) on a BEIR dataset",
        description="Train the same encoder with each arm and seed; resumable.",
    )
    _experiment_arguments(experiment)
    experiment.set_defaults(handler=cmd_experiment)

    fidelity = commands.add_parser(
        "fidelity", help="measure how well the corrector recovers fresh rankings after drift"
    )
    _experiment_arguments(fidelity, arms=False)
    fidelity.add_argument("--arm", default="inbatch", help="arm to train with (default inbatch)")
    fidelity.add_argument("--seed", type=int, default=0)
    fidelity.add_argument("--fit-epochs", type=int, default=50)
    fidelity.add_argument(
        "--fit-listwise-weights",
        type=float,
        nargs="+",
        default=[0.0, 0.1],
        help="one offline corrector per weight: MSE + weight x listwise over each step's rows",
    )
    fidelity.add_argument(
        "--fit-sample-listwise-weight",
        type=float,
        default=1.0,
        help="one more offline corrector: MSE + weight x listwise in which the training queries rank every touched "
        "row (0 turns it off)",
    )
    fidelity.set_defaults(handler=cmd_fidelity, output="runs/fidelity")
    add_latent_command(commands)
