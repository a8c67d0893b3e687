"""Code shared by the corrector components of every family (retrievers, embedders), named after what it does.

Importing it checks that haystack-ai is installed and otherwise names the pip command.
"""

from __future__ import annotations

INSTALL_HINT = 'pip install "haystack-corrector[haystack]"'

try:
    import haystack  # noqa: F401
except ImportError as exc:  # exercised in a subprocess test
    raise ImportError(f"The haystack-corrector components need haystack-ai. Install it with: {INSTALL_HINT}") from exc
