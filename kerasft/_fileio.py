"""Crash-safe writes: build the new file or directory beside the target, then rename.

A rename within one filesystem is atomic, so readers see either the old model or the
new one, never half of either. Everything written is group/world read-only for writing
(mode 0o755 for directories, 0o644 for files).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_file", "atomic_directory", "drop_group_other_write", "tidy_permissions"]


def tidy_permissions(path: str) -> None:
    """Make ``path`` (recursively) writable by its owner only: 0o755 dirs, 0o644 files."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o755)
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
    else:
        os.chmod(path, 0o644)


def drop_group_other_write(path: str, *, recursive: bool = True) -> None:
    """Remove group/world write permission from ``path`` (and what is below it), nothing else.

    For places kerasft writes into but does not own (a user's checkpoint or log
    directory, files written by Keras under the umask): unlike :func:`tidy_permissions`
    it never widens a mode, so a private ``0o700`` directory stays private.
    """
    paths = [path]
    if recursive and os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, name) for name in dirs + files]
    for p in paths:
        if os.path.exists(p):
            os.chmod(p, os.stat(p).st_mode & ~0o022)


@contextlib.contextmanager
def atomic_file(path: str, *, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it over ``path`` when the block succeeds.

    The temporary name keeps the extension of ``path`` (Keras picks the format from it).
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ValueError(f"Argument `path` must be a file path, but {path!r} is a directory.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists. Pass overwrite=True to replace it.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{ext}", dir=parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield tmp
        tidy_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_directory(path: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``path``; swap it in when the block succeeds.

    An existing directory at ``path`` is replaced only with ``overwrite=True``, and only
    after the new one is complete; a file at ``path`` is always an error.
    """
    path = os.path.abspath(path)
    if os.path.isfile(path):
        raise ValueError(
            f"Argument `path` must be a directory path, but {path!r} is an existing file. "
            "Choose a new directory name."
        )
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Argument `path`: {path!r} already exists. Pass overwrite=True to replace it, "
            "or choose a new directory."
        )
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    old = None
    try:
        yield tmp
        tidy_permissions(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            # Put the previous directory back rather than delete it below.
            if old is not None and not os.path.exists(path):
                os.replace(old, path)
                old = None
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
