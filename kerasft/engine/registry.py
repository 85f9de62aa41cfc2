"""The recipe registry: recipe names, the functions that plan them, and which can prune.

Kept apart from :mod:`kerasft.engine.plan` (which registers the built-in recipes) so that
the options can list the recipe names without importing the planner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RECIPES", "RecipeFn", "register_recipe", "prunable_recipes"]

# ``fn(options, model, head) -> [Phase, ...]``
RecipeFn = Callable[[Any, Any, Any], list]
RECIPES: dict[str, RecipeFn] = {}
_PRUNABLE: set[str] = set()


def register_recipe(name: str, *, prunable: bool = False) -> Callable[[RecipeFn], RecipeFn]:
    """Register ``fn(options, model, head) -> [Phase, ...]`` as recipe ``name``.

    ``prunable``: the recipe's last phase always trains a fixed set of layers by gradient
    (:attr:`kerasft.engine.plan.Phase.prunable`), so ``prune=`` can prune during it; this
    is known before a model is at hand, so that the option is refused before anything runs.
    """

    def register(fn: RecipeFn) -> RecipeFn:
        RECIPES[name] = fn
        (_PRUNABLE.add if prunable else _PRUNABLE.discard)(name)
        return fn

    return register


def prunable_recipes() -> tuple[str, ...]:
    """The recipes whose last phase can prune, in the order they were registered."""
    return tuple(name for name in RECIPES if name in _PRUNABLE)
