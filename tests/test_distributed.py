"""Sharded search with 2 gloo processes spawned by the test equals single-process search."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector.distributed import shard_bounds, sharded_search


def _data():
    generator = torch.Generator().manual_seed(0)
    corrector = Corrector(8, hidden_dim=16)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    embeddings = torch.randn(101, 8, generator=generator)
    queries = [torch.randn(5, 8, generator=generator), torch.randn(3, 8, generator=generator)]  # uneven batches
    exclude = [[[0, 50, 100], [], [7], [60, 61], []], [[99], [], [1, 2, 3, 4, 5]]]  # different widths per rank
    return corrector, embeddings, queries, exclude


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        corrector, embeddings, queries, exclude = _data()
        start, end = shard_bounds(len(embeddings), world, rank)
        shard = CorrectedCacheStore(embeddings[start:end], corrector=corrector, block_size=16)
        scores, rows = sharded_search(shard, start, queries[rank], 7, exclude=exclude[rank])
        out[rank] = (scores, rows)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_bounds_cover_all_rows_contiguously():
    bounds = [shard_bounds(10, 3, r) for r in range(3)]
    assert bounds == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError):
        shard_bounds(10, 3, 3)


def test_two_gloo_ranks_equal_single_process_search():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    corrector, embeddings, queries, exclude = _data()
    single = CorrectedCacheStore(embeddings, corrector=corrector)
    for rank in range(2):
        expected_scores, expected_rows = single.search(queries[rank], 7, exclude=exclude[rank])
        scores, rows = out[rank]
        torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
        # tie-aware: every returned row has the score reported for it
        for q in range(rows.shape[0]):
            assert set(rows[q].tolist()) == set(expected_rows[q].tolist()) or torch.allclose(
                scores[q], expected_scores[q]
            )
            assert not set(rows[q].tolist()) & set(exclude[rank][q])


# --------------------------------------------------------------------------- ShardedCacheStore + CorrectorTrainer
def _trainer_batches():
    generator = torch.Generator().manual_seed(5)
    rows = [torch.tensor([3, 60, 10, 90]), torch.tensor([4, 70, 5, 100])]  # equal sizes: mean of means = full mean
    fresh = [torch.randn(4, 8, generator=generator) for _ in rows]
    return rows, fresh


def _sharded_store_worker(rank: int, world: int, port: int, view_dir: str, out: dict) -> None:
    from haystack_corrector import CorrectorTrainer
    from haystack_corrector.distributed import ShardedCacheStore

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        corrector, embeddings, queries, exclude = _data()
        if rank == 1:  # a different corrector on rank 1: creation must broadcast rank 0's
            with torch.no_grad():
                for p in corrector.parameters():
                    p.add_(1.0)
        store = ShardedCacheStore(CorrectedCacheStore(embeddings, corrector=corrector, block_size=16))
        result = {"bounds": (store.row_offset, store.row_offset + len(store.local)), "len": len(store)}
        result["search"] = store.search(queries[rank], 7, exclude=exclude[rank])
        trainer = CorrectorTrainer(store, lr=0.05)
        rows, fresh = _trainer_batches()
        for _ in range(2):
            trainer.observe(rows[rank], fresh[rank])
        result["corrector"] = {k: v.clone() for k, v in store.corrector.state_dict().items()}
        store.materialize(os.path.join(view_dir, "view.npy"))
        result["view_search"] = store.search(queries[rank], 7, exclude=exclude[rank], max_view_age=3)
        result["view_file"] = os.path.exists(os.path.join(view_dir, f"view.rank{rank}.npy"))
        trainer.observe(rows[rank], fresh[rank])  # the view is one update old now
        result["rescored_search"] = store.search(
            queries[rank], 7, exclude=exclude[rank], max_view_age=3, view_rescore_depth=60
        )  # 60 >= either shard's rows: every local row re-scored, exact for the current corrector
        store.materialize(dtype="bfloat16")  # dtype and scan_dtype reach each rank's shard
        result["bf16_view_dtype"] = store.local.views.view.dtype
        result["bf16_view_search"] = store.search(queries[rank], 7, exclude=exclude[rank], scan_dtype=torch.bfloat16)
        out[rank] = result
    finally:
        dist.destroy_process_group()


def test_sharded_store_search_and_corrector_training_equal_one_process(tmp_path):
    from haystack_corrector import CorrectorTrainer

    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_sharded_store_worker, args=(2, _free_port(), str(tmp_path), out), nprocs=2, join=True)
    corrector, embeddings, queries, exclude = _data()
    single = CorrectedCacheStore(embeddings, corrector=corrector)
    assert out[0]["bounds"] == (0, 51) and out[1]["bounds"] == (51, 101) and out[1]["len"] == 101
    for rank in range(2):
        expected = single.search(queries[rank], 7, exclude=exclude[rank])
        torch.testing.assert_close(out[rank]["search"][0], expected[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out[rank]["search"][1], expected[1])
    # One process training on both ranks' batches at once takes the same steps as the two ranks together.
    rows, fresh = _trainer_batches()
    trainer = CorrectorTrainer(single, lr=0.05)
    for _ in range(2):
        trainer.observe(torch.cat(rows), torch.cat(fresh))
    for rank in range(2):
        for key, value in single.corrector.state_dict().items():
            torch.testing.assert_close(out[rank]["corrector"][key], value, atol=1e-6, rtol=1e-5)
        expected = single.search(queries[rank], 7, exclude=exclude[rank])
        torch.testing.assert_close(out[rank]["view_search"][0], expected[0], atol=1e-5, rtol=1e-5)
        assert out[rank]["view_file"]
    trainer.observe(torch.cat(rows), torch.cat(fresh))
    for rank in range(2):
        expected = single.search(queries[rank], 7, exclude=exclude[rank])
        torch.testing.assert_close(out[rank]["rescored_search"][0], expected[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out[rank]["rescored_search"][1], expected[1])
    single.materialize(dtype="bfloat16")
    for rank in range(2):
        expected = single.search(queries[rank], 7, exclude=exclude[rank], scan_dtype=torch.bfloat16)
        assert out[rank]["bf16_view_dtype"] == "bfloat16"
        torch.testing.assert_close(out[rank]["bf16_view_search"][0], expected[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out[rank]["bf16_view_search"][1], expected[1])


def test_sharded_store_needs_a_process_group():
    from haystack_corrector.distributed import ShardedCacheStore

    with pytest.raises(RuntimeError, match="initialised torch.distributed process group"):
        ShardedCacheStore(CorrectedCacheStore(torch.randn(4, 2)))


# --------------------------------------------------------------------------- the loss under DDP
def _loss_setup(model_folder: str):
    from haystack_corrector.beir import document_text
    from haystack_corrector.sentence_transformers import build_training_dataset, encode_corpus
    from tests.tiny_model import load_tiny_model, toy_corpus

    model = load_tiny_model(model_folder)
    corpus, queries, qrels = toy_corpus()
    ids = list(corpus)
    torch.manual_seed(0)  # the store's fresh corrector: the same initial weights in every process
    store = encode_corpus(model, [document_text(corpus[i]) for i in ids], ids=ids, show_progress_bar=False)
    dataset = build_training_dataset(queries, corpus, qrels, store)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the encoder drifts after the cache was built, so the corrector has something to learn
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model, store, dataset


def _run_loss(loss, model, batches, record):
    original = loss.source.sampler.sample

    def recording(queries, positives):
        rows = original(queries, positives)
        record.append(rows.clone())
        return rows

    loss.source.sampler.sample = recording
    model.train()
    for batch in batches:
        features = [model.preprocess(batch["anchor"]), model.preprocess(batch["positive"])]
        loss(features, None).backward()


def _ddp_loss_worker(rank: int, world: int, port: int, model_folder: str, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from haystack_corrector.distributed import ShardedCacheStore
    from haystack_corrector.sentence_transformers import CorrectedMultipleNegativesRankingLoss
    from haystack_corrector.sentence_transformers.negatives.source import no_grad_encoder

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, store, dataset = _loss_setup(model_folder)
        loss = CorrectedMultipleNegativesRankingLoss(
            model, store, num_negatives=2, train_dataset=dataset, negatives="corrector", corrector_lr=0.01
        )
        # What SentenceTransformerTrainer does under DDP: the loss (and the loss it wraps) get the wrapped model.
        wrapped = DistributedDataParallel(model, find_unused_parameters=True)  # as the HF Trainer sets it
        wrapped.preprocess = model.preprocess
        loss.model = wrapped
        loss.loss.model = wrapped
        record: list[torch.Tensor] = []
        batches = [dataset.select(range(start + 4 * rank, start + 4 * rank + 4)) for start in (0, 8)]
        _run_loss(loss, model, batches, record)
        out[rank] = {
            "sharded": isinstance(loss.store, ShardedCacheStore),
            "bounds": (loss.store.row_offset, loss.store.row_offset + len(loss.store.local)),
            "negatives": record,
            "corrector": {k: v.clone() for k, v in loss.store.corrector.state_dict().items()},
            "static": no_grad_encoder(loss.model, 8)(["works through the DDP wrapper"]).shape,
        }
    finally:
        dist.destroy_process_group()


def test_loss_under_ddp_samples_from_the_global_cache_like_one_process(tiny_model_folder):
    pytest.importorskip("sentence_transformers")
    from haystack_corrector.sentence_transformers import CorrectedMultipleNegativesRankingLoss

    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_loss_worker, args=(2, _free_port(), str(tiny_model_folder), out), nprocs=2, join=True)
    # One process, whole batches (both ranks' halves): same negatives per anchor, same corrector after the steps.
    model, store, dataset = _loss_setup(str(tiny_model_folder))
    loss = CorrectedMultipleNegativesRankingLoss(
        model, store, num_negatives=2, train_dataset=dataset, negatives="corrector", corrector_lr=0.01
    )
    record: list[torch.Tensor] = []
    _run_loss(loss, model, [dataset.select(range(start, start + 8)) for start in (0, 8)], record)
    outside_own_shard = 0
    for rank in range(2):
        assert out[rank]["sharded"] and out[rank]["static"][0] == 1
        start, end = out[rank]["bounds"]
        for step in range(2):
            rows = out[rank]["negatives"][step]
            assert torch.equal(rows, record[step][4 * rank : 4 * rank + 4])
            outside_own_shard += int(((rows < start) | (rows >= end)).sum())
        for key, value in store.corrector.state_dict().items():
            torch.testing.assert_close(out[rank]["corrector"][key], value, atol=1e-6, rtol=1e-5)
    assert outside_own_shard > 0  # the ranks really sampled from each other's shards
    assert any((value != 0).any() for key, value in store.corrector.state_dict().items() if "2" in key)


def test_sentence_transformers_trainer_under_torchrun_samples_through_the_sharded_store(tiny_model_folder, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(repo / "tests" / "ddp_training_script.py"),
        str(tiny_model_folder),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for seen in ranks:
        assert seen["world_size"] == 2 and seen["sharded"] and seen["corrector_steps"] == 4
        assert seen["logged_staleness"] and all(value > 0 for value in seen["logged_staleness"])
    # Both ranks end with the same corrector (trained on both ranks' targets), and it did learn.
    for a, b in zip(ranks[0]["corrector"], ranks[1]["corrector"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=1e-5)
    assert any(value != 0.0 for value in ranks[0]["corrector"][-1])
