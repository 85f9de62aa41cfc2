"""The README's two commands stay true: CI runs exactly the README's test command."""

from __future__ import annotations

import os

from conftest import ROOT


def _readme_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if not line.startswith("#")]


def test_readme_opens_with_two_commands():
    main_job, tests = _readme_commands()
    assert main_job.endswith("kerasft finetune")
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run")).read().strip().splitlines()
    assert ci[-1] == _readme_commands()[1]


def test_public_names_import():
    import kerasft

    for name in kerasft.__all__:
        assert getattr(kerasft, name) is not None, name


def test_readme_is_a_first_page():
    """Guides and benchmark tables live in docs/; the README stays short (STYLE.md, point 10)."""
    words = len(open(os.path.join(ROOT, "README.md")).read().split())
    assert words < 1500, f"README.md has {words} words; move the detail into docs/"
