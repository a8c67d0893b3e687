# The snapshot module is imported first: it raises a clear ImportError naming the extra when haystack is missing.
from haystack_integrations.components.retrievers.corrector import _document_snapshot  # noqa: F401  # isort: skip
from haystack_integrations.components.embedders.corrector.corrector_fitter import CorrectorFitter
from haystack_integrations.components.embedders.corrector.embedding_corrector import EmbeddingCorrector

__all__ = ["CorrectorFitter", "EmbeddingCorrector"]
