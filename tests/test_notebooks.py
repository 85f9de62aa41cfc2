"""The example notebooks: in sync with their scripts, stored clean, and run top to bottom."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from conftest import ROOT

EXAMPLES = os.path.join(ROOT, "examples")


def _builder():
    spec = importlib.util.spec_from_file_location(
        "_build_notebooks", os.path.join(EXAMPLES, "_build_notebooks.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _builder()
NOTEBOOKS = [os.path.splitext(s)[0] + ".ipynb" for s in BUILD.SCRIPTS]


def _read(name: str) -> dict:
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("script", BUILD.SCRIPTS)
def test_notebook_matches_its_script(script):
    notebook = os.path.splitext(script)[0] + ".ipynb"
    with open(os.path.join(EXAMPLES, notebook), encoding="utf-8") as f:
        stored = f.read()
    assert stored == BUILD.notebook_text(os.path.join(EXAMPLES, script)), (
        f"examples/{notebook} is out of date with examples/{script}. "
        "Run: python examples/_build_notebooks.py"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean_and_opens_in_colab(name):
    nb = _read(name)
    first, install = nb["cells"][:2]
    assert first["cell_type"] == "markdown"
    assert (
        f"(https://colab.research.google.com/github/{BUILD.REPOSITORY}/blob/{BUILD.BRANCH}/"
        f"examples/{name})" in "".join(first["source"])
    )
    source = "".join(install["source"])
    assert 'if importlib.util.find_spec("kerasft") is None:' in source
    assert "%pip install" in source and f"https://github.com/{BUILD.REPOSITORY}.git" in source
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, name


def test_every_example_script_has_a_notebook():
    scripts = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))
    assert set(BUILD.SCRIPTS) <= set(scripts)
    notebooks = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".ipynb"))
    assert notebooks == sorted(NOTEBOOKS)


# Under test a notebook may run on less data than it shows (same code, same real model and
# data): each original must appear in the notebook exactly once, so an edit of the notebook
# fails here instead of silently running at full size.
SMALLER = {
    # 400 reviews through a 6-layer BERT took 340 s of the suite on 2 cores
    "text_job.ipynb": [("n_train=400, n_test=600", "n_train=96, n_test=96")],
}


def _shrink(nb, name: str) -> None:
    for original, smaller in SMALLER.get(name, []):
        cells = [c for c in nb.cells if c.cell_type == "code" and original in c.source]
        assert len(cells) == 1 and cells[0].source.count(original) == 1, (name, original)
        cells[0].source = cells[0].source.replace(original, smaller)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        nb = nbformat.read(f, as_version=4)
    _shrink(nb, name)
    client = nbclient.NotebookClient(
        nb,
        timeout=1800,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # files land in tmp_path
    )
    client.execute(env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    text = "\n".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )
    assert "test accuracy" in text, text[-2000:]
