"""The Python examples in the README and docs run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(<!-- (?P<marker>[a-z: -]+) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def python_blocks(path: Path, slow: bool = False) -> list[str]:
    """Python code blocks of a Markdown file; blocks after ``<!-- slow -->`` only when ``slow``, ``<!-- no-run -->`` never."""
    blocks = []
    for match in FENCE.finditer(path.read_text()):
        marker = (match.group("marker") or "").strip()
        if marker == "no-run" or (marker == "slow") != slow:
            continue
        blocks.append(match.group("code"))
    return blocks


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CASES = [(doc, i, code) for doc in DOCS for i, code in enumerate(python_blocks(doc))]


@pytest.mark.parametrize(("doc", "code"), [(d, c) for d, _, c in CASES], ids=[f"{d.name}-{i}" for d, i, _ in CASES])
def test_doc_example_runs(doc, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HAYSTACK_TELEMETRY_ENABLED": "False"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert result.returncode == 0, f"{doc.name} example failed:\n{result.stderr[-3000:]}"


SLOW_CASES = [(doc, i, code) for doc in DOCS for i, code in enumerate(python_blocks(doc, slow=True))]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("doc", "code"), [(d, c) for d, _, c in SLOW_CASES], ids=[f"{d.name}-slow-{i}" for d, i, _ in SLOW_CASES]
)
def test_slow_doc_example_runs(doc, code, tmp_path):
    test_doc_example_runs(doc, code, tmp_path)


def test_where_things_are_map_matches_the_tree():
    """Every file of the concepts map exists, and every core module is on the map."""
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "concepts.md").read_text()
    section = text[text.index("## Where things are") :]
    paths = re.findall(r"\| `([^`]+)` \|", section)
    assert len(paths) > 10
    for path in paths:
        assert (root / path).exists(), f"docs/concepts.md maps a concept to {path}, which does not exist"
    core = {f"haystack_corrector/{p.name}" for p in (root / "haystack_corrector").glob("*.py")}
    core -= {"haystack_corrector/__init__.py", "haystack_corrector/__about__.py"}
    missing = sorted(core - set(paths))
    assert not missing, f"core modules missing from the map in docs/concepts.md: {missing}"


def test_every_link_in_the_docs_resolves_inside_the_repository():
    """A user who cloned the project has no ../shared: every relative link must point at a file of the repository."""
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in link.findall(doc.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith(("#", "mailto:")):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if REPO.resolve() not in path.parents and path != REPO.resolve() or not path.exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken
