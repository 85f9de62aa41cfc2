"""Tests for kerasft._fileio: atomic writes, what they may replace, leftovers, file modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from kerasft import _fileio


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _modes(root):
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            found[name] = stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode)
    return found


@pytest.fixture()
def umask_077():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_private_umask_is_honoured(tmp_path, umask_077):
    with _fileio.atomic_directory(str(tmp_path / "out")) as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        with open(os.path.join(tmp, "sub", "f.txt"), "w") as f:
            f.write("x")
    with _fileio.atomic_file(str(tmp_path / "single.txt")) as tmp, open(tmp, "w") as f:
        f.write("y")
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o700
    assert _modes(tmp_path / "out") == {"sub": 0o700, "f.txt": 0o600}
    assert stat.S_IMODE(os.stat(tmp_path / "single.txt").st_mode) == 0o600


def test_usual_umask_gives_readable_files_never_group_writable(tmp_path):
    old = os.umask(0o002)  # a group-writable umask: kerasft still drops group write
    try:
        with _fileio.atomic_file(str(tmp_path / "f.txt")) as tmp, open(tmp, "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.txt").st_mode) == 0o644


def test_replacing_a_directory_never_leaves_the_path_empty(tmp_path, monkeypatch):
    path = str(tmp_path / "export")
    os.makedirs(path)
    (tmp_path / "export" / "old.txt").write_text("old")
    seen = []
    for name in ("rename", "replace"):
        real = getattr(os, name)

        def spy(src, dst, *args, _real=real, **kwargs):
            _real(src, dst, *args, **kwargs)
            seen.append(os.path.isdir(path))  # a kill right now would leave this

        monkeypatch.setattr(os, name, spy)
    with _fileio.atomic_directory(path, overwrite=True) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
    monkeypatch.undo()
    assert all(seen)
    assert sorted(os.listdir(path)) == ["new.txt"]
    assert os.listdir(tmp_path) == ["export"]


def test_directory_appearing_meanwhile_is_kept(tmp_path):
    path = tmp_path / "export"
    with pytest.raises(FileExistsError, match="appeared while the new one was being written"):
        with _fileio.atomic_directory(str(path)) as tmp:
            with open(os.path.join(tmp, "model.bin"), "w") as f:
                f.write("new")
            path.mkdir()
            (path / "notes.txt").write_text("mine")
    assert os.listdir(path) == ["notes.txt"]
    assert os.listdir(tmp_path) == ["export"]  # the new one is discarded, not left hidden


def test_replaceable_decides_what_overwrite_may_delete(tmp_path):
    path = tmp_path / "folder"
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="is a directory that is not a kerasft export"):
        with _fileio.atomic_directory(
            str(path), overwrite=True, replaceable=lambda p: False, what="kerasft export"
        ):
            pass
    assert (path / "thesis.tex").read_text() == "years of work"


def test_leftovers_of_killed_writers_are_restored_or_removed(tmp_path):
    pid = _dead_pid()
    # A swap killed between its two renames: the old export aside, nothing at the path.
    old = tmp_path / f".export.{pid}.abc123.old"
    old.mkdir()
    (old / "model.bin").write_text("previous")
    partial = tmp_path / f".export.{pid}.def456.partial"
    partial.mkdir()
    file_partial = tmp_path / f".m.tflite.{pid}.xyz789.partial.tflite"
    file_partial.write_text("half")
    live = tmp_path / f".export.{os.getpid()}.ghi000.partial"  # this process: still writing
    live.mkdir()

    with pytest.raises(FileExistsError):  # the restored export is there again
        with _fileio.atomic_directory(str(tmp_path / "export")):
            pass
    assert (tmp_path / "export" / "model.bin").read_text() == "previous"
    assert not old.exists() and not partial.exists() and live.exists()
    with _fileio.atomic_file(str(tmp_path / "m.tflite")) as tmp, open(tmp, "w") as f:
        f.write("whole")
    assert not file_partial.exists()


def test_scratch_directories_of_dead_processes_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(_fileio, "_scratch_root", lambda: str(tmp_path))
    dead = tmp_path / f"kerasft-features.{_dead_pid()}.q1w2e3"
    dead.mkdir()
    (dead / "features_0.data").write_bytes(b"x" * 100)
    unrelated = tmp_path / "kerasft-notes"
    unrelated.mkdir()
    with _fileio.scratch_directory("tflite") as scratch:
        assert os.path.basename(scratch).startswith(f"kerasft-tflite.{os.getpid()}.")
        assert not dead.exists() and unrelated.exists()
    assert not os.path.exists(scratch)
