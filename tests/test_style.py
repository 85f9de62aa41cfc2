"""The code's style is checked, not hoped for: ruff's linter and formatter over the Python.

The rules are ruff.toml's (line length 100, pyflakes, pycodestyle, import order,
bugbear, pyupgrade); ruff comes with the ``dev`` extra, so this runs wherever the tests
do. To fix a failure: ``ruff format kerasft tests benchmarks examples`` and
``ruff check kerasft tests benchmarks examples``.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

PYTHON = ["kerasft", "tests", "benchmarks", "examples"]


def _ruff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, *PYTHON],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_linter_finds_nothing():
    done = _ruff("check", "--no-cache", "--output-format", "concise")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_file_is_formatted():
    done = _ruff("format", "--check", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr
