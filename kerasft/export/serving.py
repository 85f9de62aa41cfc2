"""What an export of a model takes and serves, read off the Keras model.

Both export formats serve the same thing: the model's inputs (raw strings for a KerasHub
text task, whose preprocessor runs inside the export) and its output made into class
probabilities, by a kind read off the classifier (:func:`output_kind`).
:func:`served_probabilities` computes those probabilities with Keras, the reference
every export is checked against (:mod:`kerasft.export.savedmodel` for a SavedModel,
:mod:`kerasft.export.tflite` for a TFLite file).
"""

from __future__ import annotations

import re
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft import surgery

__all__ = [
    "input_names",
    "input_specs",
    "output_kind",
    "served_probabilities",
    "takes_text",
    "task_preprocessor",
    "to_probabilities",
]

# How the model's output becomes probabilities. "softmax": already probabilities;
# "logits": softmax them; "sigmoid": one probability p of class 1, served as [1 - p, p];
# "binary_logits": one logit, sigmoid then [1 - p, p].
_OUTPUT_KINDS = ("softmax", "logits", "sigmoid", "binary_logits")


def task_preprocessor(model: keras.Model) -> Any:
    """A KerasHub task's preprocessor: its export takes what the task's `predict` takes."""
    import sys

    hub = sys.modules.get("keras_hub")
    if hub is None or not isinstance(model, hub.models.Task):
        return None
    return getattr(model, "preprocessor", None)


def takes_text(model: keras.Model) -> bool:
    """Whether `model` is a KerasHub text task with its tokenizer: its export takes raw strings."""
    import sys

    hub = sys.modules.get("keras_hub")
    return (
        hub is not None
        and isinstance(model, hub.models.TextClassifier)
        and task_preprocessor(model) is not None
    )


def input_specs(model: keras.Model) -> list[tf.TensorSpec]:
    """The inputs an export of `model` takes: one spec per input, named for serving."""
    if takes_text(model):
        return [tf.TensorSpec((None,), dtype=tf.string, name="text")]
    inputs = getattr(model, "inputs", None)
    if not model.built or not inputs:
        raise ValueError(
            f"Argument `model` ({model.name!r}) must be a built Functional or Sequential "
            "model with known inputs. HINT: build subclassed models into a Functional "
            "model: keras.Model(inp, model(inp)) with inp = keras.Input(shape)."
        )
    specs, seen = [], set()
    for i, tensor in enumerate(inputs):
        # Signature input names become the keys serving code sends (saved_model_cli
        # --inputs name=...), so keep the model's input names, made valid op names.
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", tensor.name or f"input_{i}")
        if not re.match(r"[A-Za-z0-9.]", name):
            name = f"input{name}"
        while name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        specs.append(
            tf.TensorSpec((None,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, name=name)
        )
    return specs


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    outputs = model.outputs
    if len(outputs) != 1:
        raise ValueError(
            f"export_model supports models with one output; model {model.name!r} has "
            f"{len(outputs)}."
        )
    if len(outputs[0].shape) != 2:
        raise ValueError(
            f"export_model needs a classifier output of shape (batch, num_classes); model "
            f"{model.name!r} outputs shape {tuple(outputs[0].shape)}."
        )
    return compat.producer(outputs[0])


def output_kind(model: keras.Model) -> tuple[str, keras.layers.Layer | None]:
    """Tell whether the model outputs probabilities or logits, from its classifier.

    The classifier is found as :func:`kerasft.surgery.output_chain` finds it: a Dense
    layer or a 1x1 convolution (MobileNet, MobileNetV3), followed only by weightless
    layers (Activation, Softmax, Dropout, Flatten, Reshape, pooling), whose last
    activation decides. Returns the kind and the `Dense` layer whose input is the
    feature vector, for the `features` endpoint (`None` when there is no such layer
    in `model` itself: a convolution head, a nested model's head, or an activation
    after a non-linear Dense).
    """
    layer = _output_layer(model)
    if isinstance(layer, keras.Model):
        kind, _ = output_kind(layer)
        return kind, None
    try:
        head, tail = surgery.output_chain(model)
    except ValueError:
        head, tail = None, []
    if head is None:
        if isinstance(layer, keras.layers.Softmax) or (
            isinstance(layer, keras.layers.Activation)
            and layer.activation is keras.activations.softmax
        ):
            return "softmax", None
        raise ValueError(
            f"Cannot tell whether model {model.name!r} outputs probabilities or logits: its "
            f"last layer is {layer.name!r} ({type(layer).__name__}). export_model recognizes a "
            "final Dense or 1x1 convolution classifier (softmax, sigmoid with 1 unit, or "
            "linear logits), possibly followed by Activation, Softmax, Dropout, Flatten or "
            "Reshape layers, or a final Softmax/Activation('softmax') layer. HINT: end the "
            "model with one of these."
        )
    units = surgery.head_units(head)
    activation = surgery.head_activation(model)
    described = f"{type(head).__name__}({units})"
    if activation == "softmax":
        kind = "softmax"
    elif activation == "linear":
        kind = "binary_logits" if units == 1 else "logits"
    elif activation == "sigmoid" and units == 1:
        kind = "sigmoid"
    elif activation == "sigmoid":
        raise ValueError(
            f"The last layer of model {model.name!r}, {head.name!r}, is {described} "
            "with a sigmoid: a multi-label head. export_model serves single-label "
            "classifiers (one class per input). HINT: use softmax for mutually "
            "exclusive classes."
        )
    else:
        raise ValueError(
            f"The last layer of model {model.name!r}, {head.name!r}, is "
            f"{type(head).__name__} with activation {activation!r}, which makes neither "
            "probabilities nor logits. HINT: end the model with Dense(num_classes, "
            "activation='softmax') or a linear Dense (logits)."
        )
    # `load_for_finetuning` rebuilds the head from the features endpoint as a Dense
    # carrying the output activation: that is exact only for such a Dense.
    activated_later = any(
        isinstance(t, (keras.layers.Activation, keras.layers.Softmax)) for t in tail
    )
    exact = isinstance(head, keras.layers.Dense) and (
        not activated_later or head.activation is keras.activations.linear
    )
    reshaped = any(
        not isinstance(t, (keras.layers.Activation, keras.layers.Softmax, keras.layers.Dropout))
        for t in tail
    )
    return kind, head if exact and not reshaped else None


def to_probabilities(outputs: tf.Tensor, kind: str) -> tf.Tensor:
    """The model's `outputs` of `kind` (see `output_kind`) as float32 class probabilities."""
    outputs = tf.cast(outputs, tf.float32)  # mixed-precision models emit float16
    if kind == "softmax":
        return outputs
    if kind == "logits":
        return tf.nn.softmax(outputs, axis=-1)
    p = outputs if kind == "sigmoid" else tf.sigmoid(outputs)
    return tf.concat([1.0 - p, p], axis=-1)


def served_probabilities(model: keras.Model, x: Any, *, batch_size: int = 256) -> np.ndarray:
    """The `probabilities` an export of `model` serves for `x`, computed by Keras.

    The model's output made into class probabilities as `export_model` does it: passed
    through, softmaxed (logits) or made two columns `[1 - p, p]` (a binary head).
    """
    kind, _ = output_kind(model)
    outputs = model.predict(x, batch_size=batch_size, verbose=0)
    return to_probabilities(tf.constant(outputs), kind).numpy()


def input_names(model: keras.Model) -> list[str]:
    """The names of the inputs an export of `model` takes, in the model's order."""
    return [s.name for s in input_specs(model)]
