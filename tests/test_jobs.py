"""The demo jobs live in kerasft.jobs, below the facade; their old names keep working."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest


def test_the_library_imports_nothing_from_the_jobs():
    code = (
        "import kerasft, sys; print(sorted(m for m in sys.modules if m.startswith('kerasft.jobs')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("kerasft.textdata", "kerasft.jobs.textdata", "fetch_wheel_files"),
        ("kerasft.textjob", "kerasft.jobs.textjob", "run_text_job"),
        ("kerasft.llm.job", "kerasft.jobs.generate", "run_cli"),
    ],
)
def test_old_module_names_warn_and_forward(old, new, name):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert name in dir(module)
