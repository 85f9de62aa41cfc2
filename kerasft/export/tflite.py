"""TFLite conversion (float, float16, dynamic-range, full-integer) and its LiteRT check.

`export_model(..., format="tflite")` converts its serving SavedModel here:
`convert_saved_model` applies the quantization asked for (full-integer `"int8"`
calibrates activation ranges on a representative sample of inputs), and `verify_tflite`
runs the flatbuffer in the LiteRT interpreter (`ai_edge_litert`) beside the Keras model
on held-out data, so every export says how far its predictions drift and how big it is.
`export_sample` picks the small sample of a run's training and validation inputs that
`FinetuneResult.export` uses for both when none are given.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

# The run's sample of inputs lives with the data; exports read it (names kept importable here).
from kerasft.data.sample import (
    ExportSample,
    class_ids,
    export_sample,
    spread_indices,
)
from kerasft.export.serving import input_names, served_probabilities

__all__ = [
    "QUANTIZE",
    "IO_DTYPES",
    "ExportSample",
    "TFLiteCheck",
    "convert_saved_model",
    "export_sample",
    "read_inputs",
    "verify_tflite",
]

QUANTIZE = (None, "float16", "dynamic", "int8")
IO_DTYPES = ("float32", "int8", "uint8")
# TFLite's guide suggests a few hundred calibration examples; more only slows conversion.
MAX_REPRESENTATIVE = 500
_SIGNATURE = "serve"


@dataclass
class TFLiteCheck:
    """How a TFLite file compares with its Keras model, run by the LiteRT interpreter.

    Attributes:
        examples: inputs compared (0 when no data was given: the file was only loaded
            and run once on zeros).
        agreement: share of inputs whose top-1 class is the Keras model's.
        accuracy: top-1 accuracy of the TFLite model, when labels were given.
        keras_accuracy: the Keras model's accuracy on the same inputs.
        max_abs_difference: largest absolute difference between the served
            probabilities and the Keras model's (quantized outputs dequantized first).
        size_bytes: size of the flatbuffer.
        quantize: the quantization of the file (`None`, "float16", "dynamic", "int8").
        input_dtype, output_dtype: dtypes of the `serve` input and `probabilities` output.
        input_quantization, output_quantization: `[scale, zero_point]` of a quantized
            input or output, else `None`.
        data: what the inputs were ("held-out", "representative", "given"...).
        runtime: the interpreter that ran it, with its version.
        seconds: wall time of the LiteRT run.
    """

    examples: int
    agreement: float | None
    accuracy: float | None
    keras_accuracy: float | None
    max_abs_difference: float | None
    size_bytes: int
    quantize: str | None
    input_dtype: str
    output_dtype: str
    input_quantization: list[float] | None = None
    output_quantization: list[float] | None = None
    data: str | None = None
    runtime: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TFLiteCheck:
        return cls(**data)

    def __str__(self) -> str:
        size = f"{self.size_bytes / 1024:.1f} KiB"
        if not self.examples:
            return f"LiteRT: loads and runs ({size}); no data to compare with Keras"
        text = (
            f"LiteRT on {self.examples} examples: top-1 agreement with Keras {self.agreement:.2%}"
        )
        if self.accuracy is not None:
            text += f", accuracy {self.accuracy:.2%} (Keras {self.keras_accuracy:.2%})"
        return text + f", max |p - p_keras| {self.max_abs_difference:.3g}, {size}"


def read_inputs(
    data: Any,
    *,
    argument: str,
    rank: int | None = None,
    limit: int | None = None,
    input_names: list[str] | None = None,
) -> tuple[Any, np.ndarray | None]:
    """Inputs (and labels, if any) of `data`: an array, an `(x, y)` tuple, or a `tf.data` pipeline.

    A pipeline may yield `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, batched or
    not (an input of rank `rank - 1` is one example).

    Args:
        data: the data.
        argument: its argument name, for error messages.
        rank: the rank of the model's input, batch axis included. Defaults to `None`
            (pipelines are taken as batched).
        limit: keep at most this many examples (spread over arrays, the first ones of a
            pipeline). Defaults to `None` (all).
        input_names: the names of the inputs of a model that takes several; `x` is
            then a list or tuple of arrays in that order, or a dict keyed by these
            names. Defaults to `None` (one input).

    Returns:
        `(x, y)` as numpy arrays, `y` `None` without labels; for several inputs `x` is
        a list of arrays, one per name.

    Raises:
        TypeError: for anything else (dicts of inputs for a one-input model included).
        ValueError: for no examples, or labels whose length differs from the inputs'.
    """
    if input_names is not None:
        return _read_multi_inputs(data, argument, input_names, limit)
    if isinstance(data, tf.data.Dataset):
        x_parts, y_parts, count = [], [], 0
        for element in data.as_numpy_iterator():
            x, y = _split_element(element, argument)
            if rank is not None and x.ndim == rank - 1:
                x, y = x[None], None if y is None else y[None]
            x_parts.append(x)
            y_parts.append(y)
            count += len(x)
            if limit is not None and count >= limit:
                break
        if not x_parts:
            raise ValueError(f"Argument `{argument}` is an empty dataset: it yielded no examples.")
        x = np.concatenate(x_parts)[:limit]
        y = None if any(p is None for p in y_parts) else np.concatenate(y_parts)[:limit]
        return x, y
    if isinstance(data, dict):
        raise TypeError(
            f"Argument `{argument}` must be an array, a pair (x, y) of arrays or a "
            "tf.data.Dataset; a TFLite export takes one input tensor. "
            f"Received: a dict with keys {sorted(data)}"
        )
    if isinstance(data, tuple) and 1 <= len(data) <= 2:
        x = _array(data[0], argument)
        y = _array(data[1], argument) if len(data) == 2 and data[1] is not None else None
    else:
        x, y = _array(data, argument), None
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(
            f"Argument `{argument}` holds no examples. Received: an array of shape {x.shape}"
        )
    if y is not None and len(y) != len(x):
        raise ValueError(
            f"Argument `{argument}`: {len(x)} inputs but {len(y)} labels; "
            "they must be equally long."
        )
    if limit is not None and len(x) > limit:
        keep = spread_indices(len(x), limit)
        x, y = x[keep], None if y is None else y[keep]
    return x, y


def convert_saved_model(
    saved_model_dir: str,
    *,
    quantize: str | None,
    io_dtype: str = "float32",
    representative: Any = None,
    input_names: list[str] | tuple[str, ...] = ("inputs",),
) -> bytes:
    """Convert the `serve` signature of a SavedModel to a TFLite flatbuffer.

    `quantize=None` keeps float32 weights; `"float16"` stores them as float16 (half the
    size, computed in float32); `"dynamic"` stores them as int8 with float activations;
    `"int8"` is full-integer post-training quantization: int8 weights and activations,
    ranges calibrated on `representative` inputs, every op an integer kernel, with
    float32, int8 or uint8 model input and output (`io_dtype`). `representative` is one
    array, or a list of arrays in the order of `input_names` for several inputs.

    Raises:
        ValueError: `quantize="int8"` without `representative` inputs, or a model with
            an op that has no integer kernel.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[_SIGNATURE]
    )
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize != "int8":
        # Optimize.DEFAULT with no representative dataset is dynamic-range quantization.
        return converter.convert()
    if representative is None:
        raise ValueError("Argument `representative_data` is required for quantize='int8'.")
    converter.representative_dataset = _calibration(representative, list(input_names))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io_dtype != "float32":
        converter.inference_input_type = tf.as_dtype(io_dtype)
        converter.inference_output_type = tf.as_dtype(io_dtype)
    with warnings.catch_warnings():
        # The converter calibrates with tf.lite.Interpreter, which warns that it is deprecated.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        try:
            return converter.convert()
        except Exception as e:  # the converter raises its own ConverterError, among others
            raise ValueError(
                f"Full-integer quantization (quantize='int8') failed: {str(e).strip()[:1500]}\n"
                "HINT: an op without an int8 kernel cannot run in a full-integer model; "
                "quantize='dynamic' (int8 weights, float activations) converts any model."
            ) from e


def verify_tflite(
    path: str | os.PathLike | bytes,
    model: Any,
    x: Any,
    y: Any = None,
    *,
    batch_size: int = 256,
    data: str | None = None,
    keras_probabilities: np.ndarray | None = None,
) -> TFLiteCheck:
    """Run a TFLite export in the LiteRT interpreter and compare it with its Keras model.

    The `serve` signature of the file gets `x` (quantized with the input's scale and zero
    point when the model takes int8 or uint8), its `probabilities` are dequantized, and
    its top-1 classes are compared with the Keras model's (and with `y` when given).

    Example:

    ```python
    path = kerasft.export_model(model, "m.tflite", format="tflite", quantize="int8",
                                representative_data=x_train[:200])
    check = verify_tflite(path, model, x_test, y_test)
    check.agreement, check.accuracy, check.size_bytes
    ```

    Args:
        path: the `.tflite` file (or its bytes) written by `export_model`.
        model: the Keras model it was exported from.
        x: inputs, raw as the Keras model takes them (a list of arrays, in the order of
            the model's inputs, for several); or `None` to only load the file and run it
            once on zeros.
        y: class ids (or one-hot rows) of `x`. Defaults to `None`.
        batch_size: inputs per interpreter call. Defaults to `256`.
        data: a few words on what `x` is, for the record. Defaults to `None`.
        keras_probabilities: the probabilities the Keras model serves for `x`, when the
            caller has them (`export_model` passes the reference it checks every export
            against). Defaults to `None` (computed here by `served_probabilities`).

    Returns:
        A `TFLiteCheck`.
    """
    runner, details, names, record = _open_serve_signature(path, model, data)
    start = time.perf_counter()
    if x is None:
        runner(
            **{
                n: np.zeros([1, *details[n]["shape_signature"][1:]], details[n]["dtype"])
                for n in names
            }
        )
        return TFLiteCheck(
            examples=0,
            agreement=None,
            accuracy=None,
            keras_accuracy=None,
            max_abs_difference=None,
            seconds=round(time.perf_counter() - start, 3),
            **record,
        )
    served = _run_batches(runner, details, names, x, batch_size)
    seconds = time.perf_counter() - start
    expected = (
        served_probabilities(model, x, batch_size=batch_size)
        if keras_probabilities is None
        else np.asarray(keras_probabilities)
    )
    ours, theirs = served.argmax(-1), expected.argmax(-1)
    labels = None if y is None else class_ids(y)
    return TFLiteCheck(
        examples=len(served),
        agreement=float(np.mean(ours == theirs)),
        accuracy=None if labels is None else float(np.mean(ours == labels)),
        keras_accuracy=None if labels is None else float(np.mean(theirs == labels)),
        max_abs_difference=float(np.abs(served - expected).max()),
        seconds=round(seconds, 3),
        **record,
    )


def _open_serve_signature(
    path: str | os.PathLike | bytes, model: Any, data: str | None
) -> tuple[Any, dict[str, dict], list[str], dict[str, Any]]:
    """The `serve` signature of a TFLite file: `(runner, input details, input names, record)`.

    The input names are in the order of the model's inputs; the record holds what
    `TFLiteCheck` says of the file itself (size, quantization, dtypes, runtime).
    """
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path, bytes):
        interpreter, size = Interpreter(model_content=path), len(path)
    else:
        interpreter, size = Interpreter(model_path=os.fspath(path)), os.path.getsize(path)
    runner = interpreter.get_signature_runner(_SIGNATURE)
    details = runner.get_input_details()
    names = input_names(model) if len(details) > 1 else list(details)
    if sorted(names) != sorted(details):
        raise ValueError(
            f"The TFLite file takes inputs {sorted(details)}, but model {model.name!r} has "
            f"{names}: it was not exported from this model."
        )
    input_detail = details[names[0]]
    output_detail = runner.get_output_details()["probabilities"]
    record = dict(
        size_bytes=size,
        quantize=_quantization_of(interpreter, runner),
        input_dtype=np.dtype(input_detail["dtype"]).name,
        output_dtype=np.dtype(output_detail["dtype"]).name,
        input_quantization=_scale_zero(input_detail),
        output_quantization=_scale_zero(output_detail),
        data=data,
        runtime=f"ai-edge-litert {_version('ai-edge-litert')}",
    )
    return runner, details, names, record


def _run_batches(
    runner: Any, details: dict[str, dict], names: list[str], x: Any, batch_size: int
) -> np.ndarray:
    """The dequantized `probabilities` the signature serves for `x`, `batch_size` at a time."""
    output_detail = runner.get_output_details()["probabilities"]
    arrays = [np.asarray(x)] if len(names) == 1 else [np.asarray(a) for a in x]
    return np.concatenate(
        [
            _dequantize(
                runner(
                    **{
                        name: _quantize(a[i : i + batch_size], details[name])
                        for name, a in zip(names, arrays)
                    }
                )["probabilities"],
                output_detail,
            )
            for i in range(0, len(arrays[0]), batch_size)
        ]
    )


# ---------------------------------------------------------------------------------------
# Helpers


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _calibration(representative: Any, input_names: list[str]) -> Callable[[], Iterator[dict]]:
    arrays = [representative] if len(input_names) == 1 else list(representative)

    def batches() -> Iterator[dict]:
        for i in range(len(arrays[0])):
            yield {name: a[i : i + 1] for name, a in zip(input_names, arrays)}

    return batches


def _read_multi_inputs(data: Any, argument: str, names: list[str], limit: int | None):
    """`read_inputs` for a model with several inputs: `(list of arrays, labels or None)`."""

    def arrays_of(x: Any) -> list[np.ndarray]:
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing or len(x) != len(names):
                raise ValueError(
                    f"Argument `{argument}` has inputs {sorted(x)}, but the model takes {names}."
                )
            return [_array(x[n], argument) for n in names]
        if isinstance(x, (list, tuple)) and len(x) == len(names):
            return [_array(a, argument) for a in x]
        raise TypeError(
            f"Argument `{argument}`: the model takes {len(names)} inputs {names}; give them as "
            "a list of arrays in that order or a dict keyed by those names, alone or as "
            f"(inputs, labels). Received: {type(x).__name__}"
        )

    def split(element: Any) -> tuple[Any, Any]:
        # (inputs, y) or (inputs, y, weights) when the first item is a whole set of inputs.
        if (
            isinstance(element, tuple)
            and len(element) in (2, 3)
            and (
                isinstance(element[0], dict)
                or isinstance(element[0], (list, tuple))
                and len(element[0]) == len(names)
            )
        ):
            return element[0], element[1]
        return element, None

    if isinstance(data, tf.data.Dataset):
        parts, labels, count = [], [], 0
        for element in data.as_numpy_iterator():
            x, y = split(element)
            parts.append(arrays_of(x))
            labels.append(y)
            count += len(parts[-1][0])
            if limit is not None and count >= limit:
                break
        if not parts:
            raise ValueError(f"Argument `{argument}` is an empty dataset: it yielded no examples.")
        x = [np.concatenate([p[i] for p in parts])[:limit] for i in range(len(names))]
        y = None if any(v is None for v in labels) else np.concatenate(labels)[:limit]
        return x, y
    x, y = split(data) if isinstance(data, tuple) and len(data) == 2 else (data, None)
    x, y = arrays_of(x), None if y is None else _array(y, argument)
    n = len(x[0])
    if any(len(a) != n for a in x) or n == 0:
        raise ValueError(
            f"Argument `{argument}`: the inputs hold {[len(a) for a in x]} examples; they must be "
            "equally many, and at least one."
        )
    if y is not None and len(y) != n:
        raise ValueError(
            f"Argument `{argument}`: {n} inputs but {len(y)} labels; they must be equally long."
        )
    if limit is not None and n > limit:
        keep = spread_indices(n, limit)
        x, y = [a[keep] for a in x], None if y is None else y[keep]
    return x, y


def _quantization_of(interpreter: Any, runner: Any) -> str | None:
    """Tell the quantization of a flatbuffer from the dtypes of its tensors."""
    io = {d["index"] for d in runner.get_input_details().values()}
    io |= {d["index"] for d in runner.get_output_details().values()}
    inner = {
        np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details() if t["index"] not in io
    }
    if "float16" in inner:
        return "float16"
    if "int8" in inner:
        return "dynamic" if "float32" in inner else "int8"
    return None


def _scale_zero(detail: dict) -> list[float] | None:
    scale, zero = detail["quantization"]
    return [float(scale), int(zero)] if scale else None


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    params = _scale_zero(detail)
    if params is None:
        return x.astype(dtype)
    scale, zero = params
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    params = _scale_zero(detail)
    if params is None:
        return q.astype(np.float32)
    scale, zero = params
    return (q.astype(np.float32) - zero) * scale


def _split_element(element: Any, argument: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(element, tuple):
        if not 1 <= len(element) <= 3:
            raise ValueError(
                f"Argument `{argument}` yields tuples of {len(element)} elements; expected x, "
                "(x, y) or (x, y, sample_weight)."
            )
        x = element[0]
        y = element[1] if len(element) > 1 else None
    else:
        x, y = element, None
    if isinstance(x, dict):
        raise TypeError(
            f"Argument `{argument}` yields a dict of inputs {sorted(x)}; a TFLite export takes "
            "one input tensor."
        )
    return np.asarray(x), None if y is None else np.asarray(y)


def _array(value: Any, argument: str) -> np.ndarray:
    if isinstance(value, tf.Tensor):
        value = value.numpy()
    if not isinstance(value, (np.ndarray, list, tuple)):
        raise TypeError(
            f"Argument `{argument}` must be an array, a pair (x, y) of arrays or a "
            f"tf.data.Dataset. Received: {type(value).__name__}"
        )
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Argument `{argument}` must hold numbers. Received: an array of dtype {array.dtype}"
        )
    return array
