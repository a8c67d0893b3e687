"""The bfloat16 first pass of blocked_topk: its rounding bound, and that it returns the exact float32 top k."""

from __future__ import annotations

import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector import search as search_module
from haystack_corrector.search import _bf16_topk, _exclusion_pairs, bf16_error_bound, blocked_topk, first_pass_error


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


@pytest.mark.parametrize("normalize", [True, False])
def test_the_first_pass_alone_ranks_within_its_error_bound(monkeypatch, normalize):
    # exact=False: the top k by the bfloat16 value f alone, f as the score. Oracle: f is within e of the exact float32
    # score (first_pass_error), so every row it returns is within 2e of the exact k-th score and every row clear of
    # the exact k-th by 2e is returned; exclusions hold; with fewer allowed rows than k the rest is -inf / -1.
    monkeypatch.setattr(search_module, "bf16_supported", lambda device: True)  # (the ops run anywhere, if slower)
    generator = torch.Generator().manual_seed(4)
    rows = torch.randn(3000, 64, generator=generator) * torch.rand(3000, 1, generator=generator) * 3
    queries = torch.randn(8, 64, generator=generator)
    excluded = [set(torch.randint(3000, (30,), generator=generator).tolist()) for _ in range(8)]
    kwargs = {"normalize": normalize, "scan_dtype": torch.bfloat16}
    scores, found = blocked_topk(queries, _blocks(rows, 700), 10, excluded, exact=False, **kwargs)
    exact = (queries @ (torch.nn.functional.normalize(rows, dim=1) if normalize else rows).T).double()
    scale = queries.norm(dim=1) * (1.0 if normalize else float(rows.norm(dim=1).max()))
    if normalize:
        exact = exact / queries.norm(dim=1, keepdim=True)
        scale = torch.ones(8)
    for query in range(8):
        e = first_pass_error(64, normalize) * float(scale[query])
        allowed = [r for r in range(3000) if r not in excluded[query]]
        ranked = sorted(allowed, key=lambda r: -float(exact[query, r]))
        kth = float(exact[query, ranked[9]])
        got = found[query].tolist()
        assert not set(got) & excluded[query]
        assert all(abs(float(scores[query, i]) - float(exact[query, r])) <= e for i, r in enumerate(got))
        assert all(float(exact[query, r]) >= kth - 2 * e for r in got)
        assert {r for r in ranked[:10] if float(exact[query, r]) > kth + 2 * e} <= set(got)
    assert found.unique().numel() > 10  # the queries do not all share one answer
    few = [set(range(2995)) for _ in range(8)]  # 5 allowed rows, k = 10
    scores, found = blocked_topk(queries, _blocks(rows, 700), 10, few, exact=False, partial=True, **kwargs)
    assert (found[:, 5:] == -1).all() and (scores[:, 5:] == -torch.inf).all()
    assert sorted(found[0, :5].tolist()) == list(range(2995, 3000))


def _near_tie_rows_and_queries():
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(1, 64, generator=generator)
    rows = torch.cat(
        [base + 1e-4 * torch.randn(600, 64, generator=generator), torch.randn(400, 64, generator=generator)]
    )
    return rows, torch.cat([base, torch.randn(3, 64, generator=generator)])


def _spy_on_rescans(monkeypatch) -> list[int]:
    calls: list[int] = []
    exact_scan = search_module._exact_topk

    def spy(queries, *args, **kwargs):
        calls.append(queries.shape[0])
        return exact_scan(queries, *args, **kwargs)

    monkeypatch.setattr(search_module, "_exact_topk", spy)
    return calls


def test_near_ties_in_the_first_block_are_rescored_by_its_own_threshold(monkeypatch):
    """Hundreds of rows within the rounding bound of the k-th score from the first block on: once the first block's
    top rows give k exact scores, the rest of that block is re-scored above the threshold, so nothing is rescanned."""
    rows, queries = _near_tie_rows_and_queries()
    calls = _spy_on_rescans(monkeypatch)
    got = _bf16_topk(queries, _blocks(rows, 250), 5, [set()] * 4, normalize=True, partial=False)
    assert calls == []
    monkeypatch.undo()
    _assert_same_top_k(got, _exact(queries, rows, 5, [set()] * 4, True))


def test_near_ties_fall_back_to_float32_and_stay_exact(monkeypatch):
    """While one query has no k scores yet (its exclusions cover the first block), the near-tie query's rows left
    behind in that block break its proof: that query alone is scanned again in float32, and the result is exact."""
    rows, queries = _near_tie_rows_and_queries()
    excluded = [set(), set(), set(), set(range(250))]
    calls = _spy_on_rescans(monkeypatch)
    got = _bf16_topk(queries, _blocks(rows, 250), 5, excluded, normalize=True, partial=False)
    assert calls == [1]  # the near-tie query, scanned again in float32
    monkeypatch.undo()
    _assert_same_top_k(got, _exact(queries, rows, 5, excluded, True))


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


def test_the_cosine_first_pass_error_holds_for_measured_errors():
    """The value the cosine pass ranks by (bfloat16 product rescaled by a bfloat16 inverse norm) against the float32
    score of normalised vectors, over 10,000 pairs of vectors of unequal norms."""
    from haystack_corrector.search import first_pass_error

    generator = torch.Generator().manual_seed(7)
    q = torch.nn.functional.normalize(torch.randn(100, 384, generator=generator), dim=1)
    x = torch.randn(100, 384, generator=generator) * torch.rand(100, 1, generator=generator) * 4
    norms = x.norm(dim=1)
    first = (x.to(torch.bfloat16) @ q.to(torch.bfloat16).T) * (1.0 / norms).to(torch.bfloat16)[:, None]
    exact = q @ torch.nn.functional.normalize(x, dim=1).T
    error = (first.float().T - exact).abs()
    bound = first_pass_error(384, normalize=True) * q.norm(dim=1, keepdim=True)
    assert bool((error <= bound).all()), float((error / bound).max())
    assert float((error / bound).max()) > 0.01


def test_near_ties_in_every_block_are_rescored_without_a_second_scan(monkeypatch):
    """Once a query holds k exact scores, every row within the bound of the k-th is re-scored (the threshold path):
    hundreds of near-ties spread over all blocks stay exact and need no float32 rescan."""
    generator = torch.Generator().manual_seed(8)
    base = torch.randn(1, 64, generator=generator)
    near = base + 1e-4 * torch.randn(900, 64, generator=generator)
    rows = torch.cat([near, torch.randn(2100, 64, generator=generator)])[torch.randperm(3000, generator=generator)]
    queries = torch.cat([base, torch.randn(3, 64, generator=generator)])
    calls = {"exact": 0, "threshold": 0}
    exact_scan, threshold = search_module._exact_topk, search_module._above_threshold

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(search_module, "_exact_topk", count("exact", exact_scan))
    monkeypatch.setattr(search_module, "_above_threshold", count("threshold", threshold))
    # top_k = 40 > RESCORE_MARGIN: the first block's (250 rows, ~75 near-ties) top rows fill the top k; the rest of
    # that block and all 11 later blocks compare against the threshold.
    got = _bf16_topk(queries, _blocks(rows, 250), 40, [set()] * 4, normalize=True, partial=False)
    assert calls["threshold"] == 12 and calls["exact"] == 0
    monkeypatch.setattr(search_module, "_exact_topk", exact_scan)
    _assert_same_top_k(got, _exact(queries, rows, 40, [set()] * 4, True))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_a_bfloat16_view_is_searched_exactly(similarity):
    """materialize(dtype="bfloat16"): the default search reads it with the bfloat16 pass and returns the exact float32
    top k of the stored (bfloat16) rows, exclusions included."""
    generator = torch.Generator().manual_seed(9)
    store = CorrectedCacheStore(torch.randn(4000, 48, generator=generator), block_size=600, similarity=similarity)
    with torch.no_grad():
        for parameter in store.corrector.parameters():
            parameter.normal_(0, 0.05, generator=generator)
    store.materialize(dtype="bfloat16")
    view = store.views.view
    assert view.dtype == "bfloat16" and view.data.dtype == torch.bfloat16
    torch.testing.assert_close(view.norms, view.data.float().norm(dim=1))
    queries = torch.randn(12, 48, generator=generator)
    excluded = [set(torch.randint(4000, (15,), generator=generator).tolist()) for _ in range(12)]
    expected = _exact(queries, view.data.float(), 9, excluded, similarity == "cosine")
    _assert_same_top_k(store.search(queries, 9, exclude=excluded), expected)
    _assert_same_top_k(store.search(queries, 9, exclude=excluded, scan_dtype=torch.float32), expected)


def test_a_bfloat16_view_on_disk_is_uint16_bits_and_reads_back_the_same(tmp_path):
    import numpy as np

    generator = torch.Generator().manual_seed(10)
    store = CorrectedCacheStore(torch.randn(3000, 32, generator=generator), block_size=512, dtype="float16")
    with torch.no_grad():
        for parameter in store.corrector.parameters():
            parameter.normal_(0, 0.05, generator=generator)
    store.materialize(dtype="bfloat16")
    in_memory = store.views.view.data.clone()
    queries = torch.randn(6, 32, generator=generator)
    expected = store.search(queries, 8)
    store.materialize(tmp_path / "view.npy")  # the same dtype as before, now in a file
    on_disk = np.load(tmp_path / "view.npy", mmap_mode="r")
    assert on_disk.dtype == np.uint16 and on_disk.shape == (3000, 32)
    assert torch.equal(torch.from_numpy(np.array(on_disk)).view(torch.bfloat16), in_memory)
    got = store.search(queries, 8)
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


def test_bfloat16_materialisation_adds_less_error_than_bfloat16_rounding(monkeypatch):
    """Under bfloat16 autocast (where supported) the view's rows are within twice the bfloat16 rounding of the float32
    corrector's output (autocast adds less than the rounding itself); without bfloat16 units they are exactly that
    rounding. The corrector moves rows by about 40% of their norm, as a trained one does on CoSQA."""
    import haystack_corrector.corrected_view as view_module

    generator = torch.Generator().manual_seed(11)
    stale = torch.nn.functional.normalize(torch.randn(5000, 64, generator=generator), dim=1)
    store = CorrectedCacheStore(stale, block_size=1000, corrector=Corrector(64, hidden_dim=128))
    with torch.no_grad():
        store.corrector.residual[-1].weight.normal_(0, 0.06, generator=generator)
    reference = store.corrected_embeddings()  # float32
    moved = float(((reference - stale).norm(dim=1) / stale.norm(dim=1)).mean())
    assert 0.2 < moved < 0.8, moved
    rounding = float(((reference.bfloat16().float() - reference).norm(dim=1) / reference.norm(dim=1)).mean())
    monkeypatch.setattr(view_module, "bf16_supported", lambda device: True)
    store.materialize(dtype="bfloat16")
    computed = store.views.view.data
    assert not torch.equal(computed, reference.bfloat16())  # autocast ran
    error = float(((computed.float() - reference).norm(dim=1) / reference.norm(dim=1)).mean())
    assert error < 2 * rounding, (error, rounding)
    monkeypatch.setattr(view_module, "bf16_supported", lambda device: False)
    store.materialize(dtype="bfloat16")
    assert torch.equal(store.views.view.data, reference.bfloat16())


def test_an_old_view_is_refreshed_in_its_own_dtype():
    store = CorrectedCacheStore(torch.randn(500, 16), block_size=128)
    store.materialize(dtype="bfloat16")
    store.corrector.steps += 3
    store.search(torch.randn(2, 16), 4, max_view_age=1)
    assert store.view_age == 0 and store.views.view.dtype == "bfloat16"


def test_bad_view_dtype():
    store = CorrectedCacheStore(torch.randn(50, 8))
    with pytest.raises(ValueError, match="dtype"):
        store.materialize(dtype="float64")


def test_exclusion_pairs_are_every_pair_sorted_by_row_then_query():
    generator = torch.Generator().manual_seed(3)
    excluded = [set(torch.randint(50, (int(n),), generator=generator).tolist()) for n in (0, 7, 30, 1, 12)]
    rows, queries = _exclusion_pairs(excluded)
    expected = sorted((row, query) for query, members in enumerate(excluded) for row in members)
    assert list(zip(rows.tolist(), queries.tolist())) == expected
    assert rows.dtype == queries.dtype == torch.int64
    empty_rows, empty_queries = _exclusion_pairs([set(), set()])
    assert empty_rows.numel() == empty_queries.numel() == 0
