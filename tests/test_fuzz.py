"""Fuzz the public API: every input is accepted with a correct result, or rejected with a clear error of ours.

"Clear" means ``ValueError``/``TypeError`` (``FileNotFoundError`` for loads) whose message names the argument (or
the file); an exception from inside torch, numpy or safetensors fails the test. Accepted inputs are checked against
brute-force oracles. ``docs/reliability.md`` records how many cases each target ran (``HC_FUZZ_REPORT=path`` writes
the counts of a run to a JSON file).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer, HardNegativeSampler
from tests.oracles import naive_scores

CASES: Counter[str] = Counter()
FUZZ = settings(
    max_examples=int(os.environ.get("HC_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DIM = 4


def _rejected_clearly(exc: BaseException, *names: str) -> None:
    """The exception is ours: the right type, raised by haystack_corrector, and its message names the argument."""
    assert isinstance(exc, (ValueError, TypeError, FileNotFoundError)), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert any(name in message for name in names), f"message does not name {names}: {message}"
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    assert "haystack_corrector" in frames[-1], f"raised from inside {frames[-1]}: {message}"


# ------------------------------------------------------------------------------------------------ strategies
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
NICE = st.floats(-4, 4, allow_nan=False, width=32)


ROWS = st.integers(0, 6)
COLS = st.sampled_from([0, 1, DIM, DIM, DIM, 7])


FEW_ROWS = st.integers(0, 4)


@st.composite
def matrices(draw, rows=ROWS, cols=COLS):
    """Arrays, tensors and nested lists of random shapes, dtypes and values (NaN/inf included), or junk."""
    kind = draw(st.sampled_from(["numpy", "tensor", "list", "ragged", "scalar", "string", "none", "3d"]))
    n, d = draw(rows), draw(cols)
    values = draw(st.lists(st.one_of(NICE, NICE, NICE, FLOATS), min_size=n * d, max_size=n * d))
    array = np.array(values, dtype=np.float64).reshape(n, d)
    if kind == "numpy":
        dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.bool_, np.complex64, object]))
        with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow makes inf: part of the input space
            return array.astype(dtype) if dtype is not object else array.astype(object)
    if kind == "tensor":
        dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32]))
        return torch.from_numpy(array).to(dtype)
    if kind == "list":
        return array.tolist()
    if kind == "ragged":
        return [values[:1], values[1:3]]
    if kind == "scalar":
        return 3.0
    if kind == "string":
        return "embeddings"
    if kind == "3d":
        return torch.zeros(2, 2, DIM)
    return None


def _float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.double()
    return torch.from_numpy(np.asarray(value, dtype=np.float64))


def _base_store(n: int = 12, seed: int = 0) -> CorrectedCacheStore:
    generator = torch.Generator().manual_seed(seed)
    corrector = Corrector(DIM)
    with torch.no_grad():
        for p in corrector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return CorrectedCacheStore(torch.randn(n, DIM, generator=generator), corrector=corrector, similarity="dot")


# ------------------------------------------------------------------------------------------------ the targets
@FUZZ
@given(
    embeddings=matrices(),
    ids=st.one_of(st.none(), st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=7)),
    similarity=st.sampled_from(["cosine", "dot", "euclidean", 3]),
    dtype=st.sampled_from(["float32", "float16", "int8"]),
)
def test_fuzz_store_construction(embeddings, ids, similarity, dtype):
    CASES["CorrectedCacheStore(...)"] += 1
    try:
        store = CorrectedCacheStore(embeddings, ids=ids, similarity=similarity, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - the point is to classify every exception
        _rejected_clearly(exc, "embeddings", "ids", "similarity", "dtype")
        return
    expected = _float64(embeddings)
    assert len(store) == expected.shape[0] and store.dim == expected.shape[1]
    tolerance = 1e-2 if dtype == "float16" or expected.dtype in (torch.float16, torch.bfloat16) else 1e-6
    assert torch.allclose(store.stale_embeddings(), expected.double().float(), rtol=tolerance, atol=tolerance)


@FUZZ
@given(
    queries=matrices(),
    top_k=st.one_of(st.integers(-2, 15), st.sampled_from([True, 2.5, "3", None])),
    exclude=st.one_of(
        st.none(),
        st.lists(st.lists(st.integers(-2, 14), max_size=4), max_size=7),
        st.sampled_from(["abc", [[1.5]], [[True]], 5]),
    ),
    corrected=st.booleans(),
)
def test_fuzz_search(queries, top_k, exclude, corrected):
    CASES["CorrectedCacheStore.search"] += 1
    store = _base_store()
    try:
        scores, rows = store.search(queries, top_k, exclude=exclude, corrected=corrected)
    except Exception as exc:  # noqa: BLE001
        _rejected_clearly(exc, "query_embeddings", "top_k", "exclude")
        return
    targets = store.corrected_embeddings() if corrected else store.stale_embeddings()
    oracle = naive_scores(_float64(queries).float(), targets, "dot")
    for query, row_scores in enumerate(oracle):
        banned = set(exclude[query]) if exclude else set()
        best = sorted((s for r, s in enumerate(row_scores) if r not in banned), reverse=True)[:top_k]
        assert not banned & set(rows[query].tolist())
        assert np.allclose(scores[query].tolist(), best, rtol=1e-4, atol=1e-4)


@FUZZ
@given(
    queries=matrices(rows=FEW_ROWS),
    positives=st.one_of(
        st.lists(st.lists(st.integers(-1, 12), max_size=5), max_size=5), st.sampled_from([None, "x", [[0.5]]])
    ),
    num_negatives=st.integers(-1, 13),
    strategy=st.sampled_from(["top", "gumbel", "random", "best"]),
    max_score=st.one_of(st.none(), st.floats(-3, 3), st.just(float("nan"))),
)
def test_fuzz_sampler(queries, positives, num_negatives, strategy, max_score):
    CASES["HardNegativeSampler.sample"] += 1
    store = _base_store()
    try:
        sampler = HardNegativeSampler(
            store, num_negatives, sampling_strategy=strategy, max_score=max_score, range_max=12, seed=0
        )
        negatives = sampler.sample(queries, positives)
    except Exception as exc:  # noqa: BLE001
        _rejected_clearly(
            exc, "query_embeddings", "positives", "num_negatives", "strategy", "max_score", "range_max", "negatives"
        )
        return
    if positives is None:  # None: no positives for any query
        positives = [[] for _ in range(negatives.shape[0])]
    assert negatives.shape == (len(positives), num_negatives)
    for query, rows in enumerate(negatives.tolist()):
        assert len(set(rows)) == num_negatives and not set(rows) & set(positives[query])
        assert all(0 <= row < len(store) for row in rows)


@FUZZ
@given(
    indices=st.one_of(
        st.lists(st.integers(-1, 12), max_size=6),
        st.sampled_from([[], [0.5], ["a"], [True], None, torch.tensor([1.0]), np.array([[0, 1]])]),
    ),
    fresh=matrices(),
    offline=st.booleans(),
)
def test_fuzz_trainer(indices, fresh, offline):
    CASES["CorrectorTrainer.observe/fit"] += 1
    store = _base_store()
    trainer = CorrectorTrainer(store, lr=1e-2)
    before = [p.detach().clone() for p in store.corrector.parameters()]
    try:
        if offline:
            metrics = trainer.fit(indices, fresh, epochs=1, batch_size=4, show_progress_bar=False)
        else:
            metrics = trainer.observe(indices, fresh)
    except Exception as exc:  # noqa: BLE001
        _rejected_clearly(exc, "indices", "fresh_embeddings", "drift loss")
        assert all(torch.equal(a, b) for a, b in zip(before, store.corrector.parameters())), "rejected but trained"
        return
    assert all(np.isfinite(value) for value in metrics.values())
    assert trainer.steps >= 1


_SAVED: dict[str, Path] = {}


def _saved(kind: str) -> Path:
    """One pristine save per kind, made once; each case corrupts a copy."""
    if kind not in _SAVED:
        folder = Path(tempfile.mkdtemp(prefix="hc-fuzz-")) / kind
        if kind == "store":
            store = _base_store()
            store.texts = [f"text {i}" for i in range(len(store))]
            store.save(folder)
        else:
            _base_store().corrector.save(folder)
        _SAVED[kind] = folder
    return _SAVED[kind]


@FUZZ
@given(
    kind=st.sampled_from(["store", "corrector"]),
    victim=st.integers(0, 10),
    mode=st.sampled_from(["random bytes", "truncate", "flip", "empty", "delete"]),
    data=st.data(),
    mmap=st.booleans(),
    verify=st.sampled_from([None, True]),
)
def test_fuzz_load_corrupted_files(kind, victim, mode, data, mmap, verify):
    CASES["Corrector.load / CorrectedCacheStore.load (corrupted files)"] += 1
    folder = Path(tempfile.mkdtemp(prefix="hc-fuzz-case-")) / kind
    shutil.copytree(_saved(kind), folder)
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        path = files[victim % len(files)]
        original = path.read_bytes()
        if mode == "random bytes":
            path.write_bytes(data.draw(st.binary(max_size=64)))
        elif mode == "truncate":
            path.write_bytes(original[: data.draw(st.integers(0, max(len(original) - 1, 0)))])
        elif mode == "flip":
            position = data.draw(st.integers(0, len(original) - 1))
            flipped = bytearray(original)
            flipped[position] ^= 1 << data.draw(st.integers(0, 7))
            path.write_bytes(bytes(flipped))
        elif mode == "empty":
            path.write_bytes(b"")
        else:
            path.unlink()
        changed = not path.exists() or path.read_bytes() != original
        try:
            if kind == "store":
                loaded = CorrectedCacheStore.load(folder, mmap=mmap, verify=verify)
                result = (loaded.stale_embeddings(), loaded.corrected_embeddings(), list(loaded.ids), loaded.texts)
            else:
                loaded = Corrector.load(folder)
                result = tuple(loaded.state_dict().values())
        except Exception as exc:  # noqa: BLE001
            _rejected_clearly(exc, str(folder), path.name)
            return
        # Accepted: only where the damage cannot be seen (the default lazy embeddings check, documented) or where
        # nothing changed (a flip that hit an insignificant byte is still a change: it must be this file).
        if changed:
            lazy_unverified = (
                kind == "store" and path.name == "embeddings.npy" and mmap and verify is None and mode == "flip"
            )
            assert lazy_unverified, f"a {mode} of {path.name} was accepted: {result!r:.200}"
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


# Crafted files: consistent forgeries (checksums recomputed), as a user editing a save by hand or a file from
# someone else would make them. Every load must reject them with a ValueError/OSError of ours naming the file, or
# load them; a size it accepts must be the true one (no allocation from a size the bytes on disk contradict).
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, -1, 1, 2, 6, 12, 40000, 10**9, 2**62, 2**64 + 6]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
STORE_KEYS = ["num_rows", "dim", "dtype", "similarity", "block_size", "pool", "format_version", "files"]
CORRECTOR_KEYS = ["dim", "hidden_dim", "num_layers", "side_dim", "normalize", "format_version"]
SIZE_KEYS = {"num_rows", "dim", "hidden_dim", "num_layers", "side_dim"}


def _resign(folder: Path, config_name: str, edit) -> None:
    from haystack_corrector._validation import CONFIG_CHECKSUM_KEY, with_config_checksum

    path = folder / config_name
    config = json.loads(path.read_text())
    config.pop(CONFIG_CHECKSUM_KEY, None)
    edit(config)
    path.write_text(json.dumps(with_config_checksum(config)))


def _resign_file(folder: Path, name: str) -> None:
    import hashlib

    data = (folder / name).read_bytes()

    def edit(config):
        config["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    _resign(folder, "store_config.json", edit)


@FUZZ
@given(
    target=st.sampled_from(["store config", "corrector config", "ids.json", "texts.json", "npy shape", "deep json"]),
    data=st.data(),
    mmap=st.booleans(),
)
def test_fuzz_load_crafted_files(target, data, mmap):
    CASES["CorrectedCacheStore.load / Corrector.load (crafted files)"] += 1
    folder = Path(tempfile.mkdtemp(prefix="hc-fuzz-case-")) / "store"
    shutil.copytree(_saved("store"), folder)
    key, value = None, None
    try:
        if target == "store config":
            key, value = data.draw(st.sampled_from(STORE_KEYS)), data.draw(JSON_VALUES)
            _resign(folder, "store_config.json", lambda c: c.update({key: value}))
        elif target == "corrector config":
            key, value = data.draw(st.sampled_from(CORRECTOR_KEYS)), data.draw(JSON_VALUES)
            _resign(folder / "corrector", "corrector_config.json", lambda c: c.update({key: value}))
            import hashlib

            raw = (folder / "corrector" / "corrector_config.json").read_bytes()
            _resign(
                folder,
                "store_config.json",
                lambda c: c["files"].update(
                    {"corrector/corrector_config.json": {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}}
                ),
            )
        elif target in ("ids.json", "texts.json"):
            (folder / target).write_text(json.dumps(data.draw(JSON_VALUES)))
            _resign_file(folder, target)
        elif target == "deep json":
            depth = data.draw(st.integers(500, 50000))
            (folder / "ids.json").write_text("[" * depth + "]" * depth)
            _resign_file(folder, "ids.json")
        else:
            shape = data.draw(st.tuples(st.integers(-(2**63), 2**63), st.integers(-(2**63), 2**63)))
            raw = bytearray((folder / "embeddings.npy").read_bytes())
            length = int.from_bytes(raw[8:10], "little")
            header = raw[10 : 10 + length].decode("latin1")
            start = header.index("'shape': (") + len("'shape': (")
            forged = (header[:start] + f"{shape[0]}, {shape[1]}" + header[header.index(")", start) :]).rstrip()
            if len(forged) >= length:
                return  # does not fit the header's padding: not a same-size forgery
            raw[10 : 10 + length] = (forged.ljust(length - 1) + "\n").encode("latin1")
            (folder / "embeddings.npy").write_bytes(bytes(raw))
            _resign_file(folder, "embeddings.npy")
        try:
            loaded = CorrectedCacheStore.load(folder, mmap=mmap)
        except Exception as exc:  # noqa: BLE001
            assert isinstance(exc, (ValueError, OSError)), f"{type(exc).__name__}: {exc}"
            _rejected_clearly(exc, str(folder))
            return
        original = CorrectedCacheStore.load(_saved("store"))
        assert loaded.stale_embeddings().shape == original.stale_embeddings().shape
        if key in SIZE_KEYS:
            assert value == (original.corrector.get_config_dict() | {"num_rows": len(original)}).get(key, value)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


TARGETS = {  # each fuzz test and the target it counts examples for
    "test_fuzz_store_construction": "CorrectedCacheStore(...)",
    "test_fuzz_search": "CorrectedCacheStore.search",
    "test_fuzz_sampler": "HardNegativeSampler.sample",
    "test_fuzz_trainer": "CorrectorTrainer.observe/fit",
    "test_fuzz_load_corrupted_files": "Corrector.load / CorrectedCacheStore.load (corrupted files)",
    "test_fuzz_load_crafted_files": "CorrectedCacheStore.load / Corrector.load (crafted files)",
}
MIN_CASES = min(100, FUZZ.max_examples)


@pytest.fixture(autouse=True)
def _counted(request):
    """After each fuzz test, in whatever order they run: its examples really ran (at least MIN_CASES)."""
    target = TARGETS.get(request.node.originalname)
    before = CASES[target] if target else 0
    yield
    if target is not None:
        ran = CASES[target] - before
        assert ran >= MIN_CASES, f"{target}: {ran} examples ran, expected at least {MIN_CASES}"


@pytest.fixture(scope="module", autouse=True)
def _report():
    """With HC_FUZZ_REPORT set, write the counts for docs/reliability.md once every fuzz test of the module ran."""
    yield
    path = os.environ.get("HC_FUZZ_REPORT")
    if path and all(CASES[target] for target in TARGETS.values()):
        Path(path).write_text(json.dumps({target: CASES[target] for target in TARGETS.values()}, indent=2))
