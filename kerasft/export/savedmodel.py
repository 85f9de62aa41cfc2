"""Export a fine-tuned classifier as a SavedModel or a TFLite file that serves raw inputs.

`export_model` writes a TensorFlow SavedModel (through Keras 3's `keras.export.ExportArchive`,
the machinery behind `model.export(..., format="tf_saved_model")`) or a TFLite flatbuffer
returning class probabilities and the top class (and its name), plus, in a SavedModel,
`kerasft.json` metadata and a `features` endpoint that `kerasft.export.loading` reads
back. This module also defines that on-disk layout: the file and endpoint names below,
and `read_export_metadata`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import tempfile
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft import surgery
from kerasft._fileio import atomic_directory, atomic_file

__all__ = [
    "export_model",
    "read_export_metadata",
    "FORMATS",
    "QUANTIZE",
    "METADATA_FILE",
    "CLASS_NAMES_ASSET",
    "SERVE_ENDPOINT",
    "FEATURES_ENDPOINT",
]

FORMATS = ("saved_model", "tflite")
QUANTIZE = (None, "dynamic")
METADATA_FILE = "kerasft.json"
CLASS_NAMES_ASSET = "class_names.txt"
SERVE_ENDPOINT = "serve"
FEATURES_ENDPOINT = "features"

# How the model's output becomes probabilities. "softmax": already probabilities;
# "logits": softmax them; "sigmoid": one probability p of class 1, served as [1 - p, p];
# "binary_logits": one logit, sigmoid then [1 - p, p].
_OUTPUT_KINDS = ("softmax", "logits", "sigmoid", "binary_logits")


def export_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    format: str = "saved_model",
    class_names: Sequence[str] | None = None,
    quantize: str | None = None,
    overwrite: bool = False,
) -> str:
    """Export a classifier as a SavedModel or a TFLite file that serves raw inputs.

    The exported function takes what the model takes (for the shipped MNIST CNN, raw
    `0..255` pixels of shape `(batch, 28, 28, 1)`) and returns a dict:

    - `"probabilities"`: `float32` `(batch, num_classes)`. A softmax output is passed
      through; logits (a final `Dense` without activation) get a softmax; a 1-unit
      sigmoid (or linear) binary head becomes two columns `[1 - p, p]`.
    - `"class_id"`: `int64` `(batch,)`, the most probable class.
    - `"class_name"`: `string` `(batch,)`, only when `class_names` is given.

    A SavedModel directory has the endpoints `serve` (also `serving_default`, for
    TF-Serving) and, when the classification layer can be located in the graph,
    `features` (raw input -> input of that layer), used by `load_for_finetuning`. The
    `class_name` output looks names up in `assets/class_names.txt` (one per line), and
    `kerasft.json` records the input spec, output kind, class names and versions. A TFLite
    export (`path` ending in `.tflite`) holds the `serve` signature only, with class
    names embedded as constants; `quantize="dynamic"` stores weights as int8
    (dynamic-range quantization), about 4x smaller.

    The export is written to a temporary path beside `path` and renamed into place when
    complete.

    Example:

    ```python
    model = keras.models.load_model("saved_models/mnist_cnn.keras")
    path = export_model(model, "/tmp/mnist_export", class_names=[str(i) for i in range(10)])
    reloaded = tf.saved_model.load(path)  # keep a reference while calling it
    served = reloaded.serve(x)            # x: float32 (n, 28, 28, 1), raw 0..255
    served["class_name"]                  # e.g. [b"7", b"2", ...]
    export_model(model, "/tmp/mnist.tflite", format="tflite", quantize="dynamic")
    ```

    Args:
        model: a built Functional or Sequential Keras classifier with one input and one
            output of shape `(batch, num_classes)`.
        path: destination directory (`"saved_model"`) or file ending in `.tflite`.
        format: `"saved_model"` or `"tflite"`. Defaults to `"saved_model"`.
        class_names: one name per class, in class-id order; names must be unique,
            non-empty and free of line breaks. Defaults to `None` (no `class_name` output).
        quantize: `None` for float weights or `"dynamic"` for dynamic-range quantized
            weights; `"dynamic"` applies to `format="tflite"` only. Defaults to `None`.
        overwrite: replace an existing export at `path`. Defaults to `False`.

    Returns:
        The absolute path of the export.

    Raises:
        TypeError: if `model` is not a Keras model or `class_names` not a list of str.
        ValueError: for an invalid argument, a model whose output kind cannot be told
            (probabilities or logits), or a `path` that is an existing file for a
            SavedModel (or an existing directory for TFLite).
        FileExistsError: if `path` exists and `overwrite` is `False`.
    """
    if format not in FORMATS:
        raise ValueError(
            f"Argument `format` must be one of {list(FORMATS)}. Received: format={format!r}"
        )
    if quantize not in QUANTIZE:
        raise ValueError(
            f"Argument `quantize` must be one of {list(QUANTIZE)}. Received: quantize={quantize!r}"
        )
    if quantize is not None and format != "tflite":
        raise ValueError(
            f"Argument `quantize={quantize!r}` applies to format='tflite' only. "
            f"Received: format={format!r}. HINT: a SavedModel keeps float weights; "
            "pass quantize=None."
        )
    path = os.path.abspath(os.fspath(path))
    if format == "tflite" and not path.endswith(".tflite"):
        raise ValueError(
            "Argument `path` must end with '.tflite' for format='tflite'. "
            f"Received: path={path!r}"
        )
    if format == "saved_model" and path.endswith((".tflite", ".keras", ".h5")):
        raise ValueError(
            "Argument `path` names a directory for format='saved_model', but ends with "
            f"{os.path.splitext(path)[1]!r}. Received: path={path!r}. HINT: use a plain "
            "directory name, or format='tflite' for a .tflite file."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `model` must be a keras.Model. Received: model of type {type(model).__name__}"
        )
    spec = _input_spec(model)
    kind, head = _output_kind(model)
    num_classes = _num_classes(model, kind)
    names = _check_class_names(class_names, num_classes)
    # Fail before any work when the destination is unusable (the atomic writers check
    # again, but only after the slow tracing and conversion).
    _check_destination(path, overwrite=overwrite, is_dir=format == "saved_model")

    metadata = {
        "format": format,
        "kerasft_version": _version("kerasft"),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "model_name": model.name,
        "input": {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype.name},
        "output_kind": kind,
        "num_classes": num_classes,
        "class_names": names,
        "outputs": ["probabilities", "class_id"] + (["class_name"] if names else []),
    }
    if format == "saved_model":
        features = _features_model(model, head)
        metadata["endpoints"] = [SERVE_ENDPOINT, "serving_default"]
        metadata["features_endpoint"] = FEATURES_ENDPOINT if features is not None else None
        if features is not None:
            metadata["endpoints"].append(FEATURES_ENDPOINT)
            metadata["features_dim"] = int(features.outputs[0].shape[-1])
            metadata["head"] = head.name
        metadata["class_names_file"] = f"assets/{CLASS_NAMES_ASSET}" if names else None
        with atomic_directory(path, overwrite=overwrite) as tmp:
            _write_saved_model(model, tmp, spec, kind, names, features, table_lookup=True)
            with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=2)
                f.write("\n")
        return path

    metadata["quantize"] = quantize
    with tempfile.TemporaryDirectory(prefix="kerasft-tflite-") as staging:
        _write_saved_model(model, staging, spec, kind, names, None, table_lookup=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            staging, signature_keys=[SERVE_ENDPOINT]
        )
        if quantize == "dynamic":
            # Optimize.DEFAULT with no representative dataset is dynamic-range
            # quantization: int8 weights, float activations.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with atomic_file(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
    return path


def read_export_metadata(path: str | os.PathLike) -> dict:
    """Return the `kerasft.json` metadata of a SavedModel written by `export_model`.

    Args:
        path: the SavedModel directory.

    Returns:
        The metadata dict: `input` (name, shape, dtype), `output_kind`, `num_classes`,
        `class_names`, `endpoints`, `features_endpoint`, library versions.

    Raises:
        ValueError: if `path` is not a directory holding `kerasft.json`.
    """
    path = os.fspath(path)
    file = os.path.join(path, METADATA_FILE)
    if not os.path.isfile(file):
        raise ValueError(
            f"No {METADATA_FILE} in {path!r}: it was not exported by kerasft.export_model."
        )
    with open(file, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------
# Helpers


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_destination(path: str, *, overwrite: bool, is_dir: bool) -> None:
    if is_dir and os.path.isfile(path):
        raise ValueError(
            f"Argument `path` must be a directory path, but {path!r} is an existing file. "
            "Choose a new directory name."
        )
    if not is_dir and os.path.isdir(path):
        raise ValueError(
            f"Argument `path` must be a file path, but {path!r} is an existing directory."
        )
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Argument `path`: {path!r} already exists. Pass overwrite=True to replace it, "
            "or choose a new path."
        )


def _input_spec(model: keras.Model) -> tf.TensorSpec:
    inputs = getattr(model, "inputs", None)
    if not model.built or not inputs:
        raise ValueError(
            f"Argument `model` ({model.name!r}) must be a built Functional or Sequential "
            "model with known inputs. HINT: build subclassed models into a Functional "
            "model: keras.Model(inp, model(inp)) with inp = keras.Input(shape)."
        )
    if len(inputs) != 1:
        raise ValueError(
            f"export_model supports models with one input; model {model.name!r} has "
            f"{len(inputs)}: {[t.name for t in inputs]}"
        )
    tensor = inputs[0]
    # Signature input names become the keys serving code sends (saved_model_cli
    # --inputs name=...), so keep the model's input name, made a valid op name.
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", tensor.name or "inputs")
    if not re.match(r"[A-Za-z0-9.]", name):
        name = f"input{name}"
    return tf.TensorSpec((None,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, name=name)


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


def _output_kind(model: keras.Model) -> tuple[str, keras.layers.Layer | None]:
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
        kind, _ = _output_kind(layer)
        return kind, None
    try:
        head, tail = surgery.output_chain(model)
    except ValueError:
        head, tail = None, []
    if head is None:
        if isinstance(layer, keras.layers.Softmax) or (
            isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.softmax
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
    activated_later = any(isinstance(t, (keras.layers.Activation, keras.layers.Softmax)) for t in tail)
    exact = isinstance(head, keras.layers.Dense) and (
        not activated_later or head.activation is keras.activations.linear
    )
    reshaped = any(not isinstance(t, (keras.layers.Activation, keras.layers.Softmax, keras.layers.Dropout))
                   for t in tail)
    return kind, head if exact and not reshaped else None


def _num_classes(model: keras.Model, kind: str) -> int:
    width = model.outputs[0].shape[-1]
    if width is None:
        raise ValueError(f"Model {model.name!r} has an output of unknown width.")
    if kind in ("sigmoid", "binary_logits"):
        return 2
    return int(width)


def _check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not isinstance(
        class_names, (Sequence, np.ndarray)
    ):
        raise TypeError(
            "Argument `class_names` must be a list of strings. "
            f"Received: class_names={class_names!r}"
        )
    names = list(class_names)
    bad = [n for n in names if not isinstance(n, str) or not n or "\n" in n or "\r" in n]
    if bad:
        raise ValueError(
            "Argument `class_names` must hold non-empty strings without line breaks "
            f"(they are written one per line to {CLASS_NAMES_ASSET}). Invalid: {bad!r}"
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"Argument `class_names` has duplicates: {dupes}")
    if len(names) != num_classes:
        raise ValueError(
            f"Argument `class_names` must have one name per class: the model has "
            f"{num_classes} classes. Received {len(names)} names: {names!r}"
        )
    return names


def _features_model(model: keras.Model, head: keras.layers.Layer | None) -> keras.Model | None:
    """The sub-model from the raw input to the input of the classifying Dense layer."""
    if head is None or head not in model.layers:
        return None
    # The input of the call that made the output: `head.input` is the first call's,
    # and feature caching replays the graph (more calls of the same layer).
    features = surgery.classifier_input(model)
    if features is None or len(features.shape) != 2:
        return None
    return keras.Model(model.inputs, features, name=f"{model.name}_features")


def _to_probabilities(outputs: tf.Tensor, kind: str) -> tf.Tensor:
    outputs = tf.cast(outputs, tf.float32)  # mixed-precision models emit float16
    if kind == "softmax":
        return outputs
    if kind == "logits":
        return tf.nn.softmax(outputs, axis=-1)
    p = outputs if kind == "sigmoid" else tf.sigmoid(outputs)
    return tf.concat([1.0 - p, p], axis=-1)


def _write_saved_model(
    model: keras.Model,
    directory: str,
    spec: tf.TensorSpec,
    kind: str,
    names: list[str] | None,
    features: keras.Model | None,
    *,
    table_lookup: bool,
) -> None:
    """Write the serving SavedModel into the existing, empty `directory`."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    lookup = None
    with tempfile.TemporaryDirectory(prefix="kerasft-assets-") as assets:
        if names and table_lookup:
            # A table initialized from a text file makes that file a SavedModel asset:
            # tf.saved_model.save copies it to assets/ and the served names come from it.
            names_file = os.path.join(assets, CLASS_NAMES_ASSET)
            with open(names_file, "w", encoding="utf-8") as f:
                f.write("\n".join(names) + "\n")
            table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    names_file,
                    key_dtype=tf.int64,
                    key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                    value_dtype=tf.string,
                    value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                ),
                default_value="",
            )
            archive.track(table)
            lookup = table.lookup
        elif names:
            # TFLite has no file-backed tables; a constant gather converts to builtins.
            constant = tf.constant(names)
            lookup = lambda ids: tf.gather(constant, ids)  # noqa: E731

        def serve(inputs):
            probabilities = _to_probabilities(model(inputs, training=False), kind)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            result = {"probabilities": probabilities, "class_id": class_id}
            if lookup is not None:
                result["class_name"] = lookup(class_id)
            return result

        archive.add_endpoint(SERVE_ENDPOINT, serve, input_signature=[spec])
        if features is not None:
            archive.add_endpoint(
                FEATURES_ENDPOINT,
                lambda inputs: {"features": tf.cast(features(inputs, training=False), tf.float32)},
                input_signature=[spec],
            )
        archive.write_out(directory, verbose=False)
