# The common module is imported first: it raises a clear ImportError naming the extra when haystack is missing.
import haystack_integrations.common.corrector  # noqa: F401  # isort: skip  (the haystack-ai import guard)
from haystack_integrations.components.classifiers.corrector.retrieved_evidence_classifier import (
    RetrievedEvidenceClassifier,
)

__all__ = ["RetrievedEvidenceClassifier"]
