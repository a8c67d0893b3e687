# The snapshot module is imported first: it raises a clear ImportError naming the extra when haystack is missing.
import haystack_integrations.common.corrector  # noqa: F401  # isort: skip  (the haystack-ai import guard)
from haystack_integrations.components.retrievers.corrector.corrected_embedding_retriever import (
    CorrectedEmbeddingRetriever,
)
from haystack_integrations.components.retrievers.corrector.corrected_hard_negative_miner import (
    CorrectedHardNegativeMiner,
)

__all__ = ["CorrectedEmbeddingRetriever", "CorrectedHardNegativeMiner"]
