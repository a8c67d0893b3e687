from __future__ import annotations

import subprocess
import sys

from haystack_corrector import __version__
from haystack_corrector.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"haystack-corrector {__version__}"


def test_help_lists_the_tool(capsys):
    assert main([]) == 0
    assert "corrector network" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlib.metadata import entry_points; "
            "print([e.value for e in entry_points(group='console_scripts') if e.name == 'haystack-corrector'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "haystack_corrector.cli:main" in result.stdout
