"""Callbacks for what trains when: gradual unfreezing, plateau reduction on schedules, logging.

``GradualUnfreezing`` unfreezes a compiled model from the top down in the middle of
``fit``, like Lightning's ``BackboneFinetuning`` and finetuning-scheduler's phase files
(it is built on :mod:`kerasft.unfreezing`). ``ReduceLROnPlateauScaled`` is Keras's
``ReduceLROnPlateau`` made to work with scheduled optimizers, and ``PhaseLogger`` writes
rates and trainable counts into the epoch logs. :func:`monitor_mode` is the one place
kerasft decides whether a monitored quantity is minimised or maximised.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from kerasft import _keras_compat as compat
from kerasft import layerwise as _layerwise
from kerasft import schedules as _schedules
from kerasft import surgery
from kerasft.unfreezing import apply_trainable, load_phases, sync_optimizer

__all__ = [
    "GradualUnfreezing",
    "ReduceLROnPlateauScaled",
    "PhaseLogger",
    "monitor_mode",
]

# Metric names that improve upwards, when no metric object says so.
_MAXIMISED = (
    "acc",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "f1",
    "f1_score",
    "fbeta_score",
    "top_k",
    "iou",
    "r2",
    "r2_score",
)


def monitor_mode(monitor: str, metrics: Sequence[Any] = ()) -> str:
    """Whether ``monitor`` is minimised (``"min"``) or maximised (``"max"``), decided once.

    ``val_`` is ignored. A loss (``loss``, ``*_loss``) is minimised; a metric object of that
    name in ``metrics`` says its own direction, as Keras's ``MonitorCallback`` asks it;
    otherwise accuracy-like names (accuracy, AUC, precision, recall, F1, IoU, R2) are
    maximised and anything else (errors such as ``mse``) minimised.

    Example:

    >>> monitor_mode("val_loss"), monitor_mode("val_accuracy"), monitor_mode("mae")
    ('min', 'max', 'min')

    Args:
        monitor: the logged quantity (``"val_loss"``, ``"accuracy"``...).
        metrics: metric objects of the compiled model. Defaults to `()`.

    Returns:
        ``"min"`` or ``"max"``.
    """
    name = monitor.removeprefix("val_")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    flat = [m for metric in metrics for m in [metric, *getattr(metric, "metrics", [])]]
    for metric in flat:
        direction = compat.metric_direction(metric)
        if getattr(metric, "name", None) == name and direction in ("up", "down"):
            return "max" if direction == "up" else "min"
    bare = name.split("/")[-1]
    if any(bare == k or bare.startswith(k + "_") or bare.endswith("_" + k) for k in _MAXIMISED):
        return "max"
    return "min"


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
                raise ValueError(
                    f"Argument `{name}` must be an integer >= 1. Received: {name}={value!r}"
                )
        if unfreeze_every is not None and (
            isinstance(unfreeze_every, bool)
            or not isinstance(unfreeze_every, int)
            or unfreeze_every < 1
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
            raise ValueError(
                f"Argument `mode` must be one of ('auto', 'min', 'max'). Received: mode={mode!r}"
            )
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
    def resolved_phases(self, model: keras.Model) -> list[tuple[list, int | None, float | None]]:
        """``(layers, start epoch, lr)`` per phase; a layer belongs to its first phase."""
        if self.phases is None:
            groups = self.groups
            if groups is None or not (
                isinstance(groups, list) and groups and isinstance(groups[0], tuple)
            ):
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
                for layer in surgery.select_layers(
                    model, phase["layers"], argument=f"phases[{i}]['layers']"
                )
                if id(layer) not in taken
            ]
            if not layers:
                raise ValueError(
                    f"Phase {i} ({phase['layers']}) has only layers of earlier phases."
                )
            taken.update(id(layer) for layer in layers)
            out.append((layers, phase["epoch"], phase["lr"]))
        return out

    def phase_groups(self, model: keras.Model) -> list[tuple[str, list]]:
        """One layer group per phase, bottom phase first, for ``discriminative_optimizer``.

        Layers with weights that are in no phase form a last group ``"others"``.
        """
        resolved = self.resolved_phases(model)
        named = [(f"phase{i}", layers) for i, (layers, _, _) in enumerate(resolved)]
        claimed = {id(layer) for _, layers in named for layer in layers}
        rest = [
            layer
            for _, layer in surgery.leaf_layers(model)
            if layer.weights and id(layer) not in claimed
        ]
        groups = [(name, [x for x in layers if x.weights]) for name, layers in reversed(named)]
        groups = [g for g in groups if g[1]]
        if rest:
            groups.append(("others", rest))
        return groups

    # -- optimizer rates -------------------------------------------------------------
    def _phase_optimizers(self, model, layers) -> list:
        optimizer = compat.inner_optimizer(model.optimizer)
        if not isinstance(optimizer, keras.optimizers.MultiOptimizer):
            return [optimizer]
        subs = []
        for layer in layers:
            for v in layer.weights:
                if compat.created_trainable(layer, v):
                    sub = compat.routed_optimizer(optimizer, v)
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
                lr = compat.learning_rate_object(sub)
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
            rate = compat.learning_rate_object(sub)
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
        self._plan = self.resolved_phases(self.model)
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
        apply_trainable(self.model, updates, self.train_bn)
        sync_optimizer(self.model)
        for i in range(self.phase + 1, target + 1):
            self._set_phase_rate(i)
        self.phase = target
        self.transitions.append((epoch, target))
        if self.verbose:
            n = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
            print(
                f"\nEpoch {epoch + 1}: GradualUnfreezing entered phase {target}, "
                f"{n} trainable parameters."
            )

    def on_epoch_begin(self, epoch, logs=None):
        target = max(self._target_for(epoch), self.phase)
        if target != self.phase:
            self._enter(target, epoch)

    def _improved(self, current: float) -> bool:
        if self._best is None:
            return True
        mode = self.mode
        if mode == "auto":
            mode = monitor_mode(self.monitor, self.model.metrics)
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


class ReduceLROnPlateauScaled(keras.callbacks.Callback):
    """``ReduceLROnPlateau`` that also works when the rate comes from a kerasft schedule.

    Keras's ``ReduceLROnPlateau`` assigns a new rate, which an optimizer built with a
    schedule refuses (a ``TypeError`` in the middle of ``fit``). This one lowers the
    schedule's ``multiplier`` instead, so the schedule keeps its shape at a smaller
    scale, and plain float rates are reduced as usual. Every sub-optimizer of a
    ``MultiOptimizer`` is reduced by the same factor. Optimizers whose rate can be changed
    neither way (other schedules, callables) are refused when training begins, before
    any step. ``min_lr`` bounds the rate at the moment of a reduction; a schedule may
    still decay below it afterwards. Arguments and counting are Keras's.

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
        mode: ``"auto"`` (see :func:`monitor_mode`), ``"min"`` or ``"max"``.
            Defaults to `"auto"`.
        min_delta: smallest change that counts as an improvement. Defaults to `1e-4`.
        cooldown: epochs to wait after a reduction. Defaults to `0`.
        min_lr: lower bound of the rate when reducing. Defaults to `0.0`.

    Raises:
        ValueError: for ``factor`` outside ``(0, 1)`` or an unknown ``mode``; when
            training begins, if an optimizer's rate is a schedule that cannot be scaled.
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
        super().__init__()
        if not isinstance(factor, (int, float)) or not 0.0 < factor < 1.0:
            raise ValueError(f"Argument `factor` must be in (0, 1). Received: factor={factor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"Argument `mode` must be one of ('auto', 'min', 'max'). Received: mode={mode!r}"
            )
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.min_delta = abs(min_delta)
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def _optimizers(self) -> list:
        optimizer = compat.inner_optimizer(self.model.optimizer)
        return list(getattr(optimizer, "optimizers", [optimizer]))

    def on_train_begin(self, logs=None):
        for opt in self._optimizers():
            rate = compat.learning_rate_object(opt)
            if not isinstance(rate, (keras.Variable, _schedules.KerasftSchedule)):
                raise ValueError(
                    f"ReduceLROnPlateauScaled cannot lower the rate of optimizer {opt.name!r}: "
                    f"it follows a {type(rate).__name__}, which has no multiplier. HINT: use a "
                    "kerasft schedule or wrap yours: kerasft.schedules.Scaled(schedule)."
                )
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def _improved(self, current: float) -> bool:
        if self.best is None:
            return True
        mode = self.mode if self.mode != "auto" else monitor_mode(self.monitor, self.model.metrics)
        if mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` which is "
                f"not available. Available metrics are: {','.join(logs or {})}.",
                stacklevel=2,
            )
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(float(current)):
            self.best, self.wait = float(current), 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                optimizers = self._optimizers()
                names = [opt.name if len(optimizers) > 1 else "" for opt in optimizers]
                if any([self._reduce(opt, epoch, name) for opt, name in zip(optimizers, names)]):
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def _reduce(self, optimizer, epoch: int, name: str) -> bool:
        rate = compat.learning_rate_object(optimizer)
        old_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        scaled = isinstance(rate, _schedules.KerasftSchedule)
        # A schedule at zero (start of a warmup, a group not trained yet) still scales, so
        # that it is lower when it does train.
        if old_lr <= np.float32(self.min_lr) and not (scaled and old_lr <= 0):
            return False
        new_lr = max(old_lr * self.factor, self.min_lr) if old_lr > 0 else 0.0
        if not scaled:
            optimizer.learning_rate = new_lr
            message = f"reducing learning rate to {new_lr}"
        else:
            ratio = new_lr / old_lr if old_lr > 0 else self.factor
            rate.multiplier = rate.multiplier * ratio
            message = (
                f"scaling the schedule by {ratio:.3g} (multiplier {rate.multiplier:.3g}, "
                f"rate now {new_lr:.3g})"
            )
        if self.verbose > 0:
            print(
                f"\nEpoch {epoch + 1}: ReduceLROnPlateauScaled"
                f"{' ' + name if name else ''} {message}."
            )
        return True


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
        optimizer = compat.inner_optimizer(getattr(self.model, "optimizer", None))
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
