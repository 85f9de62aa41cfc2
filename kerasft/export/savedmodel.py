"""Export a fine-tuned classifier as a SavedModel or a TFLite file that serves raw inputs.

`export_model` writes a TensorFlow SavedModel (through Keras 3's `keras.export.ExportArchive`,
the machinery behind `model.export(..., format="tf_saved_model")`) or a TFLite flatbuffer
returning class probabilities and the top class (and its name), with `kerasft.json`
metadata and a model card (`kerasft.export.card`); a SavedModel also gets a `features`
endpoint that `kerasft.export.loading` reads back, and a TFLite file is checked in the
LiteRT interpreter (`kerasft.export.tflite`). This module also defines that on-disk
layout: the file and endpoint names below, `export_files` and `read_export_metadata`.
What an export takes and serves is read off the model by `kerasft.export.serving`
(`served_probabilities` and `input_names` still import from here).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import surgery
from kerasft._fileio import atomic_directory, atomic_file, scratch_directory
from kerasft.export import card as card_lib
from kerasft.export import tflite
from kerasft.export.serving import (
    input_names,
    input_specs,
    output_kind,
    served_probabilities,
    takes_text,
    task_preprocessor,
    to_probabilities,
)
from kerasft.export.tflite import IO_DTYPES, QUANTIZE

__all__ = [
    "export_model",
    "export_files",
    "read_export_metadata",
    "check_destination",
    "is_export",
    "served_probabilities",
    "input_names",
    "ExportedPath",
    "FORMATS",
    "QUANTIZE",
    "IO_DTYPES",
    "METADATA_FILE",
    "CLASS_NAMES_ASSET",
    "SERVE_ENDPOINT",
    "FEATURES_ENDPOINT",
]

FORMATS = ("saved_model", "tflite")
METADATA_FILE = "kerasft.json"
CLASS_NAMES_ASSET = "class_names.txt"
SERVE_ENDPOINT = "serve"
FEATURES_ENDPOINT = "features"
# Below this top-1 agreement with Keras a TFLite export warns: quantization hurt.
AGREEMENT_WARNING = 0.95
# Inputs every export is run on beside the Keras model before it is renamed into place.
_SERVING_SAMPLE = 64
_PROBE_SENTENCES = [
    "a film",
    "the best movie i have seen this year",
    "dull, slow and far too long",
    "",
    "ok",
    "not bad at all",
    "an utter mess",
    "moving and funny",
]
_EXPORT_WORDS = "kerasft export (a SavedModel directory with kerasft.json, or a .tflite file)"


class ExportedPath(str):
    """The absolute path of an export (a `str`), with what the export measured.

    Attributes:
        metadata: the `kerasft.json` metadata written beside the model.
        check: the `kerasft.export.tflite.TFLiteCheck` of a TFLite export, else `None`.
        card: the `kerasft.export.card.ModelCard` written beside the model.
    """

    metadata: dict
    check: Any
    card: Any


def export_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    format: str = "saved_model",
    class_names: Sequence[str] | None = None,
    quantize: str | None = None,
    io_dtype: str = "float32",
    representative_data: Any = None,
    verify_data: Any = None,
    evaluation: Any = None,
    evaluation_data: str | None = None,
    result: Any = None,
    overwrite: bool = False,
) -> ExportedPath:
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
    `kerasft.json` records the input spec, output kind, class names and versions.

    A TFLite export (`path` ending in `.tflite`) holds the `serve` signature only, with
    class names embedded as constants. `quantize` picks its weights: `None` float32;
    `"float16"` (half the size); `"dynamic"` int8 weights with float activations (about
    4x smaller); `"int8"` full-integer quantization, int8 weights and activations with
    ranges calibrated on `representative_data`, and float32, int8 or uint8 input and
    `probabilities` (`io_dtype`; a quantized input takes `round(x / scale + zero_point)`,
    the scale and zero point are in `kerasft.json`). Every TFLite file is run by the
    LiteRT interpreter beside the Keras model on `verify_data` (else on
    `representative_data`, else once on zeros): the top-1 agreement, accuracies and size
    go into `kerasft.json`, the model card and the returned path's `check`.

    Every export writes a model card, `MODEL_CARD.md` and `model_card.json`
    (`kerasft.export.card`). A SavedModel holds its card and `kerasft.json`; a TFLite
    file `m.tflite` has them beside it as `m.MODEL_CARD.md`, `m.model_card.json` and
    `m.kerasft.json` (`export_files(path)` names them), so that two exports in one
    folder keep their own. Everything is written to temporary paths beside `path` and
    renamed into place when complete.

    Example:

    ```python
    model = keras.models.load_model("saved_models/mnist_cnn.keras")
    path = export_model(model, "/tmp/mnist_export", class_names=[str(i) for i in range(10)])
    reloaded = tf.saved_model.load(path)  # keep a reference while calling it
    served = reloaded.serve(x)            # x: float32 (n, 28, 28, 1), raw 0..255
    served["class_name"]                  # e.g. [b"7", b"2", ...]
    small = export_model(model, "/tmp/mnist.tflite", format="tflite", quantize="int8",
                         representative_data=x_train[:200], verify_data=(x_test, y_test))
    small.check.agreement, small.check.accuracy, small.check.size_bytes
    ```

    Args:
        model: a built Functional or Sequential Keras classifier with one input and one
            output of shape `(batch, num_classes)`.
        path: destination directory (`"saved_model"`) or file ending in `.tflite`.
        format: `"saved_model"` or `"tflite"`. Defaults to `"saved_model"`.
        class_names: one name per class, in class-id order; names must be unique,
            non-empty and free of line breaks. Defaults to `None` (no `class_name` output).
        quantize: `None`, `"float16"`, `"dynamic"` or `"int8"`; TFLite only.
            Defaults to `None`.
        io_dtype: `"float32"`, `"int8"` or `"uint8"`: the dtype of the TFLite model's
            input and `probabilities` output; int8/uint8 with `quantize="int8"` only.
            Defaults to `"float32"`.
        representative_data: inputs for the int8 calibration (required then): an array,
            `(x, y)`, or a `tf.data` pipeline of inputs as the model takes them; at most
            500 are used, spread over the array. Defaults to `None`.
        verify_data: held-out data for the LiteRT check of a TFLite file and, with
            labels, the card's evaluation: `(x, y)`, `x`, or a `tf.data` pipeline.
            Defaults to `None`.
        evaluation: a `kerasft.evaluation.EvaluationReport` for the card. Defaults to
            `None` (computed on `verify_data` when it has labels).
        result: the `kerasft.FinetuneResult` the model comes from, for the card's data,
            recipe, options and phases (`FinetuneResult.export` passes it). Defaults to `None`.
        overwrite: replace an existing export at `path`. Defaults to `False`.

    Returns:
        An `ExportedPath`: the absolute path of the export, a `str`, carrying
        `.metadata`, `.check` (TFLite) and `.card`.

    Raises:
        TypeError: if `model` is not a Keras model, `class_names` not a list of str, or
            data not an array, `(x, y)` or `tf.data` pipeline.
        ValueError: for an invalid argument (`quantize="int8"` without
            `representative_data`, `io_dtype` without int8, data whose shape the model
            does not take), a model whose output kind cannot be told (probabilities or
            logits), or a `path` that is an existing file for a SavedModel (or an
            existing directory for TFLite).
        FileExistsError: if `path` exists and `overwrite` is `False`.
    """
    _check_options(format, quantize, io_dtype, representative_data)
    path = _check_path(path, format)
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a keras.Model. "
            f"Received: model of type {type(model).__name__}"
        )
    specs = input_specs(model)
    kind, head = output_kind(model)
    num_classes = _num_classes(model, kind)
    names = _check_class_names(class_names, num_classes)
    representative = _model_inputs(
        representative_data, "representative_data", specs, limit=tflite.MAX_REPRESENTATIVE
    )
    verify = _model_inputs(verify_data, "verify_data", specs)
    _check_io_dtype(io_dtype, model, specs)
    _check_evaluation_data(evaluation_data)
    # Fail before any work when the destination is unusable (the atomic writers check
    # again, but only after the slow tracing and conversion).
    check_destination(path, format=format, overwrite=overwrite)
    metadata = _base_metadata(model, format, kind, num_classes, names, specs)
    card_facts = _card_facts(model, result, names, evaluation, evaluation_data, verify)
    sample = _serving_sample(specs, verify, representative)
    if format == "saved_model":
        return _export_saved_model(
            model,
            path,
            specs,
            kind,
            head,
            names,
            metadata,
            card_facts,
            sample=sample,
            overwrite=overwrite,
        )
    return _export_tflite(
        model,
        path,
        specs,
        kind,
        names,
        metadata,
        card_facts,
        quantize=quantize,
        io_dtype=io_dtype,
        representative=representative,
        verify=verify,
        sample=sample,
        overwrite=overwrite,
    )


def export_files(path: str | os.PathLike) -> dict[str, str]:
    """The files of an export: `model`, `metadata` (`kerasft.json`), `card`, `card_json`.

    Inside a SavedModel directory; beside a `.tflite` file, named after it
    (`m.tflite`: `m.kerasft.json`, `m.MODEL_CARD.md`, `m.model_card.json`).
    """
    path = os.path.abspath(os.fspath(path))
    if path.endswith(".tflite"):
        directory, prefix = os.path.dirname(path), os.path.basename(path)[: -len(".tflite")] + "."
    else:
        directory, prefix = path, ""
    return {
        "model": path,
        "metadata": os.path.join(directory, prefix + METADATA_FILE),
        "card": os.path.join(directory, prefix + card_lib.CARD_FILE),
        "card_json": os.path.join(directory, prefix + card_lib.CARD_JSON),
    }


def read_export_metadata(path: str | os.PathLike) -> dict:
    """Return the `kerasft.json` metadata of an export written by `export_model`.

    Args:
        path: the SavedModel directory, or the `.tflite` file (its metadata is
            `m.kerasft.json` beside `m.tflite`).

    Returns:
        The metadata dict: `input` (name, shape, dtype), `output_kind`, `num_classes`,
        `class_names`, library versions, `size_bytes`; for a SavedModel `endpoints` and
        `features_endpoint`; for TFLite `quantize`, `io_dtype`, the input's and output's
        `[scale, zero_point]` and `tflite_check` (a `TFLiteCheck.to_dict()`).

    Raises:
        ValueError: if there is no `kerasft.json` for `path`.
    """
    path = os.fspath(path)
    file = export_files(path)["metadata"]
    if not os.path.isfile(file):
        raise ValueError(
            f"No {METADATA_FILE} for {path!r} (looked for {file!r}): it was not exported by "
            "kerasft.export_model."
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


def _check_options(format: Any, quantize: Any, io_dtype: Any, representative_data: Any) -> None:
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
    if io_dtype not in IO_DTYPES:
        raise ValueError(
            f"Argument `io_dtype` must be one of {list(IO_DTYPES)}. Received: io_dtype={io_dtype!r}"
        )
    if io_dtype != "float32" and quantize != "int8":
        raise ValueError(
            f"Argument `io_dtype={io_dtype!r}` applies to quantize='int8' only (a full-integer "
            f"model takes and returns integers). Received: quantize={quantize!r}. Valid: "
            "io_dtype='float32' with any quantize, or io_dtype in ['int8', 'uint8'] with "
            "format='tflite', quantize='int8'."
        )
    if quantize == "int8" and representative_data is None:
        raise ValueError(
            "Argument `representative_data` is required for quantize='int8': full-integer "
            "quantization calibrates the range of every activation on real inputs. Received: "
            "representative_data=None. HINT: pass 100-500 training inputs (an array, (x, y) or "
            "a tf.data pipeline); FinetuneResult.export passes a sample of the run's own when "
            "the result holds one (result.representative). "
            "quantize='dynamic' needs no data."
        )


def _check_path(path: str | os.PathLike, format: str) -> str:
    """`path` made absolute, checked to name what `format` writes (a file or a directory)."""
    path = os.path.abspath(os.fspath(path))
    if format == "tflite" and not path.endswith(".tflite"):
        raise ValueError(
            f"Argument `path` must end with '.tflite' for format='tflite'. Received: path={path!r}"
        )
    if format == "saved_model" and path.endswith((".tflite", ".keras", ".h5")):
        raise ValueError(
            "Argument `path` names a directory for format='saved_model', but ends with "
            f"{os.path.splitext(path)[1]!r}. Received: path={path!r}. HINT: use a plain "
            "directory name, or format='tflite' for a .tflite file."
        )
    return path


def _check_io_dtype(io_dtype: str, model: keras.Model, specs: list[tf.TensorSpec]) -> None:
    if io_dtype != "float32" and not all(s.dtype.is_floating for s in specs):
        raise ValueError(
            f"Argument `io_dtype={io_dtype!r}` quantizes a float input, but model "
            f"{model.name!r} takes {[s.dtype.name for s in specs]}. Use io_dtype='float32'."
        )


def _check_evaluation_data(evaluation_data: Any) -> None:
    if evaluation_data is not None and not isinstance(evaluation_data, str):
        raise TypeError(
            "Argument `evaluation_data` must be a few words on what `evaluation` ran on. "
            f"Received: evaluation_data of type {type(evaluation_data).__name__}"
        )


def _base_metadata(
    model: keras.Model,
    format: str,
    kind: str,
    num_classes: int,
    names: list[str] | None,
    specs: list[tf.TensorSpec],
) -> dict[str, Any]:
    """The `kerasft.json` facts every export records, before the format's own."""
    metadata = {
        "format": format,
        "kerasft_version": _version("kerasft"),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "model_name": model.name,
        "output_kind": kind,
        "num_classes": num_classes,
        "class_names": names,
        "outputs": ["probabilities", "class_id"] + (["class_name"] if names else []),
    }
    metadata["inputs"] = [
        {"name": s.name, "shape": list(s.shape), "dtype": s.dtype.name} for s in specs
    ]
    if len(specs) == 1:
        metadata["input"] = metadata["inputs"][0]
    return metadata


def _card_facts(
    model: keras.Model,
    result: Any,
    names: list[str] | None,
    evaluation: Any,
    evaluation_data: str | None,
    verify: Any,
) -> dict[str, Any]:
    """What the model card is written from; without `evaluation`, one on labelled `verify`."""
    if evaluation is not None:
        # A report computed elsewhere (the user's test set, say): the card must not
        # describe it as the export's own verification data.
        evaluation_data = (
            evaluation_data or "the data of the `evaluation` report given to the export"
        )
    elif verify is not None and verify[1] is not None:
        from kerasft.evaluation import evaluate_model

        evaluation = evaluate_model(model, verify[0], verify[1], batch_size=256, class_names=names)
        evaluation_data = verify[2]
    return dict(
        model=model,
        result=result,
        class_names=names,
        evaluation=evaluation,
        evaluation_data=evaluation_data,
    )


def _model_inputs(
    data: Any, argument: str, specs: list[tf.TensorSpec], *, limit: int | None = None
):
    """`(x, y, description)` of `data` (`None` for `None`), checked against the model's inputs.

    `x` is one array for a model with one input, else a list with one array per input.
    """
    if data is None:
        return None
    if isinstance(data, tflite.ExportSample):
        if argument == "verify_data" and data.held_out is not None:
            x, y = data.held_out
            about = "held-out validation examples of the fine-tuning run"
        else:
            x, y = data.inputs, None
            about = "training inputs of the fine-tuning run (no held-out data)"
        x = [x] if len(specs) == 1 else list(x)
    else:
        x, y = tflite.read_inputs(
            data,
            argument=argument,
            rank=len(specs[0].shape),
            limit=limit,
            input_names=[s.name for s in specs] if len(specs) > 1 else None,
        )
        x = [x] if len(specs) == 1 else x
        about = f"given as `{argument}`"
    if len(x) != len(specs):
        raise ValueError(
            f"Argument `{argument}` holds {len(x)} inputs, but the model takes {len(specs)}: "
            f"{[s.name for s in specs]}."
        )
    checked = []
    for array, spec in zip(x, specs):
        array = np.asarray(array)
        expected = tuple(spec.shape[1:])
        if array.ndim != len(spec.shape) or any(
            e is not None and e != d for e, d in zip(expected, array.shape[1:])
        ):
            which = f" (input {spec.name!r})" if len(specs) > 1 else ""
            raise ValueError(
                f"Argument `{argument}` holds inputs{which} of shape {array.shape}, but the model "
                f"takes {(None, *expected)}. HINT: pass inputs as the model takes them (raw, "
                "before any preprocessing inside the model)."
            )
        if spec.dtype == tf.string:
            checked.append(array.astype(object))
        else:
            checked.append(array.astype(spec.dtype.as_numpy_dtype))
    return (checked[0] if len(specs) == 1 else checked), y, about


def _serving_sample(
    specs: list[tf.TensorSpec], verify: Any, representative: Any
) -> tuple[Any, str]:
    """Inputs the written export is run on beside the Keras model, and what they are.

    The held-out data when given, else the calibration inputs, else a probe batch of the
    model's real input form: pixels 0..255 for images, sentences for a text task.
    """
    for given in (verify, representative):
        if given is not None:
            x = given[0]
            return (
                x[:_SERVING_SAMPLE] if len(specs) == 1 else [a[:_SERVING_SAMPLE] for a in x]
            ), given[2]
    rng = np.random.default_rng(0)
    probe = []
    for spec in specs:
        shape = [8] + [32 if d is None else d for d in spec.shape[1:]]
        if spec.dtype == tf.string:
            probe.append(np.array(_PROBE_SENTENCES, dtype=object)[: shape[0]])
        elif spec.dtype.is_floating:
            # Images (rank 4) are raw pixels; other float inputs standard normal.
            values = rng.uniform(0, 255, shape) if len(shape) == 4 else rng.normal(size=shape)
            probe.append(values.astype(spec.dtype.as_numpy_dtype))
        else:
            probe.append(rng.integers(0, 2, shape).astype(spec.dtype.as_numpy_dtype))
    return (
        probe[0] if len(specs) == 1 else probe
    ), "a random probe batch of the model's input form"


def _check_served(
    served: np.ndarray, model: keras.Model, x: Any, about: str, what: str, tolerance: float
) -> dict[str, Any]:
    """Compare what an export serves with the Keras model; raise when they disagree."""
    expected = served_probabilities(model, x)
    difference = float(np.abs(served - expected).max()) if served.size else 0.0
    agreement = float(np.mean(served.argmax(-1) == expected.argmax(-1)))
    check = {
        "examples": int(len(expected)),
        "max_abs_difference": difference,
        "agreement": agreement,
        "data": about,
    }
    if not difference <= tolerance:  # NaN fails too
        raise ValueError(
            f"The {what} serves different predictions from model {model.name!r}: on "
            f"{len(expected)} inputs ({about}) its probabilities differ from the Keras model's "
            f"by up to {difference:.3g} (tolerance {tolerance:g}) and its top-1 class agrees on "
            f"{agreement:.1%}. The export was not written. HINT: this is a kerasft bug or a "
            "layer whose serving graph differs from its Keras call; please report it with "
            "the model's summary."
        )
    return check


def _tolerance(model: keras.Model) -> float:
    # float16/bfloat16 compute (mixed precision) rounds each layer's output.
    compute = getattr(getattr(model, "dtype_policy", None), "compute_dtype", "float32")
    return 1e-2 if compute in ("float16", "bfloat16") else 1e-4


def _export_saved_model(
    model, path, specs, kind, head, names, metadata, card_facts, *, sample, overwrite: bool
) -> ExportedPath:
    preprocessor = task_preprocessor(model)
    features = None if takes_text(model) else _features_model(model, head)
    metadata["endpoints"] = [SERVE_ENDPOINT, "serving_default"]
    metadata["features_endpoint"] = FEATURES_ENDPOINT if features is not None else None
    if features is not None:
        metadata["endpoints"].append(FEATURES_ENDPOINT)
        metadata["features_dim"] = int(features.outputs[0].shape[-1])
        metadata["head"] = head.name
    metadata["preprocessor"] = None if preprocessor is None else type(preprocessor).__name__
    metadata["class_names_file"] = f"assets/{CLASS_NAMES_ASSET}" if names else None
    with atomic_directory(
        path, overwrite=overwrite, replaceable=is_export, what=_EXPORT_WORDS
    ) as tmp:
        _write_saved_model(model, tmp, specs, kind, names, features, table_lookup=True)
        loaded = tf.saved_model.load(tmp)  # kept referenced while serving: it owns the variables
        x, about = sample
        served = _serve_batches(loaded.signatures[SERVE_ENDPOINT], specs, x)
        metadata["serving_check"] = _check_served(
            served, model, x, about, "exported SavedModel", _tolerance(model)
        )
        del loaded
        metadata["size_bytes"] = _tree_size(tmp)
        _write_json(os.path.join(tmp, METADATA_FILE), metadata)
        card = card_lib.model_card(**card_facts, exports=[_export_entry(path, metadata)])
        card.write(tmp)
    return _exported(path, metadata, None, card)


def _serve_batches(
    signature: Any, specs: list[tf.TensorSpec], x: Any, batch_size: int = 256
) -> np.ndarray:
    arrays = [x] if len(specs) == 1 else list(x)
    n = len(arrays[0])
    parts = []
    for start in range(0, n, batch_size):
        feed = {
            s.name: tf.constant(a[start : start + batch_size], dtype=s.dtype)
            for s, a in zip(specs, arrays)
        }
        parts.append(signature(**feed)["probabilities"].numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _export_tflite(
    model,
    path,
    specs,
    kind,
    names,
    metadata,
    card_facts,
    *,
    quantize,
    io_dtype,
    representative,
    verify,
    sample,
    overwrite: bool,
) -> ExportedPath:
    with scratch_directory("tflite") as staging:
        _write_saved_model(model, staging, specs, kind, names, None, table_lookup=False)
        flatbuffer = tflite.convert_saved_model(
            staging,
            quantize=quantize,
            io_dtype=io_dtype,
            representative=None if representative is None else representative[0],
            input_names=[s.name for s in specs],
        )
    files = export_files(path)
    with contextlib.ExitStack() as stack:
        # Every file is written beside its destination, then all are renamed together,
        # the model last, when the block succeeds.
        tmp = stack.enter_context(atomic_file(path, overwrite=overwrite))
        with open(tmp, "wb") as f:
            f.write(flatbuffer)
        check = _verify(tmp, model, verify, representative, sample)
        if quantize is None and not check.max_abs_difference <= _tolerance(model):
            # Unquantized, the file must compute what Keras does; quantized files are
            # judged by agreement below.
            raise ValueError(
                f"The float TFLite export serves different predictions from model {model.name!r}: "
                f"{check}. The export was not written. HINT: this is a kerasft bug or an op the "
                "TFLite converter translates differently; please report it."
            )
        metadata.update(
            quantize=quantize,
            io_dtype=io_dtype,
            size_bytes=len(flatbuffer),
            input_quantization=check.input_quantization,
            output_quantization=check.output_quantization,
            tflite_check=check.to_dict(),
        )
        card = card_lib.model_card(**card_facts, exports=[_export_entry(path, metadata)])
        texts = {
            "metadata": json.dumps(metadata, indent=2) + "\n",
            "card": card.to_markdown(),
            "card_json": card.to_json() + "\n",
        }
        for key, text in texts.items():
            with open(stack.enter_context(atomic_file(files[key])), "w", encoding="utf-8") as f:
                f.write(text)
    if check.agreement is not None and check.agreement < AGREEMENT_WARNING:
        warnings.warn(
            f"The TFLite export {path!r} (quantize={quantize!r}) agrees with the Keras model on "
            f"the top-1 class of only {check.agreement:.1%} of {check.examples} inputs "
            f"({check.data}); max |p - p_keras| {check.max_abs_difference:.3g}. HINT: give more "
            "representative_data for int8, or use quantize='dynamic' or None.",
            stacklevel=3,
        )
    return _exported(path, metadata, check, card)


def _verify(tmp: str, model: keras.Model, verify: Any, representative: Any, sample: Any) -> Any:
    if verify is not None:
        x, y, about = verify
    elif representative is not None:
        x, y, about = representative[0], None, "the representative (calibration) inputs"
    else:
        (x, about), y = sample, None
    # Every export is checked against one Keras reference, the one `_check_served` uses.
    expected = served_probabilities(model, x)
    return tflite.verify_tflite(tmp, model, x, y, data=about, keras_probabilities=expected)


def _tree_size(directory: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(directory)
        for f in files
    )


def _write_json(file: str, data: dict) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _export_entry(path: str, metadata: dict) -> dict[str, Any]:
    entry = {
        "format": metadata["format"],
        "file": os.path.basename(path),
        "size_bytes": metadata["size_bytes"],
    }
    if metadata["format"] == "tflite":
        entry.update(
            quantize=metadata["quantize"],
            io_dtype=metadata["io_dtype"],
            check=metadata["tflite_check"],
        )
    elif metadata.get("serving_check"):
        entry["serving_check"] = metadata["serving_check"]
    return entry


def _exported(path: str, metadata: dict, check: Any, card: Any) -> ExportedPath:
    exported = ExportedPath(path)
    exported.metadata, exported.check, exported.card = metadata, check, card
    return exported


def is_export(path: str | os.PathLike) -> bool:
    """Whether `path` is an export written by `export_model` (what `overwrite=True` may replace).

    A SavedModel directory holding `saved_model.pb` and a `kerasft.json` that says so, or
    a TFLite flatbuffer (a `.tflite` file with the `TFL3` identifier).
    """
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        file = os.path.join(path, METADATA_FILE)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")) or not os.path.isfile(file):
            return False
        try:
            with open(file, encoding="utf-8") as f:
                return json.load(f).get("format") == "saved_model"
        except (OSError, ValueError, AttributeError):
            return False
    if os.path.isfile(path) and path.endswith(".tflite"):
        try:
            with open(path, "rb") as f:
                return f.read(8)[4:8] == b"TFL3"
        except OSError:
            return False
    return False


def check_destination(
    path: str | os.PathLike, *, format: str = "saved_model", overwrite: bool = False
) -> str:
    """Check that an export may be written at `path`; return it absolute.

    `kerasft finetune --export` calls it before training, so that a run is not thrown
    away for a destination it cannot use.

    Raises:
        ValueError: a file where a directory is expected (or the reverse), something
            that is not a kerasft export with `overwrite=True` (never replaced), or a
            parent directory that cannot be written to.
        FileExistsError: if `path` exists and `overwrite` is `False`.
    """
    path = os.path.abspath(os.fspath(path))
    is_dir = format == "saved_model"
    if is_dir and os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(
            f"Argument `path` must be a directory path, but {path!r} is an existing file. "
            "Choose a new directory name."
        )
    if not is_dir and os.path.isdir(path):
        raise ValueError(
            f"Argument `path` must be a file path, but {path!r} is an existing directory."
        )
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"Argument `path`: {path!r} already exists. Pass overwrite=True to replace it, "
            "or choose a new path."
        )
    if os.path.lexists(path) and not is_export(path):
        raise ValueError(
            f"Argument `path`: {path!r} exists and is not a {_EXPORT_WORDS}; overwrite=True "
            "replaces only a kerasft export, never other files or directories. HINT: choose "
            "a new path, or move it away yourself."
        )
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the first existing ancestor is where it is created
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"Argument `path`: cannot write {path!r}: {parent!r} is not a writable directory."
        )
    return path


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
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, (Sequence, np.ndarray)):
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


def _write_saved_model(
    model: keras.Model,
    directory: str,
    specs: list[tf.TensorSpec],
    kind: str,
    names: list[str] | None,
    features: keras.Model | None,
    *,
    table_lookup: bool,
) -> None:
    """Write the serving SavedModel into the existing, empty `directory`.

    A KerasHub task's preprocessor (tokenizer, image converter) runs inside the served
    graph, as it runs inside the task's `predict`, so the export takes raw inputs.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    preprocessor = task_preprocessor(model)
    if preprocessor is not None:
        archive.track(preprocessor)

    def prepared(inputs):
        inputs = inputs[0] if len(inputs) == 1 else list(inputs)
        return inputs if preprocessor is None else preprocessor(inputs)

    def forward(*inputs):
        return model(prepared(inputs), training=False)

    lookup = None
    with scratch_directory("assets") as assets:
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

        def serve(*inputs):
            probabilities = to_probabilities(forward(*inputs), kind)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            result = {"probabilities": probabilities, "class_id": class_id}
            if lookup is not None:
                result["class_name"] = lookup(class_id)
            return result

        archive.add_endpoint(SERVE_ENDPOINT, serve, input_signature=list(specs))
        if features is not None:
            archive.add_endpoint(
                FEATURES_ENDPOINT,
                lambda *inputs: {
                    "features": tf.cast(features(prepared(inputs), training=False), tf.float32)
                },
                input_signature=list(specs),
            )
        archive.write_out(directory, verbose=False)
