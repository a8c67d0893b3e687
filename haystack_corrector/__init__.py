"""haystack-corrector: fresh hard negatives from a stale embedding cache (Monath et al., ICML 2024).

The core depends on torch and numpy only. Host adapters import their framework only when used:
``haystack_corrector.sentence_transformers`` and the ``haystack_integrations.components.*.corrector`` components.
"""

from __future__ import annotations

from haystack_corrector.__about__ import __version__
from haystack_corrector.cache_store import CorrectedCacheStore
from haystack_corrector.corrector import Corrector
from haystack_corrector.sampler import HardNegativeSampler
from haystack_corrector.trainer import CorrectorTrainer

__all__ = ["Corrector", "CorrectedCacheStore", "CorrectorTrainer", "HardNegativeSampler", "__version__"]
