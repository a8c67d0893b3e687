"""Saves and loads around symlinks, users' files, forged configs and numbers at the edge of float32.

Each test reproduces a case of issue 35 ("Saves and loads that hold under symlinks, concurrent processes and hostile
files") as an adversarial user would meet it; the concurrency cases are in ``test_concurrent_saves.py``.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, _atomic
from haystack_corrector._validation import CONFIG_CHECKSUM_KEY, with_config_checksum
from haystack_corrector.fault_injection import make_store, same_store


def _rewrite_config(path, edit) -> None:
    """Apply ``edit`` to a saved config and recompute its checksum: a consistent forgery, not damage."""
    config = json.loads(path.read_text())
    config.pop(CONFIG_CHECKSUM_KEY, None)
    edit(config)
    path.write_text(json.dumps(with_config_checksum(config)))


def _resign_store_file(folder, name) -> None:
    """Record ``name``'s current size and SHA-256 in the store config (as a forger would)."""
    import hashlib

    data = (folder / name).read_bytes()

    def edit(config):
        config["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    _rewrite_config(folder / "store_config.json", edit)


# ------------------------------------------------------------------------------ 1. symlinks and ownership
def test_a_save_through_a_symlink_writes_into_the_real_folder_and_keeps_the_link(tmp_path):
    real = tmp_path / "mydata"
    real.mkdir()
    link = tmp_path / "store"
    link.symlink_to(real, target_is_directory=True)
    make_store(0).save(link)
    make_store(1).save(link)  # the second save used to delete the user's files through the hidden symlink
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert same_store(CorrectedCacheStore.load(link), make_store(1))
    assert sorted(os.listdir(tmp_path)) == ["mydata", "store"], "no hidden sibling may be left"
    (real / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        make_store(2).save(link)
    make_store(2).save(link, overwrite=True)
    assert (real / "notes.txt").read_text() == "mine" and link.is_symlink()
    assert same_store(CorrectedCacheStore.load(link), make_store(2))


def test_symlinks_named_like_our_files_are_never_ours(tmp_path):
    folder = tmp_path / "s"
    make_store(0).save(folder)
    precious = tmp_path / "precious.json"
    precious.write_text('["the user\'s ids"]')
    (folder / "ids.json").unlink()
    (folder / "ids.json").symlink_to(precious)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="'ids.json', which haystack-corrector did not write"):
            make_store(1).save(folder, overwrite=overwrite)
    assert (folder / "ids.json").is_symlink() and precious.read_text() == '["the user\'s ids"]'


def test_a_previous_folder_without_a_journal_is_left_alone(tmp_path):
    folder = tmp_path / "s"
    make_store(0).save(folder)
    stray = _atomic.previous_directory(folder)
    stray.mkdir()
    (stray / "ids.json").write_text("the user's")
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="no journal"):
        make_store(1).save(folder)
    assert sorted(os.listdir(stray)) == ["ids.json", "notes.txt"]
    assert same_store(CorrectedCacheStore.load(folder), make_store(0))


# --------------------------------------------------------------------------- 3. overwrite keeps other entries
def test_overwrite_keeps_a_users_side_features_and_refuses_a_users_corrector_folder(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    np.save(folder / "side_features.npy", np.ones((2, 2), np.float16))
    make_store(0).save(folder, overwrite=True)  # this store has no side features: the user's file is foreign
    assert np.array_equal(np.load(folder / "side_features.npy"), np.ones((2, 2), np.float16))
    assert same_store(CorrectedCacheStore.load(folder), make_store(0))
    other = tmp_path / "user2"
    (other / "corrector").mkdir(parents=True)
    (other / "corrector" / "my_code.py").write_text("print('mine')")
    with pytest.raises(FileExistsError, match="'corrector', which haystack-corrector did not write"):
        make_store(0).save(other, overwrite=True)
    assert (other / "corrector" / "my_code.py").read_text() == "print('mine')"
    # a user's file dropped into our own corrector folder makes it theirs too: refused, kept
    (folder / "corrector" / "my_code.py").write_text("print('mine')")
    with pytest.raises(FileExistsError, match="'corrector'"):
        make_store(1).save(folder, overwrite=True)
    assert (folder / "corrector" / "my_code.py").read_text() == "print('mine')"


# ------------------------------------------------------------------------ 4. bounded work before trusting a size
@pytest.mark.parametrize("edit", [{"dim": 40000}, {"num_layers": 100000}, {"hidden_dim": 10**9}])
def test_a_forged_corrector_config_is_refused_before_anything_is_built(tmp_path, monkeypatch, edit):
    Corrector(6).save(tmp_path / "c")
    _rewrite_config(tmp_path / "c" / "corrector_config.json", lambda config: config.update(edit))
    built = []
    real_init = Corrector.__init__

    def recording_init(self, *args, **kwargs):
        built.append(kwargs or args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Corrector, "__init__", recording_init)
    with pytest.raises(ValueError, match="corrector"):
        Corrector.load(tmp_path / "c")
    assert built == [], "a module was allocated from a config the weights file contradicts"


def test_a_pool_index_of_another_store_is_refused_at_load_naming_the_file(tmp_path):
    pytest.importorskip("faiss")
    store = make_store(0)
    store.build_pool("flat")
    store.save(tmp_path / "s")
    small = make_store(1, n=5)
    small.build_pool("flat")
    small.pool.save(tmp_path / "s" / "index.faiss")
    _resign_store_file(tmp_path / "s", "index.faiss")
    with pytest.raises(ValueError, match=r"index.faiss indexes 5 vectors of dimension 6; its store has 20 of 6"):
        CorrectedCacheStore.load(tmp_path / "s")


# ------------------------------------------------------------------------ 6. every load error names the file
def _forge_npy_header(path, shape_text: str) -> None:
    """Rewrite a .npy header's shape in place, keeping the header's length (so the file size still matches)."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[8:10], "little")  # format 1.0: the header follows the 10-byte preamble
    header = data[10 : 10 + length].decode("latin1")
    start = header.index("'shape': (") + len("'shape': (")
    forged = (header[:start] + shape_text + header[header.index(")", start) :]).rstrip("\n").rstrip()
    assert len(forged) < length, "the forged header must fit the old one's padding"
    data[10 : 10 + length] = (forged.ljust(length - 1) + "\n").encode("latin1")
    path.write_bytes(bytes(data))


CASES = {
    "deep JSON in ids": lambda folder: (
        (folder / "ids.json").write_text("[" * 100000 + "]" * 100000),
        _resign_store_file(folder, "ids.json"),
    ),
    "num_rows 1e400": lambda folder: (folder / "store_config.json").write_text(
        (folder / "store_config.json").read_text().replace('"num_rows": 20', '"num_rows": 1e400')
    ),
    "num_rows 1e400 re-signed": lambda folder: _rewrite_config(
        folder / "store_config.json", lambda c: c.update(num_rows=float("inf"))
    ),
    "negative npy dims": lambda folder: (
        _forge_npy_header(folder / "embeddings.npy", "-20, -6"),
        _resign_store_file(folder, "embeddings.npy"),
    ),
    "npy shape that wraps": lambda folder: (
        # (2**62 + 30) * 4 = 2**64 + 120 wraps to 120 in int64: the 20 x 6 rows' true element count
        _forge_npy_header(folder / "embeddings.npy", f"{2**62 + 30}, 4"),
        _resign_store_file(folder, "embeddings.npy"),
    ),
    "unknown pool key": lambda folder: _rewrite_config(
        folder / "store_config.json", lambda c: c.update(pool={"index_type": "flat", "colour": "red"})
    ),
    "pool without index.faiss": lambda folder: _rewrite_config(
        folder / "store_config.json", lambda c: c.update(pool={"index_type": "flat"})
    ),
    "missing checksum": lambda folder: (folder / "store_config.json").write_text(
        json.dumps(
            {
                k: v
                for k, v in json.loads((folder / "store_config.json").read_text()).items()
                if k != CONFIG_CHECKSUM_KEY
            }
        )
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_load_error_is_ours_and_names_the_file(tmp_path, case):
    folder = tmp_path / "s"
    make_store(0).save(folder)
    CASES[case](folder)
    for options in ({"mmap": True}, {"mmap": False}):
        with pytest.raises((ValueError, OSError)) as caught:
            CorrectedCacheStore.load(folder, **options)
        assert str(folder) in str(caught.value), f"{case}: {caught.value}"
        assert type(caught.value).__module__ in ("builtins", "haystack_corrector._validation"), type(caught.value)


def test_an_old_save_without_checksums_needs_the_explicit_flag(tmp_path):
    folder = tmp_path / "s"
    make_store(0).save(folder)
    CASES["missing checksum"](folder)
    with pytest.raises(ValueError, match="no config_sha256.*accept_missing_checksums=True"):
        CorrectedCacheStore.load(folder)
    assert same_store(CorrectedCacheStore.load(folder, accept_missing_checksums=True), make_store(0))


# ------------------------------------------------------------------------------ 7. the pre-save check
def test_the_pre_save_check_catches_what_the_save_would_fail_on(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="a-file is not a folder"):
        CorrectedCacheStore.check_save_path(tmp_path / "a-file" / "store")
    for nameless in ("", ".", "..", "/"):
        with pytest.raises(ValueError, match="needs a folder name of its own"):
            CorrectedCacheStore.check_save_path(nameless)
    with pytest.raises(ValueError, match="name is 250 bytes long"):
        CorrectedCacheStore.check_save_path(tmp_path / ("n" * 250))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                CorrectedCacheStore.check_save_path(locked / "store")
        finally:
            locked.chmod(stat.S_IRWXU)
    # the check and the save agree
    with pytest.raises(ValueError, match="needs a folder name of its own"):
        make_store(0).save(".")


# ---------------------------------------------------------------------------------------------- 9. numbers
def test_rows_too_large_to_score_or_not_finite_are_refused_where_they_enter(tmp_path):
    huge = torch.zeros(3, 4)
    huge[1] = 3e19  # finite, but its squared norm overflows float32: a cosine score would come out 0
    for similarity in ("cosine", "dot"):
        with pytest.raises(ValueError, match="row 1 has values up to 3e\\+19, too large to score"):
            CorrectedCacheStore(huge, similarity=similarity)
    rows = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    rows[3, 2] = np.nan
    np.save(tmp_path / "rows.npy", rows)
    with pytest.raises(ValueError, match=r"rows.npy: row 3 holds NaN or inf; .*data is damaged"):
        CorrectedCacheStore.from_npy(tmp_path / "rows.npy")
    with pytest.raises(ValueError, match="query_embeddings: row 0 has values up to"):
        CorrectedCacheStore(torch.eye(4)).search(torch.full((1, 4), 3e19), top_k=1)


def test_a_nan_row_in_a_loaded_file_is_blamed_on_the_data_not_the_corrector(tmp_path):
    folder = tmp_path / "s"
    make_store(0).save(folder)
    rows = np.load(folder / "embeddings.npy")
    rows[7, 1] = np.nan
    np.save(folder / "embeddings.npy", rows)
    _resign_store_file(folder, "embeddings.npy")
    with pytest.raises(ValueError, match=r"embeddings.npy: row 7 holds NaN or inf"):
        CorrectedCacheStore.load(folder, verify=True)
    loaded = CorrectedCacheStore.load(folder)  # a memory-mapped load does not read the rows
    with pytest.raises(ValueError, match="stale cache's rows produced non-finite scores.*not the corrector"):
        loaded.search(torch.ones(1, 6), top_k=3, corrected=False)
