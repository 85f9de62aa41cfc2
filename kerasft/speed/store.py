"""Features of frozen prefixes, and compiled models, kept in memory across ``finetune`` calls.

A :class:`FeatureStore` holds :class:`Features` (a prefix's outputs on the training and
validation inputs) under the keys of :mod:`kerasft.speed.keys`, least recently used
dropped first; the feature cache of each call looks features up there before computing
them, so the trials of ``kerasft.search`` compute them once. Made with
``compiled_models=``, it also keeps compiled copies of the networks trained
(:mod:`kerasft.speed.compiled`), so that phases that train the same network again are
not traced again.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FeatureStore", "Features", "check_feature_store"]


@dataclass
class Features:
    """Cached outputs of a prefix: tuples of arrays, or file datasets of tuples.

    Attributes:
        train: the features of the training inputs.
        validation: the features of the validation inputs, or ``None``.
        nbytes: their size in bytes.
        paths: the cache files holding them (empty when they are in memory).
    """

    train: Any
    validation: Any
    nbytes: int
    paths: list[str]

    @property
    def in_memory(self) -> bool:
        parts = [self.train] + ([] if self.validation is None else [self.validation])
        return all(
            isinstance(p, tuple) and all(isinstance(a, np.ndarray) for a in p) for p in parts
        )


class FeatureStore:
    """Features of frozen prefixes kept in memory across ``finetune`` calls.

    Pass one store to several calls (``finetune(..., feature_store=store)``; every trial
    of ``kerasft.search`` shares one): each call's feature cache looks its features up
    here before computing them. An entry is keyed by what determines the features
    exactly: the prefix's graph (layer classes, configurations and connections, the
    cut tensors), the values of its weights (not the variables: every call fine-tunes a
    fresh copy of the pretrained model), and the values of the training and validation
    inputs (their order as prepared; a phase's shuffle draws from the features
    afterwards). A prefix whose configuration cannot be serialized is never stored.
    Features that went to a cache file (beyond ``cache_budget``) are not kept.

    The store holds at most ``budget`` bytes of features; the least recently used
    entries are dropped to make room. It lives in memory only.

    With ``compiled_models=n``, it also keeps up to ``n`` compiled copies of the networks
    the calls trained (:class:`kerasft.speed.compiled.CompiledModels`, in
    ``store.compiled``): a phase that trains the same network with the same loss,
    metrics and optimizer settings as an earlier one trains in that copy, with its own
    weights, optimizer state and learning rates copied in and the results copied back,
    instead of tracing its training steps again; rates and epochs may differ. Callbacks
    then see the copy, which speaks for the phase's model (``get_weights``,
    ``set_weights``, ``save``). ``result.speed.phases[i].compiled`` says what each phase
    did.

    Example:

    ```python
    store = kerasft.speed.FeatureStore(budget=2 * 1024**3)
    a = kerasft.finetune(model, (x, y), feature_store=store)
    b = kerasft.finetune(model, (x, y), feature_store=store, lr=3e-3)  # features reused
    print(store)
    ```

    Args:
        budget: bytes of features kept at most. Defaults to 1 GiB.
        compiled_models: compiled copies of networks kept at most, each about three
            times its network's weights in memory; `0` keeps none. Defaults to `0`.

    Raises:
        ValueError: a ``budget`` that is not a number of bytes >= 0, or
            ``compiled_models`` that is not an integer >= 0.
    """

    def __init__(self, budget: float = 1024**3, *, compiled_models: int = 0):
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
            raise ValueError(
                f"Argument `budget` must be a number of bytes >= 0. Received: budget={budget!r}"
            )
        if (
            isinstance(compiled_models, bool)
            or not isinstance(compiled_models, int)
            or compiled_models < 0
        ):
            raise ValueError(
                "Argument `compiled_models` must be an integer >= 0. "
                f"Received: compiled_models={compiled_models!r}"
            )
        from kerasft.speed.compiled import CompiledModels

        self.budget = budget
        self.compiled = CompiledModels(compiled_models) if compiled_models else None
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: collections.OrderedDict[str, Features] = collections.OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes of features held."""
        return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        compiled = "" if self.compiled is None else f"; {self.compiled!r}"
        return (
            f"FeatureStore({len(self)} entries, {self.nbytes / 2**20:.1f} of "
            f"{self.budget / 2**20:.0f} MiB; {self.hits} hits, {self.misses} misses, "
            f"{self.evictions} evicted{compiled})"
        )

    def get(self, key: str) -> Features | None:
        """The features stored under ``key`` (a new record of the same arrays), or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return dataclasses.replace(entry, paths=[])

    def put(self, key: str, features: Features) -> bool:
        """Keep in-memory ``features`` under ``key``, dropping the oldest entries to fit.

        Returns:
            Whether they were stored (not when they are on file or exceed the budget).
        """
        if not features.in_memory or features.nbytes > self.budget:
            return False
        for part in (features.train, features.validation or ()):
            for array in part:
                array.setflags(write=False)  # shared by later calls: nobody may change them
        self._entries.pop(key, None)
        while self._entries and self.nbytes + features.nbytes > self.budget:
            self._entries.popitem(last=False)
            self.evictions += 1
        self._entries[key] = dataclasses.replace(features, paths=[])
        return True

    def clear(self) -> None:
        """Drop every entry and compiled model (the counters are kept)."""
        self._entries.clear()
        if self.compiled is not None:
            self.compiled.clear()


def check_feature_store(value: Any) -> None:
    if value is not None and not isinstance(value, FeatureStore):
        raise TypeError(
            "Argument `feature_store` must be a kerasft.speed.FeatureStore or None. "
            f"Received: feature_store={value!r} (of type {type(value).__name__})"
        )
