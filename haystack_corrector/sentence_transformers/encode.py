"""encode_corpus: the one initial cache of a corpus, encoded with a SentenceTransformer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haystack_corrector._atomic import fault_point
from haystack_corrector._validation import check_non_negative_int, check_positive_int
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.distinct_texts import distinct_texts, encode_distinct
from haystack_corrector.sentence_transformers.store_provenance import encoder_record

logger = logging.getLogger(__name__)


def encode_corpus(
    model: Any,
    corpus_texts: Sequence[str],
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
    show_progress_bar: bool = True,
    dtype: str = "float32",
    hidden_dim: int | None = None,
    prompt: str | None = None,
    shard_dir: str | os.PathLike[str] | None = None,
    shard_size: int = 10000,
    side_layers: Sequence[int] | str | None = None,
) -> CorrectedCacheStore:
    """Encode ``corpus_texts`` with ``model`` into a :class:`CorrectedCacheStore` (texts kept for re-encoding).

    The store records what built it (:func:`~haystack_corrector.sentence_transformers.store_provenance.encoder_record`:
    model, architecture, max_seq_length, normalisation, similarity, prompt), saved with it, so a training loss can
    refuse a store another setting built. The store's similarity follows the model's (``cosine`` or ``dot``); its
    corrector is a fresh identity
    ``Corrector(dim, hidden_dim)``. Each distinct text is encoded once; its copies (same text, other ids) get the
    same row.

    With ``side_layers`` (indices into the transformer's hidden states, 0 = the embedding layer, or ``"all"``), the
    same one forward pass also keeps the attention-masked mean pool of each chosen layer as the store's
    ``side_features`` (float16; 2 bytes × hidden size × layers per row), and the corrector reads them
    (``Corrector(side_dim=...)``, standardised to the corpus's statistics: ``store.standardize_side_features()``):
    the lever that lifts a corrector past what the final embedding allows. Not combinable with ``shard_dir`` yet.

    With ``shard_dir``, the corpus is encoded ``shard_size`` texts at a time and each finished shard is written to
    ``shard_dir`` (atomically) as it completes: a killed encode, run again with the same arguments, resumes at the
    first unfinished shard. Under ``torchrun`` (an initialised ``torch.distributed`` group), each rank encodes every
    world_size-th shard and all ranks wait for the others before assembling the store.

    Example:
        >>> store = encode_corpus(model, ["doc one", "doc two"], ids=["d1", "d2"])  # doctest: +SKIP
    """
    if isinstance(corpus_texts, str) or not isinstance(corpus_texts, Sequence):
        raise TypeError(f"corpus_texts must be a sequence of strings, got {type(corpus_texts).__name__}")
    texts = list(corpus_texts)
    if not texts:
        raise ValueError("corpus_texts is empty: need at least one text to build a cache")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"corpus_texts[{position}] must be a string, got {type(text).__name__}")
    similarity = model_similarity(model)
    kwargs: dict[str, Any] = {}
    if prompt is not None:
        kwargs["prompt"] = prompt

    def run(chunk: list[str], progress: bool) -> np.ndarray:
        with torch.no_grad():
            out = model.encode(
                chunk,
                batch_size=batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=False,
                **kwargs,
            )
        return np.asarray(out, dtype=np.float32)

    def encode(chunk: list[str]) -> np.ndarray:
        if shard_dir is None:
            return run(chunk, show_progress_bar)
        return _encode_in_shards(run, chunk, Path(shard_dir), shard_size, show_progress_bar)

    side = None
    if side_layers is not None:
        if shard_dir is not None:
            raise ValueError("side_layers cannot be combined with shard_dir yet: encode without shards")
        unique, inverse = distinct_texts(texts)
        unique_embeddings, unique_side = _encode_with_side(
            model, unique, side_layers, batch_size, show_progress_bar, prompt
        )
        embeddings, side = unique_embeddings[inverse], unique_side[inverse]
    else:
        embeddings = encode_distinct(texts, encode)  # copies of a text share one encode and one row
    logger.info(
        "Encoded %d texts (%d distinct) into a %s cache of dimension %d",
        len(texts),
        len(distinct_texts(texts)[0]),
        similarity,
        embeddings.shape[1],
    )
    store = CorrectedCacheStore(
        embeddings,
        ids=ids,
        corrector=Corrector(embeddings.shape[1], hidden_dim=hidden_dim, side_dim=0 if side is None else side.shape[1]),
        similarity=similarity,
        dtype=dtype,
        texts=texts,
        side_features=side,
    )
    if side is not None:
        store.standardize_side_features()
    store.encoder = encoder_record(model, prompt)  # saved with the store; the loss checks it against its model
    return store


def _encode_with_side(
    model: Any, texts: list[str], layers: Sequence[int] | str, batch_size: int, progress: bool, prompt: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sentence embeddings and mean-pooled hidden states of ``layers`` for ``texts``, from one forward pass each."""
    from tqdm.auto import tqdm

    from haystack_corrector.sentence_transformers import _compat

    transformer = model[0]
    hf_model = getattr(transformer, "auto_model", None) or transformer.model
    num_states = hf_model.config.num_hidden_layers + 1  # the embedding layer, then each transformer layer
    if layers == "all":
        chosen = list(range(num_states))
    elif isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"side_layers must be a non-empty list of hidden-state indices or 'all', got {layers!r}")
    else:
        chosen = [check_non_negative_int(layer, "side_layers[i]") for layer in layers]
        if max(chosen) >= num_states:
            raise ValueError(f"side_layers {chosen} out of range: the model has hidden states 0..{num_states - 1}")
    device = next(model.parameters()).device
    order = np.argsort([-len(text) for text in texts], kind="stable")  # similar lengths batch with little padding
    embeddings: list[np.ndarray] = [np.empty(0)] * len(texts)
    sides: list[np.ndarray] = [np.empty(0)] * len(texts)
    previous, was_training = hf_model.config.output_hidden_states, model.training
    hf_model.config.output_hidden_states = True
    model.eval()
    try:
        for start in tqdm(range(0, len(texts), batch_size), desc="Encoding (with side features)", disable=not progress):
            positions = order[start : start + batch_size]
            features = _compat.preprocess(model, [texts[i] for i in positions], prompt=prompt)
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            with torch.no_grad():
                out = model(features)
            mask = out["attention_mask"].unsqueeze(-1).float()
            pools = [(out["all_layer_embeddings"][layer] * mask).sum(1) / mask.sum(1).clamp(min=1) for layer in chosen]
            side = torch.cat(pools, dim=-1).float().cpu().numpy()
            emb = out["sentence_embedding"].float().cpu().numpy()
            for row, position in enumerate(positions):
                embeddings[position], sides[position] = emb[row], side[row]
    finally:
        hf_model.config.output_hidden_states = previous
        model.train(was_training)
    return np.stack(embeddings).astype(np.float32), np.stack(sides).astype(np.float16)


def model_similarity(model: Any) -> str:
    """The store similarity (``"cosine"`` or ``"dot"``) matching a SentenceTransformer's ``similarity_fn_name``."""
    similarity = getattr(model, "similarity_fn_name", None) or "cosine"
    if similarity == "dot_product":  # sentence-transformers' name
        similarity = "dot"
    if similarity not in ("cosine", "dot"):
        raise ValueError(
            f"The model compares embeddings with {similarity!r}; the corrector cache supports 'cosine' and 'dot'"
        )
    return similarity


def _encode_in_shards(
    run: Callable[[list[str], bool], np.ndarray], texts: list[str], folder: Path, shard_size: int, progress: bool
) -> np.ndarray:
    from tqdm.auto import tqdm

    check_positive_int(shard_size, "shard_size")
    folder.mkdir(parents=True, exist_ok=True)
    # A manifest ties the shards to these exact texts and shard size, so a resumed run never mixes corpora.
    fingerprint = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    manifest = {"num_texts": len(texts), "shard_size": shard_size, "texts_sha256": fingerprint}
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists() and any(folder.iterdir()):
        first = sorted(os.listdir(folder))[0]
        raise FileExistsError(
            f"Refusing to write shards into {folder}: it holds {first!r} and no manifest of an earlier encode. "
            "Use a new or empty shard_dir"
        )
    if manifest_path.exists():
        found = json.loads(manifest_path.read_text())
        if found != manifest:
            raise ValueError(
                f"{folder} holds shards of another encode ({found}); use an empty shard_dir for this corpus"
            )
    rank, world = 0, 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not manifest_path.exists():
        tmp = manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, manifest_path)
    starts = list(range(0, len(texts), shard_size))
    mine = [i for i in range(len(starts)) if i % world == rank]
    todo = [i for i in mine if not (folder / f"shard-{i:06d}.npy").exists()]
    if len(todo) < len(mine):
        logger.info(
            "Resuming: %d of %d shards of this rank are already encoded in %s", len(mine) - len(todo), len(mine), folder
        )
    for index in tqdm(todo, desc="Encoding shards", unit="shard", disable=not progress):
        start = starts[index]
        block = run(texts[start : start + shard_size], False)
        tmp = folder / f"shard-{index:06d}.tmp.npy"
        np.save(tmp, block)
        fault_point(f"wrote shard {index}")
        os.replace(tmp, folder / f"shard-{index:06d}.npy")
        fault_point(f"replaced shard {index}")
    if world > 1:
        dist.barrier()
    return np.concatenate([np.load(folder / f"shard-{i:06d}.npy", allow_pickle=False) for i in range(len(starts))])
