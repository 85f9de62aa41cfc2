"""Moved to :mod:`kerasft.jobs.textdata`; this name keeps old imports working and will go away."""

from __future__ import annotations

from kerasft._moved import forward
from kerasft.jobs import textdata as _moved

__getattr__, __dir__ = forward(__name__, _moved)
