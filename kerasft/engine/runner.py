"""The runner: executes any plan, phase by phase, with its hooks.

For each phase the runner selects the trainable set, lets the hooks start the phase
(they may swap the model), builds the optimizer, sets up the speed path (cached
features, XLA, steps per execution), compiles, fits with the hooks' callbacks and
records a :class:`PhaseResult`. :class:`Run` is the state the hooks see and change.
:func:`prepare_run` turns a model and data into a run: it loads or copies the model,
checks and batches the data, sets up the task (head, loss, metrics) and builds the
plan; ``kerasft.finetune`` and ``kerasft.plan`` both start there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _onednn, convert, surgery
from kerasft import data as data_lib
from kerasft.data.sample import export_sample
from kerasft.engine import auto, prior
from kerasft.engine.hooks import Hook
from kerasft.engine.loading import load_model
from kerasft.engine.optim import PhaseOptimizer, phase_optimizer, staged_optimizer
from kerasft.engine.options import Options
from kerasft.engine.plan import (
    SCHEDULE_NAMES,
    Phase,
    Plan,
    Rate,
    TrainableSnapshot,
    build_plan,
    select_trainable,
    trainable_layers,
)
from kerasft.engine.result import FinetuneResult, NaNEvent, PhaseResult, RegularizationRecord
from kerasft.engine.task import (
    Task,
    add_adapters,
    copy_model,
    is_keras_hub_task,
    select_output,
    setup_task,
)
from kerasft.speed import distribute
from kerasft.speed.plan import SpeedPlan

__all__ = ["Run", "Runner", "prepare_run"]


@dataclass
class Run:
    """The state of one fine-tuning run, shared by the runner and its hooks.

    Attributes:
        options: every option of the call.
        task: the model, its head, loss and metrics (``run.model`` is ``task.model``).
        data: the prepared training and validation pipelines.
        plan: the phases to run.
        monitor: the quantity that picks the best weights and stops phases early.
        phases: results of the phases run so far.
        best: the best-weights tracker (set by the ``BestWeights`` hook).
        stop_reason: set by a hook to skip the remaining phases.
        count_from_epoch: epochs of the current phase before this one do not count
            for the best weights and early stopping (set by pruning).
        phase_index, phase, phase_optimizer, phase_peak, phase_counts: the current
            phase, its optimizer, its peak rate and its parameter counts.
        lr_find, pruning, nan, regularization, stages: records for the result.
        decision: what ``recipe="auto"`` decided (:class:`kerasft.engine.auto.AutoDecision`).
        probe: the :class:`kerasft.probe.ProbeChoice` of a probe phase.
        given_probe: a probe chosen before (on a holdout) to fit again, its features and
            strength kept (a refit on all labels).
        halving: the rates a phase tried by successive halving and their scores.
        keep_final: return the last weights (a fixed budget without validation), not
            the best seen.
        compare_final: each phase is one candidate, scored by its last epoch (the probe
            against the whole fine-tune), not one candidate per epoch.
        restore_length: ``(preprocessor, sequence length)`` to put back after the run.
        started_with: the model the run started from, which a probe on other features
            may replace (``run.model`` then differs); its preprocessor goes back on it too.
    """

    options: Options
    task: Task
    data: data_lib.PreparedData
    plan: Plan
    monitor: str
    phases: list[PhaseResult] = field(default_factory=list)
    best: Any = None
    stop_reason: str | None = None
    count_from_epoch: int = 0
    phase_index: int = -1
    phase: Phase | None = None
    phase_optimizer: PhaseOptimizer | None = None
    phase_peak: float = 0.0
    phase_counts: surgery.ParamCount | None = None
    lr_find: Any = None
    pruning: Any = None
    nan: NaNEvent | None = None
    regularization: RegularizationRecord = field(default_factory=RegularizationRecord)
    stages: list[Any] | None = None
    speed: Any = None
    decision: Any = None
    probe: Any = None
    given_probe: Any = None
    halving: list[dict[str, Any]] | None = None
    keep_final: bool = False
    restore_length: tuple[Any, int] | None = None
    started_with: keras.Model | None = field(default=None, repr=False)
    unused: tuple[Any, list] | None = field(default=None, repr=False)
    compare_final: bool = False

    @property
    def model(self) -> keras.Model:
        return self.task.model

    def replace_model(self, model: keras.Model) -> None:
        """Train (or return) ``model`` from now on; its head is looked up again."""
        self.task.model = model
        self.task.head = surgery.find_head(model)

    def replan(self, decision: Any) -> None:
        """Plan the run again for ``decision``: what ``recipe="auto"`` decides for a refit."""
        self.decision = decision
        self.plan = build_plan(
            self.model, self.task.head, self.options.recipe, self.data.steps_per_epoch, decision
        ).count(self.model, self.task.head, self.task.adapters)

    def make_optimizer(self, learning_rate: Any) -> keras.optimizers.Optimizer:
        return self.options.optimizer.make(learning_rate)

    def log(self, message: str) -> None:
        if self.options.run.verbose:
            print(message, flush=True)

    def result(self) -> FinetuneResult:
        return FinetuneResult(
            model=self.model,
            phases=self.phases,
            monitor=self.monitor,
            best_score=self.best.best_value if self.best is not None else None,
            best_phase=self.best.best_phase if self.best is not None else None,
            num_classes=self.task.num_classes,
            label_mode=self.task.label_mode,
            head_rebuilt=self.task.head_rebuilt,
            task=self.task.kind,
            thresholds=self.task.thresholds,
            target_mean=self.task.spec.target_mean,
            target_std=self.task.spec.target_std,
            adapters=self.task.lora,
            options=self.options,
            spec=self.task.spec,
            representative=export_sample(self.data),
            batch_size=self.options.data.batch_size,
            plan=self.plan,
            speed=self.speed,
            lr_find=self.lr_find,
            pruning=self.pruning,
            nan=self.nan,
            regularization=self.regularization,
            stages=self.stages,
            decision=self.decision,
            probe=self.probe,
            halving=self.halving,
        )


def _warn_unscaled_pixels(model: keras.Model, prepared: Any) -> None:
    """Warn when inputs already in 0..1 meet a model that divides its input by 255 itself."""
    inputs = keras.tree.flatten(prepared.arrays[0]) if prepared.arrays is not None else []
    if len(inputs) != 1:
        return
    for layer in model.layers:
        scale = getattr(layer, "scale", None)
        if not isinstance(layer, keras.layers.Rescaling) or not isinstance(scale, (int, float)):
            continue
        if not 0 < scale <= 1 / 100:
            continue
        x = np.asarray(inputs[0])
        if x.dtype.kind == "f" and x.size and float(np.max(x)) <= 1.0 and float(np.min(x)) >= -1.0:
            warnings.warn(
                f"The inputs lie in [{float(np.min(x)):.3g}, {float(np.max(x)):.3g}], but model "
                f"{model.name!r} rescales them itself (layer {layer.name!r}: x * {scale:.4g}), as "
                "for 0..255 pixels: they reach it nearly all zero. HINT: pass the pixels unscaled "
                "(0..255).",
                stacklevel=3,
            )
        return


def prepare_run(model: keras.Model | str | os.PathLike, data: Any, options: Options) -> Run:
    """Load or copy the model, check and batch the data, set up the task, build the plan.

    A KerasHub task's preprocessor is taken off the model for the run (the data is
    preprocessed once instead) and put back on the returned model.

    Raises:
        ValueError / TypeError: a model or data kerasft cannot fine-tune, with the reason.
    """
    model = _own_model(model, options)
    preprocessor = _detach_preprocessor(model)
    head = surgery.find_head(model)
    profile = auto.profile_model(model, head) if options.auto else None
    restore_length = _size_sequences(preprocessor, data, options) if options.auto else None
    try:
        prepared = _prepare_data(data, model, head, preprocessor, options, profile)
        _warn_unscaled_pixels(model, prepared)
        decision = None
        if options.auto:
            decision = _decide(profile, prepared, options, restore_length)
            options = options.replace(
                batch_size=prepared.batch_size,
                epochs=decision.epochs,
                optimizer=decision.optimizer,
                weight_decay=decision.weight_decay,
                warmup=decision.warmup,
                train_bn=decision.train_bn,
            )
        task = setup_task(
            model, prepared.spec, options.task, seed=options.data.seed, preprocessor=preprocessor
        )
        prior.check(task.model, prepared.spec, options)  # before training, not after it
        if options.recipe.adapters is not None:
            add_adapters(task, options.recipe)
        monitor = _monitor(options, decision, prepared, task)
        plan = build_plan(
            task.model, task.head, options.recipe, prepared.steps_per_epoch, decision
        ).count(task.model, task.head, task.adapters)
    except Exception:  # the user's model leaves as it came: its preprocessor and length back
        _attach_preprocessor(model, preprocessor)
        _restore_length(restore_length)
        raise
    has_val = prepared.validation is not None
    return Run(
        options=options,
        task=task,
        data=prepared,
        plan=plan,
        monitor=monitor,
        decision=decision,
        keep_final=decision is not None and not has_val,
        compare_final=decision is not None and has_val,
        restore_length=restore_length,
        started_with=model,
    )


def _own_model(model: keras.Model | str | os.PathLike, options: Options) -> keras.Model:
    """The model the run trains: loaded from a path, converted from Keras 2, or copied.

    Seeded before any layer is built: Keras layers draw their random seeds (dropout)
    from Python's generator when constructed, and a model loaded from a path is built
    here.
    """
    copy, run = options.run.copy, options.run
    keras.utils.set_random_seed(options.data.seed)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, safe_mode=run.safe_mode, verbose=run.verbose)
        copy = False
    elif convert.is_tf_keras(model):  # a Keras 2 model: converted, so the copy is already new
        model = convert.to_keras3(model, safe_mode=run.safe_mode, verbose=run.verbose).model
        copy = False
    surgery.check_operable(model)
    keras.utils.set_random_seed(options.data.seed)
    model = select_output(model, options.task.head)
    return copy_model(model) if copy else model


def _prepare_data(
    data: Any,
    model: keras.Model,
    head: Any,
    preprocessor: Any,
    options: Options,
    profile: auto.ModelProfile | None,
) -> data_lib.PreparedData:
    """Check and batch ``data`` for ``model``; "auto" sizes the holdout and the batch."""
    o, t, given = options.data, options.task, options.given
    own = not options.auto
    family = profile.family if profile is not None else None
    return data_lib.prepare_data(
        data,
        model=model,
        validation_data=o.validation_data,
        validation_split=(
            o.validation_split
            if own or "validation_split" in given
            else functools.partial(auto.auto_validation_split, family=family)
        ),
        batch_size=o.batch_size if own or "batch_size" in given else auto.auto_batch_size,
        seed=o.seed,
        num_classes=t.num_classes,
        label_mode=t.label_mode,
        task=t.task,
        head_units=surgery.head_units(head),
        head_activation=surgery.head_activation(model),
        label_columns=o.label_columns,
        preprocessor=preprocessor,
        standardize_targets=t.standardize_targets,
        one_hot=_needs_one_hot(options),
        augment=options.regularization.augment,
    )


def _monitor(options: Options, decision: Any, prepared: data_lib.PreparedData, task: Task) -> str:
    """What picks the best weights: as given, else "auto"'s choice, else the loss.

    "auto" compares whole candidates on what the user will measure: accuracy, for
    classes.
    """
    has_val = prepared.validation is not None
    chosen = (
        "val_accuracy"
        if decision is not None and has_val and task.kind == "classification"
        else None
    )
    monitor = options.monitor.monitor or chosen or ("val_loss" if has_val else "loss")
    if monitor.startswith("val_") and not has_val:
        why = (
            f"recipe='auto' holds nothing out of {prepared.n_train} examples (fewer than "
            f"{auto.small_data(decision.profile.family)})"
            if decision is not None and "validation_split" not in options.given
            else "validation_split=0"
        )
        raise ValueError(
            f"Argument `monitor={monitor!r}` needs validation data, but {why} and "
            "no validation_data were given. Use monitor='loss' or give validation data "
            "(validation_data= or validation_split=)."
        )
    return monitor


def _size_sequences(preprocessor: Any, data: Any, options: Options) -> tuple[Any, int] | None:
    """Shorten a text preprocessor's length to what the data needs; return what to put back."""
    length = getattr(preprocessor, "sequence_length", None)
    if preprocessor is None or not isinstance(length, int):
        return None
    try:
        source = data_lib.as_source(data, "data", options.data.label_columns)
    except Exception:
        return None  # refused again, with its message, by prepare_data
    if not isinstance(source, tuple):
        return None
    needed = auto.needed_sequence_length(preprocessor, source[0], seed=options.data.seed)
    if needed is None or needed >= length:
        return None
    preprocessor.sequence_length = needed
    return preprocessor, length


def _restore_length(saved: tuple[Any, int] | None) -> None:
    if saved is not None:
        saved[0].sequence_length = saved[1]


def _schedule_text(schedule: str) -> str:
    """The phase log's note of a schedule: ``" (warmup+cosine)"``, or none for a constant rate."""
    named = SCHEDULE_NAMES.get(schedule)
    return f" ({named})" if named else ""


def _right_after_probe(run: Run) -> bool:
    """Whether this phase is an unstaged fine-tune right after the probe (or the head
    trained by gradient in its place)."""
    return (
        run.phase_index > 0 and run.plan.phases[run.phase_index - 1].probe and not run.phase.staged
    )


def _plans_afresh(run: Run) -> bool:
    """Whether the plan has this phase, a fine-tune right after the probe, start from a new
    head (:attr:`kerasft.engine.auto.AutoDecision.fresh_head`)."""
    return getattr(run.decision, "fresh_head", False) and _right_after_probe(run)


def _starts_afresh(run: Run) -> bool:
    """Whether this phase starts from a new head as planned: the probe gave the targets'
    mean in the head's units, which the new head's bias takes."""
    return _plans_afresh(run) and run.probe is not None and run.probe.target_mean is not None


def _scales_head(run: Run) -> bool:
    """Whether this phase, a fine-tune right after the probe, starts from the probe's head
    scaled (:attr:`kerasft.engine.auto.AutoDecision.head_scale`)."""
    return getattr(run.decision, "head_scale", 1.0) != 1.0 and _right_after_probe(run)


def probe_handicap(decision: Any, value: Any) -> float:
    """The probe's handicap in its holdout score's units, from ``recipe="auto"``'s margin.

    ``value`` is the probe's holdout score. A margin of accuracy is the handicap; a
    relative one (``AutoDecision.probe_margin_relative``, for a mean squared error) is
    a fraction of the probe's own loss: the fine-tune then wins unless its loss is more
    than ``1 + margin`` times the probe's.
    """
    margin = getattr(decision, "probe_margin", 0.0)
    if not margin or value is None or not np.isfinite(value):
        return 0.0
    return margin * abs(float(value)) if decision.probe_margin_relative else margin


def _decide(
    profile: Any,
    prepared: data_lib.PreparedData,
    options: Options,
    restore_length: tuple[Any, int] | None,
) -> Any:
    """``recipe="auto"``'s decision for the prepared data, with the user's own options winning."""
    r, given = options.recipe, options.given
    rate = r.finetune_lr if r.finetune_lr is not None else (r.lr if "lr" in given else None)
    user = {
        "epochs": r.epochs if "epochs" in given else None,
        "lr": rate,
        "optimizer": options.optimizer.name if "optimizer" in given else None,
        "warmup": r.warmup if "warmup" in given else None,
        "layer_decay": r.layer_decay,
        "lr_mult": r.lr_mult,
        "weight_decay": options.optimizer.weight_decay,
        "unfreeze": r.unfreeze if "unfreeze" in given else None,
        "train_bn": r.train_bn if "train_bn" in given else None,
        "l2sp": options.regularization.l2sp,
        "monitor": options.monitor.monitor,
        "loss": options.task.loss,
    }
    split = options.data.validation_data is None
    n_examples = prepared.n_train + (prepared.n_validation if split else 0)
    length = restore_length[0].sequence_length if restore_length else None
    return auto.decide(
        profile,
        n_examples=n_examples,
        n_train=prepared.n_train,
        batch_size=prepared.batch_size,
        given_validation=not split,
        user=user,
        sequence_length=length,
        user_length=restore_length[1] if restore_length else None,
        task=prepared.spec.task,
    )


def _needs_one_hot(options: Options) -> bool:
    """Whether single-label classes must be one-hot: smoothing, focal loss, mixing augmentation."""
    t, augment = options.task, options.regularization.augment
    return (
        t.label_smoothing > 0
        or (isinstance(t.loss, str) and t.loss == "focal")
        or (isinstance(augment, str) and augment in ("mixup", "cutmix", "feature_mixup"))
    )


def _detach_preprocessor(model: keras.Model) -> Any:
    """Take a KerasHub task's preprocessor off it for the run; return it (or ``None``)."""
    if not is_keras_hub_task(model) or model.preprocessor is None:
        return None
    preprocessor = model.preprocessor
    model.preprocessor = None
    return preprocessor


def _attach_preprocessor(model: keras.Model, preprocessor: Any) -> None:
    if preprocessor is not None and is_keras_hub_task(model):
        model.preprocessor = preprocessor


class Runner:
    """Execute ``run.plan`` with ``hooks`` (see :mod:`kerasft.engine.hooks` for the protocol)."""

    def __init__(self, run: Run, hooks: list[Hook], strategy: Any = None):
        self.run_state = run
        self.hooks = hooks
        self.strategy = strategy

    def _each(self, method: str, *args: Any, reverse: bool = False) -> None:
        for hook in reversed(self.hooks) if reverse else self.hooks:
            getattr(hook, method)(*args)

    def run(self) -> FinetuneResult:
        """Train every phase of the plan; return the result with the best weights."""
        run = self.run_state
        _onednn.check_model(run.model, trains_body=any(p.trains_body for p in run.plan.phases))
        if self.strategy is not None:
            distribute.check_model_variables(run.model, self.strategy)
        speed = SpeedPlan(
            run.model,
            run.data,
            run.options.speed,
            seed=run.options.data.seed,
            distributed=self.strategy is not None,
            verbose=run.options.run.verbose,
        )
        task = run.task
        run.log(
            f"kerasft: {run.data.n_train} training / {run.data.n_validation} validation examples, "
            f"{task.describe()}"
        )
        try:
            self._each("run_start", run)
            for index, phase in enumerate(run.plan.phases):
                if phase.epochs == 0 and not phase.probe:
                    continue
                run.phase_index, run.phase, run.count_from_epoch = index, phase, 0
                restored = next(
                    (r for r in (h.resume(run) for h in self.hooks) if r is not None), None
                )
                if restored is not None:
                    run.phases.append(restored)
                    continue
                result = self._probe(run, speed) if phase.probe else self._phase(run, speed)
                run.phases.append(result)
                self._each("phase_end", run, result)
                if run.stop_reason is not None:
                    break
            run.speed = speed.report()
            self._each("run_end", run, reverse=True)
        finally:
            speed.close()
            _attach_preprocessor(run.model, task.preprocessor)
            if run.started_with is not None and run.started_with is not run.model:
                # copy=False: the user's task, left behind by a probe on other features
                _attach_preprocessor(run.started_with, task.preprocessor)
            _restore_length(run.restore_length)
        if not getattr(run.model, "compiled", False):  # every phase was restored from a checkpoint
            run.model.compile(loss=task.loss, metrics=task.metrics)
        best = run.best.best_value if run.best else None
        shown = best if best is None else format(best, ".4g")
        run.log(
            f"kerasft: done; best {run.monitor} {shown} in phase "
            f"{run.best.best_phase if run.best else None!r}"
        )
        return run.result()

    def _probe(self, run: Run, speed: SpeedPlan) -> PhaseResult:
        """Fit the head in closed form on the frozen body's features; score it like an epoch.

        Where the head's features cannot be read, the head trains by gradient instead
        (Adam at 1e-2 for about 100 steps), and the log says why.
        """
        from kerasft import probe as probe_lib

        start = time.perf_counter()
        select_trainable(run.model, run.task.head, run.phase)
        try:
            run.probe = probe_lib.fit_probe(
                run.model, run.task, run.data, seed=run.options.data.seed, given=run.given_probe
            )
        except probe_lib.ProbeUnavailable as e:
            epochs = int(min(50, max(5, round(100 / run.plan.steps_per_epoch))))
            run.log(
                f"kerasft: no closed-form probe ({e}); training the head by gradient for "
                f"{epochs} epochs"
            )
            run.phase = dataclasses.replace(run.phase, solver="fit", epochs=epochs, rate=Rate(1e-2))
            if run.best is None or run.keep_final:
                return self._phase(run, speed)
            # The closed-form probe's margin holds for one trained by gradient too.
            run.best.handicap = functools.partial(probe_handicap, run.decision)
            try:
                return self._phase(run, speed)
            finally:
                run.best.handicap = None
        if run.probe.model is not run.model:
            run.replace_model(run.probe.model)
            if run.task.adapters is not None:  # the new head trains beside the adapters
                run.task.adapters.restore(run.model)
                run.task.head.trainable = True
                run.task.adapters = TrainableSnapshot.take(run.model)
        run.log(
            f"kerasft phase {run.phase_index + 1}/{len(run.plan.phases)} 'probe': "
            f"{run.probe.describe()}"
        )
        if run.probe.no_signal:
            warnings.warn(
                f"The frozen features of model {run.model.name!r} carry no signal about these "
                "labels: a linear head on them scores no better on held-out examples than "
                "guessing from the label frequencies "
                f"(loss {run.probe.head.score:.4g} against {run.probe.chance:.4g}). Fine-tuning "
                "may still learn, but check that the inputs are scaled as the model expects "
                "(0..255 pixels, not 0..1, for a model that rescales inside) and that the "
                "backbone has its pretrained weights.",
                stacklevel=2,
            )
        model, task = run.model, run.task
        model.compile(loss=task.loss, metrics=list(task.metrics))
        history = {"loss": [run.probe.train_loss]}
        if run.data.validation is not None:
            logs = model.evaluate(run.data.validation, verbose=0, return_dict=True)
            history.update({f"val_{k}": [float(v)] for k, v in logs.items()})
        if run.best is not None and not run.keep_final:
            logs = {k: v[0] for k, v in history.items()}
            handicap = probe_handicap(run.decision, logs.get(run.best.monitor))
            run.best.offer(logs, model, "probe", handicap)
        seconds = time.perf_counter() - start
        trainable = sum(int(np.prod(v.shape)) for v in task.head.weights)
        return PhaseResult("probe", 1, history, seconds, trainable, 0.0, 0)

    def _phase(self, run: Run, speed: SpeedPlan) -> PhaseResult:
        """Set up, compile and fit the current phase."""
        phase, steps = run.phase, run.plan.steps_per_epoch
        if not phase.staged:
            select_trainable(run.model, run.task.head, phase, run.task.adapters)
            if phase.trains_body:
                for layer in _unused_layers(run):
                    layer.trainable = False
        for hook in self.hooks:
            replacement = hook.phase_start(run)
            if replacement is not None:
                run.replace_model(replacement)
        model = run.model
        if _starts_afresh(run):
            from kerasft import probe as probe_lib

            probe_lib.redraw_head(run.task.head, run.probe.target_mean, seed=run.options.data.seed)
            run.log(
                "kerasft: the fine-tune starts from a head drawn afresh (bias at the targets' "
                "mean); the probe stays a candidate"
            )
        elif _plans_afresh(run):
            run.log(
                "kerasft: the fine-tune starts from the head trained in the probe's place, not "
                "one drawn afresh as planned: with no closed-form probe there is no targets' "
                "mean in the head's units for its bias"
            )
        elif _scales_head(run):
            from kerasft import probe as probe_lib

            factor = run.decision.head_scale
            if probe_lib.scale_head(run.task.head, factor):
                run.log(
                    f"kerasft: the fine-tune starts from the probe's head with its kernel times "
                    f"{factor:g} (bias kept); the probe stays a candidate"
                )
            else:
                run.log(
                    f"kerasft: the head {run.task.head.name!r} has no floating-point kernel "
                    "variable to scale; the fine-tune starts from the probe's head as it is"
                )
        run.phase_optimizer = self._optimizer(run, phase)
        if not model.trainable_weights:
            raise ValueError(
                f"Nothing to train in phase {phase.name!r}: every weight of model "
                f"{model.name!r} is frozen. HINT: check `unfreeze=` and that the head has weights."
            )
        setup = speed.setup_phase(
            model,
            run.phase_index,
            cacheable=phase.cacheable,
            later_trainable=self._next_trainable(run),
        )
        run.phase_peak, run.phase_counts = run.phase_optimizer.peak, surgery.count_params(model)
        run.log(
            f"kerasft phase {run.phase_index + 1}/{len(run.plan.phases)} '{phase.name}': "
            f"{phase.epochs} epoch{'s' if phase.epochs != 1 else ''}, "
            f"lr {self._rates_text(run, phase)}"
            f"{_schedule_text(phase.schedule)}, {run.phase_counts}"
        )
        start = time.perf_counter()
        earlier: dict[str, list[float]] = {}
        first_epoch, compiled = 0, False
        if phase.halving and run.data.validation is not None and run.best is not None:
            earlier, first_epoch, compiled = self._halve(run, phase, setup, speed)
        if not compiled:
            self._compile(run, setup, speed)
        fitted = self._fit(
            run,
            setup,
            phase.epochs,
            initial_epoch=first_epoch,
            callbacks=[cb for hook in self.hooks for cb in hook.callbacks(run)],
            verbose=run.options.run.verbose,
        )
        seconds = time.perf_counter() - start
        history = {k: earlier.get(k, []) + values for k, values in fitted.items()}
        trainable = (
            surgery.count_params(model).trainable if phase.staged else run.phase_counts.trainable
        )
        return PhaseResult(
            phase.name,
            len(history.get("loss", [])),
            history,
            seconds,
            trainable,
            float(run.phase_peak),
            steps,
        )

    @staticmethod
    def _fit(
        run: Run,
        setup: Any,
        epochs: int,
        *,
        initial_epoch: int = 0,
        callbacks: list | None = None,
        verbose: Any = 0,
    ) -> dict[str, list[float]]:
        """Fit the compiled phase model up to ``epochs``; its history as floats."""
        fitted = setup.model.fit(
            setup.train,
            validation_data=setup.validation,
            initial_epoch=initial_epoch,
            epochs=epochs,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,
            class_weight=run.task.class_weight,
        )
        return {k: [float(v) for v in values] for k, values in fitted.history.items()}

    @staticmethod
    def _rates_text(run: Run, phase: Phase) -> str:
        if phase.halving and run.data.validation is not None:
            rates = " or ".join(f"{r:g}" for r in (float(phase.rate), *phase.candidates))
            return f"{rates} (chosen on the validation data after {phase.epochs // 2} epochs)"
        return f"{run.phase_peak:g}"

    @staticmethod
    def _optimizer(run: Run, phase: Phase) -> Any:
        """The phase's optimizer (one per stage for a staged phase)."""
        steps = run.plan.steps_per_epoch
        if phase.staged:
            run.stages = [_stage_record(s) for s in phase.stages]
            return staged_optimizer(
                run.model, phase, run.make_optimizer, steps, verbose=run.options.run.verbose
            )
        r = run.options.recipe
        return phase_optimizer(
            run.model,
            phase,
            run.make_optimizer,
            steps,
            lr_mult=r.lr_mult,
            layer_decay=phase.layer_decay or r.layer_decay,
            layer_groups=r.layer_groups,
        )

    @staticmethod
    def _compile(run: Run, setup: Any, speed: SpeedPlan) -> None:
        """Compile the phase's model with ``run.phase_optimizer``; ready it for ``fit``.

        The task's metric objects serve every phase; Keras resets them at each epoch only
        once its compiled metrics are built, so a phase's first epoch would otherwise
        count on top of the last evaluation of the phase before.
        """
        for metric in run.task.metrics:
            if isinstance(metric, keras.metrics.Metric):
                metric.reset_state()
        setup.model.compile(
            optimizer=run.phase_optimizer.optimizer,
            loss=run.task.loss,
            metrics=list(run.task.metrics),
            **setup.compile_kwargs,
        )
        optimizer = getattr(setup.model, "optimizer", None)
        if optimizer is not None and not optimizer.built and not tf.distribute.has_strategy():
            # As Keras builds it under a distribution strategy. Left to the first step,
            # the slots are created inside the trace, and tf.function traces the whole
            # training step a second time (measured: a third of a NASNet phase's time).
            optimizer.build(setup.model.trainable_variables)
        speed.before_fit(setup)

    def _halve(
        self, run: Run, phase: Phase, setup: Any, speed: SpeedPlan
    ) -> tuple[dict[str, list[float]], int, bool]:
        """Successive halving over the phase's rates; leave the winner set up to continue.

        Every rate trains the first half of the phase's epochs from the same weights, on
        a schedule laid out for the whole phase; each is scored on the validation data as
        the run's selection scores (its monitor, last epoch). The winner's weights and
        optimizer (its step count, so its schedule, included) are put back, and
        ``run.phase`` / ``run.phase_optimizer`` / ``run.phase_peak`` become its. Returns
        the winner's history of those epochs, the epoch to continue from, and whether the
        model is still compiled with the winner's optimizer (the last rate tried won), so
        that compiling again, and tracing the training step again, can be skipped.
        """
        half = phase.epochs // 2
        start = setup.model.get_weights()
        trials = []
        for rate in (float(phase.rate), *phase.candidates):
            setup.model.set_weights(start)
            trial = dataclasses.replace(phase, rate=Rate(rate), candidates=())
            run.phase_optimizer = self._optimizer(run, trial)
            self._compile(run, setup, speed)
            history = self._fit(run, setup, half)
            last = {k: v[-1] for k, v in history.items() if v}
            finite = np.isfinite(last.get("loss", np.nan))
            score = run.best.score(last) if finite else None
            trials.append((score, trial, run.phase_optimizer, setup.model.get_weights(), history))
            shown = "no finite score" if score is None else f"{run.monitor} {last[run.monitor]:.4g}"
            run.log(f"kerasft:   lr {rate:g} after {half} epochs: {shown}")
        run.halving = [
            {"lr": float(t[1].rate), "score": None if t[0] is None else float(t[0])} for t in trials
        ]
        ranked = [t for t in trials if t[0] is not None]
        if not ranked:  # every rate diverged: the first trains the whole phase, NaN guard on
            setup.model.set_weights(start)
            run.phase = dataclasses.replace(phase, candidates=())
            run.phase_optimizer = self._optimizer(run, run.phase)
            run.log("kerasft:   no rate gave a finite score; the first trains the whole phase")
            return {}, 0, False
        score, trial, optimizer, weights, history = max(ranked, key=lambda t: t[0])
        setup.model.set_weights(weights)
        run.phase, run.phase_optimizer, run.phase_peak = trial, optimizer, optimizer.peak
        run.log(f"kerasft:   lr {float(trial.rate):g} continues")
        return history, half, optimizer is trials[-1][2]

    @staticmethod
    def _next_trainable(run: Run) -> list | None:
        """What the phase after a head phase trains, so that its features are computed once."""
        phases, index = run.plan.phases, run.phase_index
        if run.phase.trains != "head" or index + 1 >= len(phases):
            return None
        following = phases[index + 1]
        if not following.epochs or following.staged or following.trains in ("head", "adapters"):
            return None
        try:
            return trainable_layers(run.model, run.task.head, following)
        except ValueError:
            return None  # raised again, with its message, when that phase starts


def _unused_layers(run: Run) -> list:
    """Layers the output does not depend on (a backbone's unread pooler), found once per model."""
    if run.unused is not None and run.unused[0] is run.model:
        return run.unused[1]
    unused: list = []
    # KerasHub backbones compute outputs their task may not read; other models' graphs end
    # at their output.
    if run.data.arrays is not None and is_keras_hub_task(run.model):
        sample = data_lib.inputs.take(run.data.arrays[0], np.arange(min(2, run.data.n_train)))
        try:
            unused = surgery.unused_layers(run.model, sample)
        except Exception:  # a model the gradient check cannot run on: train it as configured
            unused = []
    if unused:
        run.log(
            f"kerasft: not training {[lyr.name for lyr in unused]}: the output does not depend "
            "on them"
        )
    run.unused = (run.model, unused)
    return unused


def _stage_record(stage: Any) -> Any:
    """A stage as the result records it: its layers, start epoch and resolved rate."""
    return dataclasses.replace(stage, lr=float(stage.rate))
