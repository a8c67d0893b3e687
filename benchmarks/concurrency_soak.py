"""Race saves and loads of one store folder across processes and count what the loads got (docs/reliability.md).

    python benchmarks/concurrency_soak.py --loads 3000

Two runs: ``store`` (one process saves generations in a loop while this one loads, alternating memory-mapped and
``verify=True`` loads) and ``overwrite`` (two processes save ``overwrite=True`` into a folder that also holds a
user's file). A load is *whole* when every part (rows, ids, texts, corrector) carries one generation number, *torn*
otherwise; *errors* are exceptions from a load of a healthy store; *save errors* are exceptions from a saver.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from haystack_corrector.fault_injection import soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=3000)
    args = parser.parse_args()
    import haystack_corrector

    print(f"haystack_corrector from {Path(haystack_corrector.__file__).parent}")
    print("| run | loads | whole | torn | load errors | saves done | save errors | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in ("store", "overwrite"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            counts = soak(Path(tmp) / "store", args.loads, mode=mode)
            seconds = time.perf_counter() - start
        print(
            f"| {mode} | {counts['loads']} | {counts['whole']} | {counts['torn']} | {counts['errors']} | "
            f"{counts['saves']} | {counts['save_errors']} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
