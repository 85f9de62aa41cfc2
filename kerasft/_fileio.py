"""Crash-safe writes: build the new file or directory beside the target, then rename.

A rename within one filesystem is atomic, so readers see either the old model or the
new one, never half of either. Replacing a directory swaps the two in one step
(Linux ``renameat2(RENAME_EXCHANGE)``), so a kill at any moment leaves a complete
directory at the path; where that call is missing, the previous directory is moved
aside first, and the next write to the same path puts it back if a kill came between
the two renames. Temporary names carry the writer's process id, and the next write to
a path removes those of processes that no longer run. Modes follow the umask, minus
group and world write: nothing kerasft writes is writable by others, and a private
umask (``077``) keeps everything private.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator

__all__ = [
    "atomic_file",
    "atomic_directory",
    "drop_group_other_write",
    "tidy_permissions",
    "current_umask",
    "sweep_leftovers",
    "make_partial_directory",
    "scratch_directory",
    "make_scratch_directory",
]

_LEFTOVER_KINDS = ("partial", "old")
_SCRATCH_PREFIX = "kerasft-"


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other way to read it: set and restore at once
    os.umask(mask)
    return mask


def _modes() -> tuple[int, int]:
    """(directory mode, file mode): what the umask allows, never group/world-writable."""
    mask = current_umask() | 0o022
    return 0o777 & ~mask, 0o666 & ~mask


def tidy_permissions(path: str) -> None:
    """Give ``path`` (recursively) a plain ``mkdir``/``open``'s modes, without group/world write.

    Temporary files and directories are created private (``0o600``/``0o700``); once
    complete they get ``0o777``/``0o666`` minus the umask and minus ``0o022``: ``0o755``
    and ``0o644`` under the usual umask ``022``, ``0o700`` and ``0o600`` under ``077``.
    """
    dir_mode, file_mode = _modes()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, dir_mode)
            for d in dirs:
                os.chmod(os.path.join(root, d), dir_mode)
            for f in files:
                os.chmod(os.path.join(root, f), file_mode)
    else:
        os.chmod(path, file_mode)


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


# ------------------------------------------------------------------------- leftovers


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _leftover_pattern(base: str) -> re.Pattern:
    # .<base>.<pid>.<random>.<kind>[<ext>], the names _temporary_name makes.
    return re.compile(re.escape(f".{base}.") + r"(\d+)\.[A-Za-z0-9_]+\.(partial|old)(\.[^/]*)?$")


def sweep_leftovers(path: str) -> list[str]:
    """Clean what killed writers left beside ``path``; return the names removed or restored.

    A temporary ``.partial`` of a process that no longer runs is deleted. A ``.old``
    copy (a previous directory moved aside by a swap that was killed half-way) is put
    back at ``path`` when nothing is there, else deleted.
    """
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    if not os.path.isdir(parent):
        return []
    pattern = _leftover_pattern(base)
    found = []
    for name in os.listdir(parent):
        match = pattern.match(name)
        if match and not _alive(int(match.group(1))):
            found.append((match.group(2), name))
    cleaned = []
    # Restore before deleting, newest first: the old copy is the last complete export.
    olds = sorted(
        (n for k, n in found if k == "old"),
        key=lambda n: os.stat(os.path.join(parent, n)).st_mtime,
        reverse=True,
    )
    for name in olds:
        leftover = os.path.join(parent, name)
        if not os.path.lexists(path):
            os.rename(leftover, path)
        else:
            _remove(leftover)
        cleaned.append(name)
    for kind, name in found:
        if kind == "partial":
            _remove(os.path.join(parent, name))
            cleaned.append(name)
    return cleaned


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _temporary_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.{os.getpid()}."


def make_partial_directory(path: str) -> str:
    """A new private directory beside ``path`` named as its temporaries are.

    For staging that must stay on the destination's filesystem (to be renamed into
    place); :func:`sweep_leftovers` removes it after a kill, like any temporary of ``path``.
    """
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return tempfile.mkdtemp(
        prefix=_temporary_prefix(path), suffix=".partial", dir=os.path.dirname(path)
    )


# --------------------------------------------------------------------------- renames

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(source: str, target: str, flags: int) -> bool:
    """``renameat2(source, target, flags)``; ``False`` where the system lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # old kernel or a filesystem without it
    raise OSError(code, os.strerror(code), target)


def _rename_no_replace(source: str, target: str) -> None:
    """Rename ``source`` to ``target``, failing with ``FileExistsError`` if ``target`` exists."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    # A plain rename replaces nothing but an empty directory or a file that appeared
    # just now; a non-empty directory makes it fail.
    os.rename(source, target)


def _exchange(source: str, target: str) -> bool:
    """Swap ``source`` and ``target`` in one step; ``False`` where the system cannot."""
    return _renameat2(source, target, _RENAME_EXCHANGE)


# ---------------------------------------------------------------------------- writers


@contextlib.contextmanager
def atomic_file(path: str, *, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it over ``path`` when the block succeeds.

    The temporary name keeps the extension of ``path`` (Keras picks the format from it).
    With ``overwrite=False``, a file that appears at ``path`` meanwhile is kept and
    ``FileExistsError`` raised.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ValueError(f"Argument `path` must be a file path, but {path!r} is a directory.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists. Pass overwrite=True to replace it.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    sweep_leftovers(path)
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=f".partial{ext}", dir=parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield tmp
        tidy_permissions(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                _rename_no_replace(tmp, path)
            except FileExistsError:
                raise FileExistsError(
                    f"{path!r} appeared while it was being written; it was left as it is. "
                    "Pass overwrite=True to replace it."
                ) from None
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def atomic_directory(
    path: str,
    *,
    overwrite: bool = False,
    replaceable: Callable[[str], bool] | None = None,
    what: str = "directory",
) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``path``; swap it in when the block succeeds.

    An existing directory at ``path`` is replaced only with ``overwrite=True``, only if
    ``replaceable(path)`` says it may be (when given), and only after the new one is
    complete; it is checked again at the swap, so a directory that appears at ``path``
    meanwhile is never deleted unless it qualifies too. A file at ``path`` is always an
    error.

    Args:
        path: the destination directory.
        overwrite: replace an existing directory. Defaults to `False`.
        replaceable: tells whether an existing directory may be replaced, e.g. "it is a
            kerasft export". Defaults to `None` (any directory).
        what: what ``replaceable`` recognises, for error messages. Defaults to `"directory"`.
    """
    path = os.path.abspath(path)
    sweep_leftovers(path)
    _check_replaceable(path, overwrite, replaceable, what)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".partial", dir=parent)
    try:
        yield tmp
        tidy_permissions(tmp)
        _swap_in(tmp, path, overwrite, replaceable, what)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _check_replaceable(
    path: str, overwrite: bool, replaceable, what: str, *, late: bool = False
) -> None:
    when = (
        " (it appeared while the new one was being written, and was left as it is)" if late else ""
    )
    if os.path.isfile(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise ValueError(
            f"Argument `path` must be a directory path, but {path!r} is an existing file{when}. "
            "Choose a new directory name."
        )
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(
            f"Argument `path`: {path!r} already exists{when}. Pass overwrite=True to replace it, "
            "or choose a new path."
        )
    if replaceable is not None and not replaceable(path):
        raise ValueError(
            f"Argument `path`: {path!r} is a directory that is not a {what}{when}, and "
            f"overwrite=True replaces only a {what}: kerasft never deletes other directories. "
            "HINT: choose a new path, or move that directory away yourself."
        )


def _swap_in(tmp: str, path: str, overwrite: bool, replaceable, what: str) -> None:
    if not os.path.lexists(path):
        try:
            _rename_no_replace(tmp, path)
            return
        except (FileExistsError, OSError) as e:
            if not os.path.lexists(path):
                raise
            if not isinstance(e, FileExistsError) and e.errno not in (
                errno.EEXIST,
                errno.ENOTEMPTY,
            ):
                raise
    # Something is at the path now: check it again, as at the start.
    _check_replaceable(path, overwrite, replaceable, what, late=True)
    if _exchange(tmp, path):
        return  # the previous directory is now at `tmp`, removed by the caller
    old = tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".old", dir=os.path.dirname(path))
    os.rmdir(old)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if not os.path.lexists(path):
            os.rename(old, path)
        raise
    _remove(old)


# ---------------------------------------------------------------------------- scratch


def _scratch_root() -> str:
    return tempfile.gettempdir()


def sweep_scratch() -> list[str]:
    """Remove kerasft scratch directories in the temporary directory left by dead processes."""
    root = _scratch_root()
    pattern = re.compile(re.escape(_SCRATCH_PREFIX) + r"[A-Za-z0-9_]+\.(\d+)\.")
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for name in names:
        match = pattern.match(name)
        if not match or _alive(int(match.group(1))):
            continue
        full = os.path.join(root, name)
        try:
            if uid is not None and os.lstat(full).st_uid != uid:
                continue
        except OSError:
            continue
        _remove(full)
        removed.append(name)
    return removed


def make_scratch_directory(kind: str) -> str:
    """A new private directory in the temporary directory, named after this process.

    Whoever makes it removes it; if the process is killed first, the next call in any
    process removes it (:func:`sweep_scratch`).

    Args:
        kind: a word for what it holds (letters, digits, ``_``), e.g. ``"features"``.
    """
    sweep_scratch()
    return tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{kind}.{os.getpid()}.", dir=_scratch_root())


@contextlib.contextmanager
def scratch_directory(kind: str) -> Iterator[str]:
    """:func:`make_scratch_directory` as a context manager that removes it at the end."""
    path = make_scratch_directory(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
