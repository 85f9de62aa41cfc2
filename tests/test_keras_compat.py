"""Private Keras/TF API lives in one module, and untested Keras versions are refused loudly."""

import ast
import configparser
import os
import subprocess
import sys

import pytest

from kerasft import _keras_compat as compat

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kerasft")
COMPAT = os.path.join(PACKAGE, "_keras_compat.py")


def _sources():
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    yield path, ast.parse(f.read(), filename=path)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(package: str, name: str) -> bool:
    base = os.path.join(os.path.dirname(PACKAGE), *package.split("."), name)
    return os.path.isfile(base + ".py") or os.path.isdir(base)


def _offences(path: str, tree: ast.AST) -> list[str]:
    """Private attribute reads on other objects, keras.src imports, underscored imports."""
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                out.append(f"{rel}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "getattr",
            "hasattr",
            "setattr",
        ):
            if (
                len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                if _private(node.args[1].value):
                    out.append(f"{rel}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("keras.src"):
                out.append(f"{rel}:{node.lineno} from {node.module}")
            if node.module.startswith("kerasft"):
                # Private modules of the package are its own business; private names
                # inside another module are not.
                out += [
                    f"{rel}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if _private(a.name) and not _is_module(node.module, a.name)
                ]
        elif isinstance(node, ast.Import):
            out += [
                f"{rel}:{node.lineno} import {a.name}"
                for a in node.names
                if a.name.startswith("keras.src")
            ]
    return out


def test_private_keras_api_only_in_the_compat_module():
    offences = [o for path, tree in _sources() if path != COMPAT for o in _offences(path, tree)]
    assert not offences, "private API outside kerasft/_keras_compat.py:\n" + "\n".join(offences)


def test_compat_functions_say_why():
    with open(COMPAT, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    public = [
        n
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not _private(n.name)
    ]
    assert len(public) >= 15
    assert all(ast.get_docstring(n) for n in public), [
        n.name for n in public if not ast.get_docstring(n)
    ]
    assert "Keras 3.15.1" in ast.get_docstring(tree)


def test_setup_cfg_bounds_keras_to_the_tested_range():
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(PACKAGE), "setup.cfg"))
    requirements = [r.strip() for r in config["options"]["install_requires"].splitlines()]
    low, high = compat.TESTED_KERAS
    assert f"keras>={low},<{high}" in requirements


@pytest.mark.parametrize("version", ["3.14.0", "3.16.0", "4.0.1", "2.15.0"])
def test_untested_keras_is_refused_with_the_fix(version, monkeypatch):
    monkeypatch.delenv("KERASFT_ALLOW_UNTESTED_KERAS", raising=False)
    with pytest.raises(
        ImportError,
        match=rf"tested with Keras >=3.15,<3.16, but Keras {version} is installed.*pip install",
    ):
        compat.check_keras_version(version)


def test_untested_keras_can_be_tried_on_request(monkeypatch):
    monkeypatch.setenv("KERASFT_ALLOW_UNTESTED_KERAS", "1")
    with pytest.warns(RuntimeWarning, match="Keras 3.16.2 is installed"):
        compat.check_keras_version("3.16.2")
    compat.check_keras_version("3.15.9")  # tested: silent


def test_import_fails_loudly_on_an_untested_keras(tmp_path):
    # A real import of kerasft with keras reporting another version: the error comes at
    # import, not deep inside a training step.
    script = (
        "import keras; keras.__version__ = '3.99.0'\n"
        "try:\n    import kerasft\nexcept ImportError as e:\n    print('REFUSED', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "REFUSED kerasft is tested with Keras >=3.15,<3.16, but Keras 3.99.0" in out.stdout, (
        out.stderr[-2000:]
    )
