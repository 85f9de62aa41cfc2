"""Moved to :mod:`kerasft.jobs.generate`; this name keeps old imports working and will go away."""

from __future__ import annotations

import warnings

from kerasft.jobs import generate as _moved

warnings.warn(
    "kerasft.llm.job moved to kerasft.jobs.generate; import it from there.",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)


def __dir__() -> list[str]:
    return dir(_moved)
