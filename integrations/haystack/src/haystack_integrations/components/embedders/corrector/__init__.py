# The snapshot module is imported first: it raises a clear ImportError naming the extra when haystack is missing.
import haystack_integrations.common.corrector  # noqa: F401  # isort: skip  (the haystack-ai import guard)
from haystack_integrations.components.embedders.corrector.corrector_fitter import CorrectorFitter
from haystack_integrations.components.embedders.corrector.embedding_corrector import EmbeddingCorrector

__all__ = ["CorrectorFitter", "EmbeddingCorrector"]
