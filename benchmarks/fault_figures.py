"""Fault figures for docs/reliability.md: what a user gets after a kill, a full disk, or a damaged file.

Three tables, counted (no timings):

1. Kill points: every filesystem operation of each save path, one forked child killed (``os._exit``, as SIGKILL) at
   each; then the folder is loaded right away, and again after the next save.
2. Full disk: ``OSError(ENOSPC)`` raised at each operation of a save; the previous save must stay loadable and no
   temporary folder may be left behind.
3. Damaged files: for every file of a saved store and of a saved corrector, one bit flipped at each of up to
   ``--positions`` byte offsets, and truncations to 0, 1/2 and all-but-one bytes; loaded with the default
   (memory-mapped, embeddings checksum not read) and with ``verify=True`` (``Corrector.load`` always checks its
   weights' checksum, so both columns agree for it).

Run from the repository root: ``python benchmarks/fault_figures.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from haystack_corrector import CorrectedCacheStore, Corrector  # noqa: E402
from haystack_corrector._atomic import previous_directory  # noqa: E402
from haystack_corrector.fault_injection import SCENARIOS, disk_full_at, killed_at, make_store, probe_steps, scenario  # noqa: E402


def kill_table(root: Path) -> list[str]:
    rows = ["| save | operations killed | old save loads | new save loads | nothing saved yet | lost after next save |"]
    rows.append("|---|---|---|---|---|---|")
    for name in SCENARIOS:
        labels = probe_steps(root / f"probe-{name}", name)
        outcome: Counter[str] = Counter()
        for index in range(len(labels)):
            folder = root / f"kill-{name}-{index}" / "target"
            folder.parent.mkdir()
            prepare, save, load, old, new, same = scenario(name, folder)
            prepare()
            assert killed_at(index, save) == 137
            if old is None and not folder.exists() and not previous_directory(folder).exists():
                outcome["nothing"] += 1
            else:
                loaded = load()
                outcome["old" if old is not None and same(loaded, old) else "new" if same(loaded, new) else "bad"] += 1
            save()
            intact = same(load(), new)
            if name == "store overwrite=True":
                intact &= (folder / "important.txt").read_text() == "my notes"
            outcome["lost"] += not intact
        assert outcome["bad"] == 0, (name, outcome)
        rows.append(
            f"| {name} | {len(labels)} | {outcome['old']} | {outcome['new']} | {outcome['nothing']} | {outcome['lost']} |"
        )
    return rows


def disk_full_table(root: Path) -> list[str]:
    rows = ["| save | operations failed with ENOSPC | error raised | previous save loads | temporary folders left |"]
    rows.append("|---|---|---|---|---|")
    for name in ("store over store", "corrector over corrector"):
        labels = probe_steps(root / f"probe-full-{name}", name)
        outcome: Counter[str] = Counter()
        for index, label in enumerate(labels):
            folder = root / f"full-{name}-{index}" / "target"
            folder.parent.mkdir()
            prepare, save, load, old, new, same = scenario(name, folder)
            prepare()
            try:
                with disk_full_at(index):
                    save()
            except OSError:
                outcome["raised"] += 1
            loaded = load()
            # During the clean-up after the swap the new save is already complete: that counts as "loads" too.
            late = label.startswith(("remove", "rmdir", "move"))
            outcome["loads"] += same(loaded, old) or (late and same(loaded, new))
            outcome["left"] += len([n for n in os.listdir(folder.parent) if ".tmp-" in n])
        rows.append(f"| {name} | {len(labels)} | {outcome['raised']} | {outcome['loads']} | {outcome['left']} |")
    return rows


def _load(kind: str, folder: Path, verify: bool | None) -> None:
    if kind == "store":
        store = CorrectedCacheStore.load(folder, verify=verify)
        store.search(store.stale_embeddings()[:2], 3)
    else:
        Corrector.load(folder)


def damage_table(root: Path, positions: int) -> list[str]:
    pristine = {"store": root / "pristine-store", "corrector": root / "pristine-corrector"}
    store = make_store(0)
    store.save(pristine["store"])
    store.corrector.save(pristine["corrector"])
    rows = [
        "| save | file | damage | cases | rejected, default load | accepted, default load | rejected, verify=True "
        "| accepted, verify=True |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, source in pristine.items():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source)
            original = path.read_bytes()
            step = max(1, len(original) // positions)
            damages = {
                "bit flip": [
                    original[:i] + bytes([original[i] ^ (1 << (i % 8))]) + original[i + 1 :]
                    for i in range(0, len(original), step)
                ],
                "truncation": [original[:n] for n in sorted({0, len(original) // 2, len(original) - 1})],
            }
            for damage, variants in damages.items():
                counts: Counter[str] = Counter()
                for variant in variants:
                    for verify in (None, True):
                        folder = Path(tempfile.mkdtemp(dir=root)) / kind
                        shutil.copytree(source, folder)
                        (folder / relative).write_bytes(variant)
                        try:
                            _load(kind, folder, verify)
                            counts[f"accepted-{verify}"] += 1
                        except (ValueError, TypeError, FileNotFoundError):
                            counts[f"rejected-{verify}"] += 1
                        shutil.rmtree(folder.parent)
                rows.append(
                    f"| {kind} | {relative} | {damage} | {len(variants)} | {counts['rejected-None']} | "
                    f"{counts['accepted-None']} | {counts['rejected-True']} | {counts['accepted-True']} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=64, help="bit-flip positions per file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # recoveries log a warning each; the tables count them
    root = Path(tempfile.mkdtemp(prefix="hc-faults-"))
    try:
        for title, table in (
            ("Kill points (SIGKILL-like exit before each filesystem operation)", kill_table(root)),
            ("Full disk (OSError ENOSPC at each filesystem operation)", disk_full_table(root)),
            ("Damaged files", damage_table(root, args.positions)),
        ):
            print(f"\n### {title}\n")
            print("\n".join(table))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
