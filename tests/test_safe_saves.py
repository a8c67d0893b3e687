"""Saves never delete a user's file, and a process killed between any two filesystem operations loses nothing.

The kill tests fork a child that runs the save with a fault hook which ends the process with ``os._exit`` (no
``finally``, no clean-up: what SIGKILL does) at operation i, for every i the save performs.
"""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, _atomic
from haystack_corrector.fault_injection import SCENARIOS
from haystack_corrector.fault_injection import count_steps as _count_steps
from haystack_corrector.fault_injection import killed_at as _killed_at
from haystack_corrector.fault_injection import make_corrector as _corrector
from haystack_corrector.fault_injection import make_store as _store
from haystack_corrector.fault_injection import same_corrector as _same_corrector
from haystack_corrector.fault_injection import same_store as _same_store
from haystack_corrector.fault_injection import scenario as _scenario

# ------------------------------------------------------------------------------------------- user files survive
SAVERS = {
    "store.save": lambda path, **kw: _store(0).save(path, **kw),
    "corrector.save": lambda path, **kw: _corrector(1).save(path, **kw),
}


@pytest.mark.parametrize("saver", sorted(SAVERS))
def test_refuses_a_folder_with_foreign_files_and_keeps_them(tmp_path, saver):
    folder = tmp_path / "userdir"
    folder.mkdir()
    (folder / "important.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"userdir.*'important.txt'.*overwrite=True"):
        SAVERS[saver](folder)
    assert sorted(os.listdir(folder)) == ["important.txt"] and (folder / "important.txt").read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["userdir"], "no temporary folder may be left behind"


@pytest.mark.parametrize("saver", sorted(SAVERS))
def test_overwrite_replaces_only_our_files(tmp_path, saver):
    folder = tmp_path / "userdir"
    folder.mkdir()
    (folder / "important.txt").write_text("my notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    SAVERS[saver](folder, overwrite=True)
    SAVERS[saver](folder, overwrite=True)  # a second save over our own files keeps the user's too
    assert (folder / "important.txt").read_text() == "my notes"
    assert (folder / "sub" / "data.bin").read_bytes() == b"\x00\x01"
    if saver == "store.save":
        assert _same_store(CorrectedCacheStore.load(folder), _store(0))
    else:
        assert _same_corrector(Corrector.load(folder), _corrector(1))


def test_resave_over_a_previous_save_needs_no_overwrite(tmp_path):
    _store(0).save(tmp_path / "s")
    _store(1).save(tmp_path / "s")
    assert _same_store(CorrectedCacheStore.load(tmp_path / "s"), _store(1))
    _corrector(1).save(tmp_path / "c")
    _corrector(2).save(tmp_path / "c")
    assert _same_corrector(Corrector.load(tmp_path / "c"), _corrector(2))
    assert sorted(os.listdir(tmp_path)) == ["c", "s"]


def test_a_file_named_like_ours_in_a_foreign_folder_is_foreign(tmp_path):
    folder = tmp_path / "userdir"
    folder.mkdir()
    (folder / "ids.json").write_text('["the user\'s own ids"]')  # our file name, but no store config: not ours
    with pytest.raises(FileExistsError, match="'ids.json'"):
        _store(0).save(folder)
    assert (folder / "ids.json").read_text() == '["the user\'s own ids"]'


def test_corrector_save_into_a_store_folder_is_refused(tmp_path):
    _store(0).save(tmp_path / "s")
    with pytest.raises(FileExistsError, match="'corrector'"):
        _corrector(1).save(tmp_path / "s")
    assert _same_store(CorrectedCacheStore.load(tmp_path / "s"), _store(0))


def test_materialize_refuses_a_foreign_file(tmp_path):
    store = _store(0)
    user_file = tmp_path / "view.npy"
    user_file.write_bytes(b"the user's array")
    with pytest.raises(FileExistsError, match="view.npy.*overwrite=True"):
        store.materialize(user_file)
    assert user_file.read_bytes() == b"the user's array"
    assert not store.has_view
    store.materialize(tmp_path / "mine.npy")
    store.corrector.residual[-1].bias.data.add_(0.5)
    store.materialize()  # refreshes its own file without asking
    store.materialize(tmp_path / "mine.npy")
    assert sorted(os.listdir(tmp_path)) == ["mine.npy", "view.npy"]
    store.materialize(user_file, overwrite=True)
    assert torch.allclose(torch.from_numpy(np.load(user_file)), store.corrected_embeddings(), atol=1e-6)


def test_shard_dir_with_foreign_files_is_refused(tmp_path):
    from haystack_corrector.sentence_transformers.encode import _encode_in_shards

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="'notes.txt'"):
        _encode_in_shards(lambda texts, _: np.zeros((len(texts), 2), np.float32), ["a", "b"], tmp_path, 1, False)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_full_disk_mid_save_keeps_the_previous_save(tmp_path, monkeypatch):
    _store(0).save(tmp_path / "s")
    from haystack_corrector import persistence

    real = persistence.json.dumps

    def dumps(obj, *args, **kwargs):
        if isinstance(obj, list) and obj and obj[0] == "t1-0":  # the texts of the second save
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(persistence.json, "dumps", dumps)
    with pytest.raises(OSError, match="No space left on device"):
        _store(1).save(tmp_path / "s")
    monkeypatch.undo()
    assert _same_store(CorrectedCacheStore.load(tmp_path / "s"), _store(0))
    assert sorted(os.listdir(tmp_path)) == ["s"], "the partial save must be cleaned up"


# --------------------------------------------------------------------------------------------- kill at every step
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_kill_between_any_two_operations_leaves_old_or_new_save(tmp_path, scenario):
    probe = tmp_path / "probe" / "target"
    probe.parent.mkdir()
    prepare, save, _, _, _, _ = _scenario(scenario, probe)
    prepare()
    labels = _count_steps(save)
    assert len(labels) >= 5, labels
    assert any(label.startswith("rename") for label in labels)
    for index, label in enumerate(labels):
        folder = tmp_path / f"kill{index}" / "target"
        folder.parent.mkdir()
        prepare, save, load, old, new, same = _scenario(scenario, folder)
        prepare()
        assert _killed_at(index, save) == 137, f"the child did not die at step {index} ({label})"
        # Right after the kill: the old or the new save loads (the loader falls back to the previous folder).
        if old is None and not folder.exists() and not _atomic.previous_directory(folder).exists():
            pass  # killed before the first save existed: nothing to load, nothing lost
        else:
            loaded = load()
            assert same(loaded, old) or same(loaded, new), f"neither old nor new save after a kill at {label}"
        # The next save finishes the interrupted one; the user's file is back in place, untouched.
        save()
        assert same(load(), new)
        if scenario == "store overwrite=True":
            assert (folder / "important.txt").read_text() == "my notes", f"user file lost after a kill at {label}"
        leftovers = [n for n in os.listdir(folder.parent) if n != "target"]  # the killed save's temporaries too
        assert leftovers == [], f"after a kill at {label}: {leftovers}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_during_sharded_encode_resumes_to_the_same_cache(tmp_path):
    from haystack_corrector.sentence_transformers.encode import _encode_in_shards

    texts = [f"text {i}" for i in range(7)]

    def run(batch, _progress):
        return np.array([[float(t.split()[1]), 1.0] for t in batch], dtype=np.float32)

    expected = _encode_in_shards(run, texts, tmp_path / "reference", 2, False)
    labels = _count_steps(lambda: _encode_in_shards(run, texts, tmp_path / "probe", 2, False))
    assert len(labels) == 8  # 4 shards, written then renamed
    for index, label in enumerate(labels):
        folder = tmp_path / f"kill{index}"
        assert _killed_at(index, lambda folder=folder: _encode_in_shards(run, texts, folder, 2, False)) == 137, label
        assert np.array_equal(_encode_in_shards(run, texts, folder, 2, False), expected), f"after a kill at {label}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_during_a_training_checkpoint_leaves_old_or_new_corrector_state(tmp_path, tiny_model):
    from haystack_corrector.sentence_transformers import CorrectorCallback
    from tests.tiny_model import toy_loss

    loss, store, _ = toy_loss(tiny_model, num_negatives=1)
    callback = CorrectorCallback(loss)

    def set_weights(value):
        with torch.no_grad():
            for p in store.corrector.parameters():
                p.fill_(value)

    def weights_in(checkpoint):
        callback.load_state(checkpoint)
        return float(next(store.corrector.parameters()).detach().flatten()[0])

    probe = tmp_path / "probe"
    probe.mkdir()
    callback.save_state(probe)
    labels = _count_steps(lambda: callback.save_state(probe))  # a save over an earlier state, as in the loop
    assert len(labels) == 16 and "rename target -> previous" in labels and "write journal" in labels, labels
    for index, label in enumerate(labels):
        checkpoint = tmp_path / f"checkpoint-{index}"
        checkpoint.mkdir()
        set_weights(1.0)
        callback.save_state(checkpoint)
        set_weights(2.0)
        assert _killed_at(index, lambda checkpoint=checkpoint: callback.save_state(checkpoint)) == 137, label
        assert weights_in(checkpoint) in (1.0, 2.0), f"corrector state unreadable after a kill at {label}"


@pytest.mark.parametrize("scenario", ["store over store", "corrector over corrector"])
def test_disk_full_at_any_operation_keeps_the_previous_save(tmp_path, scenario):
    from haystack_corrector.fault_injection import disk_full_at

    probe = tmp_path / "probe" / "target"
    probe.parent.mkdir()
    prepare, save, _, _, _, _ = _scenario(scenario, probe)
    prepare()
    labels = _count_steps(save)
    for index, label in enumerate(labels):
        folder = tmp_path / f"full{index}" / "target"
        folder.parent.mkdir()
        prepare, save, load, old, new, same = _scenario(scenario, folder)
        prepare()
        with disk_full_at(index), pytest.raises(OSError, match="No space left on device"):
            save()
        loaded = load()
        # Before the swap the old save is untouched; during its clean-up the new one is already in place.
        assert same(loaded, old) or (same(loaded, new) and label.startswith(("remove", "rmdir", "move")))
        save()  # the next save succeeds and finishes any interrupted clean-up
        assert same(load(), new) and sorted(os.listdir(folder.parent)) == ["target"], label


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_saved_folder_has_the_umasks_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        _store(0).save(tmp_path / "s")
        _corrector(1).save(tmp_path / "c")
    finally:
        os.umask(previous)
    for folder in ("s", "c"):
        assert stat.S_IMODE(os.stat(tmp_path / folder).st_mode) == 0o777 & ~umask, folder
