from haystack_integrations.components.embedders.corrector.corrector_fitter import CorrectorFitter
from haystack_integrations.components.embedders.corrector.embedding_corrector import EmbeddingCorrector

__all__ = ["CorrectorFitter", "EmbeddingCorrector"]
