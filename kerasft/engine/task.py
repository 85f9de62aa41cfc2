"""The task a model is fine-tuned for: its head, its loss, its metrics, what is monitored.

Like KerasHub's ``Task.compile(loss="auto")``, the loss and metrics are read off the
head and the labels: the number of classes and the label encoding come from the data
(:mod:`kerasft.data`), whether the head outputs logits from its activation. The head is
rebuilt when the class count differs (or on request) and kept otherwise, since a
pretrained head on the same classes helps. Everything later phases and hooks need
about the task lives on :class:`Task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from kerasft import surgery
from kerasft.callbacks import monitor_mode
from kerasft.data import DataSpec
from kerasft.engine.options import TaskOptions

__all__ = ["Task", "setup_task", "loss_and_metrics", "copy_model"]


@dataclass
class Task:
    """A model set up for its task.

    Attributes:
        model: the model to fine-tune (a copy, or with a rebuilt head).
        head: its output Dense layer.
        num_classes: classes of the task.
        label_mode: ``"sparse"``, ``"one_hot"`` or ``"binary"``.
        from_logits: whether the head outputs logits.
        head_rebuilt: whether the head was replaced.
        loss: the loss every phase compiles with.
        metrics: the metrics every phase compiles with.
    """

    model: keras.Model
    head: keras.layers.Layer
    num_classes: int
    label_mode: str
    from_logits: bool
    head_rebuilt: bool
    loss: Any
    metrics: list

    @property
    def units(self) -> int:
        return 1 if self.label_mode == "binary" else self.num_classes

    def monitor_mode(self, monitor: str) -> str:
        """``"min"`` or ``"max"`` for ``monitor``, decided once from the task's metrics."""
        return monitor_mode(monitor, [m for m in self.metrics if not isinstance(m, str)])


def loss_and_metrics(label_mode: str, from_logits: bool) -> tuple[Any, list]:
    """The cross-entropy and accuracy metric that match the labels and the head."""
    if label_mode == "one_hot":
        return (keras.losses.CategoricalCrossentropy(from_logits=from_logits),
                [keras.metrics.CategoricalAccuracy(name="accuracy")])
    if label_mode == "binary":
        return (keras.losses.BinaryCrossentropy(from_logits=from_logits),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0 if from_logits else 0.5)])
    return (keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
            [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def copy_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same weights and trainable flags.

    Raises:
        ValueError: when Keras cannot clone the model (unregistered custom layers).
    """
    try:
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    except Exception as e:
        raise ValueError(
            f"kerasft could not copy model {model.name!r} ({type(e).__name__}: {e}). "
            "HINT: register custom layers with keras.saving.register_keras_serializable, "
            "or pass copy=False to fine-tune the model in place."
        ) from None
    for (_, a), (_, b) in zip(surgery.iter_layers(model), surgery.iter_layers(clone)):
        b.trainable = a.trainable
    return clone


def setup_task(model: keras.Model, spec: DataSpec, options: TaskOptions, *, copy: bool, seed: int) -> Task:
    """Copy ``model`` if asked, rebuild its head if the classes differ, pick loss and metrics.

    Raises:
        ValueError: ``new_head=False`` with a class count the head cannot output, or a
            head activation from which logits cannot be told from probabilities.
    """
    head = surgery.find_head(model)
    units = 1 if spec.label_mode == "binary" else spec.num_classes
    rebuild = options.new_head if options.new_head is not None else head.units != units
    if options.new_head is False and head.units != units:
        raise ValueError(
            f"Argument `new_head=False`, but the head {head.name!r} has {head.units} units and "
            f"the data has {spec.num_classes} classes ({spec.label_mode} labels). Pass "
            "new_head=None to rebuild it."
        )
    old_activation = surgery.head_activation(model)
    if copy:
        model = copy_model(model)
    if rebuild:
        activation = options.head_activation
        if activation is None:
            activation = "linear" if old_activation == "linear" else ("sigmoid" if units == 1 else "softmax")
        model = surgery.replace_head(model, units, activation=activation, dropout=options.head_dropout, seed=seed)
    head = surgery.find_head(model)
    from_logits = options.from_logits
    if from_logits is None:
        activation = surgery.head_activation(model)
        if activation not in ("linear", "softmax", "sigmoid"):
            raise ValueError(
                f"The head of model {model.name!r} has activation {activation!r}; kerasft cannot "
                "tell whether it outputs logits. Pass from_logits=True or False."
            )
        from_logits = activation == "linear"
    auto_loss, auto_metrics = loss_and_metrics(spec.label_mode, from_logits)
    return Task(
        model=model, head=head, num_classes=spec.num_classes, label_mode=spec.label_mode,
        from_logits=bool(from_logits), head_rebuilt=bool(rebuild),
        loss=options.loss if options.loss is not None else auto_loss,
        metrics=list(options.metrics) if options.metrics else auto_metrics,
    )
