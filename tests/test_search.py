"""The bfloat16 first pass of blocked_topk: its rounding bound, and that it returns the exact float32 top k."""

from __future__ import annotations

import pytest
import torch

from haystack_corrector import CorrectedCacheStore
from haystack_corrector import search as search_module
from haystack_corrector.search import _bf16_topk, bf16_error_bound, blocked_topk


def _blocks(rows: torch.Tensor, size: int):
    def make():
        for start in range(0, rows.shape[0], size):
            yield start, min(start + size, rows.shape[0]), rows[start : start + size]

    return make


def _exact(queries, rows, k, excluded, normalize, size=700):
    return blocked_topk(queries, _blocks(rows, size)(), k, excluded, normalize=normalize)


def _assert_same_top_k(got, expected, atol=1e-5):
    """Same scores; the same rows except where two rows' float32 scores tie (within float32 summation order)."""
    (got_scores, got_rows), (scores, rows) = got, expected
    torch.testing.assert_close(got_scores, scores, atol=atol, rtol=1e-6)
    for query in range(rows.shape[0]):
        kth = float(scores[query, -1])
        clear = {int(r) for r, s in zip(rows[query], scores[query]) if float(s) > kth + atol}
        assert clear <= set(got_rows[query].tolist()), query


@pytest.mark.parametrize("dim", [64, 384])
def test_the_bound_holds_for_measured_errors(dim):
    generator = torch.Generator().manual_seed(dim)
    q = torch.randn(100, dim, generator=generator) * torch.rand(100, 1, generator=generator) * 4
    x = torch.randn(100, dim, generator=generator) * torch.rand(100, 1, generator=generator) * 4
    exact = (q.double() @ x.double().T).float()  # 10,000 pairs
    approx = (q.to(torch.bfloat16) @ x.to(torch.bfloat16).T).float()
    bound = bf16_error_bound(dim) * q.norm(dim=1, keepdim=True) * x.norm(dim=1)
    error = (approx - exact).abs()
    assert bool((error <= bound).all()), float((error / bound).max())
    assert float((error / bound).max()) > 0.01  # the bound is not vacuous: errors reach a visible share of it


@pytest.mark.parametrize("normalize", [True, False])
def test_bf16_pass_returns_the_exact_top_k_with_exclusions(normalize):
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(5000, 64, generator=generator)
    queries = torch.randn(16, 64, generator=generator)
    excluded = [set(torch.randint(5000, (20,), generator=generator).tolist()) for _ in range(16)]
    expected = _exact(queries, rows, 10, excluded, normalize)
    got = _bf16_topk(queries, _blocks(rows, 700), 10, excluded, normalize=normalize, partial=False)
    _assert_same_top_k(got, expected)
    assert not {r for query, chosen in enumerate(got[1].tolist()) for r in chosen if r in excluded[query]}


def test_near_ties_fall_back_to_float32_and_stay_exact(monkeypatch):
    """Hundreds of rows within the rounding bound of the k-th score: the proof fails, those queries scan again."""
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(1, 64, generator=generator)
    rows = torch.cat(
        [base + 1e-4 * torch.randn(600, 64, generator=generator), torch.randn(400, 64, generator=generator)]
    )
    queries = torch.cat([base, torch.randn(3, 64, generator=generator)])
    calls = []
    exact_scan = search_module._exact_topk

    def spy(queries, *args, **kwargs):
        calls.append(queries.shape[0])
        return exact_scan(queries, *args, **kwargs)

    monkeypatch.setattr(search_module, "_exact_topk", spy)
    got = _bf16_topk(queries, _blocks(rows, 250), 5, [set()] * 4, normalize=True, partial=False)
    assert calls and calls[0] >= 1  # the near-tie query was scanned again in float32
    monkeypatch.setattr(search_module, "_exact_topk", exact_scan)
    _assert_same_top_k(got, _exact(queries, rows, 5, [set()] * 4, True))


def test_store_search_with_bf16_and_the_forced_fallback(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    store = CorrectedCacheStore(torch.randn(3000, 32, generator=generator), block_size=512)
    queries = torch.randn(8, 32, generator=generator)
    expected = store.search(queries, 7, corrected=False)
    used = []
    real = search_module._bf16_topk
    monkeypatch.setattr(search_module, "_bf16_topk", lambda *a, **k: (used.append(1), real(*a, **k))[1])
    monkeypatch.setattr(search_module, "bf16_supported", lambda device: True)
    _assert_same_top_k(store.search(queries, 7, corrected=False, scan_dtype=torch.bfloat16), expected)
    assert used == [1]
    monkeypatch.setattr(search_module, "bf16_supported", lambda device: False)  # e.g. a CPU without BF16
    _assert_same_top_k(store.search(queries, 7, corrected=False, scan_dtype=torch.bfloat16), expected)
    assert used == [1], "without native bfloat16 the float32 scan runs directly"


def test_the_environment_switch_turns_bf16_off(monkeypatch):
    monkeypatch.setenv("HAYSTACK_CORRECTOR_NO_BF16", "1")
    assert not search_module.bf16_supported("cpu")


def test_bad_scan_dtype():
    rows = torch.randn(10, 4)
    with pytest.raises(ValueError, match="scan_dtype must be torch.bfloat16 or torch.float32"):
        blocked_topk(torch.randn(2, 4), _blocks(rows, 5), 3, [set(), set()], normalize=True, scan_dtype=torch.float16)
    with pytest.raises(TypeError, match="needs blocks as a function"):
        blocked_topk(
            torch.randn(2, 4), _blocks(rows, 5)(), 3, [set(), set()], normalize=True, scan_dtype=torch.bfloat16
        )
