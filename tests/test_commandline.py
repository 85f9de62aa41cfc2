"""kerasft/_commandline.py: what the command shares with its jobs, without TensorFlow."""

from __future__ import annotations

import argparse
import ast
import io
import sys

from conftest import ROOT

from kerasft._commandline import flag_names, progress_verbosity


def test_flag_names_are_spelled_as_typed():
    assert flag_names(["model", "batch_size", "epochs", "head_epochs"]) == [
        "MODEL",
        "--batch-size",
        "--epochs",
        "--head-epochs",
    ]


def test_progress_is_quiet_for_json_and_plain_lines_off_a_terminal(monkeypatch):
    assert progress_verbosity(argparse.Namespace(quiet=True)) == 0
    assert progress_verbosity(argparse.Namespace(json=True, quiet=False)) == 0

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a file or a pipe
    assert progress_verbosity(argparse.Namespace()) == 2
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert progress_verbosity(argparse.Namespace()) == 1


def test_imports_only_the_standard_library():
    """So that ``kerasft --help`` answers without importing TensorFlow (cli imports it first)."""
    tree = ast.parse(open(f"{ROOT}/kerasft/_commandline.py", encoding="utf-8").read())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
