"""The core must work with no host framework installed: block their imports in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("haystack", "haystack_integrations", "sentence_transformers", "transformers", "faiss")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    import haystack_corrector
    from haystack_corrector import CorrectedCacheStore, Corrector, CorrectorTrainer, HardNegativeSampler
    from haystack_corrector import evaluation, synthetic, cli, drift_losses

    store = CorrectedCacheStore(torch.randn(50, 8), corrector=Corrector(8))
    CorrectorTrainer(store).observe([0, 1], torch.randn(2, 8))
    negatives = HardNegativeSampler(store, 3, sampling_strategy="gumbel", range_max=10, seed=0).sample(torch.randn(2, 8), [[0], [1]])
    assert negatives.shape == (2, 3)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("core ok")
    """
)


def test_core_works_without_host_frameworks():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "core ok"


def test_sentence_transformers_adapter_names_the_extra_when_missing():
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "sentence_transformers":
                    raise ImportError("No module named 'sentence_transformers'")
        sys.meta_path.insert(0, Block())
        try:
            import haystack_corrector.sentence_transformers
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert 'pip install "haystack-corrector[sentence-transformers]"' in result.stdout, result.stderr


def test_haystack_components_name_the_extra_when_haystack_is_missing():
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "haystack" or name.startswith("haystack."):
                    raise ImportError("No module named 'haystack'")
        sys.meta_path.insert(0, Block())
        try:
            import haystack_integrations.components.retrievers.corrector
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert 'pip install "haystack-corrector[haystack]"' in result.stdout, result.stderr
