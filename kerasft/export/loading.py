"""Load a SavedModel back as a trainable Keras model, for more fine-tuning.

`load_for_finetuning` wraps a SavedModel in a `SavedModelLayer` (a `TFSMLayer` whose
variables an optimizer can train) and, for an export of `export_model`, restores its
classification layer as a `Dense` head or puts a new one on its `features` endpoint;
`load_saved_model` is what `kerasft.finetune("path/to/export", data)` calls.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft.export.savedmodel import (
    FEATURES_ENDPOINT,
    METADATA_FILE,
    SERVE_ENDPOINT,
    read_export_metadata,
)

__all__ = [
    "load_for_finetuning",
    "load_saved_model",
    "check_saved_model_graph",
    "SavedModelLayer",
    "SavedModelWarning",
    "UNSAFE_OPS",
]

# Ops that reach outside the model: files, Python, summaries, datasets written to disk.
# A SavedModel's graph runs as saved when it is loaded and called; under safe_mode these
# are refused. The list is of known dangers, not a proof of safety.
UNSAFE_OPS = frozenset(
    {
        "WriteFile",
        "ReadFile",
        "MatchingFiles",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "PrintV2",
        "Save",
        "SaveSlices",
        "SaveV2",
        "MergeV2Checkpoints",
        "Restore",
        "RestoreSlice",
        "RestoreV2",
        "CreateSummaryFileWriter",
        "CreateSummaryDbWriter",
        "WriteSummary",
        "WriteScalarSummary",
        "WriteHistogramSummary",
        "WriteImageSummary",
        "WriteAudioSummary",
        "WriteGraphSummary",
        "WriteRawProtoSummary",
        "ImportEvent",
        "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord",
        "SaveDataset",
        "SaveDatasetV2",
        "ImmutableConst",
        "LoadDataset",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "TextLineDataset",
        "ExperimentalLMDBDataset",
        "LMDBDataset",
        "ExperimentalSqlDataset",
        "SqlDataset",
    }
)
# TensorFlow's own checkpoint functions save and restore the variables with these.
_SAVER_OPS = frozenset(
    {"SaveV2", "MergeV2Checkpoints", "RestoreV2", "Save", "Restore", "RestoreSlice", "SaveSlices"}
)


class SavedModelWarning(UserWarning):
    """A SavedModel's graph runs as saved: loading it trusts the file."""


def check_saved_model_graph(path: str | os.PathLike, *, safe_mode: bool = True) -> None:
    """Look at the ops of a SavedModel before it is loaded; refuse dangerous ones, warn on the rest.

    A SavedModel is a TensorFlow graph, not Keras layers: Keras's ``safe_mode`` (which
    refuses the Python code of ``Lambda`` layers) does not apply to it, and loading and
    calling it runs whatever ops it holds. With ``safe_mode=True`` a graph holding an op of
    :data:`UNSAFE_OPS` outside TensorFlow's own checkpoint functions (writing or reading
    files, calling Python...) is refused; in every case a :class:`SavedModelWarning` says
    that the file is trusted. A graph can do harm with ops not on the list (a huge
    allocation, say): load SavedModels from sources you trust.

    Args:
        path: a SavedModel directory.
        safe_mode: refuse the ops of :data:`UNSAFE_OPS`. Defaults to `True`.

    Raises:
        ValueError: with ``safe_mode=True``, for a graph holding such ops (named, with the
            functions that hold them).
    """
    path = os.fspath(path)
    found = _unsafe_ops(path)
    if found and safe_mode:
        listing = ", ".join(
            f"{op} (in {', '.join(sorted(where)[:3])})" for op, where in sorted(found.items())
        )
        raise ValueError(
            f"Argument `model`: the SavedModel at {path!r} holds ops that reach outside the "
            f"model: {listing}. Its graph would run them when loaded or called, and "
            "safe_mode=True refuses that. If you trust the file, pass safe_mode=False "
            "(CLI: --unsafe)."
        )
    warnings.warn(
        f"Loading the SavedModel at {path!r} runs its TensorFlow graph as saved. Keras's safe_mode "
        "does not cover graphs; kerasft refused known file and Python ops"
        + (" (safe_mode=False: not this time)" if not safe_mode else "")
        + ", but only load SavedModels from sources you trust.",
        SavedModelWarning,
        stacklevel=3,
    )


def _unsafe_ops(path: str) -> dict[str, set[str]]:
    """``{op: {function names}}`` for the ops of :data:`UNSAFE_OPS` in a SavedModel's graph."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    found: dict[str, set[str]] = {}
    for meta_graph in saved.meta_graphs:
        # The main graph holds TF1 savers only; TF2 saves through `_traced_save/restore`.
        graphs = [("graph", meta_graph.graph_def.node, True)]
        graphs += [
            (
                f.signature.name,
                f.node_def,
                "_traced_save" in f.signature.name or "_traced_restore" in f.signature.name,
            )
            for f in meta_graph.graph_def.library.function
        ]
        for name, nodes, saver in graphs:
            for node in nodes:
                if node.op in UNSAFE_OPS and not (saver and node.op in _SAVER_OPS):
                    found.setdefault(node.op, set()).add(name)
    return found


def load_for_finetuning(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    activation: str | None = "softmax",
    endpoint: str | None = None,
    trainable: bool = True,
    safe_mode: bool = True,
) -> keras.Model:
    """Wrap a SavedModel in a trainable Keras model, optionally with a new head.

    The SavedModel becomes a `SavedModelLayer` (a `keras.layers.TFSMLayer`) named
    `"saved_model"` whose variables are the SavedModel's own, so training the returned
    model updates them. Three shapes of model come out:

    - `num_classes=k`: the `features` endpoint that `export_model` writes, with a new
      `Dense(k, activation, name="predictions")` on top.
    - `num_classes=None` on an export of `export_model`: the `features` endpoint with the
      exported classification layer restored on top, as a `Dense` layer holding the
      SavedModel's head weights. It computes what the exported model computed (logits
      stay logits), and `kerasft.finetune` can keep or replace its head.
    - `num_classes=None` on any other SavedModel (or with `endpoint=` given): the
      endpoint itself, its `probabilities` output when it returns kerasft's dict.

    What cannot be recovered from a SavedModel: per-layer structure (the body trains as
    one block, so no gradual unfreezing), training-mode behaviour (dropout stays off and
    batch-norm statistics stay fixed, which is what fine-tuning usually wants anyway),
    and the optimizer state. A model containing the layer saves to `.keras`, but loads
    only with `keras.models.load_model(..., safe_mode=False)` while the SavedModel still
    exists at `path`.

    Example:

    ```python
    export_model(model, "/tmp/mnist_export")
    new = load_for_finetuning("/tmp/mnist_export", num_classes=5)
    new.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    new.fit(x, y, epochs=3)
    ```

    Args:
        path: a SavedModel directory.
        num_classes: size of a new classification head on the `features` endpoint, or
            `None` for no new head. Defaults to `None`.
        activation: activation of the new head. Defaults to `"softmax"`.
        endpoint: name of the SavedModel function to wrap; `None` picks `"features"`
            when the export has it and `"serve"` (or `"serving_default"`) otherwise.
            Defaults to `None`.
        trainable: whether the SavedModel's weights train. Defaults to `True`.
        safe_mode: refuse a graph holding ops that reach outside the model (files,
            Python); see `check_saved_model_graph`. Defaults to `True`.

    Returns:
        An uncompiled `keras.Model` taking the SavedModel's raw inputs.

    Raises:
        ValueError: if `path` is not a SavedModel, has no such endpoint, the endpoint
            takes several inputs or returns an ambiguous dict, or (with
            `trainable=True` and no head on top) exposes no trainable variables; the
            message says why.
    """
    path = os.path.abspath(os.fspath(path))
    _check_num_classes(num_classes)
    signatures = _read_signatures(path)
    check_saved_model_graph(path, safe_mode=safe_mode)
    metadata = None
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        metadata = read_export_metadata(path)
    endpoint, restore_head = _choose_endpoint(path, signatures, endpoint, num_classes, metadata)
    input_name, shape, dtype = _endpoint_input(path, endpoint, signatures[endpoint])

    layer = SavedModelLayer(path, call_endpoint=endpoint, trainable=trainable, name="saved_model")
    # A body without variables (preprocessing only) is fine under a head that trains.
    if trainable and num_classes is None and not restore_head:
        _check_trainable(layer, path, endpoint)

    inputs = keras.Input(shape=tuple(shape[1:]), dtype=dtype, name=input_name)
    outputs = _one_output(layer(inputs), path, endpoint)
    if num_classes is not None:
        if len(outputs.shape) != 2:
            raise ValueError(
                f"Endpoint {endpoint!r} returns shape {tuple(outputs.shape)}; a new head "
                "needs (batch, features). HINT: export the model with a pooled or "
                "flattened feature layer before its classifier."
            )
        outputs = keras.layers.Dense(num_classes, activation=activation, name="predictions")(
            outputs
        )
    elif restore_head:
        outputs = _restored_head(layer, metadata, path)(outputs)
    name = metadata["model_name"] if metadata else "saved_model"
    return keras.Model(inputs, outputs, name=f"{name}_from_saved_model")


def _check_num_classes(num_classes: Any) -> None:
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(
            f"Argument `num_classes` must be a positive integer or None. "
            f"Received: num_classes={num_classes!r}"
        )


def _choose_endpoint(
    path: str,
    signatures: dict[str, Any],
    endpoint: str | None,
    num_classes: int | None,
    metadata: dict | None,
) -> tuple[str, bool]:
    """The endpoint to wrap, and whether the exported head is restored on top of it."""
    if endpoint is not None:
        if endpoint not in signatures:
            raise ValueError(
                f"No endpoint named {endpoint!r} in the SavedModel at {path!r}. "
                f"Existing endpoints are: {sorted(signatures)}"
            )
        return endpoint, False
    if num_classes is not None:
        if FEATURES_ENDPOINT not in signatures:
            why = (
                "its classification layer could not be located when it was exported"
                if metadata is not None
                else "it was not written by kerasft.export_model"
            )
            raise ValueError(
                f"The SavedModel at {path!r} has no {FEATURES_ENDPOINT!r} endpoint "
                f"({why}), so there is no feature layer to attach a new head to. "
                f"Its endpoints are: {sorted(signatures)}. HINT: pass "
                "endpoint='serve' to stack the new head on its outputs instead."
            )
        return FEATURES_ENDPOINT, False
    if FEATURES_ENDPOINT in signatures and metadata is not None:
        return FEATURES_ENDPOINT, True
    if SERVE_ENDPOINT in signatures:
        return SERVE_ENDPOINT, False
    if "serving_default" in signatures:
        return "serving_default", False
    raise ValueError(
        f"The SavedModel at {path!r} has neither a 'serve' nor a 'serving_default' "
        f"endpoint. Its endpoints are: {sorted(signatures)}. Pass one as `endpoint`."
    )


def _endpoint_input(
    path: str, endpoint: str, inputs_info: dict[str, tuple[list | None, str]]
) -> tuple[str, list, str]:
    """The name, shape and dtype of the endpoint's one input."""
    if len(inputs_info) != 1:
        raise ValueError(
            f"Endpoint {endpoint!r} of the SavedModel at {path!r} takes {len(inputs_info)} "
            f"inputs ({sorted(inputs_info)}); load_for_finetuning supports one input tensor."
        )
    ((input_name, (shape, dtype)),) = inputs_info.items()
    if shape is None or len(shape) < 1:
        raise ValueError(
            f"Endpoint {endpoint!r} of the SavedModel at {path!r} takes an input of unknown "
            "rank; a Keras model needs at least the rank of its input."
        )
    return input_name, shape, dtype


def _check_trainable(layer: SavedModelLayer, path: str, endpoint: str) -> None:
    """Refuse to fine-tune through an endpoint without trainable variables."""
    if layer.trainable_weights:
        return
    n_vars = len(layer.non_trainable_weights)
    if n_vars == 0:
        why = (
            "it uses no variables at all: its weights are constants folded into the "
            "graph (a frozen or converted graph), so there is nothing to update"
        )
    else:
        why = f"all {n_vars} of its variables are marked non-trainable in the SavedModel"
    raise ValueError(
        f"Cannot fine-tune the SavedModel at {path!r} through endpoint {endpoint!r}: "
        f"{why}. HINT: re-export it from the Keras model, or pass trainable=False to "
        "use it as a fixed feature extractor."
    )


def _one_output(outputs: Any, path: str, endpoint: str) -> Any:
    """The endpoint's output: its `probabilities` or only tensor when it returns a dict."""
    if not isinstance(outputs, dict):
        return outputs
    if "probabilities" in outputs:
        return outputs["probabilities"]
    if len(outputs) == 1:
        (output,) = outputs.values()
        return output
    raise ValueError(
        f"Endpoint {endpoint!r} of the SavedModel at {path!r} returns several "
        f"outputs {sorted(outputs)} and none is named 'probabilities'; a Keras "
        "model needs one. Pass an `endpoint` that returns a single tensor."
    )


def load_saved_model(path: str | os.PathLike, *, safe_mode: bool = True) -> keras.Model:
    """Load a SavedModel directory as a classifier that `kerasft.finetune` can fine-tune.

    This is what `kerasft.finetune("path/to/saved_model", data)` and
    `kerasft.load_model` do with a directory: `load_for_finetuning(path)`, which for an
    export of `export_model` gives the trainable body (the `features` endpoint) and the
    exported classification layer as a `Dense` head. Other SavedModels (for example from
    Keras's own `model.export`) have no endpoint that stops before the classification
    layer, and their head's weights are folded into one opaque function, so no `Dense`
    head can be separated from them; those are refused with the alternatives.

    Loading runs the SavedModel's graph as saved (Keras's `safe_mode` covers `Lambda`
    layers, not graphs): see `check_saved_model_graph` for what is refused.

    Args:
        path: a SavedModel directory.
        safe_mode: refuse graphs holding ops that reach outside the model. Defaults to `True`.

    Returns:
        An uncompiled `keras.Model`: `SavedModelLayer` body, then a `Dense` head.

    Raises:
        ValueError: if `path` is not a SavedModel, or is one from which no `Dense` head
            can be separated (the message says why and what to do instead).
    """
    path = os.path.abspath(os.fspath(path))
    signatures = _read_signatures(path)
    has_metadata = os.path.isfile(os.path.join(path, METADATA_FILE))
    if FEATURES_ENDPOINT not in signatures or not has_metadata:
        why = (
            "it was written by kerasft.export_model, but its classification layer could "
            "not be located then"
            if has_metadata
            else "it was not written by kerasft.export_model"
        )
        raise ValueError(
            f"Argument `model`: kerasft cannot fine-tune the SavedModel at {path!r}: it has "
            f"no {FEATURES_ENDPOINT!r} endpoint ({why}); its endpoints are "
            f"{sorted(signatures)}. A SavedModel keeps functions, not layers, so without "
            "an endpoint that stops before the classification layer there is no Dense head "
            "to keep or replace. HINT: fine-tune the original .keras model; re-export it "
            "with kerasft.export_model; or build a model yourself with "
            "kerasft.export.load_for_finetuning(path, num_classes=k, endpoint='serve'), "
            "which stacks a new head on the SavedModel's outputs."
        )
    return load_for_finetuning(path, safe_mode=safe_mode)


@keras.saving.register_keras_serializable(package="kerasft")
class SavedModelLayer(compat.TrainableTFSMLayer):
    """A `keras.layers.TFSMLayer` whose weights a Keras optimizer can train.

    `TFSMLayer` names its weights after the SavedModel's variables, such as
    `"dense/kernel:0"`; optimizers derive slot-variable names from them, and the `":"`
    makes `fit` fail with "... is not a valid scope name". This layer strips the
    `":0"` suffix and any other character a scope name rejects. The weights are still
    the SavedModel's own variables, so training updates what the endpoint computes.

    Args:
        filepath: path of the SavedModel.
        call_endpoint: endpoint used as `call()`. Defaults to `"serve"`.
        call_training_endpoint: endpoint used when `training=True`. Defaults to `None`.
        trainable: whether the weights train. Defaults to `True`.
        name: layer name. Defaults to `None`.
        dtype: layer dtype policy. Defaults to `None`.
    """

    def __init__(
        self,
        filepath: str,
        call_endpoint: str = "serve",
        call_training_endpoint: str | None = None,
        trainable: bool = True,
        name: str | None = None,
        dtype=None,
    ):
        super().__init__(
            filepath,
            call_endpoint=call_endpoint,
            call_training_endpoint=call_training_endpoint,
            trainable=trainable,
            name=name,
            dtype=dtype,
        )
        # An endpoint found only among the signatures (not as an attribute) is a
        # signature function, which accepts keyword arguments only.
        self._input_keyword = None
        if not hasattr(compat.reloaded_object(self), call_endpoint):
            _, keywords = self.call_endpoint_fn.structured_input_signature
            if len(keywords) == 1:
                (self._input_keyword,) = keywords

    def call(self, inputs, training=False, **kwargs):
        if self._input_keyword is not None and not (training and self.call_training_endpoint):
            return self.call_endpoint_fn(**{self._input_keyword: inputs}, **kwargs)
        return super().call(inputs, training=training, **kwargs)


def _restored_head(layer: SavedModelLayer, metadata: dict, path: str) -> keras.layers.Dense:
    """A `Dense` layer holding the exported classification layer's weights.

    The `serve` endpoint uses every variable the `features` endpoint uses plus those of
    the classification layer, so the difference is its kernel (and bias).
    """
    loaded = compat.reloaded_object(layer)

    def used(fn_name: str) -> list:
        fn = getattr(loaded, fn_name, None)
        if fn is None:
            return []
        functions = getattr(fn, "concrete_functions", None) or [fn]
        return [v for f in functions for v in f.variables]

    features = {v.ref() for v in used(FEATURES_ENDPOINT)}
    extra = {v.ref(): v for v in used(SERVE_ENDPOINT) if v.ref() not in features}
    kernels = [v for v in extra.values() if len(v.shape) == 2]
    biases = [v for v in extra.values() if len(v.shape) == 1]
    dim = metadata.get("features_dim")
    units = (
        1
        if metadata.get("output_kind") in ("sigmoid", "binary_logits")
        else metadata.get("num_classes")
    )
    if (
        len(kernels) != 1
        or len(biases) > 1
        or tuple(kernels[0].shape) != (dim, units)
        or (biases and tuple(biases[0].shape) != (units,))
    ):
        shapes = sorted(str(tuple(v.shape)) for v in extra.values())
        raise ValueError(
            f"The SavedModel at {path!r} does not hold its classification layer as one "
            f"({dim}, {units}) kernel and a bias: the variables its 'serve' endpoint uses "
            f"beyond 'features' have shapes {shapes}. HINT: pass num_classes= for a new "
            "head, or endpoint='serve'."
        )
    activation = {"softmax": "softmax", "sigmoid": "sigmoid"}.get(metadata["output_kind"])
    head = keras.layers.Dense(
        units,
        activation=activation,
        use_bias=bool(biases),
        name=metadata.get("head") or "predictions",
    )
    head.build((None, dim))
    head.set_weights([np.asarray(v.numpy()) for v in kernels + biases])
    return head


def _read_signatures(path: str) -> dict[str, dict[str, tuple[list | None, str]]]:
    """Map each signature of a SavedModel to its inputs: name -> (shape, dtype).

    Reads `saved_model.pb` only, without restoring variables.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    if not os.path.exists(path):
        raise ValueError(f"Argument `path`: {path!r} does not exist.")
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.isdir(path) or not os.path.isfile(pb):
        hint = ""
        if path.endswith(".tflite"):
            hint = (
                " HINT: a TFLite file stores weights as constants for inference only; "
                "fine-tune from the SavedModel or the .keras model instead."
            )
        elif path.endswith((".keras", ".h5")):
            hint = " HINT: load a Keras model file with keras.models.load_model."
        raise ValueError(
            f"Argument `path`: {path!r} is not a SavedModel directory (no saved_model.pb)." + hint
        )
    saved = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved.ParseFromString(f.read())
    signatures: dict[str, dict[str, tuple[list | None, str]]] = {}
    for meta_graph in saved.meta_graphs:
        for key, sig in meta_graph.signature_def.items():
            if key.startswith("__"):  # e.g. __saved_model_init_op
                continue
            inputs = {}
            for name, info in sig.inputs.items():
                dims = info.tensor_shape
                shape = (
                    None
                    if dims.unknown_rank
                    else [None if d.size < 0 else int(d.size) for d in dims.dim]
                )
                inputs[name] = (shape, tf.dtypes.as_dtype(info.dtype).name)
            signatures[key] = inputs
    return signatures
