# The snapshot module is imported first: it raises a clear ImportError naming the extra when haystack is missing.
from haystack_integrations.components.retrievers.corrector import _document_snapshot  # noqa: F401  # isort: skip
from haystack_integrations.components.retrievers.corrector.corrected_embedding_retriever import (
    CorrectedEmbeddingRetriever,
)
from haystack_integrations.components.retrievers.corrector.corrected_hard_negative_miner import (
    CorrectedHardNegativeMiner,
)

__all__ = ["CorrectedEmbeddingRetriever", "CorrectedHardNegativeMiner"]
