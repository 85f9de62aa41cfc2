"""Converting tf_keras (Keras 2) models and legacy ``.h5`` files into Keras 3 models.

Most pretrained checkpoints in the wild were saved by Keras 2 (``tf.keras`` before
TensorFlow 2.16, now the ``tf_keras`` package), and kerasft fine-tunes Keras 3 models.
:func:`to_keras3` rebuilds such a model in Keras 3 with the same layers, names,
trainable flags and weights. It goes through Keras 3's own loader for legacy ``.h5``
files (a tf_keras model object is first written to one), after translating what Keras 3
reads differently, then checks that both models predict the same. Layers with no Keras 3
counterpart are refused before anything is loaded, with a :class:`ConversionError` that
names each of them and says how to convert it by hand: usually rebuild that part in
Keras 3 and :func:`copy_weights`. A llama.cpp ``.gguf`` file is read by
:func:`kerasft.llm.load_gguf` and checked against a NumPy forward pass of the file.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import sys
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from kerasft import surgery
from kerasft._fileio import scratch_directory

__all__ = [
    "ConversionError",
    "ConversionResult",
    "Unconvertible",
    "copy_weights",
    "is_legacy_file",
    "is_tf_keras",
    "keras2_hard_sigmoid",
    "to_keras3",
]

# tf_keras layers that Keras 3 does not have, and why.
_NO_EQUIVALENT = {
    "TFOpLambda": "tf_keras makes this layer of a TensorFlow function called on a tensor "
    "(`x * 2`, `tf.nn.relu(x)`); Keras 3 has no such layer",
    "SlicingOpLambda": "tf_keras makes this layer of a slice of a tensor (`x[:, 0]`); "
    "Keras 3 has no such layer",
    "LocallyConnected1D": "Keras 3 dropped locally connected layers",
    "LocallyConnected2D": "Keras 3 dropped locally connected layers",
    "DenseFeatures": "Keras 3 has no feature columns",
    "SequenceFeatures": "Keras 3 has no feature columns",
}
_MODELS = ("Functional", "Model", "Sequential")
# Config keys that hold nested layers: models, wrappers, RNN cells.
_NESTED_KEYS = ("layers", "layer", "backward_layer", "cell", "cells")
# Arguments Keras 3 refuses that do not change what the layer computes.
_IGNORED = {
    "rng_type": "how tf_keras drew random numbers; augmentation runs only in training",
    "query_shape": "a build shape; Keras 3 builds the layer when it is called",
    "key_shape": "a build shape; Keras 3 builds the layer when it is called",
    "value_shape": "a build shape; Keras 3 builds the layer when it is called",
    "fused": "a choice of BatchNormalization kernel",
    "vocabulary_size": "follows from the vocabulary",
}
_UNUSED_BY_SEPARABLE = ("kernel_initializer", "kernel_regularizer", "kernel_constraint")
# Arguments Keras 3 refuses that change nothing at their tf_keras default; refused otherwise.
_DROPPED_DEFAULTS = {
    "time_major": False,
    "groups": 1,
    "softmax_robust_masking": False,
    "virtual_batch_size": None,
    "adjustment": None,
    "noise_shape": None,
}
_REBUILD_HINT = (
    "rebuild the network in Keras 3 with the same layer names (write each refused layer "
    "with Keras 3 layers or `keras.ops`), then copy the weights across by layer name: "
    "`kerasft.convert.copy_weights(tf_keras_model, keras3_model)` (for a file, "
    "`tf_keras_model = tf_keras.models.load_model(path, compile=False)`)."
)


@keras.saving.register_keras_serializable(package="kerasft", name="keras2_hard_sigmoid")
def keras2_hard_sigmoid(x: Any) -> Any:
    """Keras 2's ``hard_sigmoid``, ``clip(0.2 * x + 0.5, 0, 1)``.

    Keras 3's ``hard_sigmoid`` is ``clip(x / 6 + 0.5, 0, 1)``, a different function of the
    same name, so converted layers (``ConvLSTM2D``'s default recurrent activation, old
    ``LSTM``/``GRU`` configs) use this one instead.
    """
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Unconvertible:
    """One layer that :func:`to_keras3` cannot convert.

    Attributes:
        layer: the layer's path in the model, like ``"backbone/block_1_relu"``.
        class_name: its class name as saved.
        reason: why Keras 3 cannot rebuild it.
        hint: how to convert it by hand.
    """

    layer: str
    class_name: str
    reason: str
    hint: str


class ConversionError(ValueError):
    """A model that cannot be converted to Keras 3; ``problems`` lists each layer at fault."""

    def __init__(self, source: str, problems: list[Unconvertible]):
        self.problems = list(problems)
        lines = [f"Argument `model`: {source} cannot be converted to Keras 3:"]
        lines += [f"  - {p.layer!r} ({p.class_name}): {p.reason}" for p in self.problems]
        for hint in dict.fromkeys(p.hint for p in self.problems):
            names = ", ".join(repr(p.layer) for p in self.problems if p.hint == hint)
            lines.append(f"HINT for {names}: {hint}")
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What :func:`to_keras3` returns.

    Attributes:
        model: the Keras 3 model, uncompiled.
        source: what was converted: ``"tf_keras model 'name'"`` or the file path.
        saved_by: the Keras version that wrote the source (``"2.21.0"``), if known.
        max_abs_diff: the largest difference between the outputs of the source and of
            the converted model on a probe batch, or ``None`` if they were not compared.
        changes: what was translated for Keras 3, one line per layer argument.
        note: why the outputs were not compared, if they were not.
    """

    model: keras.Model
    source: str
    saved_by: str | None
    max_abs_diff: float | None
    changes: tuple[str, ...] = ()
    note: str = ""

    def summary(self) -> str:
        """One line saying what was converted and how closely the outputs agree."""
        check = (
            f"outputs agree to {self.max_abs_diff:.1e}"
            if self.max_abs_diff is not None
            else f"outputs not compared ({self.note})"
        )
        saved = f" (saved by Keras {self.saved_by})" if self.saved_by else ""
        return (
            f"kerasft: converted {self.source}{saved} to Keras 3: {len(self.model.layers)} "
            f"layers, {len(self.changes)} arguments translated, {check}."
        )


def is_tf_keras(obj: Any) -> bool:
    """Whether ``obj`` is a tf_keras (Keras 2) layer or model."""
    # Only an already-imported tf_keras can own the object: never import it for this.
    tfk = sys.modules.get("tf_keras")
    return tfk is not None and isinstance(obj, tfk.layers.Layer)


def is_legacy_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a model saved by Keras 1 or 2 (``.h5``, ``.keras``, SavedModel).

    A ``.h5`` model written by Keras 3 itself is not one: Keras 3 loads it as it is.
    """
    return _saved_by(os.fspath(path)) is not None


def to_keras3(
    model: Any,
    *,
    custom_objects: dict[str, Any] | None = None,
    safe_mode: bool = True,
    verify: bool = True,
    verbose: int = 0,
) -> ConversionResult:
    """Convert a tf_keras (Keras 2) model, or a file saved by Keras 2, into a Keras 3 model.

    The Keras 3 model has the same layers (nested models included), names, trainable
    flags and weights (BatchNormalization statistics included). Keras 3 rebuilds it with
    its loader for legacy ``.h5`` files once the config is translated: arguments Keras 3
    dropped are removed where they change nothing (``time_major=False``, ``groups=1``
    ...), Keras 2's ``hard_sigmoid`` keeps its slope, tensors passed by keyword (the
    ``value`` of ``MultiHeadAttention``) stay connected; ``result.changes`` lists each.
    Then both models run on a probe batch and must agree.

    What cannot be converted is refused up front, each layer named with the way to
    convert it by hand: ``Lambda`` layers under ``safe_mode`` (their Python code would
    run again), layers Keras 3 dropped (``LocallyConnected2D``, feature columns, and the
    ``TFOpLambda`` layers tf_keras makes of ``x * 2`` or ``tf.nn.relu(x)``), custom
    layers without a Keras 3 class in ``custom_objects``, and subclassed models.

    Example:

    ```python
    legacy = tf_keras.models.load_model("pretrained.h5")
    result = kerasft.convert.to_keras3(legacy)
    result.max_abs_diff  # 4.8e-07
    kerasft.finetune(result.model, data)
    ```

    Args:
        model: a tf_keras Sequential or Functional model, or the path of a model saved
            by Keras 2: ``.h5``, or ``.keras``/SavedModel directory (these two are read
            with tf_keras, which must be installed); or a llama.cpp ``.gguf`` file, read
            into a KerasHub ``LlamaCausalLM`` (see :func:`kerasft.llm.load_gguf`).
        custom_objects: Keras 3 classes for custom layers, keyed by the class name in
            the saved config, like ``{"MyLayer": MyKeras3Layer}``. Defaults to `None`.
        safe_mode: refuse ``Lambda`` layers, whose Python code would run again. Set
            ``False`` only for models you trust. Defaults to `True`.
        verify: run both models on a probe batch and raise if their outputs differ. A
            file is compared only if tf_keras can load it too. Defaults to `True`.
        verbose: print one line about the conversion when > 0. Defaults to `0`.

    Returns:
        A :class:`ConversionResult`; ``result.model`` is the uncompiled Keras 3 model.

    Raises:
        ConversionError: (a ``ValueError``) naming each layer that cannot be converted,
            with the recipe to convert it by hand; also if the outputs differ.
        TypeError: if ``model`` is neither a tf_keras model nor a path.
        ValueError: if the path does not exist or holds no model saved by Keras 2.
    """
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".gguf"):
        return _convert_gguf(model, verify=verify, verbose=verbose)
    if isinstance(model, (str, os.PathLike)):
        result = _convert_path(os.fspath(model), custom_objects, safe_mode, verify)
    elif is_tf_keras(model):
        result = _convert_object(model, custom_objects, safe_mode, verify)
    elif isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `model` is already a Keras 3 model ({type(model).__name__} "
            f"{model.name!r}); to_keras3 converts tf_keras (Keras 2) models and files."
        )
    else:
        raise TypeError(
            "Argument `model` must be a tf_keras Sequential/Functional model or the path "
            f"of a model saved by Keras 2. Received: model={model!r} of type "
            f"{type(model).__name__}."
        )
    if verbose:
        print(result.summary(), flush=True)
    return result


def copy_weights(source: Any, target: keras.Model) -> list[str]:
    """Copy the weights of ``source`` into ``target``, layer by layer, matched by name.

    This is the hand conversion for what :func:`to_keras3` refuses: rebuild the network
    in Keras 3 with the same layer names, then copy. Layers of nested models are matched
    by path (``"backbone/conv1"``); layers without weights are skipped.

    Args:
        source: a tf_keras or Keras 3 model holding the weights.
        target: the built Keras 3 model to receive them.

    Returns:
        The paths of the layers whose weights were copied.

    Raises:
        ValueError: if a layer of ``target`` with weights has no layer of the same path
            in ``source``, or their weights differ in number or shape.
    """
    found = dict(_leaf_layers(source))
    copied = []
    for path, layer in _leaf_layers(target):
        if not layer.weights:
            continue
        if path not in found:
            raise ValueError(
                f"Argument `target`: layer {path!r} has weights but `source` has no layer "
                f"of that path. Layers of `source` with weights: "
                f"{[p for p, s in found.items() if s.weights]}."
            )
        values = found[path].get_weights()
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(
                f"Layer {path!r}: `source` has weights of shapes "
                f"{[tuple(v.shape) for v in values]}, `target` expects {shapes}."
            )
        layer.set_weights(values)
        copied.append(path)
    surgery.settle_adapted_layers(target)
    return copied


# ------------------------------------------------------------------------------ sources


def _convert_gguf(path: str | os.PathLike, *, verify: bool, verbose: int) -> ConversionResult:
    """:func:`to_keras3` for a ``.gguf`` file: :func:`kerasft.llm.load_gguf`, then the check.

    The check runs the converted model and :func:`kerasft.llm.reference.reference_logits`
    (NumPy, in llama.cpp's own layout) on a probe sentence and records the largest
    logit difference.

    Returns:
        A :class:`ConversionResult` whose ``model`` is the causal LM.

    Raises:
        ValueError: as :func:`kerasft.llm.load_gguf`, or when the check finds the logits
            apart (> 1e-3).
    """
    # kerasft.llm imports KerasHub: only for GGUF files
    from kerasft.llm.gguf import load_gguf
    from kerasft.llm.reference import reference_logits

    path = os.fspath(path)
    model = load_gguf(path)
    diff, note = None, "verify=False"
    if verify:
        ids = np.asarray(
            model.preprocessor.tokenizer("The quick brown fox jumps over the lazy dog."), np.int32
        )
        ids = ids.reshape(1, -1)
        ours = np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))[0]
        diff, note = float(np.abs(ours - reference_logits(path, list(ids[0]))).max()), ""
        if diff > 1e-3:
            raise ConversionError(
                path,
                [
                    Unconvertible(
                        "llama_backbone",
                        "LlamaBackbone",
                        f"logits differ from the NumPy reference by {diff:.2e}",
                        "report this file's architecture; kerasft reads plain Llama GGUF files",
                    )
                ],
            )
    result = ConversionResult(
        model=model,
        source=path,
        saved_by=None,
        max_abs_diff=diff,
        changes=("tensors dequantized to float32", "query/key rows reordered for KerasHub"),
        note=note,
    )
    if verbose:
        print(result.summary(), flush=True)
    return result


def _convert_object(model: Any, custom_objects, safe_mode: bool, verify: bool) -> ConversionResult:
    source = f"tf_keras model {model.name!r}"
    if not isinstance(model, sys.modules["tf_keras"].Model):
        raise TypeError(
            f"Argument `model` is a tf_keras layer ({type(model).__name__} {model.name!r}), not a "
            "model. HINT: wrap it: `x = tf_keras.Input(shape); tf_keras.Model(x, layer(x))`."
        )
    if type(model).__name__ not in _MODELS:
        raise ConversionError(
            source,
            [
                Unconvertible(
                    model.name,
                    type(model).__name__,
                    "a subclassed model has no config from which Keras 3 could rebuild it",
                    _REBUILD_HINT,
                )
            ],
        )
    custom = {
        path
        for path, layer in _leaf_layers(model)
        if not type(layer).__module__.startswith("tf_keras.")
    }
    with scratch_directory("convert") as tmp:
        file = os.path.join(tmp, "model.h5")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "HDF5 is a legacy format": we know
                model.save(file, include_optimizer=False, save_format="h5")
        except (NotImplementedError, ValueError, TypeError) as e:
            raise ConversionError(
                source,
                [
                    Unconvertible(
                        model.name,
                        type(model).__name__,
                        f"tf_keras could not write its config ({type(e).__name__}: {e})",
                        _REBUILD_HINT,
                    )
                ],
            ) from None
        converted, changes = _load_h5(
            file, source, custom_objects, safe_mode, custom, _lambda_shapes(model)
        )
    changes += _rebind_lambdas(model, converted)
    saved_by = getattr(sys.modules.get("tf_keras"), "__version__", None)
    diff, note = _compare(model, converted, source) if verify else (None, "verify=False")
    return ConversionResult(converted, source, saved_by, diff, tuple(changes), note)


def _convert_path(path: str, custom_objects, safe_mode: bool, verify: bool) -> ConversionResult:
    if not os.path.exists(path):
        raise ValueError(f"Argument `model`: no file or directory at {path!r}.")
    saved_by = _saved_by(path)
    if safe_mode:
        # tf_keras's loaders for .h5 files and SavedModels run a Lambda's code while
        # rebuilding the model, whatever `safe_mode` says: read the saved config first.
        _refuse_code(path)
    if os.path.isdir(path):
        from kerasft.export.loading import check_saved_model_graph

        check_saved_model_graph(path, safe_mode=safe_mode)
    if _is_h5(path):
        _check_h5_model(path)
        with scratch_directory("convert") as tmp:
            file = os.path.join(tmp, "model.h5")
            shutil.copyfile(path, file)  # the config is rewritten in the copy
            # tf_keras, if installed, gives the output shapes of Lambda layers and the
            # reference outputs.
            original, note = (
                _load_with_tf_keras(path, safe_mode) if verify or not safe_mode else (None, "")
            )
            shapes = _lambda_shapes(original) if original is not None else {}
            converted, changes = _load_h5(
                file, repr(path), custom_objects, safe_mode, set(), shapes
            )
        if original is not None:
            changes += _rebind_lambdas(original, converted)
        if not verify:
            original, note = None, "verify=False"
        diff, note = (
            _compare(original, converted, repr(path)) if original is not None else (None, note)
        )
        return ConversionResult(converted, path, saved_by, diff, tuple(changes), note)
    if saved_by is None:
        raise ValueError(
            f"Argument `model`: {path!r} holds no model saved by Keras 2. to_keras3 reads "
            ".h5 files, and .keras files or SavedModel directories written by tf_keras; "
            "Keras 3 loads its own files with keras.models.load_model."
        )
    original, note = _load_with_tf_keras(path, safe_mode)
    if original is None:
        raise ValueError(f"Argument `model`: {path!r} was saved by Keras {saved_by}, but {note}.")
    result = _convert_object(original, custom_objects, safe_mode, verify)
    return dataclasses.replace(result, source=path, saved_by=saved_by)


def _saved_classes(path: str) -> list[tuple[str, str]]:
    """``(layer path, class name)`` of every layer in a Keras 2 file, read without loading it.

    From the config of a ``.h5`` or ``.keras`` file, or the ``keras_metadata.pb`` of a
    SavedModel directory (one record per saved layer, nested ones included).
    """
    if _is_h5(path):
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
        return (
            list(_named_classes(json.loads(_text(raw)), "", root=True)) if raw is not None else []
        )
    if os.path.isdir(path):
        file = os.path.join(path, "keras_metadata.pb")
        if not os.path.isfile(file):
            return []
        with open(file, "rb") as f:
            data = f.read()
        try:
            from tf_keras.protobuf import saved_metadata_pb2
        except ImportError:  # no parser: any mention of a Lambda counts
            return [("?", "Lambda")] if b'"class_name": "Lambda"' in data else []
        metadata = saved_metadata_pb2.SavedMetadata()
        metadata.ParseFromString(data)
        records = []
        for node in metadata.nodes:
            try:
                records.append((node.node_path, json.loads(node.metadata)))
            except ValueError:
                continue
        root = next((r for p, r in records if p == "root"), {})
        if root.get("class_name") in _MODELS and isinstance(root.get("config"), dict):
            return list(
                _named_classes(
                    {"class_name": root["class_name"], "config": root["config"]}, "", root=True
                )
            )
        # A subclassed model has no config: one record per saved layer.
        return [(p, str(r.get("class_name", ""))) for p, r in records]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            try:
                config = json.loads(z.read("config.json"))
            except (KeyError, ValueError):
                return []
        return list(_named_classes(config, "", root=True)) if isinstance(config, dict) else []
    return []


def _refuse_code(path: str) -> None:
    """Raise a :class:`ConversionError` if the Keras 2 file at ``path`` holds ``Lambda`` layers."""
    problems = []
    for layer, class_name in dict.fromkeys(_saved_classes(path)):
        if class_name == "Lambda":
            problems.append(_check_class(class_name, layer, {}, True, set()))
    if problems:
        raise ConversionError(repr(path), problems)


def _is_h5(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith((".h5", ".hdf5"))


def _check_h5_model(path: str) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            has_config = "model_config" in f.attrs
    except OSError as e:
        raise ValueError(f"Argument `model`: {path!r} is not a readable HDF5 file ({e}).") from None
    if not has_config:
        raise ValueError(
            f"Argument `model`: {path!r} holds weights only, no model config. HINT: build the "
            "same model in Keras 3 and call `model.load_weights(path)`."
        )


def _saved_by(path: str) -> str | None:
    """The Keras version (below 3) that wrote the model at ``path``, or ``None``."""
    version = None
    if _is_h5(path):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "model_config" not in f.attrs:
                    return None
                version = f.attrs.get("keras_version", "1")
        except OSError:  # not an HDF5 file
            return None
    elif os.path.isdir(path):
        # Only tf.keras / tf_keras write keras_metadata.pb next to a SavedModel.
        return "2" if os.path.isfile(os.path.join(path, "keras_metadata.pb")) else None
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                version = json.loads(z.read("metadata.json")).get("keras_version")
        except (KeyError, ValueError, zipfile.BadZipFile):  # no or unreadable metadata
            return None
    version = version.decode("utf8") if isinstance(version, bytes) else version
    return version if version and str(version).split(".")[0] in ("1", "2") else None


def _load_with_tf_keras(path: str, safe_mode: bool) -> tuple[Any, str]:
    """The model at ``path`` as tf_keras loads it, or ``(None, why not)``."""
    if importlib.util.find_spec("tf_keras") is None:
        return None, "tf_keras is not installed (pip install tf_keras)"
    import tf_keras

    try:
        return tf_keras.models.load_model(path, compile=False, safe_mode=safe_mode), ""
    except Exception as e:  # unknown custom classes, bad files: many types
        return (
            None,
            f"tf_keras could not load it ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
        )


# ------------------------------------------------------------------- config translation


def _load_h5(
    file: str, source: str, custom_objects, safe_mode: bool, custom: set, shapes: dict
) -> tuple:
    """Translate the model config inside ``file`` (a scratch copy), then load it with Keras 3.

    ``custom`` holds the paths of layers of custom classes, ``shapes`` the output shapes
    of ``Lambda`` layers (Keras 3 cannot infer them when the function calls TensorFlow).
    """
    import h5py

    custom_objects = dict(custom_objects or {})
    with h5py.File(file, "r+") as f:
        config = json.loads(_text(f.attrs["model_config"]))
        problems, changes = [], []
        context = (problems, changes, custom_objects, safe_mode, custom, shapes)
        _translate(config, "", context, root=True)
        if problems:
            raise ConversionError(source, problems)
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Do not pass an `input_shape`" from old configs
            loaded = keras.models.load_model(
                file, compile=False, safe_mode=safe_mode, custom_objects=custom_objects
            )
    except Exception as e:  # Keras raises many types while rebuilding layers
        raise ConversionError(source, [_diagnose(e, config)]) from None
    return loaded, changes


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else value


def _children(config: dict) -> Iterator[dict]:
    for key in _NESTED_KEYS:
        nested = config.get(key)
        for child in nested if isinstance(nested, list) else [nested]:
            if isinstance(child, dict) and isinstance(child.get("config"), dict):
                yield child


def _translate(entry: dict, prefix: str, context: tuple, root: bool = False) -> None:
    """Fix one saved layer config, and the layers nested in it, for Keras 3 (in place)."""
    problems, changes, custom_objects, safe_mode, custom, shapes = context
    class_name, config = entry["class_name"], entry["config"]
    path = prefix + str(config.get("name", class_name))
    inner = "" if root else path + "/" if class_name in _MODELS else prefix
    for child in _children(config):
        _translate(child, inner, context)
    if class_name in _MODELS:
        _translate_graph(config, path, changes)
        return
    if class_name == "ThresholdedReLU" and class_name not in custom_objects:
        # The same function but at x == theta, where ReLU keeps x.
        entry["class_name"] = class_name = "ReLU"
        config["threshold"] = config.pop("theta", 1.0)
        changes.append(f"{path}: ThresholdedReLU -> ReLU(threshold={config['threshold']})")
    problem = _check_class(class_name, path, custom_objects, safe_mode, custom)
    if problem is not None:
        problems.append(problem)
    elif class_name == "Lambda" and config.get("output_shape") is None and path in shapes:
        config["output_shape"] = shapes[path]
        changes.append(f"{path}: output_shape={shapes[path]} (from tf_keras)")
    elif class_name not in custom_objects and class_name not in ("InputLayer", "Lambda"):
        _translate_arguments(entry, path, problems, changes)


def _translate_graph(config: dict, path: str, changes: list) -> None:
    for key in ("input_layers", "output_layers"):
        # Keras 2 saves one input as a list of one; Keras 3 would then expect a list.
        value = config.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            config[key] = value[0]
    layers = config.get("layers", [])
    names = {layer.get("name") for layer in layers}
    # Keras 2 counts a nested model's own graph as its call number 0, so the first call
    # in this model is number 1; Keras 3 numbers that call 0.
    shifted = {
        layer.get("name")
        for layer in layers
        if layer.get("class_name") in _MODELS
        and (layer["config"].get("layers") or [{}])[0].get("class_name") == "InputLayer"
    }

    def shift(value):
        if (
            isinstance(value, list)
            and len(value) >= 3
            and isinstance(value[0], str)
            and value[0] in shifted
        ):
            value[1] -= 1
        elif isinstance(value, list):
            for v in value:
                shift(v)
        elif isinstance(value, dict):
            for v in value.values():
                shift(v)

    if shifted:
        shift(config.get("output_layers"))
        shift([layer.get("inbound_nodes") for layer in layers])
        changes.append(f"{path}: calls of nested models {sorted(shifted)} numbered from 0")
    for layer in layers:
        nodes = layer.get("inbound_nodes", [])
        for i, node in enumerate(nodes):
            rewritten = _node_with_tensor_kwargs(node, names)
            if rewritten is not None:
                nodes[i] = rewritten
                changes.append(
                    f"{path}/{layer.get('name')}: tensors passed by keyword kept connected"
                )


def _node_with_tensor_kwargs(node: Any, names: set) -> dict | None:
    """A Keras 2 call node in Keras 3's format if it passes tensors by keyword, else ``None``.

    Keras 3 reads Keras 2 nodes but leaves keyword arguments as saved, so the ``value``
    tensor of ``MultiHeadAttention(query, value=...)`` would arrive as a list of names.
    """
    if not (
        isinstance(node, list)
        and node
        and all(isinstance(i, list) and len(i) in (3, 4) for i in node)
    ):
        return None
    kwargs = node[-1][3] if len(node[-1]) == 4 else {}
    found = []

    def revive(value):
        if (
            isinstance(value, list)
            and len(value) == 3
            and value[0] in names
            and isinstance(value[1], int)
        ):
            found.append(value)
            return _tensor(value)
        if isinstance(value, list):
            return [revive(v) for v in value]
        if isinstance(value, dict):
            return {k: revive(v) for k, v in value.items()}
        return value

    kwargs = revive(kwargs)
    if not found:
        return None
    args = [_tensor(i[:3]) for i in node]
    return {"args": [args[0] if len(args) == 1 else args], "kwargs": kwargs}


def _tensor(history: list) -> dict:
    # Keras 3 replaces this placeholder by the output of the named layer's node.
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [], "dtype": "float32", "keras_history": history},
    }


def _check_class(class_name, path, custom_objects, safe_mode, custom) -> Unconvertible | None:
    if class_name == "Lambda":
        if not safe_mode:
            return None
        return Unconvertible(
            path,
            class_name,
            "its Python function would run again, which safe_mode=True refuses",
            "if you trust the model, pass safe_mode=False (the function then runs on Keras 3 "
            "tensors: `tf.*` functions work with the TensorFlow backend); otherwise "
            + _REBUILD_HINT,
        )
    if class_name in _NO_EQUIVALENT and class_name not in custom_objects:
        return Unconvertible(path, class_name, _NO_EQUIVALENT[class_name], _REBUILD_HINT)
    if keras.saving.get_registered_object(class_name, custom_objects=custom_objects) is not None:
        return None
    if hasattr(keras.layers, class_name) and path not in custom:
        return None
    kind = (
        "a custom layer" if path in custom else "a custom layer or a tf_keras layer Keras 3 dropped"
    )
    return Unconvertible(
        path,
        class_name,
        f"{kind}: Keras 3 has no layer class {class_name!r}",
        "write it as a Keras 3 layer (subclass keras.layers.Layer with the same __init__ "
        "arguments, get_config and weights in the same order) and pass custom_objects="
        f"{{{class_name!r}: MyLayer}}; or " + _REBUILD_HINT,
    )


def _translate_arguments(entry: dict, path: str, problems: list, changes: list) -> None:
    class_name, config = entry["class_name"], entry["config"]
    cls = getattr(keras.layers, class_name)
    dtype = config.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") == "Policy":  # mixed precision
        config["dtype"] = dtype["config"]["name"]
    axis = config.get("axis")
    if isinstance(axis, list) and len(axis) == 1:
        config["axis"] = axis[0]
    elif "axis" in config and not isinstance(axis, int):
        # Keras 3's h5 loader keeps an int or a list of one, and drops anything else.
        problems.append(
            Unconvertible(
                path,
                class_name,
                f"Keras 3's legacy loader cannot keep axis={axis!r}",
                _REBUILD_HINT,
            )
        )
    for key, value in config.items():
        if key.endswith("activation") and value == "hard_sigmoid":
            config[key] = keras.saving.serialize_keras_object(keras2_hard_sigmoid)
            changes.append(f"{path}: {key}='hard_sigmoid' -> Keras 2's (slope 0.2, not 1/6)")
    if class_name in ("Attention", "AdditiveAttention") and config.get("score_mode") == "dot":
        # The default; Keras 3's h5 loader would turn the string into keras.layers.dot.
        del config["score_mode"]
    for key in _rejected_arguments(cls, config):
        value = config[key]
        if key in _IGNORED:
            why = _IGNORED[key]
        elif "Separable" in class_name and key in _UNUSED_BY_SEPARABLE:
            why = "not used by separable convolutions"
        elif key in _DROPPED_DEFAULTS and value == _DROPPED_DEFAULTS[key]:
            why = "the tf_keras default"
        elif key == "trainable":
            why = "Keras 3's layer takes no `trainable`: it has no weights"
        else:
            problems.append(
                Unconvertible(
                    path,
                    class_name,
                    f"Keras 3's {class_name} has no argument `{key}` (saved value {value!r})",
                    _REBUILD_HINT,
                )
            )
            continue
        del config[key]
        changes.append(f"{path}: dropped {key}={value!r} ({why})")


def _rejected_arguments(cls: type, config: dict) -> list[str]:
    """The keys of ``config`` that Keras 3's ``cls.from_config`` refuses as unknown.

    Asking the class is the only reliable test: many Keras 3 layers take ``**kwargs``
    and pop legacy names inside ``__init__``, which no signature shows.
    """
    trial = {k: v for k, v in config.items() if k not in ("batch_input_shape", "input_shape")}
    rejected = []
    for _ in range(len(config)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cls.from_config(copy.deepcopy(trial))  # from_config may pop nested keys
            break
        except (TypeError, ValueError) as e:
            message = str(e)
            unknown = re.search(
                r"Unrecognized keyword arguments passed to \w+: (\{.*)", message, re.S
            )
            bad = re.findall(r"unexpected keyword argument '(\w+)'", message)
            if unknown:
                bad += [k for k in trial if f"'{k}':" in unknown.group(1)]
            bad = [k for k in bad if k in trial]
            if not bad:  # another complaint: the loader will raise it, with context
                break
            for key in bad:
                trial.pop(key)
                rejected.append(key)
    return rejected


def _diagnose(error: Exception, config: dict) -> Unconvertible:
    """Name the layers behind an error Keras raised while rebuilding the model."""
    message = str(error).strip() or type(error).__name__
    match = re.search(r"(?:passed to |deserializing class '|named )(\w+)", message)
    name = match.group(1) if match else None
    layers = [
        p for p, cls in _named_classes(config, "", root=True) if name in (cls, p.split("/")[-1])
    ]
    return Unconvertible(
        ", ".join(layers) or config["config"].get("name", "?"),
        name or config["class_name"],
        f"Keras 3 could not rebuild it ({type(error).__name__}: {message.splitlines()[0][:400]})",
        _REBUILD_HINT,
    )


def _named_classes(entry: dict, prefix: str, root: bool = False) -> Iterator[tuple[str, str]]:
    config = entry["config"]
    path = prefix + str(config.get("name", entry["class_name"]))
    yield path, entry["class_name"]
    inner = "" if root else path + "/" if entry["class_name"] in _MODELS else prefix
    for child in _children(config):
        yield from _named_classes(child, inner)


# ----------------------------------------------------------------------------- checking


def _rebind_lambdas(original: Any, converted: keras.Model) -> list[str]:
    """Give each converted ``Lambda`` the original's function, with its module's globals.

    Keras 3 rebuilds a saved function with Keras's own globals, where ``tf`` (or ``np``)
    is not defined, so ``lambda x: tf.nn.relu(x)`` would fail with a NameError when
    called. Saved again and reloaded in Keras 3, it fails the same way.
    """
    found = dict(_leaf_layers(original))
    changes = []
    for path, layer in _leaf_layers(converted):
        if isinstance(layer, keras.layers.Lambda) and path in found:
            function = found[path].function
            names = [
                n
                for n in function.__code__.co_names
                if n in function.__globals__ and n not in layer.function.__globals__
            ]
            layer.function = function
            if names:
                changes.append(
                    f"{path}: the function uses {names}, which a Keras 3 reload of a saved file "
                    "would not define: replace this Lambda by a registered layer to save the model"
                )
    return changes


def _lambda_shapes(model: Any) -> dict[str, list]:
    """Output shapes (no batch axis) of the single-output Lambda layers of a tf_keras model."""
    shapes = {}
    for path, layer in _leaf_layers(model):
        try:
            shape = layer.output_shape if type(layer).__name__ == "Lambda" else None
        except (AttributeError, RuntimeError):  # called several times: no single shape
            continue
        if isinstance(shape, tuple) and all(d is None or isinstance(d, int) for d in shape):
            shapes[path] = list(shape[1:])
    return shapes


def _leaf_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, layer)`` for every layer, descending into nested Sequential/Functional models."""
    for layer in model.layers:
        if type(layer).__name__ in _MODELS:
            yield from _leaf_layers(layer, prefix + layer.name + "/")
        else:
            yield prefix + layer.name, layer


def _probe(model: Any) -> list[np.ndarray] | None:
    """A reproducible batch of two for ``model``'s inputs, or ``None`` for text inputs."""
    rng = np.random.default_rng(0)
    batch = []
    for tensor in model.inputs:
        shape = [2] + [32 if d is None else d for d in tuple(tensor.shape)[1:]]
        try:
            dtype = np.dtype(getattr(tensor.dtype, "name", tensor.dtype))
        except TypeError:  # "string"
            return None
        if dtype.kind == "f":
            batch.append(rng.normal(size=shape).astype(dtype))
        elif dtype.kind in "iu":
            batch.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            return None
    return batch


def _outputs(model: Any, batch: list) -> list[np.ndarray]:
    out = model(batch[0] if len(batch) == 1 else batch, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(out)]


def _max_diff(expected: list, got: list) -> float:
    if [e.shape for e in expected] != [g.shape for g in got]:
        return float("inf")
    return max(
        (float(np.max(np.abs(e - g), initial=0.0)) for e, g in zip(expected, got)), default=0.0
    )


def _compare(original: Any, converted: keras.Model, source: str) -> tuple[float | None, str]:
    """The largest output difference on a probe batch; raise if it is not round-off."""
    batch = _probe(original)
    if batch is None:
        return None, "the model takes text inputs"
    try:
        expected = _outputs(original, batch)
    except Exception as e:  # e.g. an Embedding or CategoryEncoding refusing random values
        return None, f"the original model failed on a random probe batch ({type(e).__name__})"
    try:
        diff = _max_diff(expected, _outputs(converted, batch))
    except Exception as e:  # whatever the rebuilt layers raise
        raise ConversionError(
            source,
            [
                Unconvertible(
                    converted.name,
                    type(converted).__name__,
                    f"the converted model fails on a probe batch ({type(e).__name__}: "
                    f"{str(e).strip().splitlines()[0][:300]})",
                    _REBUILD_HINT,
                )
            ],
        ) from None
    scale = max([1.0] + [float(np.max(np.abs(e), initial=0.0)) for e in expected])
    if diff <= 1e-4 * scale:
        return diff, ""
    name = _first_differing_layer(original, converted, batch) or converted.name
    layer = converted.get_layer(name) if name != converted.name else converted
    how = "output shapes differ" if diff == float("inf") else f"outputs differ by up to {diff:.3g}"
    raise ConversionError(
        source,
        [
            Unconvertible(
                name,
                type(layer).__name__,
                f"computes differently in Keras 3: the converted model's {how} on a probe batch",
                _REBUILD_HINT,
            )
        ],
    )


def _first_differing_layer(original: Any, converted: keras.Model, batch: list) -> str | None:
    """The first top-level layer whose output differs between the two models, if one can be told."""
    tfk = sys.modules.get("tf_keras")
    names = [
        layer.name for layer in converted.layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    try:
        before = tfk.Model(original.inputs, [original.get_layer(n).output for n in names])
        after = keras.Model(converted.inputs, [converted.get_layer(n).output for n in names])
        expected, got = _outputs(before, batch), _outputs(after, batch)
    except Exception:  # shared layers, several outputs: no single output to compare
        return None
    for name, e, g in zip(names, expected, got):
        if _max_diff([e], [g]) > 1e-4 * max(1.0, float(np.max(np.abs(e), initial=0.0))):
            return name
    return None
