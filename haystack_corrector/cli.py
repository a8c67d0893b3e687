"""The ``haystack-corrector`` command line: the parser, the corpus commands (build-cache, mine, evaluate), and errors.

The experiment commands (demo, experiment, fidelity) live in ``experiments/commands.py``. Every command answers bad
input with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from haystack_corrector.__about__ import __version__
from haystack_corrector.experiments.commands import add_experiment_commands

# The CLI never downloads weights or datasets: everything it needs is local (see the README).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DESCRIPTION = (
    "Fresh hard negatives from a stale embedding cache: a corrector network maps cached target embeddings "
    "to the current encoder's space (Monath et al., ICML 2024)."
)


# ----------------------------------------------------------------------------------------------------- commands
def cmd_build_cache(args: argparse.Namespace) -> int:
    from haystack_corrector import CorrectedCacheStore
    from haystack_corrector.beir import document_text, load_beir
    from haystack_corrector.sentence_transformers import encode_corpus
    from haystack_corrector.sentence_transformers.model_loading import load_model, resolve_model_path

    CorrectedCacheStore.check_save_path(args.output, overwrite=args.overwrite)  # before the encode, not after
    corpus, _, _ = load_beir(args.data, args.split, max_tokens=args.max_seq_length)
    model = load_model(resolve_model_path(args.model), args.max_seq_length)
    ids = list(corpus)
    start = time.perf_counter()
    store = encode_corpus(
        model,
        [document_text(corpus[i]) for i in ids],
        ids=ids,
        batch_size=args.batch_size,
        dtype=args.dtype,
        hidden_dim=args.hidden_dim,
    )
    store.save(args.output, overwrite=args.overwrite)
    print(f"Encoded {len(store)} documents in {time.perf_counter() - start:.0f} s; saved the store to {args.output}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:

    from haystack_corrector import CorrectedCacheStore, HardNegativeSampler
    from haystack_corrector._atomic import check_parent
    from haystack_corrector.beir import load_beir
    from haystack_corrector.sentence_transformers.model_loading import load_model, resolve_model_path

    output = Path(args.output)
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; give the path of a JSONL file")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {output} exists; choose a new file or pass --overwrite to replace it")
    check_parent(output.resolve())  # a parent that is a file, not writable, or a name too long: before the work
    store = CorrectedCacheStore.load(args.store)
    if store.texts is None:
        raise ValueError(f"The store {args.store} has no texts; build it with `haystack-corrector build-cache`")
    _, queries, qrels = load_beir(args.data, args.split, max_tokens=args.max_seq_length)
    model = load_model(resolve_model_path(args.model), args.max_seq_length)
    sampler = HardNegativeSampler(
        store,
        num_negatives=args.num_negatives,
        sampling_strategy=args.sampling_strategy,
        temperature=args.temperature,
        range_min=args.range_min,
        range_max=args.range_max,
        absolute_margin=args.absolute_margin,
        relative_margin=args.relative_margin,
        max_score=args.max_score,
        min_score=args.min_score,
        corrected=not args.stale,
        seed=args.seed,
        fill_missing=args.fill_missing,
    )
    sampler.raise_when_unfillable = False  # a query that cannot be filled is dropped and counted, never fatal
    pairs, not_in_store = query_positive_rows(store, queries, qrels)
    if not pairs:
        raise ValueError(
            f"None of the {sum(len(j) for j in qrels.values())} judged documents of {args.data} [{args.split}] is in "
            f"the store {args.store}: were they built from the same corpus?"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        written, short = _write_negatives(partial, pairs, model, sampler, queries, store)
    except BaseException:
        partial.unlink(missing_ok=True)  # our own temporary file, never the user's --output
        raise
    os.replace(partial, output)  # a killed run leaves no half-written file under the name asked for
    stats = sampler.stats
    print(
        f"Wrote {written} rows (anchor, positive, negative_1..{args.num_negatives}) to {args.output} "
        f"from the {'stale' if args.stale else 'corrected'} cache."
    )
    dropped = [
        f"{short[0]} queries ({short[1]} pairs) because the window and filters left fewer than "
        f"{args.num_negatives} candidates" + ("" if args.fill_missing else " (--fill-missing fills them at random)"),
        f"{not_in_store} judged pairs whose positive is not in the store",
    ]
    print("Dropped " + "; ".join(dropped) + ".")
    if stats["filled_negatives"]:
        print(f"Filled {stats['filled_negatives']} negatives ({stats['filled_queries']} queries) with random rows.")
    if not written:
        print("Nothing to train on: loosen the filters (--min-score, --max-score, margins) or widen --range-max.")
    print(f'Load it with: datasets.load_dataset("json", data_files="{args.output}")["train"]')
    return 0


def _write_negatives(path, pairs, model, sampler, queries, store) -> tuple[int, tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Write one JSONL row (anchor, positive, negative_1..k) per (query, positive) pair whose query got all k
    negatives (``mine_hard_negatives`` drops the others too); return the row count and the (queries, pairs) dropped."""
    from tqdm.auto import tqdm

    from haystack_corrector.sampler import MISSING

    written = short_queries = short_pairs = 0
    with open(path, "w", encoding="utf-8") as handle:
        for start in tqdm(range(0, len(pairs), 256), desc="Mining", unit="batch"):
            chunk = pairs[start : start + 256]
            embeddings = model.encode([queries[q] for q, _ in chunk], convert_to_tensor=True).float().cpu()
            negatives = sampler.sample(embeddings, [rows for _, rows in chunk])
            for (query_id, rows), negative_rows in zip(chunk, negatives.tolist()):
                if MISSING in negative_rows:
                    short_queries += 1
                    short_pairs += len(rows)
                    continue
                for row in rows:
                    record = {"anchor": queries[query_id], "positive": store.texts[row]}
                    record.update({f"negative_{i + 1}": store.texts[n] for i, n in enumerate(negative_rows)})
                    handle.write(json.dumps(record) + "\n")
                    written += 1
    return written, (short_queries, short_pairs)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from haystack_corrector import CorrectedCacheStore
    from haystack_corrector.beir import document_text, load_beir
    from haystack_corrector.evaluation import retrieval_metrics, run_from_search
    from haystack_corrector.sentence_transformers.encode import model_similarity
    from haystack_corrector.sentence_transformers.model_loading import load_model, resolve_model_path

    corpus, queries, qrels = load_beir(args.data, args.split, max_tokens=args.max_seq_length)
    model = load_model(resolve_model_path(args.model), args.max_seq_length)
    if args.store:
        store = CorrectedCacheStore.load(args.store)
        source = f"store {args.store} ({'corrected' if not args.stale else 'stale'})"
    else:
        ids = list(corpus)
        docs = (
            model.encode(
                [document_text(corpus[i]) for i in ids],
                batch_size=args.batch_size,
                convert_to_tensor=True,
                show_progress_bar=True,
            )
            .float()
            .cpu()
        )
        store = CorrectedCacheStore(docs, ids=ids, similarity=model_similarity(model))
        source = f"documents encoded with the model ({store.similarity} similarity)"
    known = set(store.ids)
    if not any(doc in known for judged in qrels.values() for doc in judged):
        raise ValueError(
            f"None of the judged documents of {args.data} [{args.split}] is in the store {args.store}: were they built "
            "from the same corpus?"
        )
    query_ids = list(queries)
    embeddings = (
        model.encode([queries[q] for q in query_ids], batch_size=args.batch_size, convert_to_tensor=True).float().cpu()
    )
    scores, rows = store.search(embeddings, min(100, len(store)), corrected=bool(args.store) and not args.stale)
    means, _ = retrieval_metrics(run_from_search(scores, rows, query_ids, list(store.ids)), qrels)
    print(f"{args.data} [{args.split}], {len(query_ids)} queries, {source}:")
    print("  " + "  ".join(f"{name} {value:.4f}" for name, value in means.items()))
    return 0


def query_positive_rows(store, queries, qrels):  # type: ignore[no-untyped-def]
    """(query id, rows of its positive documents in ``store``) for every judged query, and the number of judged
    (query, positive) pairs left out because the positive is not in the store; one id lookup per pair."""
    known = set(store.ids)  # built once: a membership test per (query, document) pair stays O(1)
    pairs = []
    missing = 0
    for query_id, judged in qrels.items():
        if query_id not in queries:
            continue
        positives = [doc for doc, grade in judged.items() if grade > 0]
        docs = [doc for doc in positives if doc in known]
        missing += len(positives) - len(docs)
        if docs:
            pairs.append((query_id, store.rows_of(docs)))
    return pairs, missing


# ------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haystack-corrector", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"haystack-corrector {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    add_experiment_commands(commands)  # demo, experiment, fidelity, latent: haystack_corrector/experiments/commands.py

    build = commands.add_parser("build-cache", help="encode a BEIR corpus into a saved store")
    build.add_argument("--data", required=True)
    build.add_argument("--split", default="test", help="split whose qrels must exist (the corpus is shared)")
    build.add_argument("--model", default=None)
    build.add_argument("--output", required=True, help="directory for the store")
    build.add_argument("--max-seq-length", type=int, default=128)
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    build.add_argument("--hidden-dim", type=int, default=None)
    build.add_argument(
        "--overwrite",
        action="store_true",
        help="save into a folder that holds other files too (only the store's own files are replaced)",
    )
    build.set_defaults(handler=cmd_build_cache)

    mine = commands.add_parser("mine", help="write hard negatives (sentence-transformers n-tuple JSONL) from a store")
    mine.add_argument("--store", required=True, help="store saved by build-cache (or by training)")
    mine.add_argument("--data", required=True)
    mine.add_argument("--split", default="train")
    mine.add_argument("--model", default=None, help="query encoder (default all-MiniLM-L6-v2)")
    mine.add_argument("--output", required=True, help="JSONL file (refused if it exists, unless --overwrite)")
    mine.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    mine.add_argument("--num-negatives", type=int, default=1, help="negatives per row (default 1, as the loss)")
    mine.add_argument("--sampling-strategy", default="top", choices=["top", "gumbel", "random"])
    mine.add_argument("--temperature", type=float, default=0.05)
    mine.add_argument("--range-min", type=int, default=0)
    mine.add_argument("--range-max", type=int, default=None)
    mine.add_argument("--absolute-margin", type=float, default=None)
    mine.add_argument("--relative-margin", type=float, default=None)
    mine.add_argument("--max-score", type=float, default=None)
    mine.add_argument("--min-score", type=float, default=None)
    mine.add_argument("--stale", action="store_true", help="ignore the store's corrector")
    mine.add_argument(
        "--fill-missing",
        action="store_true",
        help="fill what the window and filters cannot provide with random rows instead of dropping the query",
    )
    mine.add_argument("--seed", type=int, default=0)
    mine.add_argument("--max-seq-length", type=int, default=128)
    mine.set_defaults(handler=cmd_mine)

    evaluate = commands.add_parser("evaluate", help="nDCG@10 / Recall@100 / MRR@10 of a model or store on a BEIR split")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--model", default=None, help="encoder for queries (and documents without --store)")
    evaluate.add_argument("--store", default=None, help="score a saved store instead of encoding the corpus")
    evaluate.add_argument("--stale", action="store_true", help="with --store: ignore its corrector")
    evaluate.add_argument("--max-seq-length", type=int, default=128)
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.set_defaults(handler=cmd_evaluate)
    return parser


@contextmanager
def _quiet_console(args: argparse.Namespace) -> Iterator[None]:
    """Without ``--verbose``: other libraries' INFO lines off the console while the command runs, and for the harness
    commands only warnings and arm boundaries (every line still reaches ``<output>/run.log``). Undone afterwards, so
    that calling :func:`main` from Python leaves the caller's logging as it was."""
    if args.verbose:
        yield
        return
    noisy = {
        name: logging.getLogger(name).level for name in ("sentence_transformers", "transformers", "httpx", "datasets")
    }
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)
    handlers: list[logging.Handler] = []
    transformers_logging: Any = None
    if getattr(args, "command", None) in ("demo", "experiment", "fidelity", "latent"):
        from transformers.utils import logging as hf_logging

        from haystack_corrector.experiments.console import console_filter

        transformers_logging = hf_logging
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(console_filter)
        transformers_logging.disable_progress_bar()  # "Loading weights" at every arm
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(console_filter)
        if transformers_logging is not None:
            transformers_logging.enable_progress_bar()
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        with _quiet_console(args):
            return int(args.handler(args) or 0)
    except KeyError as exc:  # str(KeyError) is the repr of its message
        print(f"haystack-corrector: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"haystack-corrector: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
