"""What re-encoding the corpus every N steps costs against the default's per-step candidate encodes, by corpus size
(issue 39, item 4; the table in docs/results.md).

Arithmetic over measured rates, not a measurement: pass the rates measured on your hardware.

- ``--encode-docs-per-second``: a corpus encode's throughput (``benchmarks/encode_throughput.py``, bfloat16 row);
- ``--corrector-rows-per-second``: applying the corrector to cache rows (``benchmarks/corrector_cost.py``);
- ``--candidate-seconds-per-step``: the default's candidate encodes per training step
  (``benchmarks/loss_step_overhead.py``, "of which re-encoding the candidates").

Per training step, both methods search the cache for every anchor (the same cost, left out). On top of that:

- ``refresh:N`` re-encodes every document every N steps: ``D / N`` encodes per step, amortised;
- the default (``corrector+rerank:L``) re-encodes ``B x L`` candidates per step, whatever D is, and keeps a
  corrected view at most K corrector steps old (``max_view_age=K``): ``D`` corrector rows every K steps. At D rows
  that upkeep grows with the corpus too, but at the corrector's rate, hundreds of times the encoder's.

The break-even corpus size is the D at which both cost the same per step:
``D* = B·L·t_enc / (t_enc / N − t_h / K)`` seconds-wise (infinite when the view upkeep alone outgrows the refresh).

    python benchmarks/cost_model.py --encode-docs-per-second 200 --corrector-rows-per-second 70000 \
        --candidate-seconds-per-step 0.4 --batch-size 32 --depth 3 --refresh-every 21 --view-age 20
"""

from __future__ import annotations

import argparse


def per_step_seconds(
    documents: float,
    *,
    encode_docs_per_second: float,
    corrector_rows_per_second: float,
    candidate_seconds_per_step: float,
    refresh_every: int,
    view_age: int,
) -> tuple[float, float]:
    """(refresh:N's corpus encodes, the default's candidate encodes + view upkeep), seconds per training step."""
    refresh = documents / encode_docs_per_second / refresh_every
    default = candidate_seconds_per_step + documents / corrector_rows_per_second / view_age
    return refresh, default


def break_even(
    *,
    encode_docs_per_second: float,
    corrector_rows_per_second: float,
    candidate_seconds_per_step: float,
    refresh_every: int,
    view_age: int,
) -> float:
    """The corpus size (documents) above which refresh:N costs more per step than the default; inf if never."""
    per_document = 1 / encode_docs_per_second / refresh_every - 1 / corrector_rows_per_second / view_age
    return float("inf") if per_document <= 0 else candidate_seconds_per_step / per_document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encode-docs-per-second", type=float, required=True)
    parser.add_argument("--corrector-rows-per-second", type=float, required=True)
    parser.add_argument("--candidate-seconds-per-step", type=float, required=True)
    parser.add_argument("--batch-size", type=int, default=32, help="(for the encode count only)")
    parser.add_argument("--depth", type=int, default=3, help="candidates per anchor (for the encode count only)")
    parser.add_argument("--refresh-every", type=int, nargs="+", default=[21])
    parser.add_argument("--view-age", type=int, default=20)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7, 1e8])
    parser.add_argument("--label", default="", help="the hardware, printed in the heading")
    args = parser.parse_args()
    rates = {
        "encode_docs_per_second": args.encode_docs_per_second,
        "corrector_rows_per_second": args.corrector_rows_per_second,
        "candidate_seconds_per_step": args.candidate_seconds_per_step,
        "view_age": args.view_age,
    }
    print(
        f"# {args.label} encode {args.encode_docs_per_second:g} docs/s, corrector {args.corrector_rows_per_second:g} "
        f"rows/s, candidates {args.candidate_seconds_per_step:g} s/step ({args.batch_size} x {args.depth} "
        f"encodes), view at most {args.view_age} corrector steps old"
    )
    print(
        "| documents | refresh every N steps | refresh: encodes per step | refresh: s/step | default: s/step "
        "(candidates + view upkeep) | refresh / default |"
    )
    print("|---|---|---|---|---|---|")
    for every in args.refresh_every:
        for documents in args.sizes:
            refresh, default = per_step_seconds(documents, refresh_every=every, **rates)
            print(
                f"| {documents:,.0f} | {every} | {documents / every:,.0f} | {refresh:,.1f} | {default:,.2f} | "
                f"{refresh / default:,.0f}x |"
            )
    for every in args.refresh_every:
        size = break_even(refresh_every=every, **rates)
        encodes = args.batch_size * args.depth * every
        print(
            f"break-even at refresh every {every} steps: {size:,.0f} documents "
            f"(encoder work alone: {encodes:,} = B x L x N documents)"
        )


if __name__ == "__main__":
    main()
