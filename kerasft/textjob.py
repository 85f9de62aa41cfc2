"""Moved to :mod:`kerasft.jobs.textjob`; this name keeps old imports working and will go away."""

from __future__ import annotations

from kerasft._moved import forward
from kerasft.jobs import textjob as _moved

__getattr__, __dir__ = forward(__name__, _moved)
