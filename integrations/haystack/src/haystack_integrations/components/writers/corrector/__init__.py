# The common package is imported first: it raises a clear ImportError naming the extra when haystack is missing.
import haystack_integrations.common.corrector  # noqa: F401  # isort: skip  (the haystack-ai import guard)
from haystack_integrations.components.writers.corrector.document_store_corrector import DocumentStoreCorrector

__all__ = ["DocumentStoreCorrector"]
