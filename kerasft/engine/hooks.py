"""Hooks: what a fine-tuning run does besides training, each in one class.

The runner calls every hook at five moments, in the order of the hook list:

- ``run_start(run)``: before the first phase (attach regularizers, find the rate...);
- ``resume(run)``: may return the :class:`PhaseResult` of a phase finished by an earlier,
  interrupted run (its weights restored), so that the phase is skipped;
- ``phase_start(run)``: before a phase is set up; may return a new model to train from
  here on (pruning wraps layers);
- ``callbacks(run)``: the Keras callbacks of the phase's ``fit`` (their order is the
  order of the hooks);
- ``phase_end(run, result)``: after the phase's ``fit``;

and ``run_end(run)`` after the last phase, in reverse order, so that what started first
finishes last (best weights are restored before pruning wrappers are stripped).
Adding a concern to the engine is adding a :class:`Hook` subclass, not a branch in the
runner. :func:`kerasft.engine.defaults.default_hooks` lists the hooks a ``finetune`` call uses.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kerasft import _keras_compat as compat
from kerasft import surgery
from kerasft.callbacks import ReduceLROnPlateauScaled
from kerasft.engine.result import NaNEvent, PhaseResult

if TYPE_CHECKING:
    from kerasft.engine.runner import Run

__all__ = [
    "Hook",
    "BestWeights",
    "NaNGuard",
    "EarlyStopping",
    "ReduceOnPlateau",
    "EMA",
    "Regularization",
    "LRFinder",
    "Pruning",
    "Stages",
    "UserCallbacks",
    "TensorBoard",
    "TargetScale",
    "FrozenBackboneDropout",
    "Thresholds",
]


class Hook:
    """Base class of the engine's hooks; every method does nothing by default."""

    def run_start(self, run: Run) -> None:
        """Before the first phase."""

    def resume(self, run: Run) -> PhaseResult | None:
        """The result of the current phase if an earlier run finished it (weights restored)."""
        return None

    def phase_start(self, run: Run) -> keras.Model | None:
        """Before the current phase is set up; may return the model to train from now on."""
        return None

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        """Keras callbacks for the current phase's ``fit``."""
        return []

    def phase_end(self, run: Run, result: PhaseResult) -> None:
        """After the current phase's ``fit``."""

    def run_end(self, run: Run) -> None:
        """After the last phase (hooks run in reverse order here)."""


# ---------------------------------------------------------------------------- best weights


class _Tracker(keras.callbacks.Callback):
    """Remember the best weights on ``monitor`` across phases.

    With ``final_only``, a phase is one candidate scored by its last epoch (a fixed
    budget compared as a whole with the others, as ``recipe="auto"`` compares the
    fine-tune with the probe), not one candidate per epoch. A tie on ``monitor`` goes to
    the lower ``tie_break`` (a loss), when given.
    """

    def __init__(
        self, monitor: str, mode: str, *, final_only: bool = False, tie_break: str | None = None
    ):
        super().__init__()
        self.monitor = monitor
        self.sign = -1.0 if mode == "min" else 1.0
        self.final_only = final_only
        self.tie_break = tie_break
        self.best = -math.inf
        self.best_weights: list[np.ndarray] | None = None
        self.best_phase: str | None = None
        self.best_logged: float | None = None
        self.phase = ""
        self.from_epoch = 0
        # The current phase's handicap from its logged value (a probe trained by gradient).
        self.handicap: Callable[[Any], float] | None = None
        self._last: dict[str, Any] | None = None

    def restart(self, from_epoch: int) -> None:
        """Forget the weights seen so far; then only count epochs >= ``from_epoch``."""
        self.best, self.best_weights, self.from_epoch = -math.inf, None, from_epoch

    def score(self, logs: dict[str, Any]) -> float | None:
        """The signed score of ``logs`` (higher is better), or ``None`` when not finite."""
        value = logs.get(self.monitor)
        if value is None or not np.isfinite(value):
            return None
        score = self.sign * float(value)
        loss = logs.get(self.tie_break) if self.tie_break else None
        if loss is not None and np.isfinite(loss):
            score -= 1e-6 * float(loss)
        return score

    def on_train_begin(self, logs=None):
        self._last = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.from_epoch:
            return
        if self.final_only:
            self._last = dict(logs or {})
            return
        self._consider(logs or {}, self.model, self.phase, self._handicap(logs or {}))

    def on_train_end(self, logs=None):
        if self.final_only and self._last is not None:
            self._consider(self._last, self.model, self.phase, self._handicap(self._last))

    def _handicap(self, logs: dict[str, Any]) -> float:
        return 0.0 if self.handicap is None else self.handicap(logs.get(self.monitor))

    def _consider(
        self, logs: dict[str, Any], model: keras.Model, phase: str, handicap: float = 0.0
    ) -> None:
        score = self.score(logs)
        if score is not None and score - handicap > self.best:
            self.best = score - handicap
            self.best_weights = model.get_weights()
            self.best_phase = phase
            self.best_logged = float(logs[self.monitor])

    def offer(
        self, logs: dict[str, Any], model: keras.Model, phase: str, handicap: float = 0.0
    ) -> None:
        """Score ``model``'s current weights as if an epoch of ``phase`` had ended with ``logs``.

        ``handicap`` (in the monitor's units) is taken off this candidate's score: a later
        one wins unless this one is better by more than that.
        """
        self._consider(logs, model, phase, handicap)

    @property
    def best_value(self) -> float | None:
        return None if self.best_weights is None else self.best_logged

    def restore(self, model: keras.Model) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


class BestWeights(Hook):
    """Keep the best weights on the monitored quantity across phases; restore them.

    The tracker is ``run.best``; when a hook replaces the model (pruning), the weights
    seen so far no longer fit it and only epochs from ``run.count_from_epoch`` count.
    """

    def run_start(self, run: Run) -> None:
        run.best = _Tracker(
            run.monitor,
            run.task.monitor_mode(run.monitor),
            final_only=run.compare_final,
            tie_break="val_loss" if run.compare_final and run.monitor != "val_loss" else None,
        )
        self._model = run.model

    def phase_start(self, run: Run) -> None:
        if run.model is not self._model:
            run.best.restart(from_epoch=run.count_from_epoch)
            self._model = run.model
        run.best.phase = run.phase.name

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        return [run.best]

    def phase_end(self, run: Run, result: PhaseResult) -> None:
        if not run.keep_final:
            run.best.restore(run.model)

    def run_end(self, run: Run) -> None:
        if not run.keep_final:
            run.best.restore(run.model)


# ------------------------------------------------------------------------------ NaN guard


class _NaNCallback(keras.callbacks.Callback):
    """Stop at the first NaN/inf loss and restore the last weights that gave a finite one."""

    def __init__(self, run: Run):
        super().__init__()
        self.run = run
        self.event: dict[str, Any] | None = None
        self._good: list[np.ndarray] | None = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.event = None
        self._good = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.event is None and loss is not None and not math.isfinite(float(loss)):
            self.event = {"epoch": self._epoch + 1, "step": batch + 1, "loss": float(loss)}
            self.model.stop_training = True
            self.run.stop_reason = "non-finite loss"

    def on_epoch_end(self, epoch, logs=None):
        if self.event is None:
            weights = self.model.get_weights()
            if all(np.all(np.isfinite(w)) for w in weights if np.issubdtype(w.dtype, np.floating)):
                self._good = weights

    def on_train_end(self, logs=None):
        if self.event is not None and self._good is not None:
            self.model.set_weights(self._good)


class NaNGuard(Hook):
    """Stop at the first non-finite loss, keep the last finite weights, skip later phases."""

    _callback: _NaNCallback | None = None  # None: a phase without fit (the probe)

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        self._callback = _NaNCallback(run)
        return [self._callback]

    def phase_end(self, run: Run, result: PhaseResult) -> None:
        callback, self._callback = self._callback, None
        event = callback.event if callback is not None else None
        if event is None:
            return
        peak = run.phase_peak
        run.nan = NaNEvent(
            run.phase.name, event["epoch"], event["step"], event["loss"], float(peak)
        )
        warnings.warn(
            f"kerasft: the loss became {event['loss']} at step {event['step']} of "
            f"epoch {event['epoch']} in phase {run.phase.name!r} (peak learning rate {peak:g}). "
            "Training stopped and the last weights with a finite loss were restored; later "
            f"phases were skipped. HINT: try a lower learning rate (e.g. {peak / 10:g}), "
            "gradient clipping (optimizer=kerasft.OptimizerConfig(global_clipnorm=1.0)), "
            "or check the inputs for extreme values.",
            RuntimeWarning,
            stacklevel=5,  # hook, runner, run, finetune, caller
        )


# ------------------------------------------------------------------- stopping and plateaus


class EarlyStopping(Hook):
    """Keras's ``EarlyStopping`` on the monitored quantity, per phase."""

    def __init__(self, patience: int):
        self.patience = patience

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        if run.keep_final or run.compare_final:  # a fixed budget: nothing to stop on
            return []
        start = max(run.count_from_epoch, run.phase_optimizer.settle_epoch)
        return [
            keras.callbacks.EarlyStopping(
                monitor=run.monitor,
                patience=self.patience,
                mode=run.task.monitor_mode(run.monitor),
                start_from_epoch=start,
            )
        ]


class ReduceOnPlateau(Hook):
    """Scale the phase's schedule down when the monitored quantity stalls."""

    def __init__(self, kwargs: dict[str, Any]):
        self.kwargs = kwargs

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        return [ReduceLROnPlateauScaled(**self.kwargs)]


class EMA(Hook):
    """Validate, pick the best and return the exponential moving average of the weights.

    The optimizer keeps the average (``use_ema``); this swaps it in for validation. It
    comes first, so that the other callbacks see the averaged weights.
    """

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        return [compat.SwapEMAWeights(swap_on_epoch=True)]


class Stages(Hook):
    """The callbacks that belong to the phase itself (``GradualUnfreezing`` of a staged phase)."""

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        return list(run.phase_optimizer.callbacks)


class UserCallbacks(Hook):
    """The user's own Keras callbacks, in every phase."""

    def __init__(self, callbacks: list[keras.callbacks.Callback]):
        self.user_callbacks = callbacks

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        return list(self.user_callbacks)


class TensorBoard(Hook):
    """Log every phase to TensorBoard on one time axis (``kerasft.TensorBoardLogger``)."""

    def __init__(self, log_dir: Any):
        from kerasft.tensorboard import TensorBoardLogger

        self.logger = TensorBoardLogger(log_dir)

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        self.logger.begin_phase(
            run.phase.name,
            epochs=run.phase.epochs,
            learning_rate=f"{run.phase_peak:g}",
            trainable_params=run.phase_counts.trainable,
        )
        return [self.logger]

    def run_end(self, run: Run) -> None:
        self.logger.close()


# ---------------------------------------------------------------- regularization, LR finder


class Regularization(Hook):
    """Attach L2-SP (pretrained layers; a rebuilt head is left free) and weight clipping."""

    def __init__(self, l2sp: float | None, clip: tuple[float, Any] | None):
        self.l2sp, self.clip = l2sp, clip

    def run_start(self, run: Run) -> None:
        from kerasft import regularizers

        model, task = run.model, run.task
        if self.l2sp:
            new = [re.escape(surgery.layer_path(model, task.head))] if task.head_rebuilt else None
            run.regularization.l2sp = regularizers.apply_l2sp(
                model, alpha=float(self.l2sp), beta=0.0, new_layers=new
            )
        if self.clip is not None:
            run.regularization.clip_weights = regularizers.clip_weights(model, *self.clip)


class LRFinder(Hook):
    """``lr="find"``: sweep with the first phase's trainable set; take the ``valley`` rate."""

    def run_start(self, run: Run) -> None:
        from kerasft.engine.plan import select_trainable
        from kerasft.lr_finder import lr_find

        model, first = run.model, run.plan.phases[0]
        from kerasft.engine.plan import TrainableSnapshot

        state = TrainableSnapshot.take(model)
        if first.staged:  # the head, alone in the first stage of a gradual recipe
            select_trainable(
                model, run.task.head, dataclasses.replace(first, trains="head", stages=())
            )
        elif first.trains in ("head", "adapters"):
            select_trainable(model, run.task.head, first, run.task.adapters)
        else:  # "full": everything trains from the start
            surgery.freeze(model)
            surgery.unfreeze(model, train_bn=first.train_bn)
        try:
            found = lr_find(
                model, run.data.train, loss=run.task.loss, optimizer=run.make_optimizer(1e-3)
            )
        finally:
            state.restore(model)
        run.lr_find = found
        run.plan = run.plan.resolve_rates(found.suggestions["valley"])
        rates = [str(p.rate) for p in run.plan.phases]
        run.log(
            f"kerasft: lr_find suggests lr {found.suggestions['valley']:.2e} (valley); "
            f"phase rates {rates}"
        )


# ------------------------------------------------------------------------ frozen backbone


class FrozenBackboneDropout(Hook):
    """Run the frozen layers of a nested backbone in inference mode: their dropout is off.

    The Keras transfer-learning guide calls ``base_model(x, training=False)``: a frozen
    backbone computes the same features in every epoch. Keras itself keeps the dropout of
    frozen layers on during ``fit``, so for each phase the dropout inside frozen layers of
    nested models (a KerasHub backbone, a ``keras.applications`` base) is set to rate 0 and
    put back after the phase; layers that train keep theirs, and so does dropout in the
    outer model (the head's). It also makes the frozen bottom a deterministic prefix whose
    outputs can be cached. Staged phases, whose trainable set changes during ``fit``, are
    left as they are.
    """

    _saved: tuple = ()  # none after a phase without fit (the probe)

    def phase_start(self, run: Run) -> None:
        self._saved: list[tuple[keras.layers.Layer, float]] = []
        if run.phase.staged:
            return
        for _, container in surgery.iter_layers(run.model):
            if not surgery.is_container(container):
                continue
            for _, leaf in surgery.leaf_layers(container):
                if leaf.trainable:
                    continue
                for part in compat.flatten_layers(leaf):
                    if isinstance(part, keras.layers.Dropout) and part.rate > 0:
                        self._saved.append((part, part.rate))
                        part.rate = 0.0

    def phase_end(self, run: Run, result: PhaseResult) -> None:
        for layer, rate in self._saved:
            layer.rate = rate
        self._saved = []


# ------------------------------------------------------------------------- task outputs


def _target_scale(run: Run) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(head, std, mean, kernel, bias)``: the run's target scale and its head's weights."""
    spec, head = run.task.spec, run.task.head
    std = np.asarray(spec.target_std, "float32")
    mean = np.asarray(spec.target_mean, "float32")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (head.kernel, head.bias))
    return head, std, mean, kernel, bias


class TargetScale(Hook):
    """Fold the standardisation of regression targets into the head, so the model predicts units.

    Trained on ``(y - mean) / std``, the head's kernel is multiplied by ``std`` and its
    bias becomes ``bias * std + mean``: the returned model predicts in the targets' units.
    """

    def run_start(self, run: Run) -> None:
        head = run.task.head
        if not isinstance(head, keras.layers.Dense) or not head.use_bias:
            raise ValueError(
                "Argument `standardize_targets=True` needs a Dense head with a bias to fold the "
                f"scale into, but the head {head.name!r} ({type(head).__name__}) has none. HINT: "
                "pass new_head=True."
            )

    def run_end(self, run: Run) -> None:
        head, std, mean, kernel, bias = _target_scale(run)
        head.kernel.assign(kernel * std)
        head.bias.assign(bias * std + mean)
        run.log(
            "kerasft: regression head rescaled to the targets' units "
            f"(mean {mean.round(4).tolist()}, std {std.round(4).tolist()})"
        )

    @staticmethod
    def unfold(run: Run) -> None:
        """Put a head already in the targets' units back on ``run``'s standardised targets.

        The inverse of :meth:`run_end` at ``run``'s scale, for a model that comes out of
        one run (its head folded to units) and trains on in another, which standardises
        the targets again: a continuation on all labels after a holdout choice. The
        model predicts what it did; ``run_end`` folds the head back at the end.
        """
        head, std, mean, kernel, bias = _target_scale(run)
        head.kernel.assign(kernel / std)
        head.bias.assign((bias - mean) / std)


class Thresholds(Hook):
    """Per-label decision thresholds of a multi-label task: given, or tuned for F1 on validation."""

    def __init__(self, thresholds: Any):
        self.thresholds = thresholds

    def run_end(self, run: Run) -> None:
        task = run.task
        if self.thresholds is None:
            return
        if self.thresholds != "tune":
            if len(self.thresholds) != task.num_classes:
                raise ValueError(
                    f"Argument `thresholds` has {len(self.thresholds)} values, but there are "
                    f"{task.num_classes} labels. Pass one threshold per label."
                )
            task.thresholds = [float(v) for v in self.thresholds]
            return
        if run.data.validation is None:
            return
        from kerasft.evaluation import tune_thresholds

        labels = np.concatenate([np.asarray(y) for _, y in run.data.validation])
        scores = run.model.predict(run.data.validation.map(lambda x, y: x), verbose=0)
        task.thresholds = tune_thresholds(labels, scores, from_logits=task.from_logits)
        run.log(
            "kerasft: decision thresholds tuned on validation: "
            f"{[round(t, 3) for t in task.thresholds]}"
        )


# ---------------------------------------------------------------------------------- pruning


class Pruning(Hook):
    """Prune by magnitude during the last phase; return the stripped model.

    The last phase trains a copy whose largest trained layers are wrapped (the copy
    keeps the phase's trainable flags); the best weights are picked among the epochs at
    full sparsity (``run.count_from_epoch``).
    """

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.plan = None

    def phase_start(self, run: Run) -> keras.Model | None:
        from kerasft.pruning import finetune as pruning_finetune

        last = max(i for i, p in enumerate(run.plan.phases) if p.epochs > 0)
        if run.phase_index != last:
            return None
        if not run.phase.prunable:
            raise ValueError(
                f"Argument `prune` cannot prune the last phase of this plan ({run.phase.name!r} "
                f"trains {run.phase.trains!r}): pruning needs gradient steps on a fixed set of "
                "layers."
            )
        steps = run.plan.steps_per_epoch
        self.plan, first_full = pruning_finetune.start(
            run.model, self.options, run.phase.epochs * steps, steps, head=run.task.head
        )
        run.count_from_epoch = first_full
        return self.plan.model

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        return list(self.plan.callbacks) if self.plan is not None else []

    def run_end(self, run: Run) -> None:
        if self.plan is None:
            return
        from kerasft.engine.task import loss_and_metrics
        from kerasft.pruning import finetune as pruning_finetune

        model, record = pruning_finetune.finish(self.plan, run.model)
        task = run.task
        metrics = list(
            run.options.task.metrics or loss_and_metrics(task.label_mode, task.from_logits)[1]
        )
        model.compile(loss=task.loss, metrics=metrics)
        run.replace_model(model)
        run.pruning = record
        run.log(
            f"kerasft: pruned {len(record.layers)} layers to {record.sparsity:.1%} sparsity; "
            "returning the stripped model"
        )
