"""Callbacks for what trains when: gradual unfreezing, plateau reduction on schedules, logging.

Keras fixes the trainable set of a compiled model in two places: the traced train
function and the optimizer, which knows only the variables it was built with. Flipping
``layer.trainable`` mid-``fit`` (``kerasft.freeze`` / ``kerasft.unfreeze``) therefore
needs both redone, which is what ``sync_optimizer`` does (keeping the optimizer state of
weights that stay trainable) and what ``GradualUnfreezing`` calls at each phase, top of
the network first, like Lightning's ``BackboneFinetuning`` and finetuning-scheduler's phase files.
``ReduceLROnPlateauScaled`` is Keras's ``ReduceLROnPlateau`` made to work with scheduled
optimizers, and ``PhaseLogger`` writes rates and trainable counts into the epoch logs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from kerasft import layerwise as _layerwise
from kerasft import schedules as _schedules
from kerasft import surgery

__all__ = [
    "sync_optimizer",
    "GradualUnfreezing",
    "ReduceLROnPlateauScaled",
    "PhaseLogger",
    "load_phases",
]

# --------------------------------------------------------------------------------------
# Changing the trainable set of a compiled model


def _inner(optimizer):
    """The optimizer that holds the rate: unwraps ``LossScaleOptimizer``."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _rebuild_single(optimizer, variables: list) -> None:
    """Rebuild ``optimizer`` in place on ``variables``, keeping state of known ones.

    Keras optimizers refuse variables they were not built with, and rebuilding from
    scratch would wipe the moments of weights that were already training. Slot variables
    are named after the model variable they shadow, so state is carried over by name.
    """
    key = optimizer._var_key
    if optimizer.built and [key(v) for v in optimizer._trainable_variables] == [
        key(v) for v in variables
    ]:
        return
    keep = {id(optimizer._iterations)}
    if isinstance(optimizer._learning_rate, keras.Variable):
        keep.add(id(optimizer._learning_rate))
    saved = {}
    for v in optimizer.variables:
        if id(v) not in keep:
            saved[v.path] = keras.ops.convert_to_numpy(v)
            optimizer._untrack_variable(v)
    optimizer._trainable_variables_indices = {}
    optimizer._trainable_variables = []
    optimizer.built = False
    optimizer.build(variables)
    for v in optimizer.variables:
        old = saved.get(v.path)
        if id(v) not in keep and old is not None and tuple(old.shape) == tuple(v.shape):
            v.assign(old)
    if getattr(optimizer, "use_ema", False):
        # A new average starts at zero; Keras seeds it with the weight only on the
        # optimizer's first step, long past for weights unfrozen mid-run.
        for v, average in zip(variables, optimizer._model_variables_moving_average):
            if average is not None and average.path not in saved:
                average.assign(v)


def _rebuild(optimizer, variables: list) -> None:
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        _rebuild(optimizer.inner_optimizer, variables)
        optimizer._trainable_variables = variables[:]
        optimizer._trainable_variables_indices = {
            optimizer._var_key(v): i for i, v in enumerate(variables)
        }
        return
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        routed: dict[int, list] = {id(o): [] for o in optimizer.optimizers}
        for v in variables:
            sub = optimizer._optimizer_map(v)
            routed.setdefault(id(sub), []).append(v)
        for sub in optimizer.optimizers:
            if sub.built:
                _rebuild_single(sub, routed[id(sub)])
        # MultiOptimizer.build re-routes and builds only the sub-optimizers not built yet.
        optimizer.built = False
        optimizer.build(variables)
        return
    _rebuild_single(optimizer, variables)


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
            _rebuild(optimizer, list(model.trainable_variables))
    model.make_train_function(force=True)
    # The change is handled: stop Keras warning at the next fit() that trainable flags
    # moved since compile().
    model._compiled_trainable_state = {
        layer: layer.trainable for layer in model._flatten_layers()
    }


def _resolve_layers(model: keras.Model, regexes: Sequence[str], argument: str) -> list:
    """Leaf layers whose name or path (``"backbone/conv1"``) fully matches a regex."""
    leaves = _layerwise._leaves(model)
    out: list = []
    for spec in regexes:
        try:
            regex = re.compile(spec)
        except re.error as e:
            raise ValueError(f"Invalid regex {spec!r} in argument `{argument}`: {e}") from None
        found = [layer for p, layer in leaves if regex.fullmatch(layer.name) or regex.fullmatch(p)]
        if not found:
            raise ValueError(
                f"No layer of model {model.name!r} matches {spec!r} in argument `{argument}`. "
                f"Existing layers are: {[p for p, _ in leaves]}"
            )
        out.extend(layer for layer in found if not any(layer is o for o in out))
    return out


def _apply_trainable(model: keras.Model, updates: dict[int, bool], train_bn: bool) -> None:
    """Set leaves (by ``id``) trainable or not; BatchNormalization stays frozen unless asked."""
    leaves = _layerwise._leaves(model)
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
                for sub in layer._flatten_layers(include_self=False):
                    if isinstance(sub, keras.layers.BatchNormalization):
                        sub.trainable = False


# --------------------------------------------------------------------------------------
# Gradual unfreezing

_PHASE_KEYS = ("layers", "epoch", "lr")


def load_phases(source: str | os.PathLike | Sequence[Mapping] | Mapping) -> list[dict[str, Any]]:
    """Read a phase schedule: a list of phases, a ``{index: phase}`` dict, or a file.

    A phase is a dict with ``layers`` (a regex or list of regexes on layer names),
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
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"Argument `phases`: no file at {path!r}.")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ImportError(
                    f"Reading phases from {path!r} needs PyYAML. HINT: pip install pyyaml, "
                    "or write the phases as JSON."
                ) from None
            source = yaml.safe_load(text)
        else:
            source = json.loads(text)
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
        raise ValueError(f"Argument `phases` must be a non-empty list of phases. Received: {source!r}")
    phases = []
    for i, phase in enumerate(source):
        if not isinstance(phase, Mapping):
            raise ValueError(f"Phase {i} must be a dict with keys {_PHASE_KEYS}. Received: {phase!r}")
        unknown = sorted(set(phase) - set(_PHASE_KEYS))
        if unknown:
            raise ValueError(f"Phase {i} has unknown keys {unknown}. Valid keys are: {list(_PHASE_KEYS)}")
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
        phases.append({"layers": list(layers), "epoch": epoch, "lr": None if lr is None else float(lr)})
    epochs = [p["epoch"] for p in phases if p["epoch"] is not None]
    if any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"Phase epochs must increase. Received: {[p['epoch'] for p in phases]}")
    return phases


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreeze a model from the top down in phases, each at its own rate.

    Two ways to say what trains when:

    - ``phases``: an explicit schedule (see ``load_phases``): layer regexes, the epoch
      each phase starts, and optionally its ``lr``.
    - otherwise the model's layer groups (``kerasft.layerwise.layer_groups``, or
      ``groups``): the top ``groups_per_phase`` groups train first and every
      ``unfreeze_every`` epochs the next ``groups_per_phase`` groups below join.

    With ``monitor``, a phase also starts early when the monitored value has not
    improved for ``patience`` epochs (finetuning-scheduler's plateau transitions).
    Layers in no phase keep their trainable state. At each change the model's optimizer
    is rebuilt in place (weights already training keep their optimizer state) and the
    train function retraced, so it works mid-``fit``. ``BatchNormalization`` layers stay
    frozen (inference mode) unless ``train_bn=True``.

    A phase ``lr`` sets the rate of the sub-optimizers of a ``MultiOptimizer`` that
    serve exactly that phase's weights: float rates are assigned, kerasft schedules get
    a multiplier so that their peak equals ``lr``. Compile with
    ``kerasft.layerwise.discriminative_optimizer(model, ..., groups=cb.phase_groups(model))``
    to have one sub-optimizer per phase.

    Example:

    ```python
    cb = GradualUnfreezing([
        {"layers": ["predictions", "fc"], "lr": 1e-3},
        {"layers": "block2_.*", "epoch": 2, "lr": 1e-4},
        {"layers": "block1_.*", "epoch": 4, "lr": 1e-5},
    ])
    model.compile(discriminative_optimizer(model, 1e-3, groups=cb.phase_groups(model)), loss)
    model.fit(x, y, epochs=6, callbacks=[cb])
    ```

    Args:
        phases: an explicit phase schedule, or a path to a YAML/JSON file with one.
            Defaults to `None` (phases from layer groups).
        groups: the groups to unfreeze when ``phases`` is not given: the output of
            ``layer_groups`` or patterns for it. Defaults to `None` (derived).
        unfreeze_every: epochs between two phases when derived from groups; `None` to
            move only on plateaus (needs ``monitor``). Defaults to `1`.
        groups_per_phase: groups that each derived phase adds. Defaults to `1`.
        monitor: quantity whose plateau starts the next phase early. Defaults to `None`.
        patience: epochs without improvement of ``monitor`` before moving on. Defaults to `1`.
        min_delta: smallest change that counts as an improvement. Defaults to `0.0`.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the name). Defaults to `"auto"`.
        train_bn: unfreeze ``BatchNormalization`` layers too. Defaults to `False`.
        verbose: print a line at each phase change. Defaults to `0`.

    Raises:
        ValueError: for an invalid schedule or argument; at the start of ``fit``, for a
            regex matching no layer or a phase ``lr`` the optimizer cannot honour.
    """

    def __init__(
        self,
        phases: str | os.PathLike | Sequence[Mapping] | Mapping | None = None,
        *,
        groups: Any = None,
        unfreeze_every: int | None = 1,
        groups_per_phase: int = 1,
        monitor: str | None = None,
        patience: int = 1,
        min_delta: float = 0.0,
        mode: str = "auto",
        train_bn: bool = False,
        verbose: int = 0,
    ):
        super().__init__()
        if phases is not None and groups is not None:
            raise ValueError(
                "Pass either `phases` (an explicit schedule) or `groups` (unfrozen in order), "
                f"not both. Received: phases={phases!r}, groups=..."
            )
        self.phases = load_phases(phases) if phases is not None else None
        for name, value in (("groups_per_phase", groups_per_phase), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Argument `{name}` must be an integer >= 1. Received: {name}={value!r}")
        if unfreeze_every is not None and (
            isinstance(unfreeze_every, bool) or not isinstance(unfreeze_every, int) or unfreeze_every < 1
        ):
            raise ValueError(
                f"Argument `unfreeze_every` must be an integer >= 1 or None. "
                f"Received: unfreeze_every={unfreeze_every!r}"
            )
        if unfreeze_every is None and monitor is None and self.phases is None:
            raise ValueError(
                "With `unfreeze_every=None` phases advance only on plateaus; pass `monitor`."
            )
        if self.phases is not None and monitor is None:
            missing = [i for i, p in enumerate(self.phases) if p["epoch"] is None]
            if missing:
                raise ValueError(
                    f"Phases {missing} have no `epoch` and no `monitor` is set, so they would "
                    "never start. Give them an epoch or pass `monitor`."
                )
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Argument `mode` must be one of ('auto', 'min', 'max'). Received: mode={mode!r}")
        self.groups = groups
        self.unfreeze_every = unfreeze_every
        self.groups_per_phase = groups_per_phase
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.mode = mode
        self.train_bn = train_bn
        self.verbose = verbose
        self.phase = -1
        self.transitions: list[tuple[int, int]] = []

    # -- phases as layers ------------------------------------------------------------
    def _resolved(self, model: keras.Model) -> list[tuple[list, int | None, float | None]]:
        """``(layers, start epoch, lr)`` per phase; a layer belongs to its first phase."""
        if self.phases is None:
            groups = self.groups
            if groups is None or not (isinstance(groups, list) and groups and isinstance(groups[0], tuple)):
                groups = _layerwise.layer_groups(model, groups)
            top_down = list(reversed(groups))
            out = []
            for k in range(0, len(top_down), self.groups_per_phase):
                chunk = top_down[k : k + self.groups_per_phase]
                index = k // self.groups_per_phase
                epoch = None if self.unfreeze_every is None else index * self.unfreeze_every
                if index == 0:
                    epoch = 0
                out.append(([layer for _, layers in chunk for layer in layers], epoch, None))
            return out
        out, taken = [], set()
        for i, phase in enumerate(self.phases):
            layers = [
                layer
                for layer in _resolve_layers(model, phase["layers"], f"phases[{i}]['layers']")
                if id(layer) not in taken
            ]
            if not layers:
                raise ValueError(f"Phase {i} ({phase['layers']}) has only layers of earlier phases.")
            taken.update(id(layer) for layer in layers)
            out.append((layers, phase["epoch"], phase["lr"]))
        return out

    def phase_groups(self, model: keras.Model) -> list[tuple[str, list]]:
        """One layer group per phase, bottom phase first, for ``discriminative_optimizer``.

        Layers with weights that are in no phase form a last group ``"others"``.
        """
        resolved = self._resolved(model)
        named = [(f"phase{i}", layers) for i, (layers, _, _) in enumerate(resolved)]
        claimed = {id(layer) for _, layers in named for layer in layers}
        rest = [
            layer
            for _, layer in _layerwise._leaves(model)
            if layer.weights and id(layer) not in claimed
        ]
        groups = [(name, [x for x in layers if x.weights]) for name, layers in reversed(named)]
        groups = [g for g in groups if g[1]]
        if rest:
            groups.append(("others", rest))
        return groups

    # -- optimizer rates -------------------------------------------------------------
    def _phase_optimizers(self, model, layers) -> list:
        optimizer = _inner(model.optimizer)
        if not isinstance(optimizer, keras.optimizers.MultiOptimizer):
            return [optimizer]
        subs = []
        for layer in layers:
            for v in layer.weights:
                if _layerwise._is_trainable_kind(layer, v):
                    sub = optimizer._optimizer_map(v)
                    if not any(sub is s for s in subs):
                        subs.append(sub)
        return subs

    def _check_rates(self) -> None:
        with_lr = [i for i, (_, _, lr) in enumerate(self._plan) if lr is not None]
        if not with_lr:
            return
        hint = (
            "HINT: compile with kerasft.layerwise.discriminative_optimizer(model, lr, "
            "groups=callback.phase_groups(model)) to get one sub-optimizer per phase."
        )
        subs = [self._phase_optimizers(self.model, layers) for layers, _, _ in self._plan]
        for i in with_lr:
            for j, others in enumerate(subs):
                shared = [s.name for s in subs[i] if j != i and any(s is o for o in others)]
                if shared:
                    raise ValueError(
                        f"Phase {i} sets `lr`, but its weights share optimizer {shared[0]!r} "
                        f"with phase {j}, so its rate cannot be set apart. {hint}"
                    )
        for i in with_lr:
            for sub in self._phase_optimizers(self.model, self._plan[i][0]):
                lr = sub._learning_rate
                if not isinstance(lr, (keras.Variable, _schedules.KerasftSchedule)):
                    raise ValueError(
                        f"Phase {i} sets `lr`, but optimizer {sub.name!r} follows a "
                        f"{type(lr).__name__}, whose rate cannot be changed. HINT: use a kerasft "
                        "schedule, or wrap it in kerasft.schedules.Scaled(...)."
                    )

    def _set_phase_rate(self, i: int) -> None:
        layers, _, lr = self._plan[i]
        if lr is None:
            return
        for sub in self._phase_optimizers(self.model, layers):
            rate = sub._learning_rate
            if isinstance(rate, _schedules.KerasftSchedule):
                rate.multiplier = lr / rate.peak_learning_rate
            else:
                rate.assign(lr)

    # -- callback hooks --------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.phase = -1
        self.transitions = []
        self._wait = 0
        self._best = None
        self._plan = self._resolved(self.model)
        self._check_rates()

    def _target_for(self, epoch: int) -> int:
        target = 0
        for i, (_, start, _) in enumerate(self._plan):
            if start is not None and start <= epoch:
                target = i
        return target

    def _enter(self, target: int, epoch: int) -> None:
        updates = {}
        for i, (layers, _, _) in enumerate(self._plan):
            updates.update((id(layer), i <= target) for layer in layers)
        _apply_trainable(self.model, updates, self.train_bn)
        sync_optimizer(self.model)
        for i in range(self.phase + 1, target + 1):
            self._set_phase_rate(i)
        self.phase = target
        self.transitions.append((epoch, target))
        if self.verbose:
            n = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
            print(f"\nEpoch {epoch + 1}: GradualUnfreezing entered phase {target}, {n} trainable parameters.")

    def on_epoch_begin(self, epoch, logs=None):
        target = max(self._target_for(epoch), self.phase)
        if target != self.phase:
            self._enter(target, epoch)

    def _improved(self, current: float) -> bool:
        if self._best is None:
            return True
        mode = self.mode
        if mode == "auto":
            mode = "max" if "acc" in self.monitor or self.monitor.endswith("auc") else "min"
        if mode == "min":
            return current < self._best - self.min_delta
        return current > self._best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["unfreeze_phase"] = self.phase
        if self.monitor is None or self.phase >= len(self._plan) - 1:
            return
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise ValueError(
                f"GradualUnfreezing monitors {self.monitor!r}, which is not in the logs. "
                f"Available: {sorted(logs or {})}"
            )
        if self._improved(float(current)):
            self._best = float(current)
            self._wait = 0
            return
        self._wait += 1
        if self._wait >= self.patience:
            self._wait = 0
            self._enter(self.phase + 1, epoch + 1)


# --------------------------------------------------------------------------------------
# Plateau reduction that understands schedules


class ReduceLROnPlateauScaled(keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` that also works when the rate comes from a kerasft schedule.

    Keras's callback assigns a new rate, which an optimizer built with a schedule
    refuses (a ``TypeError`` in the middle of ``fit``). This one lowers the schedule's
    ``multiplier`` instead, so the schedule keeps its shape at a smaller scale, and
    plain float rates are reduced as usual. Every sub-optimizer of a ``MultiOptimizer``
    is reduced by the same factor. Optimizers whose rate can be changed neither way
    (other schedules, callables) are refused when training begins, before any step.
    ``min_lr`` bounds the rate at the moment of a reduction; a schedule may still decay
    below it afterwards.

    Example:

    ```python
    sched = kerasft.schedules.WarmupCosineDecay(1e-3, total_steps=1000, warmup_steps=50)
    model.compile(keras.optimizers.Adam(sched), loss)
    model.fit(x, y, validation_data=(xv, yv), epochs=20,
              callbacks=[ReduceLROnPlateauScaled(monitor="val_loss", factor=0.5, patience=2)])
    ```

    Args:
        monitor: quantity to watch. Defaults to `"val_loss"`.
        factor: factor of each reduction, in ``(0, 1)``. Defaults to `0.1`.
        patience: epochs without improvement before reducing. Defaults to `10`.
        verbose: print a line at each reduction. Defaults to `0`.
        mode: ``"auto"``, ``"min"`` or ``"max"``. Defaults to `"auto"`.
        min_delta: smallest change that counts as an improvement. Defaults to `1e-4`.
        cooldown: epochs to wait after a reduction. Defaults to `0`.
        min_lr: lower bound of the rate when reducing. Defaults to `0.0`.

    Raises:
        ValueError: for ``factor`` outside ``(0, 1)``; when training begins, if an
            optimizer's rate is a schedule that cannot be scaled.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ):
        if not isinstance(factor, (int, float)) or not 0.0 < factor < 1.0:
            raise ValueError(f"Argument `factor` must be in (0, 1). Received: factor={factor!r}")
        super().__init__(
            monitor=monitor, factor=factor, patience=patience, verbose=verbose, mode=mode,
            min_delta=min_delta, cooldown=cooldown, min_lr=min_lr,
        )  # fmt: skip

    def _optimizers(self) -> list:
        optimizer = _inner(self.model.optimizer)
        return list(getattr(optimizer, "optimizers", [optimizer]))

    def on_train_begin(self, logs=None):
        for opt in self._optimizers():
            rate = _inner(opt)._learning_rate
            if not isinstance(rate, (keras.Variable, _schedules.KerasftSchedule)):
                raise ValueError(
                    f"ReduceLROnPlateauScaled cannot lower the rate of optimizer {opt.name!r}: "
                    f"it follows a {type(rate).__name__}, which has no multiplier. HINT: use a "
                    "kerasft schedule or wrap yours: kerasft.schedules.Scaled(schedule)."
                )
        super().on_train_begin(logs)

    def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
        rate = _inner(optimizer)._learning_rate
        if not isinstance(rate, _schedules.KerasftSchedule):
            return super()._reduce_optimizer_lr(optimizer, epoch, name)
        old_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if old_lr > 0:
            if old_lr <= np.float32(self.min_lr):
                return False
            new_lr = max(old_lr * self.factor, self.min_lr)
            ratio = new_lr / old_lr
        else:
            # A schedule at zero (start of a warmup, a group not trained yet) still
            # scales, so that it is lower when it does train.
            new_lr, ratio = 0.0, self.factor
        rate.multiplier = rate.multiplier * ratio
        if self.verbose > 0:
            label = f" {name}" if name else ""
            print(
                f"\nEpoch {epoch + 1}: ReduceLROnPlateauScaled scaling the schedule{label} by "
                f"{ratio:.3g} (multiplier {rate.multiplier:.3g}, rate now {new_lr:.3g})."
            )
        return True


class _SwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras's ``SwapEMAWeights`` that skips sub-optimizers not built yet.

    A ``MultiOptimizer`` builds only the sub-optimizers that have weights, so with
    groups still frozen (gradual unfreezing) Keras's callback fails on the others.
    """

    def _apply_to_ema_optimizers(self, tf_fn, backend_fn):
        optimizer = _inner(self.model.optimizer)
        swap = tf_fn if keras.backend.backend() == "tensorflow" else backend_fn
        for opt in getattr(optimizer, "optimizers", [optimizer]):
            if getattr(opt, "use_ema", False) and hasattr(opt, "_model_variables_moving_average"):
                swap(opt)


# --------------------------------------------------------------------------------------
# Logging


class PhaseLogger(keras.callbacks.Callback):
    """Record each epoch's rates and trainable parameter count in the logs.

    Adds ``trainable_params`` and ``lr`` (or ``lr/<sub-optimizer name>`` for a
    ``MultiOptimizer``) to the epoch logs, so ``History``, ``CSVLogger`` and
    TensorBoard see when phases change; ``unfreeze_phase`` comes from
    ``GradualUnfreezing`` when it runs before this callback. Rows are also kept in
    ``records`` and, with ``path``, appended to a JSON-lines file.

    Example:

    ```python
    logger = PhaseLogger()
    model.fit(x, y, epochs=3, callbacks=[GradualUnfreezing(), logger])
    logger.records[-1]["trainable_params"]
    ```

    Args:
        path: JSON-lines file to append one row per epoch to. Defaults to `None`.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        self.path = None if path is None else os.fspath(path)
        self.records: list[dict[str, Any]] = []

    def on_train_begin(self, logs=None):
        self.records = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        row: dict[str, Any] = {"epoch": epoch}
        optimizer = _inner(getattr(self.model, "optimizer", None))
        if optimizer is not None:
            subs = getattr(optimizer, "optimizers", None)
            for opt in subs if subs is not None else [optimizer]:
                key = f"lr/{opt.name}" if subs is not None else "lr"
                row[key] = float(keras.ops.convert_to_numpy(opt.learning_rate))
        row["trainable_params"] = int(
            sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        )
        for k, v in row.items():
            if k != "epoch":
                logs[k] = v
        if "unfreeze_phase" in logs:
            row["unfreeze_phase"] = int(logs["unfreeze_phase"])
        self.records.append(row)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
