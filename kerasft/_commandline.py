"""What the ``kerasft`` command shares with the jobs it runs (``kerasft.jobs``).

How much progress a command prints, and how a job names the command's options in its
errors. Standard library only: ``kerasft/cli.py`` imports it at the top, and the command
answers ``--help`` without importing TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

__all__ = ["progress_verbosity", "flag_names"]


def progress_verbosity(args: argparse.Namespace) -> int:
    """Keras's ``verbose`` for a command: progress bars on a terminal only.

    0 with ``-q`` or ``--json``; 1 (a progress bar redrawn in place) when standard output
    is a terminal; 2 (one plain line per epoch) when it goes to a file or a pipe, where the
    bar's carriage returns and colour codes would be noise.
    """
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return 0
    return 1 if sys.stdout.isatty() else 2


def flag_names(dests: Iterable[str]) -> list[str]:
    """The options of ``kerasft finetune`` named by their argparse ``dests``, as typed.

    ``batch_size`` is ``--batch-size``; the positional ``model`` is ``MODEL``.
    """
    return ["MODEL" if name == "model" else "--" + name.replace("_", "-") for name in dests]
