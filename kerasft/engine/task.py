"""The task a model is fine-tuned for: its head, its loss, its metrics, what is monitored.

Like KerasHub's ``Task.compile(loss="auto")``, the loss and metrics are read off the head
and the labels: the task (single-label or multi-label classification, regression), the
number of classes and the label encoding come from the data (:mod:`kerasft.data`),
whether the head outputs logits from its activation. The head is rebuilt when its width
or kind does not fit the task (or on request) and kept otherwise, since a pretrained head
on the same classes helps. A KerasHub task keeps its preprocessor and gets a new head the
way KerasHub makes one: a new task of the same class on the same backbone. Everything
later phases and hooks need about the task lives on :class:`Task`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import keras

from kerasft import _keras_compat as compat
from kerasft import surgery
from kerasft._fileio import scratch_directory
from kerasft.callbacks import monitor_mode
from kerasft.data import DataSpec, class_weights
from kerasft.engine.options import TaskOptions

__all__ = [
    "Task",
    "setup_task",
    "add_adapters",
    "loss_and_metrics",
    "copy_model",
    "select_output",
    "is_keras_hub_task",
    "WeightedBinaryCrossentropy",
]


@dataclass
class Task:
    """A model set up for its task.

    Attributes:
        model: the model to fine-tune (a copy, or with a rebuilt head).
        head: its output layer.
        spec: what the labels say (task, classes, encoding, target scale).
        from_logits: whether the head outputs logits.
        head_rebuilt: whether the head was replaced.
        loss: the loss every phase compiles with.
        metrics: the metrics every phase compiles with.
        class_weight: per-class weights for ``fit`` (single-label classification).
        preprocessor: a KerasHub task's preprocessor, run on the data instead of in
            ``fit`` during the run and put back on the returned task.
        thresholds: per-label decision thresholds (multi-label).
        adapters: the trainable state low-rank adapters left (a
            :class:`kerasft.engine.plan.TrainableSnapshot`), for ``"adapters"`` phases.
        lora: the :class:`kerasft.peft.LoraResult` of the adapters added.
    """

    model: keras.Model
    head: keras.layers.Layer
    spec: DataSpec
    from_logits: bool
    head_rebuilt: bool
    loss: Any
    metrics: list
    class_weight: dict[int, float] | None = None
    preprocessor: Any = None
    thresholds: list[float] | None = field(default=None)
    adapters: Any = None
    lora: Any = None

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def label_mode(self) -> str:
        return self.spec.label_mode

    @property
    def kind(self) -> str:
        """``"classification"``, ``"multilabel"`` or ``"regression"``."""
        return self.spec.task

    @property
    def units(self) -> int:
        return self.spec.units

    def monitor_mode(self, monitor: str) -> str:
        """``"min"`` or ``"max"`` for ``monitor``, decided once from the task's metrics."""
        return monitor_mode(monitor, [m for m in self.metrics if not isinstance(m, str)])

    def describe(self) -> str:
        """One line for the run's log."""
        if self.kind == "regression":
            what = f"regression, {self.num_classes} output(s)" + (
                ", targets standardised" if self.spec.target_std is not None else ""
            )
        elif self.kind == "multilabel":
            what = f"{self.num_classes} labels (multi-label)"
        else:
            what = f"{self.num_classes} classes ({self.label_mode} labels)"
        kind = (
            "logits"
            if self.from_logits
            else ("probabilities" if self.kind != "regression" else "values")
        )
        return (
            f"{what}; head {'rebuilt' if self.head_rebuilt else 'kept'} ({self.head.name}, "
            f"{self.units} units, {kind})"
        )


@keras.saving.register_keras_serializable(package="kerasft")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy with a weight on each label's positives (multi-label imbalance).

    Args:
        pos_weight: one weight per label for its positive examples.
        from_logits: whether the model outputs logits. Defaults to `False`.
        name: loss name. Defaults to `"weighted_binary_crossentropy"`.
    """

    def __init__(
        self,
        pos_weight: list[float],
        from_logits: bool = False,
        name: str = "weighted_binary_crossentropy",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        y_true = keras.ops.cast(y_true, y_pred.dtype)
        per = keras.losses.binary_crossentropy(
            y_true[..., None], y_pred[..., None], from_logits=self.from_logits
        )
        weights = 1.0 + (keras.ops.convert_to_tensor(self.pos_weight, y_pred.dtype) - 1.0) * y_true
        return keras.ops.mean(per * weights, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "pos_weight": self.pos_weight,
            "from_logits": self.from_logits,
        }


def loss_and_metrics(
    label_mode: str,
    from_logits: bool,
    *,
    label_smoothing: float = 0.0,
    focal: bool = False,
    alpha: Any = None,
) -> tuple[Any, list]:
    """The loss and metrics that match the labels and the head.

    ``label_smoothing`` and ``focal`` (focal cross-entropy, with per-class ``alpha``
    weights) apply to one-hot, binary and multi-label targets (sparse labels are fed
    as one-hot rows when either is asked for).
    """
    ls = float(label_smoothing)
    if label_mode == "one_hot":
        loss = (
            keras.losses.CategoricalFocalCrossentropy(
                alpha=0.25 if alpha is None else alpha, from_logits=from_logits, label_smoothing=ls
            )
            if focal
            else keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=ls)
        )
        return loss, [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if label_mode in ("binary", "multi_hot"):
        loss = (
            keras.losses.BinaryFocalCrossentropy(
                apply_class_balancing=alpha is not None,
                alpha=0.25 if alpha is None else float(alpha),
                from_logits=from_logits,
                label_smoothing=ls,
            )
            if focal
            else keras.losses.BinaryCrossentropy(from_logits=from_logits, label_smoothing=ls)
        )
        metrics = [
            keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0 if from_logits else 0.5)
        ]
        if label_mode == "multi_hot":
            metrics.append(keras.metrics.AUC(name="auc", multi_label=True, from_logits=from_logits))
        return loss, metrics
    if label_mode == "continuous":
        return (
            keras.losses.MeanSquaredError(),
            [
                keras.metrics.MeanAbsoluteError(name="mae"),
                keras.metrics.RootMeanSquaredError(name="rmse"),
            ],
        )
    return (
        keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def is_keras_hub_task(model: Any) -> bool:
    """Whether ``model`` is a KerasHub task (``keras_hub.models.Task``)."""
    hub = sys.modules.get("keras_hub")
    return hub is not None and isinstance(model, hub.models.Task)


def copy_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same weights and trainable flags.

    A KerasHub task is rebuilt as its own class from its config and shares the original's
    preprocessor (which has no weights: its vocabulary lives in assets, not in the config);
    a task that its config does not describe fully (Keras's LoRA on, int8 layers) is
    copied through its own saving (``save`` / ``load_model``) instead.

    Raises:
        ValueError: when Keras cannot clone the model (unregistered custom layers).
    """
    if is_keras_hub_task(model):
        clone = _copy_keras_hub_task(model)
    else:
        try:
            clone = keras.models.clone_model(model)
            clone.set_weights(model.get_weights())
            surgery.settle_adapted_layers(clone)
        except Exception as e:
            raise ValueError(
                f"kerasft could not copy model {model.name!r} ({type(e).__name__}: {e}). "
                "HINT: register custom layers with keras.saving.register_keras_serializable, "
                "or pass copy=False to fine-tune the model in place."
            ) from None
    for (_, a), (_, b) in zip(surgery.iter_layers(model), surgery.iter_layers(clone)):
        b.trainable = a.trainable
        if isinstance(a, _LOOKUPS):  # vocabularies live in lookup tables, not in weights
            b.set_vocabulary(a.get_vocabulary())
    return clone


_LOOKUPS = (keras.layers.TextVectorization, keras.layers.StringLookup, keras.layers.IntegerLookup)


def _copy_keras_hub_task(model: keras.Model) -> keras.Model:
    # From the config and weights in memory: about 1 s faster than a saving round trip for
    # a 23M-parameter BERT, which is most of a trial's fixed cost in kerasft.search.
    try:
        config = _completed_config(model)
        if config.get("preprocessor") is not None:
            config["preprocessor"] = model.preprocessor
        clone = type(model).from_config(config)
        clone.set_weights(model.get_weights())  # raises when the config left weights out
        surgery.settle_adapted_layers(clone)
        return clone
    except Exception:  # anything the config does not rebuild: the slower, complete copy
        pass
    with scratch_directory("copy") as tmp:  # swept after a kill
        path = os.path.join(tmp, "task.keras")
        model.save(path)
        return keras.models.load_model(path, compile=False)


def _completed_config(model: keras.Model) -> dict:
    """A KerasHub task's config with the arguments its backbone's config leaves out.

    KerasHub 0.32's ``EfficientNetBackbone.get_config`` omits ``num_features``: rebuilt
    with the default, the top convolution gets another width and no weights fit
    (``Layer 'top_conv' expected 1 variables``). Its value is read back from that layer.
    """
    config = model.get_config()
    backbone = getattr(model, "backbone", None)
    inner = (config.get("backbone") or {}).get("config")
    if (
        type(backbone).__name__ == "EfficientNetBackbone"
        and isinstance(inner, dict)
        and "num_features" not in inner
    ):
        filters = backbone.get_layer("top_conv").filters
        inner["num_features"] = int(round(filters / backbone.stackwise_width_coefficients[-1]))
    return config


def select_output(model: keras.Model, head: str | None) -> keras.Model:
    """The single-output model to fine-tune: ``model``, or its output named ``head``.

    Raises:
        ValueError: several outputs and no ``head``, or a ``head`` that names no output
            (both list the outputs).
    """
    names = [compat.producer(t).name for t in model.outputs]
    if head is None:
        if len(names) > 1:
            raise ValueError(
                f"Model {model.name!r} has {len(names)} outputs {names}; kerasft fine-tunes one. "
                f"HINT: pass head= one of {names} (the returned model keeps that output only)."
            )
        return model
    if head not in names:
        raise ValueError(
            f"Argument `head={head!r}` names no output of model {model.name!r}. "
            f"Outputs are: {names}"
        )
    if len(names) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[names.index(head)], name=model.name)


def _rebuild_keras_hub_task(task: Any, units: int, activation: Any) -> Any:
    """A new task of the same class and backbone with ``units`` outputs (KerasHub's way)."""
    config = task.get_config()
    keep = {
        k: v
        for k, v in config.items()
        if k not in ("backbone", "preprocessor", "num_classes", "activation", "trainable", "dtype")
    }
    return type(task)(
        backbone=task.backbone, preprocessor=None, num_classes=units, activation=activation, **keep
    )


def _needs_new_head(model: keras.Model, spec: DataSpec) -> bool:
    """Whether the head's width or kind does not fit the task."""
    units = surgery.head_units(surgery.find_head(model))
    if units != spec.units:
        return True
    activation = surgery.head_activation(model)
    if spec.task == "regression":
        return activation != "linear"
    if spec.task == "multilabel":
        return activation == "softmax"
    return False


def _head_activation(options: TaskOptions, old: str, spec: DataSpec) -> Any:
    if options.head_activation is not None:
        return options.head_activation
    if spec.task == "regression" or old == "linear":
        return "linear"
    return "sigmoid" if spec.task == "multilabel" or spec.units == 1 else "softmax"


def add_adapters(task: Task, recipe: Any) -> None:
    """Add the low-rank adapters a LoRA/DoRA recipe asks for (``kerasft.peft.apply_lora``)."""
    from kerasft import peft
    from kerasft.engine.plan import TrainableSnapshot

    result = peft.apply_lora(
        task.model,
        rank=recipe.lora_rank,
        alpha=recipe.lora_alpha,
        dropout=recipe.lora_dropout,
        targets=recipe.lora_targets,
        method=recipe.adapters,
        train=tuple(recipe.lora_train),
        quantize=recipe.quantize,
    )
    task.model, task.lora = result.model, result
    task.head = surgery.find_head(result.model)
    task.adapters = TrainableSnapshot.take(result.model)


def setup_task(
    model: keras.Model, spec: DataSpec, options: TaskOptions, *, seed: int, preprocessor: Any = None
) -> Task:
    """Rebuild ``model``'s head if it does not fit the task; pick loss, metrics, class weights.

    Raises:
        ValueError: ``new_head=False`` with a head that cannot fit the task, a head
            activation from which logits cannot be told from probabilities, class
            weights that do not fit the task.
    """
    head = surgery.find_head(model)
    rebuild = options.new_head if options.new_head is not None else _needs_new_head(model, spec)
    if options.new_head is False and _needs_new_head(model, spec):
        raise ValueError(
            f"Argument `new_head=False`, but the head {head.name!r} has "
            f"{surgery.head_units(head)} units ({surgery.head_activation(model)}) and the data "
            f"has {spec.num_classes} {'outputs' if spec.task == 'regression' else 'classes'} "
            f"({spec.label_mode} labels). Pass new_head=None to rebuild it."
        )
    if rebuild:
        activation = _head_activation(options, surgery.head_activation(model), spec)
        if is_keras_hub_task(model):
            model = _rebuild_keras_hub_task(
                model, spec.units, None if activation == "linear" else activation
            )
        else:
            model = surgery.replace_head(
                model, spec.units, activation=activation, dropout=options.head_dropout, seed=seed
            )
    head = surgery.find_head(model)
    from_logits = options.from_logits
    if from_logits is None:
        activation = surgery.head_activation(model)
        if activation not in ("linear", "softmax", "sigmoid"):
            raise ValueError(
                f"The head of model {model.name!r} has activation {activation!r}; kerasft cannot "
                "tell whether it outputs logits. Pass from_logits=True or False."
            )
        from_logits = activation == "linear" and spec.task != "regression"
    weights = class_weights(spec, options.class_weight)
    focal = isinstance(options.loss, str) and options.loss == "focal"
    alpha = None
    if focal and weights is not None:  # focal alpha carries the class weights
        alpha = [weights[i] / sum(weights.values()) for i in range(spec.num_classes)]
        alpha = alpha if spec.label_mode == "one_hot" else None
        weights = None if spec.label_mode == "one_hot" else weights
    auto_loss, auto_metrics = loss_and_metrics(
        spec.label_mode,
        bool(from_logits),
        label_smoothing=options.label_smoothing,
        focal=focal,
        alpha=alpha,
    )
    if weights is not None and spec.task == "multilabel" and not focal:
        auto_loss = WeightedBinaryCrossentropy(
            [weights[i] for i in range(spec.num_classes)], bool(from_logits)
        )
        weights = None  # in the loss, not in fit
    explicit = options.loss is not None and not focal
    return Task(
        model=model,
        head=head,
        spec=spec,
        from_logits=bool(from_logits),
        head_rebuilt=bool(rebuild),
        loss=options.loss if explicit else auto_loss,
        metrics=list(options.metrics) if options.metrics else auto_metrics,
        class_weight=weights,
        preprocessor=preprocessor,
    )
