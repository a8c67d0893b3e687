"""Experiments comparing negative strategies ("arms") on BEIR data: the harness behind ``haystack-corrector
experiment``, ``demo`` and ``fidelity``. Needs sentence-transformers (and, for metrics and plots, the ``demo`` extra).
"""
