from __future__ import annotations

import numpy as np
import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector
from haystack_corrector.search import first_pass_error
from tests.oracles import assert_topk_matches, naive_scores


def _perturbed_corrector(dim: int, seed: int = 0) -> Corrector:
    corrector = Corrector(dim, hidden_dim=2 * dim)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return corrector


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("with_exclude", [False, True])
@pytest.mark.parametrize("corrected", [False, True])
def test_search_matches_naive_oracle(similarity, dtype, with_exclude, corrected):
    torch.manual_seed(0)
    stale = torch.randn(53, 8)
    corrector = _perturbed_corrector(8)
    # block_size smaller than N so the running top-k merge across blocks is exercised
    store = CorrectedCacheStore(stale, corrector=corrector, similarity=similarity, dtype=dtype, block_size=7)
    queries = torch.randn(4, 8)
    exclude = [[0, 5, 52], [], [7], list(range(10, 30))] if with_exclude else None
    scores, indices = store.search(queries, 6, exclude=exclude, corrected=corrected)
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64 and scores.shape == (4, 6)
    stored = torch.from_numpy(stale.numpy().astype(np.float16).astype(np.float32)) if dtype == "float16" else stale
    targets = corrector(stored).detach() if corrected else stored
    assert_topk_matches(scores, indices, naive_scores(queries, targets, similarity), 6, exclude)


def test_identity_corrector_gives_stale_exactly():
    stale = torch.randn(30, 6)
    store = CorrectedCacheStore(stale, similarity="dot")
    assert torch.equal(store.corrected_embeddings(), stale)
    assert torch.equal(store.corrected_embeddings([3, 4]), stale[[3, 4]])
    assert torch.equal(store.stale_embeddings([3, 4]), stale[[3, 4]])
    q = torch.randn(3, 6)
    a, b = store.search(q, 5, corrected=True), store.search(q, 5, corrected=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_materialized_view_is_used_then_invalidated_by_update():
    torch.manual_seed(1)
    store = CorrectedCacheStore(torch.randn(40, 8), corrector=_perturbed_corrector(8), block_size=16)
    q = torch.randn(5, 8)
    fused = store.search(q, 10)
    store.materialize()
    assert store.is_materialized
    viewed = store.search(q, 10)
    torch.testing.assert_close(viewed[0], fused[0])
    # An update of the weights makes the view stale: searches must follow the new corrector, not the old view.
    with torch.no_grad():
        store.corrector.residual[-1].weight.mul_(-1.0)
    assert not store.is_materialized
    fresh_oracle = naive_scores(q, store.corrector(store.stale_embeddings()).detach(), "cosine")
    scores, indices = store.search(q, 10)
    assert_topk_matches(scores, indices, fresh_oracle, 10)


def test_replacing_corrector_resets_view():
    store = CorrectedCacheStore(torch.randn(10, 4))
    store.materialize()
    store.corrector = _perturbed_corrector(4)
    assert not store.is_materialized
    with pytest.raises(ValueError, match="corrector has dim 5"):
        store.corrector = Corrector(5)


def test_ids_and_rows_of():
    store = CorrectedCacheStore(np.random.rand(3, 4).astype(np.float32), ids=["a", "b", "c"])
    assert store.ids == ["a", "b", "c"] and len(store) == 3 and store.dim == 4
    assert store.rows_of(["c", "a"]) == [2, 0]
    with pytest.raises(KeyError, match="'z'"):
        store.rows_of(["z"])
    assert CorrectedCacheStore(np.ones((2, 4), np.float32)).ids == ["0", "1"]


def test_accepts_numpy_float64_and_torch_inputs():
    store = CorrectedCacheStore(np.random.rand(5, 3))
    scores, _ = store.search(np.random.rand(2, 3), 2)
    assert scores.dtype == torch.float32


GOOD = torch.randn(10, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embeddings": torch.empty(0, 4)}, ValueError, "embeddings is empty"),
        ({"embeddings": np.ones((3, 4), dtype=np.int64)}, TypeError, "floating-point"),
        ({"embeddings": np.array([[object()] * 4] * 3)}, TypeError, "floating-point"),
        ({"embeddings": torch.ones(3, 4, dtype=torch.int32)}, TypeError, "floating-point"),
        ({"embeddings": torch.ones(4)}, ValueError, "2-D"),
        ({"embeddings": torch.tensor([[1.0, float("nan")]])}, ValueError, "NaN or inf"),
        ({"embeddings": torch.tensor([[1.0, float("inf")]])}, ValueError, "NaN or inf"),
        ({"embeddings": torch.tensor([[1e6, 1.0]]), "dtype": "float16"}, ValueError, "after conversion to float16"),
        ({"embeddings": GOOD, "similarity": "l2"}, ValueError, "Unknown similarity 'l2'"),
        ({"embeddings": GOOD, "dtype": "int8"}, ValueError, "Unknown dtype 'int8'"),
        ({"embeddings": GOOD, "ids": ["a"] * 10}, ValueError, "'a' appears more than once"),
        ({"embeddings": GOOD, "ids": ["a", "b"]}, ValueError, "ids has 2 entries but embeddings has 10 rows"),
        ({"embeddings": GOOD, "ids": list(range(10))}, TypeError, "ids must be strings"),
        ({"embeddings": GOOD, "corrector": Corrector(3)}, ValueError, "corrector has dim 3"),
        ({"embeddings": GOOD, "corrector": torch.nn.Linear(4, 4)}, TypeError, "corrector must be"),
        ({"embeddings": "not an array"}, TypeError, "numpy array or torch tensor"),
    ],
)
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        CorrectedCacheStore(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.randn(2, 5), 3), {}, ValueError, "dimension 5 but the cache has dimension 4"),
        ((torch.randn(4), 3), {}, ValueError, "2-D"),
        ((torch.tensor([[float("nan")] * 4]), 3), {}, ValueError, "query_embeddings contains NaN"),
        ((torch.randn(2, 4), 0), {}, ValueError, "top_k must be > 0, got 0"),
        ((torch.randn(2, 4), -3), {}, ValueError, "top_k must be > 0, got -3"),
        ((torch.randn(2, 4), 11), {}, ValueError, "top_k=11 is larger than the number of rows left"),
        ((torch.randn(2, 4), 9), {"exclude": [[0, 1], []]}, ValueError, "top_k=9 is larger"),
        ((torch.randn(2, 4), 3), {"exclude": [[10], []]}, IndexError, "row index 10, out of range"),
        ((torch.randn(2, 4), 3), {"exclude": [[-1], []]}, IndexError, "row index -1"),
        # Sets of Python ints take a fast path (one range check per set): the same errors.
        ((torch.randn(2, 4), 3), {"exclude": [set(), {2, 10}]}, IndexError, r"exclude\[1\] contains row index 10"),
        ((torch.randn(2, 4), 3), {"exclude": [{-1, 3}, set()]}, IndexError, r"exclude\[0\] contains row index -1"),
        ((torch.randn(2, 4), 3), {"exclude": [{True}, set()]}, TypeError, "integer row indices"),
        ((torch.randn(2, 4), 3), {"exclude": [[0]]}, ValueError, "one collection per query"),
        ((torch.randn(2, 4), 3), {"exclude": [["a"], []]}, TypeError, "integer row indices"),
        ((torch.randn(2, 4).int(), 3), {}, TypeError, "floating-point"),
    ],
)
def test_bad_search_input(args, kwargs, error, match):
    store = CorrectedCacheStore(GOOD)
    with pytest.raises(error, match=match):
        store.search(*args, **kwargs)


def test_bad_indices():
    store = CorrectedCacheStore(GOOD)
    with pytest.raises(IndexError, match="row index 10"):
        store.stale_embeddings([10])
    with pytest.raises(IndexError, match="row index -2"):
        store.corrected_embeddings([-2])
    with pytest.raises(TypeError, match="integer row indices"):
        store.stale_embeddings([0.5])


def test_replace_embeddings_keeps_ids_and_texts():
    store = CorrectedCacheStore(torch.randn(5, 3), ids=list("abcde"), texts=list("vwxyz"))
    store.materialize()
    new = torch.randn(5, 3)
    store.replace_embeddings(new)
    assert torch.equal(store.stale_embeddings(), new) and not store.has_view
    assert store.ids == list("abcde") and store.texts == list("vwxyz")
    with pytest.raises(ValueError, match="embeddings has 4 rows but the cache has 5"):
        store.replace_embeddings(torch.randn(4, 3))
    with pytest.raises(ValueError, match="dimension 2"):
        store.replace_embeddings(torch.randn(5, 2))


def test_materialize_to_a_file_is_memory_mapped_and_matches_the_in_memory_view(tmp_path):
    torch.manual_seed(2)
    for dtype in ("float32", "float16"):
        in_memory = CorrectedCacheStore(
            torch.randn(50, 8), corrector=_perturbed_corrector(8), dtype=dtype, block_size=9
        )
        on_disk = CorrectedCacheStore(
            in_memory.stale_embeddings(), corrector=in_memory.corrector, dtype=dtype, block_size=9
        )
        in_memory.materialize()
        on_disk.materialize(tmp_path / f"view-{dtype}.npy")
        assert isinstance(on_disk.views.data, np.memmap) and on_disk.is_materialized
        assert not list(tmp_path.glob("*.partial"))
        view = np.load(tmp_path / f"view-{dtype}.npy")
        assert view.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(view, in_memory.views.data.numpy())
        q = torch.randn(4, 8)
        for a, b in zip(
            in_memory.search(q, 6, exclude=[[0], [], [1, 2], []]), on_disk.search(q, 6, exclude=[[0], [], [1, 2], []])
        ):
            assert torch.equal(a, b)


def test_view_tolerated_up_to_max_view_age_corrector_updates():
    from haystack_corrector import CorrectorTrainer

    torch.manual_seed(3)
    stale = torch.randn(60, 8)
    store = CorrectedCacheStore(stale, corrector=_perturbed_corrector(8), block_size=16)
    trainer = CorrectorTrainer(store, lr=0.05)
    q = torch.randn(5, 8)
    assert store.view_age is None
    store.search(q, 10, max_view_age=2)  # no view yet: materialised now
    assert store.view_age == 0
    snapshot = Corrector(8, hidden_dim=16)
    snapshot.load_state_dict(store.corrector.state_dict())
    for step in range(1, 4):
        trainer.observe(torch.arange(10), torch.randn(10, 8))
        scores, rows = store.search(q, 10, max_view_age=2)
        if step <= 2:
            # The view is `step` updates old and tolerated: results follow the corrector it was computed with.
            assert store.view_age == step
            oracle = naive_scores(q, snapshot(stale).detach(), "cosine")
        else:
            # Older than 2 updates: re-materialised, so exact for the current corrector again.
            assert store.view_age == 0 and store.is_materialized
            oracle = naive_scores(q, store.corrector(stale).detach(), "cosine")
        assert_topk_matches(scores, rows, oracle, 10)
    with pytest.raises(ValueError, match="max_view_age must be >= 0"):
        store.search(q, 3, max_view_age=-1)
    with pytest.raises(TypeError, match="max_view_age must be an int"):
        store.search(q, 3, max_view_age=1.5)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("view_dtype", ["float32", "bfloat16"])
def test_view_rescore_depth_rescores_an_older_views_candidates_with_the_current_corrector(similarity, view_dtype):
    from haystack_corrector import CorrectorTrainer

    torch.manual_seed(5)
    stale = torch.randn(90, 8)
    store = CorrectedCacheStore(stale, corrector=_perturbed_corrector(8), similarity=similarity, block_size=16)
    store.materialize(dtype=view_dtype)
    old = Corrector(8, hidden_dim=16)
    old.load_state_dict(store.corrector.state_dict())
    trainer = CorrectorTrainer(store, lr=0.05)
    for _ in range(3):
        trainer.observe(torch.arange(20), torch.randn(20, 8))
    assert store.view_age == 3
    q = torch.randn(6, 8)
    exclude = [[0, 1], [], [5], list(range(30, 60)), [], [89]]
    current = naive_scores(q, store.corrector(stale).detach(), similarity)

    # Every row re-scored: the exact top k of the current corrector, though the view is three updates old.
    scores, rows = store.search(q, 7, exclude=exclude, max_view_age=5, view_rescore_depth=len(store))
    assert store.view_age == 3  # tolerated, not re-materialised
    assert_topk_matches(scores, rows, current, 7, exclude)
    exact = store.search(q, 7, exclude=exclude)  # no max_view_age: the fused scan, exact for the current corrector
    torch.testing.assert_close(scores, exact[0], atol=1e-5, rtol=0)

    # L rows re-scored: the best 7 of the old view's best L, by the current corrector's own scores. The candidates
    # are the view's best L up to its rounding: a bfloat16 view on bfloat16 hardware is ranked by its bfloat16
    # products alone (within first_pass_error), other views exactly.
    depth = 12
    scores, rows = store.search(q, 7, exclude=exclude, max_view_age=5, view_rescore_depth=depth)
    old_scores = naive_scores(q, old(stale).detach(), similarity)
    view_norms = old(stale).detach().norm(dim=1)
    for query in range(q.shape[0]):
        scale = 1.0 if similarity == "cosine" else float(q[query].norm() * view_norms.max())
        tolerance = 2e-2 + 2 * first_pass_error(8, similarity == "cosine") * scale
        banned = set(exclude[query])
        ranked = sorted((r for r in range(90) if r not in banned), key=lambda r: -old_scores[query][r])
        lth, next_one = old_scores[query][ranked[depth - 1]], old_scores[query][ranked[depth]]
        got = rows[query].tolist()
        assert not set(got) & banned
        assert all(old_scores[query][r] >= lth - tolerance for r in got)  # among the view's best L
        for position, row in enumerate(got):  # scored by the current corrector
            assert abs(float(scores[query, position]) - current[query][row]) <= 1e-4
        surely_candidates = [r for r in ranked[:depth] if old_scores[query][r] > next_one + tolerance]
        assert surely_candidates  # (the check below is not vacuous)
        assert all(current[query][r] <= float(scores[query, -1]) + 1e-4 for r in surely_candidates if r not in got)
    # The rescoring changes the answer here: the view alone ranks by the old corrector.
    view_scores, _ = store.search(q, 7, exclude=exclude, max_view_age=5)
    assert not torch.allclose(view_scores, scores, atol=1e-3)


def test_view_rescore_depth_without_a_view_or_for_stale_search_changes_nothing():
    torch.manual_seed(6)
    store = CorrectedCacheStore(torch.randn(40, 8), corrector=_perturbed_corrector(8), block_size=16)
    q = torch.randn(3, 8)
    for corrected in (True, False):
        plain = store.search(q, 5, corrected=corrected)
        rescored = store.search(q, 5, corrected=corrected, view_rescore_depth=10)
        assert torch.equal(plain[0], rescored[0]) and torch.equal(plain[1], rescored[1])
    with pytest.raises(ValueError, match="view_rescore_depth must be > 0"):
        store.search(q, 5, view_rescore_depth=0)
    with pytest.raises(TypeError, match="view_rescore_depth must be an int"):
        store.search(q, 5, view_rescore_depth=2.5)


def test_shard_shares_rows_and_corrector_without_copying():
    torch.manual_seed(4)
    store = CorrectedCacheStore(
        torch.randn(20, 4), ids=[f"d{i}" for i in range(20)], texts=[f"t{i}" for i in range(20)]
    )
    part = store.shard(5, 12)
    assert (
        len(part) == 7 and part.ids == [f"d{i}" for i in range(5, 12)] and part.texts == [f"t{i}" for i in range(5, 12)]
    )
    assert part.corrector is store.corrector
    assert part.rows.storage.data_ptr() == store.rows.storage[5].data_ptr()  # a view, not a copy
    torch.testing.assert_close(part.stale_embeddings(), store.stale_embeddings(list(range(5, 12))))
    for bad in [(5, 5), (-1, 3), (3, 21)]:
        with pytest.raises(ValueError, match="shard needs 0 <= start < end <= 20"):
            store.shard(*bad)


def test_with_text_copies_matches_brute_force():
    texts = ["a", "b", "a", "c", "b", "a", "d"]
    store = CorrectedCacheStore(torch.randn(len(texts), 4), texts=texts)
    for rows in ([], [0], [1, 3], [6], [2, 4]):
        expected = {r for r in range(len(texts)) if any(texts[r] == texts[p] for p in rows)}
        assert store.with_text_copies(rows) == expected
    store.texts = ["x"] * 6 + ["y"]  # a new text list rebuilds the index
    assert store.with_text_copies([0]) == set(range(6))
    assert CorrectedCacheStore(torch.randn(3, 4)).with_text_copies([1]) == {1}  # no texts: the rows themselves
    store.texts = ["", "", "z", "z", "", "w", "w"]  # empty texts are nobody's copies
    assert store.with_text_copies([0]) == {0} and store.with_text_copies([0, 2]) == {0, 2, 3}
    part = store.shard(5, 7)  # shard texts are local: row 0 of the shard is row 5 of the store
    assert part.with_text_copies([0]) == {0, 1}


# ------------------------------------------------------------------------- a stale view is never searched
def _edit_optimizer_step(store):
    optimizer = torch.optim.SGD(store.corrector.parameters(), lr=0.1)
    store.corrector(torch.randn(3, store.dim)).sum().backward()
    optimizer.step()


def _edit_load_state_dict(store):
    other = Corrector(store.dim)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    store.corrector.load_state_dict(other.state_dict())


def _edit_data(store):
    store.corrector.residual[-1].weight.data.add_(0.3)  # .data edits do not bump torch's version counters


def _edit_vector_to_parameters(store):
    vector = torch.nn.utils.parameters_to_vector(store.corrector.parameters())
    torch.nn.utils.vector_to_parameters(vector + 0.1, store.corrector.parameters())


def _edit_replace_corrector(store):
    other = Corrector(store.dim)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    store.corrector = other


def _edit_replace_submodule(store):
    layer = torch.nn.Linear(store.dim, store.dim)
    store.corrector.residual[-1] = layer


@pytest.mark.parametrize(
    "edit",
    [
        _edit_optimizer_step,
        _edit_load_state_dict,
        _edit_data,
        _edit_vector_to_parameters,
        _edit_replace_corrector,
        _edit_replace_submodule,
    ],
)
@pytest.mark.parametrize("on_disk", [False, True])
def test_view_is_never_used_after_the_corrector_changed(edit, on_disk, tmp_path):
    torch.manual_seed(0)
    store = CorrectedCacheStore(torch.randn(50, 8), similarity="dot")
    store.materialize(tmp_path / "view.npy" if on_disk else None)
    assert store.is_materialized
    queries = torch.randn(4, 8)
    before = store.search(queries, 5)
    edit(store)
    assert not store.is_materialized
    fused = CorrectedCacheStore(store.stale_embeddings(), corrector=store.corrector, similarity="dot")
    scores, rows = store.search(queries, 5)
    expected_scores, expected_rows = fused.search(queries, 5)  # no view: the corrector applied block by block
    assert torch.equal(rows, expected_rows) and torch.allclose(scores, expected_scores, atol=1e-6)
    assert not torch.equal(scores, before[0]), (
        "the edit must change the corrected scores for this test to mean anything"
    )
