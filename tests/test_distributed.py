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
