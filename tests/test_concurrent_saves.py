"""A load is one generation, always: saves landing at any point of a load, and processes racing saves and loads.

The deterministic test lands a whole save between every two reads of a load (the read hook of
``haystack_corrector.saved_folder``); the soak runs real processes (``haystack_corrector.fault_injection.soak``, whose counts
``benchmarks/concurrency_soak.py`` prints for ``docs/reliability.md``).
"""

from __future__ import annotations

import os

import pytest
import torch

from haystack_corrector import CorrectedCacheStore, Corrector, saved_folder
from haystack_corrector.fault_injection import generation_store, generations_in, soak


def _reads_of_a_load(folder, **load_options) -> list[str]:
    labels: list[str] = []
    saved_folder._read_hook = labels.append
    try:
        CorrectedCacheStore.load(folder, **load_options)
    finally:
        saved_folder._read_hook = None
    return labels


@pytest.mark.parametrize("load_options", [{"mmap": True}, {"mmap": False}, {"mmap": True, "verify": True}])
def test_a_save_landing_between_any_two_reads_gives_the_old_or_the_new_store(tmp_path, load_options):
    folder = tmp_path / "store"
    generation_store(0).save(folder)
    labels = _reads_of_a_load(folder, **load_options)
    assert len(labels) >= 8, labels  # config, ids, texts, corrector files, embeddings...
    for index, label in enumerate(labels):
        generation_store(0).save(folder)
        counter = iter(range(10**6))

        def land_a_save(name: str, index: int = index, counter=counter) -> None:
            if next(counter) == index:
                generation_store(1).save(folder)

        saved_folder._read_hook = land_a_save
        try:
            loaded = CorrectedCacheStore.load(folder, **load_options)
        finally:
            saved_folder._read_hook = None
        assert generations_in(loaded) in ({0}, {1}), f"a save landing before reading {label} tore the load"
        # mmap loads keep reading the old generation's embeddings after the save removed its file
        assert torch.equal(loaded.stale_embeddings(), generation_store(generations_in(loaded).pop()).stale_embeddings())
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_a_corrector_load_is_one_generation_too(tmp_path):
    def corrector(k: float) -> Corrector:
        h = Corrector(4, num_layers=2)
        with torch.no_grad():
            for p in h.parameters():
                p.fill_(k)
        return h

    corrector(0.0).save(tmp_path / "c")
    calls = []

    def land_a_save(name: str) -> None:
        calls.append(name)
        if len(calls) == 1:  # after the config was opened, before the weights
            corrector(1.0).save(tmp_path / "c")

    saved_folder._read_hook = land_a_save
    try:
        loaded = Corrector.load(tmp_path / "c")
    finally:
        saved_folder._read_hook = None
    values = {float(p.flatten()[0]) for p in loaded.parameters()}
    assert values in ({0.0}, {1.0})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_two_processes_saving_and_loading_never_tear_a_load_or_raise(tmp_path):
    counts = soak(tmp_path / "store", loads=2000)
    assert counts["loads"] == 2000 and counts["whole"] == 2000, counts
    assert counts["torn"] == 0 and counts["errors"] == 0 and counts["save_errors"] == 0, counts
    assert counts["saves"] >= 20, counts  # the loads really raced saves
    assert len(generations_in(CorrectedCacheStore.load(tmp_path / "store"))) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_concurrent_overwrite_saves_are_serialised_and_keep_the_users_file(tmp_path):
    counts = soak(tmp_path / "store", loads=300, mode="overwrite")
    assert counts["torn"] == 0 and counts["errors"] == 0 and counts["save_errors"] == 0, counts
    assert counts["saves"] >= 10, counts
    assert (tmp_path / "store" / "notes.txt").read_text() == "the user's notes"
    assert sorted(os.listdir(tmp_path)) == ["store"], "no hidden folder or journal may be left behind"
