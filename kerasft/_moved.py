"""Old module names that forward to where a module moved, with a deprecation warning."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["forward"]


def forward(
    old: str, new: types.ModuleType
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Warn that ``old`` moved to ``new``; return the old module's ``__getattr__`` and ``__dir__``.

    Used as ``__getattr__, __dir__ = forward(__name__, moved_module)`` in the old module.
    """
    warnings.warn(
        f"{old} moved to {new.__name__}; import it from there.",
        DeprecationWarning,
        stacklevel=3,
    )

    def getattr_(name: str) -> Any:
        return getattr(new, name)

    def dir_() -> list[str]:
        return dir(new)

    return getattr_, dir_
