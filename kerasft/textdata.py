"""Moved to :mod:`kerasft.jobs.textdata`; this name keeps old imports working and will go away."""

from __future__ import annotations

import warnings

from kerasft.jobs import textdata as _moved

warnings.warn(
    "kerasft.textdata moved to kerasft.jobs.textdata; import it from there.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)


def __dir__() -> list[str]:
    return dir(_moved)
