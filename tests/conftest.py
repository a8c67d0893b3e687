from __future__ import annotations

import os

# Nothing may reach a hub at test time, and Haystack must not phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from tests.tiny_model import build_tiny_model_folder

    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tiny_model(tiny_model_folder):
    from tests.tiny_model import load_tiny_model

    return load_tiny_model(tiny_model_folder)
