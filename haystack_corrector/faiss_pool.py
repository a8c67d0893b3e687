"""Pool mode: take candidates from a FAISS index over the stale vectors, then correct and re-rank them exactly.

Applying the corrector to every row costs N x (a few matrix products) per search. Pool mode instead asks an ANN
index over the *stale* vectors for the L best rows by stale score, applies the corrector to those L rows only and
re-ranks them by corrected score. With L = N it is exact; as L shrinks it trades exactness for speed — measure how
often pool mode's top-k equals the exact corrected top-k for your L (``benchmarks`` / the tests do).

Needs ``faiss`` (``pip install "haystack-corrector[faiss]"``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from haystack_corrector._validation import check_choice, check_positive_int
from haystack_corrector.scoring import dot_scores, normalize_rows

INDEX_TYPES = ("flat", "ivf", "hnsw")
INDEX_FILE = "index.faiss"
_QUERY_CHUNK = 64


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError('Pool mode needs faiss: pip install "haystack-corrector[faiss]"') from exc
    return faiss


class FaissPool:
    """A FAISS inner-product index over a store's stale vectors (L2-normalised first for cosine stores).

    Args:
        index_type: ``"flat"`` (``IndexFlatIP``, exact), ``"ivf"`` (``IndexIVFFlat``) or ``"hnsw"`` (``IndexHNSWFlat``).
        nlist: IVF lists (default about 4·sqrt(N)); ``nprobe``: IVF lists visited per query.
        hnsw_m: HNSW graph degree; ``ef_search``: HNSW search depth (raised to at least the pool size).
    """

    def __init__(
        self,
        index_type: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> None:
        self.index_type = check_choice(index_type, "index_type", INDEX_TYPES)
        self.nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self.nprobe = check_positive_int(nprobe, "nprobe")
        self.hnsw_m = check_positive_int(hnsw_m, "hnsw_m")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        self.index: Any = None

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "index_type": self.index_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "hnsw_m": self.hnsw_m,
            "ef_search": self.ef_search,
        }

    def build(self, vectors: np.ndarray) -> None:
        """Index (N, d) float32 vectors (already normalised for cosine)."""
        faiss = _faiss()
        num_rows, dim = vectors.shape
        if self.index_type == "flat":
            index = faiss.IndexFlatIP(dim)
        elif self.index_type == "ivf":
            nlist = self.nlist or max(1, min(num_rows // 39, int(4 * num_rows**0.5)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.add(vectors)
        self.index = index

    def candidates(self, queries: np.ndarray, size: int) -> np.ndarray:
        """(B, size) row indices by stale score, best first; -1 where the index found fewer."""
        if self.index is None:
            raise RuntimeError("The pool has no index: call build() first")
        faiss = _faiss()
        if self.index_type == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe
        if self.index_type == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, size)
        _, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), size)
        return rows

    def save(self, path: str | os.PathLike[str]) -> None:
        _faiss().write_index(self.index, str(path))

    def load(self, path: str | os.PathLike[str]) -> None:
        self.index = _faiss().read_index(str(path))

    def load_bytes(self, data: bytes, file: os.PathLike[str], *, num_rows: int, dim: int) -> None:
        """Read a serialised index (trusted input: FAISS's reader parses it) and check it fits its store."""
        try:
            index = _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except Exception as exc:  # faiss raises RuntimeError with its C++ message
            raise ValueError(f"{file} is not a FAISS index FAISS can read: {str(exc).splitlines()[0]}") from exc
        if index.ntotal != num_rows or index.d != dim:
            raise ValueError(
                f"{file} indexes {index.ntotal} vectors of dimension {index.d}; its store has {num_rows} of {dim}"
            )
        self.index = index


@torch.no_grad()
def pool_search(
    store: Any, queries: torch.Tensor, top_k: int, excluded: list[set[int]], pool_size: int, corrected: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by corrected score among each query's ``pool_size`` best rows by stale score (from ``store.pool``)."""
    pool_size = check_positive_int(pool_size, "pool_size")
    if store.pool is None:
        raise ValueError("pool_size needs a FAISS pool: call store.build_pool() first")
    if pool_size < top_k:
        raise ValueError(f"pool_size={pool_size} must be >= top_k={top_k}")
    pool: FaissPool = store.pool
    normalized = normalize_rows(queries, store.similarity == "cosine")
    widest = max((len(rows) for rows in excluded), default=0)
    raw = pool.candidates(normalized.numpy(), min(len(store), pool_size + widest))
    kept: list[list[int]] = []
    for query, (found, banned) in enumerate(zip(raw.tolist(), excluded)):
        keep = [row for row in found if row >= 0 and row not in banned][:pool_size]
        if len(keep) < top_k:
            raise ValueError(
                f"The pool returned only {len(keep)} candidates for query {query}, fewer than top_k={top_k}: raise "
                "pool_size (or the index's nprobe/ef_search)"
            )
        kept.append(keep)
    scores_out, rows_out = [], []
    for first in range(0, len(kept), _QUERY_CHUNK):  # bounds memory at chunk x L x d floats
        chunk_scores, chunk_rows = _rerank(
            store, normalized[first : first + _QUERY_CHUNK], kept[first : first + _QUERY_CHUNK], top_k, corrected
        )
        scores_out.append(chunk_scores)
        rows_out.append(chunk_rows)
    return torch.cat(scores_out), torch.cat(rows_out)


def _rerank(
    store: Any, queries: torch.Tensor, kept: list[list[int]], top_k: int, corrected: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct each candidate row once for the chunk, then score every query against its own pool."""
    width = max(len(keep) for keep in kept)
    candidates = torch.tensor([keep + [keep[0]] * (width - len(keep)) for keep in kept], dtype=torch.int64)
    unique, inverse = torch.unique(candidates, return_inverse=True)
    targets = store.corrected_embeddings(unique) if corrected else store.stale_embeddings(unique)
    scores = dot_scores(queries, normalize_rows(targets, store.similarity == "cosine")[inverse])
    for query, keep in enumerate(kept):
        scores[query, len(keep) :] = -torch.inf  # the padding repeats a row: never pick it twice
    best_scores, order = torch.topk(scores, top_k, dim=1)
    return best_scores, torch.gather(candidates, 1, order)
