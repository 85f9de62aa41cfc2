"""Every code block in README.md and docs/*.md runs, and every relative link resolves.

``docs/_notes_keras_hub.md`` (working notes) is left out. Fenced blocks are checked by
their language:

- ``python``: the blocks of one page run in order, in one namespace, so a page can set
  up ``model``, ``x`` and ``y`` in its first block. Each page runs in a fresh temporary
  working directory holding a copy of ``saved_models/mnist_cnn.keras``, so the blocks
  read the shipped model by its repository path and write only into that directory.
- ``yaml`` / ``json``: parsed with ``yaml.safe_load`` / ``json.loads``. A YAML block
  whose first line is a comment naming a file (``# phases.yaml: ...``) is also written
  to that file in the page's working directory, so the python blocks after it can use
  it.
- ``bash`` / ``sh`` / ``console``: each command is checked (in ``console`` blocks the
  lines starting with ``$ ``; the other lines are recorded output). ``kerasft ...``
  runs in this process through ``kerasft.cli.main`` and must exit with 0, except
  ``kerasft finetune`` (a full training run): its command line is parsed by the CLI's
  own parser, which rejects unknown options and bad values. ``python script.py ...``
  (benchmarks, minutes long) must name an existing script whose ``--help``, given
  after the command's own arguments, exits with 0. ``python -c CODE`` runs CODE here.
  ``saved_model_cli`` must be on ``PATH`` (``tests/test_export.py`` runs it on an
  export). The README's first block, the two opening commands, is left to
  ``tests/test_readme.py`` and CI.
- ``text``: output, not run.

Any other fence language fails the test, so output cannot pass unlabelled as code.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import runpy
import shlex
import shutil
import sys

import keras
import pytest
import yaml
from conftest import ROOT, SHIPPED_MODEL

from kerasft import cli

PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
    if os.path.basename(p) != "_notes_keras_hub.md"
)
LANGUAGES = {"python", "yaml", "json", "bash", "sh", "console", "text"}
FENCE = re.compile(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def blocks(page: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of ``page``, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(read(page))]


def shell_commands(language: str, code: str) -> list[str]:
    """The commands of a shell block: ``$`` lines of a console transcript, else every line."""
    lines = code.splitlines()
    if language == "console":
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_command(command: str, namespace: dict) -> None:
    argv = shlex.split(command, comments=True)
    program, args = argv[0], argv[1:]
    if program == "kerasft":
        assert shutil.which("kerasft"), "the kerasft console script is not installed"
        if args[:1] == ["finetune"] and "--help" not in args:
            cli.build_parser().parse_args(args)  # exits with status 2 on a bad option
            return
        with contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(args)
        assert status == 0, f"{command!r} exited with {status}"
    elif program == "python" and args[:1] == ["-c"]:
        exec(compile(args[1], "<python -c>", "exec"), dict(namespace))
    elif program == "python":
        script = os.path.join(ROOT, args[0])
        assert os.path.isfile(script), f"{command!r}: no script {args[0]}"
        saved = sys.argv
        sys.argv = [script, *args[1:], "--help"]
        try:
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path(script, run_name="__main__")
        finally:
            sys.argv = saved
        assert exit_info.value.code in (0, None), (
            f"{command!r} --help exited with {exit_info.value.code}"
        )
    elif program == "saved_model_cli":
        assert shutil.which("saved_model_cli"), "saved_model_cli is not on PATH"
    else:
        pytest.fail(
            f"No check for the command {command!r}; teach tests/test_docs.py or reword the page."
        )


@pytest.fixture()
def page_dir(tmp_path, monkeypatch):
    """A working directory holding a copy of the shipped model at its repository path."""
    os.makedirs(tmp_path / "saved_models")
    shutil.copy(SHIPPED_MODEL, tmp_path / "saved_models")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield tmp_path
    keras.backend.clear_session()


@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_run(page, page_dir):
    found = blocks(page)
    assert found, f"{page} has no code block"
    namespace: dict = {"__name__": "__main__"}
    for index, (language, code) in enumerate(found):
        assert language in LANGUAGES, (
            f"{page}: block {index} is fenced as {language!r}; use one of {sorted(LANGUAGES)} "
            "(```text for output)"
        )
        if page == "README.md" and index == 0:
            continue  # the two opening commands: tests/test_readme.py and CI
        if language == "python":
            exec(compile(code, f"{page} block {index}", "exec"), namespace)
        elif language == "yaml":
            yaml.safe_load(code)
            name = re.match(r"#\s*([\w.-]+\.ya?ml)\b", code)
            if name:
                with open(name.group(1), "w", encoding="utf-8") as f:
                    f.write(code)
        elif language == "json":
            json.loads(code)
        elif language in ("bash", "sh", "console"):
            for command in shell_commands(language, code):
                check_command(command, namespace)


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    base = os.path.dirname(os.path.join(ROOT, page))
    text = FENCE.sub("", read(page))
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(base, target.split("#", 1)[0]))
        assert os.path.exists(path), f"{page}: link {target!r} points at nothing ({path})"


def test_every_docs_page_is_linked_from_the_readme():
    readme = read("README.md")
    for page in PAGES[1:]:
        assert f"({page})" in readme, f"README.md does not link {page}"


def test_architecture_lists_every_module():
    tree = next(code for language, code in blocks("docs/architecture.md") if language == "text")
    listed = {line.split()[0] for line in tree.splitlines() if line.strip()}
    modules = {
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "kerasft", "**", "*.py"), recursive=True)
    }
    assert listed == modules, (
        f"docs/architecture.md's module list is out of date: missing {sorted(modules - listed)}, "
        f"gone {sorted(listed - modules)}"
    )


def test_docs_use_typed_result_fields():
    for page in PAGES:
        assert "result.extras[" not in read(page), f"{page} reads the deprecated result.extras"
