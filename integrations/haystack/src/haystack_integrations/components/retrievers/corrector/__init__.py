from haystack_integrations.components.retrievers.corrector.corrected_embedding_retriever import (
    CorrectedEmbeddingRetriever,
)
from haystack_integrations.components.retrievers.corrector.corrected_hard_negative_miner import (
    CorrectedHardNegativeMiner,
)

__all__ = ["CorrectedEmbeddingRetriever", "CorrectedHardNegativeMiner"]
