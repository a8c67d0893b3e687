"""EmbeddingCorrector: rewrite documents' embeddings through a corrector (index upgrade without re-embedding)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from haystack import Document, component, default_from_dict, default_to_dict
from haystack_integrations.common.corrector.correctors import (
    CORRECTOR_META,
    CORRECTOR_PATH_META,
    corrector_fingerprint,
    load_corrector,
)
from haystack_integrations.common.corrector.documents import embedding_matrix

from haystack_corrector._validation import check_bool, check_path_string, check_positive_int


@component
class EmbeddingCorrector:
    """Maps each document's (stale) embedding through a saved corrector: ``embedding <- h(embedding)``.

    Returns new Document objects (the inputs are not modified; ids are kept) whose meta records which corrector was
    applied: ``meta["corrector"]`` is a fingerprint of its weights (16 hex digits of SHA-256) and
    ``meta["corrector_path"]`` its path — flat strings, which every store keeps (Chroma drops nested meta). For an
    indexing pipeline that upgrades a store in place (``DocumentWriter(policy=DuplicatePolicy.OVERWRITE)``) instead of
    re-embedding every document; ``DocumentStoreCorrector`` does the same page by page and resumably.

    Usage example:
    ```python
    from haystack import Document
    from haystack_corrector import Corrector
    from haystack_integrations.components.embedders.corrector import EmbeddingCorrector

    Corrector(2).save("identity-corrector")
    corrector = EmbeddingCorrector("identity-corrector")
    corrector.warm_up()
    print(corrector.run([Document(content="x", embedding=[0.6, 0.8])])["documents"][0].embedding)
    ```
    """

    def __init__(self, corrector_path: str, batch_size: int = 1024, force: bool = False) -> None:
        """
        :param corrector_path: directory of a saved ``haystack_corrector.Corrector``.
        :param batch_size: documents corrected per forward pass.
        :param force: also correct documents whose ``meta["corrector"]`` says a corrector (any) was already applied.
            By default they are refused: a corrector maps old-encoder embeddings, and applying it to its own output
            (a re-run of an upgrade pipeline) corrects twice.
        """
        self.corrector_path = check_path_string(corrector_path, "corrector_path")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.force = check_bool(force, "force")
        self._corrector = None
        self._fingerprint: str | None = None

    def warm_up(self) -> None:
        """Load the corrector (once; later calls do nothing)."""
        if self._corrector is None:
            self._corrector = load_corrector(self.corrector_path)
            self._fingerprint = corrector_fingerprint(self.corrector_path)

    @property
    def fingerprint(self) -> str:
        """The fingerprint this component records in ``meta["corrector"]`` (loads the corrector if needed)."""
        self.warm_up()
        if self._fingerprint is None:
            raise RuntimeError("warm_up() did not load the corrector")
        return self._fingerprint

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, corrector_path=self.corrector_path, batch_size=self.batch_size, force=self.force)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingCorrector:
        return default_from_dict(cls, data)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:
        """Corrected copies of ``documents``.

        :param documents: documents with embeddings (from the old encoder).
        """
        if not isinstance(documents, list) or not all(isinstance(d, Document) for d in documents):
            raise TypeError("EmbeddingCorrector expects a list of Documents")
        if not documents:
            return {"documents": []}
        corrected_already = [doc for doc in documents if (doc.meta or {}).get(CORRECTOR_META)]
        if corrected_already and not self.force:
            first = corrected_already[0]
            raise ValueError(
                f"{len(corrected_already)} of {len(documents)} documents were already corrected (first: id "
                f"{first.id!r}, meta[{CORRECTOR_META!r}] = {first.meta[CORRECTOR_META]!r}); correcting them again would apply a "
                "corrector to its own output. Pass only old-encoder embeddings, or EmbeddingCorrector(force=True)"
            )
        self.warm_up()
        corrector = self._corrector
        if corrector is None:
            raise RuntimeError("warm_up() did not load the corrector")
        matrix = embedding_matrix(documents, "input documents")
        if matrix.shape[1] != corrector.dim:
            raise ValueError(
                f"The corrector has dimension {corrector.dim} but the documents' embeddings have dimension {matrix.shape[1]}"
            )
        corrected = []
        with torch.no_grad():
            for start in range(0, len(documents), self.batch_size):
                block = torch.from_numpy(matrix[start : start + self.batch_size])
                corrected.extend(corrector(block).tolist())
        record = {CORRECTOR_META: self._fingerprint, CORRECTOR_PATH_META: self.corrector_path}
        return {
            "documents": [
                dataclasses.replace(doc, embedding=[float(x) for x in emb], meta={**doc.meta, **record})
                for doc, emb in zip(documents, corrected)
            ]
        }
