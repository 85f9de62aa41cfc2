"""Build the notebooks in examples/ from the example scripts beside them.

Each notebook is its script, cell for cell: ``# %%`` starts a code cell and
``# %% [markdown]`` a markdown cell, whose lines lose their leading ``# ``. The first
cell gets an "Open in Colab" badge, and a cell that installs kerasft in Colab follows
it. A line ``# notebook: CODE`` is a comment in the script and ``CODE`` in the notebook
(to show a PNG inline, say). Notebooks are written without outputs.

Run ``python examples/_build_notebooks.py`` after editing a script;
tests/test_notebooks.py checks that every notebook is up to date, and runs it.
"""

from __future__ import annotations

import os
import sys

import nbformat

REPOSITORY = "kerasft/kerasft"  # GitHub owner/name that Colab opens the notebooks from
BRANCH = "main"
SCRIPTS = ("quickstart.py", "strategies.py", "pruning_export.py", "image_folder.py", "text_job.py")
HERE = os.path.dirname(os.path.abspath(__file__))

INSTALL_CELL = f"""\
# In Colab: fetch kerasft (with its shipped model) from GitHub and install it.
# Where kerasft is already installed, this cell does nothing.
import importlib.util

if importlib.util.find_spec("kerasft") is None:
    !git clone --quiet --depth 1 --branch {BRANCH} https://github.com/{REPOSITORY}.git
    %pip install --quiet ./kerasft
    %cd kerasft"""

_NOTEBOOK_PREFIX = "# notebook: "


def badge(notebook: str) -> str:
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/examples/{notebook}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def _cells(source: str) -> list[tuple[str, str]]:
    """Split a percent-format script into (kind, text) cells."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"Text before the first '# %%' cell marker: {line!r}")
    result = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        else:
            lines = [
                line[len(_NOTEBOOK_PREFIX) :] if line.startswith(_NOTEBOOK_PREFIX) else line
                for line in lines
            ]
        text = "\n".join(lines).strip("\n")
        if text:
            result.append((kind, text))
    return result


def build(script: str) -> nbformat.NotebookNode:
    """The notebook for ``script`` (a path to an example script)."""
    with open(script, encoding="utf-8") as f:
        cells = _cells(f.read())
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{script} must start with a markdown cell (its title).")
    stem = os.path.splitext(os.path.basename(script))[0]
    kind, title = cells[0]
    cells[0] = (kind, f"{badge(stem + '.ipynb')}\n\n{title}")
    cells.insert(1, ("code", INSTALL_CELL))
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "colab": {"provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, text) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(text, id=f"{stem}-{i}"))
    return nb


def notebook_text(script: str) -> str:
    return nbformat.writes(build(script)) + "\n"


def main() -> int:
    for name in SCRIPTS:
        script = os.path.join(HERE, name)
        target = os.path.splitext(script)[0] + ".ipynb"
        with open(target, "w", encoding="utf-8") as f:
            f.write(notebook_text(script))
        print(f"wrote {os.path.relpath(target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
