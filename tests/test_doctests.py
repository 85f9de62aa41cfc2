"""Every ``>>>`` example in the package's docstrings runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil

import pytest

import kerasft


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(kerasft.__path__, prefix="kerasft."):
        spec = importlib.util.find_spec(info.name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, encoding="utf-8") as f:
            if ">>> " in f.read():
                names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_examples_are_found():
    assert len(MODULES) >= 25 and "kerasft.surgery" in MODULES and "kerasft.probe" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert tried > 0, f"{name} has '>>> ' in its source but doctest found no example"
    assert failures == 0, f"{failures} of {tried} examples in {name} failed (see the output above)"
    assert os.getcwd() == str(tmp_path)
