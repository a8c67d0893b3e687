"""Experiments on BEIR data: two tasks over one harness (``harness.py``, ``output_folder.py``, ``arms.py``,
``report.py``). The contrastive task (``contrastive.py``) compares hard-negative strategies ("arms") behind
``haystack-corrector experiment``, ``demo`` and ``fidelity``; the latent task (``latent.py``) trains a retriever
through a reader behind ``haystack-corrector latent``. Needs sentence-transformers (and, for metrics and plots, the
``demo`` extra).
"""
