"""Changing what trains in the middle of a run: phase schedules, layer regexes, optimizers.

Keras fixes the trainable set of a compiled model in two places: the traced train
function and the optimizer, which knows only the variables it was built with. Flipping
``layer.trainable`` mid-``fit`` (``kerasft.freeze`` / ``kerasft.unfreeze``) therefore
needs both redone: :func:`sync_optimizer` does that, keeping the optimizer state of
weights that stay trainable. :func:`load_phases` reads a phase schedule (finetuning-
scheduler's idea: phases as data, in YAML or JSON), ``kerasft.select_layers`` turns
its layer specs into layers, and :func:`apply_trainable` sets a trainable set with
kerasft's BatchNormalization rule. ``kerasft.callbacks.GradualUnfreezing`` and the engine's
staged phases are built on these.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from kerasft import _keras_compat as compat
from kerasft import surgery

__all__ = ["sync_optimizer", "load_phases", "resolve_layers", "apply_trainable"]


def sync_optimizer(model: keras.Model) -> None:
    """Make a compiled model train its current trainable weights, mid-``fit`` included.

    Call it after changing ``layer.trainable`` on a compiled model (for example with
    ``kerasft.unfreeze``). The optimizer, if already built, is rebuilt in place on
    ``model.trainable_variables``: weights that stay trainable keep their optimizer
    state (moments, accumulators), new ones start fresh, frozen ones are dropped. Then
    the train function is retraced. Without this Keras either keeps training the old set
    or fails with "Unknown variable".

    A single optimizer counts iterations for all its weights, so Adam's bias correction
    is already spent for weights unfrozen late; ``kerasft.layerwise.discriminative_optimizer``
    gives each layer group its own counter instead.

    Args:
        model: a compiled Keras model.

    Raises:
        ValueError: if ``model`` is not compiled.
    """
    if not getattr(model, "compiled", False):
        raise ValueError(
            f"Model {model.name!r} is not compiled, so there is no optimizer to sync. "
            "HINT: call model.compile(...) first, or just set layer.trainable."
        )
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        with model.distribute_strategy.scope():
            compat.rebuild_optimizer(optimizer, list(model.trainable_variables))
    model.make_train_function(force=True)
    # The change is handled: stop Keras warning at the next fit() that trainable flags
    # moved since compile().
    compat.mark_trainable_state_synced(model)


def resolve_layers(model: keras.Model, regexes: Sequence[str], argument: str) -> list:
    """Deprecated: ``kerasft.select_layers(model, regexes, argument=argument)``, the same rule."""
    warnings.warn(
        "kerasft.unfreezing.resolve_layers is deprecated: use "
        "kerasft.select_layers(model, spec, argument=...), which it calls.",
        DeprecationWarning,
        stacklevel=2,
    )
    return surgery.select_layers(model, list(regexes), argument=argument)


def apply_trainable(model: keras.Model, updates: dict[int, bool], train_bn: bool) -> None:
    """Set leaves (by ``id``) trainable or not; BatchNormalization stays frozen unless asked."""
    leaves = surgery.leaf_layers(model)
    state = {}
    for path, layer in leaves:
        if id(layer) in updates:
            on = updates[id(layer)]
            if on and not train_bn and isinstance(layer, keras.layers.BatchNormalization):
                on = False
            state[path] = on
    surgery.set_trainable(model, state)
    if not train_bn:
        # Custom blocks pass their flag down to the BatchNormalization inside them.
        for path, layer in leaves:
            if state.get(path):
                for sub in compat.flatten_layers(layer, include_self=False):
                    if isinstance(sub, keras.layers.BatchNormalization):
                        sub.trainable = False


_PHASE_KEYS = ("layers", "epoch", "lr")


def load_phases(source: str | os.PathLike | Sequence[Mapping] | Mapping) -> list[dict[str, Any]]:
    """Read a phase schedule: a list of phases, a ``{index: phase}`` dict, or a file.

    A phase is a dict with ``layers`` (a regex or list of regexes matched in full
    against layer paths or names, as ``kerasft.select_layers`` matches them),
    ``epoch`` (the epoch it starts at; phase 0 defaults to 0) and optionally ``lr``
    (the rate of the weights it unfreezes). Files may be YAML (``.yaml``/``.yml``,
    needs PyYAML) or JSON, holding the same structure, optionally under a top-level
    ``phases`` key, e.g.::

        phases:
          - {layers: ["predictions", "fc"], lr: 1.0e-3}
          - {layers: "block2_.*", epoch: 2, lr: 1.0e-4}
          - {layers: "block1_.*", epoch: 4, lr: 1.0e-5}

    Example:

    >>> load_phases({0: {"layers": "head"}, 1: {"layers": ["block.*"], "epoch": 3}})
    [{'layers': ['head'], 'epoch': 0, 'lr': None}, {'layers': ['block.*'], 'epoch': 3, 'lr': None}]

    Args:
        source: the phases, or a path to a YAML/JSON file with them.

    Returns:
        A list of normalized phase dicts with keys ``layers``, ``epoch``, ``lr``.

    Raises:
        ValueError: for unknown keys, missing layers, or epochs that do not increase.
    """
    if isinstance(source, (str, os.PathLike)):
        source = _read_phase_file(os.fspath(source))
    phases = [_one_phase(i, phase) for i, phase in enumerate(_phase_list(source))]
    epochs = [p["epoch"] for p in phases if p["epoch"] is not None]
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"Phase epochs must increase. Received: {[p['epoch'] for p in phases]}")
    return phases


def _read_phase_file(path: str) -> Any:
    """The structure a YAML (``.yaml``/``.yml``) or JSON phase file holds."""
    if not os.path.isfile(path):
        raise ValueError(f"Argument `phases`: no file at {path!r}.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith((".yaml", ".yml")):
        return json.loads(text)
    try:
        import yaml
    except ImportError:
        raise ImportError(
            f"Reading phases from {path!r} needs PyYAML. HINT: pip install pyyaml, "
            "or write the phases as JSON."
        ) from None
    return yaml.safe_load(text)


def _phase_list(source: Any) -> Sequence[Any]:
    """The phases in order: under a ``phases`` key, keyed by index, or a list."""
    if isinstance(source, Mapping) and "phases" in source:
        source = source["phases"]
    if isinstance(source, Mapping):
        try:
            source = [source[k] for k in sorted(source, key=int)]
        except (TypeError, ValueError):
            raise ValueError(
                "Phases given as a dict must be keyed by phase index (0, 1, ...). "
                f"Received keys: {list(source)}"
            ) from None
    if not isinstance(source, Sequence) or isinstance(source, str) or not source:
        raise ValueError(
            f"Argument `phases` must be a non-empty list of phases. Received: {source!r}"
        )
    return source


def _one_phase(i: int, phase: Any) -> dict[str, Any]:
    """Phase ``i`` checked and normalized to ``{"layers", "epoch", "lr"}``."""
    if not isinstance(phase, Mapping):
        raise ValueError(f"Phase {i} must be a dict with keys {_PHASE_KEYS}. Received: {phase!r}")
    unknown = sorted(set(phase) - set(_PHASE_KEYS))
    if unknown:
        raise ValueError(
            f"Phase {i} has unknown keys {unknown}. Valid keys are: {list(_PHASE_KEYS)}"
        )
    layers = phase.get("layers")
    if isinstance(layers, str):
        layers = [layers]
    if not layers or not all(isinstance(p, str) for p in layers):
        raise ValueError(
            f"Phase {i} needs `layers`: a regex or a list of regexes. Received: {layers!r}"
        )
    epoch = phase.get("epoch", 0 if i == 0 else None)
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ValueError(f"Phase {i}: `epoch` must be an integer >= 0. Received: epoch={epoch!r}")
    lr = phase.get("lr")
    if lr is not None and (not isinstance(lr, (int, float)) or lr < 0):
        raise ValueError(f"Phase {i}: `lr` must be a number >= 0. Received: lr={lr!r}")
    return {"layers": list(layers), "epoch": epoch, "lr": None if lr is None else float(lr)}
