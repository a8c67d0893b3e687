"""Peak memory of an index upgrade: DocumentStoreCorrector's paged passes against reading the store in one call.

A PostgreSQL server with pgvector (``pgserver``, a separate process, so this process's memory is the client's alone)
holds ``--documents`` random unit vectors (dimension 384, as all-MiniLM-L6-v2's) in one table per size. Each
measurement runs in a fresh Python process that imports everything, connects and loads the corrector, reads its RSS,
then resets its peak (``/proc/self/clear_refs``), does one thing and reports its peak RSS (``VmHWM``):

- ``whole store``: ``store.filter_documents()``, the one call the upgrade used to start with (the baseline);
- ``upgrade, page N``: ``DocumentStoreCorrector(..., page_size=N, force=True).run()``, the whole upgrade (both passes
  and every write; ``force`` lets each run correct the previous run's output again, so every run does full work).

It prints the peak above the process's own resting RSS for each, and its ratio to the baseline at the same size. The
paged figure should not grow with the store (only the ids list does: tens of bytes per document), and grow with the
page size.

    python benchmarks/upgrade_memory.py --documents 20000 100000 --page-sizes 1000 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

DIM = 384

CHILD = r"""
import json, os, sys
from haystack.utils import Secret
from haystack_integrations.document_stores.pgvector import PgvectorDocumentStore
from haystack_integrations.components.writers.corrector import DocumentStoreCorrector

table, mode, corrector = sys.argv[1], sys.argv[2], sys.argv[3]
store = PgvectorDocumentStore(connection_string=Secret.from_env_var("PG_CONN_STR"), table_name=table,
    keyword_index_name=f"k_{table}", hnsw_index_name=f"h_{table}",
    embedding_dimension=DIMENSION, vector_function="cosine_similarity", search_strategy="exact_nearest_neighbor")
upgrade = DocumentStoreCorrector(store, corrector, page_size=int(mode) if mode != "whole" else 1000, force=True,
    progress_bar=False)
upgrade.warm_up()
store.count_documents()  # connects
def status_mib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024
rest = status_mib("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS: setup's peak is not counted
    f.write("5")
if mode == "whole":
    count = len(store.filter_documents())
else:
    count = upgrade.run()["corrected"]
peak = status_mib("VmHWM:")
print(json.dumps({"rest_mib": rest, "peak_mib": peak, "documents": count}))
""".replace("DIMENSION", str(DIM))


def fill(store, documents: int, seed: int) -> float:
    import torch
    from haystack import Document

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for first in range(0, documents, 5000):
        rows = torch.nn.functional.normalize(torch.randn(min(5000, documents - first), DIM, generator=generator), dim=1)
        store.write_documents(
            [
                Document(id=f"d{first + i}", content=f"document {first + i}", embedding=row.tolist())
                for i, row in enumerate(rows)
            ]
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    import pgserver
    from haystack.utils import Secret
    from haystack_integrations.document_stores.pgvector import PgvectorDocumentStore

    from haystack_corrector import Corrector

    folder = Path(tempfile.mkdtemp(prefix="upgrade-memory-"))
    server = pgserver.get_server(str(folder / "postgres"), cleanup_mode="stop")
    os.environ["PG_CONN_STR"] = server.get_uri()
    rows = []
    try:
        for documents in args.documents:
            table = f"upgrade_{documents}"
            store = PgvectorDocumentStore(
                connection_string=Secret.from_env_var("PG_CONN_STR"),
                table_name=table,
                keyword_index_name=f"k_{table}",  # index names are per database: one per table
                hnsw_index_name=f"h_{table}",
                embedding_dimension=DIM,
                vector_function="cosine_similarity",
                search_strategy="exact_nearest_neighbor",
                recreate_table=True,
            )
            seconds = fill(store, documents, args.seed)
            store.close()
            print(f"wrote {documents:,} documents in {seconds:.0f} s", file=sys.stderr, flush=True)
            for mode in ["whole", *map(str, args.page_sizes)]:
                corrector = folder / f"corrector-{documents}-{mode}"
                Corrector(DIM, hidden_dim=768).save(corrector)
                start = time.perf_counter()
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, table, mode, str(corrector)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                figures = json.loads(out.strip().splitlines()[-1])
                figures.update(
                    store_documents=documents,
                    mode=mode,
                    seconds=time.perf_counter() - start,
                    above_rest_mib=figures["peak_mib"] - figures["rest_mib"],
                )
                rows.append(figures)
                print(json.dumps(figures), file=sys.stderr, flush=True)
    finally:
        server.cleanup()

    print(
        f"\nPostgreSQL + pgvector (pgserver, its own process), dimension {DIM}; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print("| documents in the store | what ran | peak RSS above rest (MiB) | ratio to the whole-store read | wall s |")
    print("|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["store_documents"] == row["store_documents"] and r["mode"] == "whole")
        what = (
            "filter_documents() (the whole store)"
            if row["mode"] == "whole"
            else (f"DocumentStoreCorrector, page_size {int(row['mode']):,}")
        )
        print(
            f"| {row['store_documents']:,} | {what} | {row['above_rest_mib']:.0f} | "
            f"{row['above_rest_mib'] / base['above_rest_mib']:.2f}x | {row['seconds']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
