"""Magnitude pruning for Keras 3 models, with tfmot's algorithm and API.

tfmot (`tensorflow_model_optimization.sparsity.keras`) only prunes tf_keras (Keras 2)
models. This module gives Keras 3 models the same thing: `prune_low_magnitude` wraps the
prunable layers so their smallest weights are masked to zero as training proceeds,
`UpdatePruningStep` drives the masks during `fit`, and `strip_pruning` returns a plain
model whose kernels hold the zeros. Masks match tfmot's for the same weights, schedule
and steps. tf_keras models are handed to tfmot unchanged. `pruning_plan` fits a
schedule to a fine-tuning run in one call. Requires the TensorFlow backend.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
from keras.src.models.functional import Functional  # no public alias in Keras 3.15

from kerasft._pruning_wrapper import (
    PRUNABLE_LAYER_TYPES,
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    PruningSchedule,
    check_pruning_args,
    check_schedule,
    check_weight_ranks,
    is_prunable,
    prunable_weights,
    rearrange_for_m_by_n,
)
from kerasft.tensorboard import _write_scalar

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningPlan",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "UpdatePruningStep",
    "check_m_by_n",
    "prune_low_magnitude",
    "pruning_plan",
    "sparsity_report",
    "strip_pruning",
]

LayerSelection = None | str | Sequence[str] | Callable[[keras.layers.Layer], bool]

# tf_keras classes whose weights tfmot prunes, for reports on tf_keras models.
_TF_KERAS_WEIGHTS = {
    "Dense": "kernel",
    "Conv1D": "kernel",
    "Conv2D": "kernel",
    "Conv3D": "kernel",
    "Conv2DTranspose": "kernel",
    "Conv3DTranspose": "kernel",
    "SeparableConv1D": "pointwise_kernel",
    "SeparableConv2D": "pointwise_kernel",
    "Embedding": "embeddings",
}


# ------------------------------------------------------------------------------ helpers


def _tf_keras():
    # Only an already-imported tf_keras can own the object: never import it ourselves.
    return sys.modules.get("tf_keras")


def _is_tf_keras(obj) -> bool:
    tfk = _tf_keras()
    if tfk is None:
        return False
    if isinstance(obj, (list, tuple)):
        return bool(obj) and all(isinstance(o, tfk.layers.Layer) for o in obj)
    return isinstance(obj, tfk.layers.Layer)


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _check_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "kerasft.pruning needs the TensorFlow backend (its masks are TensorFlow ops, "
            f"like tfmot's schedules). Current backend: {keras.backend.backend()!r}. "
            "HINT: set KERAS_BACKEND=tensorflow before importing keras."
        )


def _is_graph_model(layer) -> bool:
    return isinstance(layer, (keras.Sequential, Functional))


def _leaf_layers(model, graph_only: bool = False) -> Iterable:
    """Layers of `model`, descending into nested models (only graph ones if asked)."""
    for layer in model.layers:
        nested = _is_graph_model(layer) if graph_only else _is_model(layer)
        if nested:
            yield from _leaf_layers(layer, graph_only)
        else:
            yield layer


def _is_model(layer) -> bool:
    tfk = _tf_keras()
    return isinstance(layer, keras.Model) or (tfk is not None and isinstance(layer, tfk.Model))


def _layer_names(model) -> list[str]:
    """Names a `layers=` selection may use: leaf layers, and layers inside wrappers."""
    names = []
    for layer in _leaf_layers(model):
        names.append(layer.name)
        inner = getattr(layer, "layer", None)
        if inner is not None and hasattr(layer, "pruning_vars"):
            names.append(inner.name)
    return names


def _select(model, layers: LayerSelection, candidates: list) -> list:
    """Apply the `layers=` selection to `candidates` (leaf layers of `model`)."""
    names = _layer_names(model)
    if layers is None:
        return candidates
    if isinstance(layers, str):
        try:
            pattern = re.compile(layers)
        except re.error as e:
            raise ValueError(
                f"Argument `layers` is not a valid regular expression ({e}). "
                f"Received: layers={layers!r}"
            ) from None
        if not any(pattern.fullmatch(name) for name in names):
            raise ValueError(
                f"No layer name matches layers={layers!r} (a regex matched against the "
                f"whole name). Existing layers are: {names}"
            )
        return [layer for layer in candidates if pattern.fullmatch(layer.name)]
    if callable(layers):
        return [layer for layer in candidates if layers(layer)]
    if isinstance(layers, (list, tuple, set)) and all(isinstance(n, str) for n in layers):
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(
                f"No layer named {unknown[0]!r} in model '{model.name}'. "
                f"Existing layers are: {names}"
            )
        by_name = {layer.name: layer for layer in candidates}
        missing = [n for n in layers if n not in by_name]
        if missing:
            raise ValueError(
                f"Layer {missing[0]!r} has no prunable weights. Prunable types are: "
                f"{list(PRUNABLE_LAYER_TYPES)}. Prunable layers of model '{model.name}' "
                f"are: {list(by_name)}"
            )
        return [by_name[n] for n in layers]
    raise TypeError(
        "Argument `layers` must be None, a layer name or regex (str), a list of layer "
        f"names, or a callable `layer -> bool`. Received: layers={layers!r}"
    )


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


def _masked_value(weight, mask) -> np.ndarray:
    return np.asarray(weight.numpy()) * np.asarray(mask.numpy())


def _to_tfmot_schedule(schedule):
    tfmot = _tfmot()
    if isinstance(schedule, ConstantSparsity):
        return tfmot.sparsity.keras.ConstantSparsity(**schedule.get_config())
    if isinstance(schedule, PolynomialDecay):
        return tfmot.sparsity.keras.PolynomialDecay(**schedule.get_config())
    return schedule


# --------------------------------------------------------------------------- prune/strip


def prune_low_magnitude(
    model_or_layers,
    pruning_schedule=None,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    layers: LayerSelection = None,
):
    """Make a model (or layers) prune its smallest weights to zero while it trains.

    Given a Keras 3 Functional or Sequential model, returns a copy in which each selected
    prunable layer (Dense, Conv1D/2D/3D and their transposes, DepthwiseConv1D/2D,
    SeparableConv1D/2D, Embedding, or any layer defining ``get_prunable_weights()``) is
    wrapped in `PruneLowMagnitude`. The copy has the same weights; the input model is
    left untouched. Masks follow tfmot's algorithm exactly: every `frequency` steps of
    the schedule they keep the largest-magnitude weights (or blocks, or m of every n),
    and the masked weights are zeroed before each step. Train with `UpdatePruningStep`
    in the callbacks, then call `strip_pruning` to get a plain model.

    A tf_keras (Keras 2) model, layer or list of layers is passed to
    `tfmot.sparsity.keras.prune_low_magnitude` unchanged (with `layers=`, the selected
    layers are wrapped with tfmot through `tf_keras.models.clone_model`, as tfmot's guide
    recommends), so it gets real tfmot wrappers.

    To make a custom Keras 3 layer prunable, give it a method ``get_prunable_weights()``
    returning the list of its `keras.Variable`s to prune, and register the layer with
    `keras.saving.register_keras_serializable()` so the pruned model can be saved.

    Example:

    >>> inputs = keras.Input((8,), name="x")
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    >>> pruned = prune_low_magnitude(model, ConstantSparsity(0.5, begin_step=0))
    >>> [layer.name for layer in pruned.layers]
    ['x', 'prune_low_magnitude_fc']

    Args:
        model_or_layers: a Keras 3 Functional or Sequential model, a Keras 3 layer, a
            list of layers, or the tf_keras equivalents.
        pruning_schedule: when to update the masks and to which sparsity: kerasft's or
            tfmot's `ConstantSparsity` / `PolynomialDecay`, or any callable
            ``schedule(step) -> (should_prune, sparsity)`` returning TensorFlow scalars.
            Defaults to `ConstantSparsity(0.5, begin_step=0)` (tfmot's default).
        block_size: ``(height, width)`` blocks of a rank-2 weight (Dense, Embedding)
            pruned together, scored by their pooled magnitude. Defaults to `(1, 1)`.
        block_pooling_type: ``"AVG"`` or ``"MAX"`` pooling of a block's magnitudes.
            Defaults to `"AVG"`.
        sparsity_m_by_n: ``(m, n)`` with ``0 < m < n`` to zero m of every n consecutive
            weights along the input channels (``(2, 4)`` for sparse tensor cores). The
            masks are computed once, at the first training step; the schedule's
            sparsity is ignored. Defaults to `None`.
        layers: which layers of a model to prune: `None` for every prunable layer, a
            string matched as a regex against whole layer names (non-prunable matches
            are skipped), a list of exact layer names (each must be prunable), or a
            callable ``layer -> bool`` asked about each prunable layer. Layers inside
            nested models are included. Defaults to `None`.

    Returns:
        The pruned model (not compiled unless `model` was, in which case it is compiled
        from the same configuration with a fresh optimizer), a `PruneLowMagnitude`
        layer, or a list of layers.

    Raises:
        ValueError: for an invalid argument, a layer selection that matches nothing,
            a model with no prunable layer, or block / m-by-n sparsity on weights of
            the wrong rank.
        TypeError: if `model_or_layers` is not a layer, list of layers or model.
    """
    block_size, sparsity_m_by_n = check_pruning_args(
        block_size, block_pooling_type, sparsity_m_by_n
    )
    if pruning_schedule is not None:
        check_schedule(pruning_schedule)
    if _is_tf_keras(model_or_layers):
        return _prune_tf_keras(
            model_or_layers, pruning_schedule, block_size, block_pooling_type,
            sparsity_m_by_n, layers,
        )  # fmt: skip
    _check_backend()
    if pruning_schedule is None:
        pruning_schedule = ConstantSparsity(0.5, begin_step=0)
    params = dict(
        pruning_schedule=pruning_schedule,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
    )
    if isinstance(model_or_layers, keras.Model):
        return _prune_model(model_or_layers, params, layers)
    if layers is not None:
        raise ValueError(
            "Argument `layers` only applies to models. Received: "
            f"layers={layers!r} with a {type(model_or_layers).__name__}"
        )
    if isinstance(model_or_layers, keras.layers.Layer):
        return _wrap(model_or_layers, params)
    if isinstance(model_or_layers, (list, tuple)) and all(
        isinstance(layer, keras.layers.Layer) for layer in model_or_layers
    ):
        return [
            layer if isinstance(layer, keras.layers.InputLayer) else _wrap(layer, params)
            for layer in model_or_layers
        ]
    raise TypeError(
        "Argument `model_or_layers` must be a Keras 3 (or tf_keras) Functional or "
        "Sequential model, a layer, or a list of layers. "
        f"Received: model_or_layers={model_or_layers!r}"
    )


def _wrap(layer, params) -> PruneLowMagnitude:
    if isinstance(layer, PruneLowMagnitude):
        return layer
    if layer.built:
        check_weight_ranks(
            layer, prunable_weights(layer), params["block_size"], params["sparsity_m_by_n"]
        )
    return PruneLowMagnitude(layer, **params)


def _prune_model(model, params, layers):
    if not _is_graph_model(model):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model, which cannot be cloned with "
            "wrapped layers. HINT: build it as a Functional or Sequential model, or wrap "
            "its layers with `prune_low_magnitude(layer)` where you create them."
        )
    leaves = list(_leaf_layers(model, graph_only=True))
    candidates = [
        layer for layer in leaves if is_prunable(layer) and not isinstance(layer, PruneLowMagnitude)
    ]
    if not candidates and not any(isinstance(layer, PruneLowMagnitude) for layer in leaves):
        raise ValueError(
            f"Argument `model_or_layers`: model '{model.name}' has no prunable layer. "
            f"Prunable types are: {list(PRUNABLE_LAYER_TYPES)}. Received layers of types: "
            f"{sorted({type(layer).__name__ for layer in leaves})}"
        )
    selected = _select(model, layers, candidates)
    if not selected:
        raise ValueError(
            f"Argument `layers` selects no prunable layer of model '{model.name}'. "
            f"Received: layers={layers!r}. Prunable layers are: "
            f"{[layer.name for layer in candidates]}"
        )
    for layer in selected:
        if not layer.built:
            raise ValueError(f"Layer '{layer.name}' is not built. HINT: build the model first.")
        check_weight_ranks(
            layer, prunable_weights(layer), params["block_size"], params["sparsity_m_by_n"]
        )
    selected_ids = {id(layer) for layer in selected}
    copies = []  # (original layer, new layer that receives its weights)

    def clone(layer):
        if isinstance(layer, PruneLowMagnitude):
            new = PruneLowMagnitude.from_config(layer.get_config())
            copies.append((layer, new))
        elif id(layer) in selected_ids:
            inner = _clone_layer(layer)
            new = PruneLowMagnitude(inner, **params)
            copies.append((layer, inner))
        else:
            new = _clone_layer(layer)
            copies.append((layer, new))
        return new

    pruned = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for original, new in copies:
        new.set_weights(original.get_weights())
    _compile_like(model, pruned)
    return pruned


def _compile_like(source, target) -> None:
    """Compile `target` as `source` was (fresh optimizer, same settings), if it was."""
    if not getattr(source, "compiled", False):
        return
    try:
        target.compile_from_config(source.get_compile_config())
    except Exception as e:  # custom losses or metrics that do not serialize
        warnings.warn(
            f"kerasft.pruning could not compile the new model '{target.name}' like "
            f"'{source.name}' ({type(e).__name__}: {e}); it is returned uncompiled. "
            "HINT: call `compile()` on it before training.",
            stacklevel=3,
        )


def _prune_tf_keras(to_prune, schedule, block_size, block_pooling_type, m_by_n, layers):
    tfmot = _tfmot()
    params = dict(
        block_size=block_size, block_pooling_type=block_pooling_type, sparsity_m_by_n=m_by_n
    )
    if schedule is not None:
        params["pruning_schedule"] = _to_tfmot_schedule(schedule)
    prune = tfmot.sparsity.keras.prune_low_magnitude
    tfk = _tf_keras()
    if layers is None:
        return prune(to_prune, **params)
    if not isinstance(to_prune, tfk.Model):
        raise ValueError(
            "Argument `layers` only applies to models. Received: "
            f"layers={layers!r} with a {type(to_prune).__name__}"
        )
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry as registry,
    )

    candidates = [
        layer
        for layer in _leaf_layers(to_prune)
        if registry.supports(layer) or hasattr(layer, "get_prunable_weights")
    ]
    selected = {id(layer) for layer in _select(to_prune, layers, candidates)}
    if not selected:
        raise ValueError(
            f"Argument `layers` selects no prunable layer of model '{to_prune.name}'. "
            f"Received: layers={layers!r}"
        )
    return tfk.models.clone_model(
        to_prune,
        clone_function=lambda layer: prune(layer, **params) if id(layer) in selected else layer,
    )


def strip_pruning(model):
    """Return a plain copy of a pruned model whose weights hold the zeros.

    Every `PruneLowMagnitude` layer is replaced by a copy of the layer it wraps (with its
    original name) whose pruned weights are ``weight * mask``; other layers are copied
    with their weights. The result has no pruning variables and no pruning cost at
    inference, saves and exports like any Keras 3 model, and compresses well. The
    input model is left untouched. tf_keras models go to `tfmot.sparsity.keras.strip_pruning`.

    Example:

    >>> inputs = keras.Input((8,), name="x")
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    >>> stripped = strip_pruning(prune_low_magnitude(model))
    >>> [layer.name for layer in stripped.layers]
    ['x', 'fc']

    Args:
        model: a Keras 3 Functional or Sequential model with pruned layers, a single
            `PruneLowMagnitude` layer, or a tf_keras model pruned by tfmot.

    Returns:
        A model or layer without wrappers. A compiled `model` gives a model compiled
        with the same settings and a fresh optimizer.

    Raises:
        TypeError: if `model` is neither a model nor a `PruneLowMagnitude` layer.
        ValueError: if `model` is a subclassed model.
    """
    if _is_tf_keras(model):
        return _tfmot().sparsity.keras.strip_pruning(model)
    if isinstance(model, PruneLowMagnitude):
        layer = _clone_layer(model.layer)
        if model.built:
            layer.build_from_config(model.layer.get_build_config())
            layer.set_weights(_stripped_weights(model))
        return layer
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a Keras 3 Functional or Sequential model or a "
            f"PruneLowMagnitude layer. Received: model={model!r}"
        )
    stripped = _strip_model(model)
    _compile_like(model, stripped)
    return stripped


def _strip_model(model):
    if not _is_graph_model(model):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model and cannot be cloned. HINT: copy "
            "the masked weights yourself: `weight.assign(weight * mask)` for each "
            "`(weight, mask, threshold)` in `layer.pruning_vars`."
        )
    copies = []

    def clone(layer):
        if isinstance(layer, PruneLowMagnitude):
            new = _clone_layer(layer.layer)
            copies.append((new, _stripped_weights(layer)))
        else:
            new = _clone_layer(layer)
            copies.append((new, layer.get_weights()))
        return new

    stripped = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for new, weights in copies:
        new.set_weights(weights)
    return stripped


def _stripped_weights(wrapper: PruneLowMagnitude) -> list[np.ndarray]:
    masked = {id(w): _masked_value(w, m) for w, m, _ in wrapper.pruning_vars}
    return [masked.get(id(v), np.asarray(v.numpy())) for v in wrapper.layer.weights]


# ----------------------------------------------------------------------------- callbacks


def _wrappers(model) -> list[PruneLowMagnitude]:
    # _flatten_layers also finds wrappers inside custom layers of subclassed models.
    flatten = getattr(model, "_flatten_layers", None)
    layers = flatten(include_self=False, recursive=True) if flatten else _leaf_layers(model)
    return [layer for layer in layers if isinstance(layer, PruneLowMagnitude)]


class UpdatePruningStep(keras.callbacks.Callback):
    """Drive the pruning masks of a Keras 3 model during `fit`.

    Required when training a model from `prune_low_magnitude`: without it the first
    training step fails. At the start of training it sets each layer's pruning step to
    0 if the model is fresh (a model loaded mid-pruning keeps its step and resumes the
    schedule). Steps are then counted and masks updated inside the compiled train
    step, so the callback itself costs nothing per batch. At the end of every epoch
    (and of training) it assigns ``weight * mask`` to the pruned weights, so the model
    saved afterwards holds exact zeros, as tfmot's callback does.

    Example:

    >>> callback = UpdatePruningStep()
    >>> # pruned.fit(x, y, epochs=2, callbacks=[callback])
    """

    def __init__(self):
        super().__init__()
        self.prunable_layers: list[PruneLowMagnitude] = []

    def on_train_begin(self, logs=None):
        self.prunable_layers = _wrappers(self.model)
        if not self.prunable_layers:
            warnings.warn(
                f"UpdatePruningStep: model '{self.model.name}' has no PruneLowMagnitude "
                "layer, so the callback does nothing. HINT: pass the model returned by "
                "`prune_low_magnitude()` to `fit`.",
                stacklevel=2,
            )
        for layer in self.prunable_layers:
            if int(layer.pruning_step.numpy()) == -1:
                layer.pruning_step.assign(0)

    def on_epoch_end(self, epoch, logs=None):
        for layer in self.prunable_layers:
            layer.apply_masks()

    def on_train_end(self, logs=None):
        self.on_epoch_end(-1)


class PruningSummaries(keras.callbacks.Callback):
    """Log each pruned weight's sparsity and threshold for TensorBoard.

    At the start of training and at the end of every epoch (or every `update_freq`
    batches), writes scalars ``<mask path>/sparsity`` (fraction of zeros in the mask)
    and ``<threshold path>/threshold`` to event files under ``log_dir/metrics``, stepped
    by the optimizer's iterations: tfmot's tags and layout. Unlike tfmot's callback of
    the same name, it logs pruning only, and needs no `tensorboard` package (which
    `keras.callbacks.TensorBoard` does); for losses and metrics add that callback or
    `kerasft.TensorBoardLogger` with the same `log_dir`.

    Example:

    >>> callbacks = [UpdatePruningStep(), PruningSummaries(log_dir="/tmp/logs")]

    Args:
        log_dir: directory for the event files (``metrics/`` is created inside).
        update_freq: ``"epoch"``, or an int to also log every `update_freq` batches.
            Defaults to `"epoch"`.

    Raises:
        ValueError: if `log_dir` is empty or not a path, or `update_freq` is invalid.
    """

    def __init__(self, log_dir: str | os.PathLike, update_freq: str | int = "epoch"):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(
                f"Argument `log_dir` must be a non-empty path. Received: log_dir={log_dir!r}"
            )
        if update_freq != "epoch" and not (
            isinstance(update_freq, numbers.Integral)
            and not isinstance(update_freq, bool)
            and update_freq > 0
        ):
            raise ValueError(
                "Argument `update_freq` must be 'epoch' or a positive int. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None

    def on_train_begin(self, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        self._log()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            self._log()

    def on_epoch_end(self, epoch, logs=None):
        self._log()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _log(self):
        optimizer = getattr(self.model, "optimizer", None)
        step = int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer else 0
        with self._writer.as_default():
            for layer in _wrappers(self.model):
                for _, mask, threshold in layer.pruning_vars:
                    sparsity = 1.0 - float(np.mean(mask.numpy()))
                    _write_scalar(f"{mask.path}/sparsity", sparsity, step)
                    _write_scalar(f"{threshold.path}/threshold", float(threshold.numpy()), step)
        self._writer.flush()


# ------------------------------------------------------------------------------- reports


def _pruned_arrays(model) -> list[tuple[Any, str, list[np.ndarray]]]:
    """``(layer, name, effective weights)`` for each layer with prunable weights."""
    tfk = _tf_keras()
    tfmot_wrapper = None
    if tfk is not None and "tensorflow_model_optimization" in sys.modules:
        from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

        tfmot_wrapper = pruning_wrapper.PruneLowMagnitude
    found = []
    for layer in _leaf_layers(model):
        if isinstance(layer, PruneLowMagnitude) or (
            tfmot_wrapper is not None and isinstance(layer, tfmot_wrapper)
        ):
            arrays = [_masked_value(w, m) for w, m, _ in layer.pruning_vars]
            found.append((layer.layer, layer.layer.name, arrays))
        elif isinstance(layer, keras.layers.Layer) and is_prunable(layer) and layer.built:
            found.append(
                (layer, layer.name, [np.asarray(w.numpy()) for w in prunable_weights(layer)])
            )
        elif tfk is not None and isinstance(layer, tfk.layers.Layer):
            attr = _TF_KERAS_WEIGHTS.get(type(layer).__name__)
            if attr is not None and layer.built:
                found.append((layer, layer.name, [np.asarray(getattr(layer, attr).numpy())]))
    return found


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Fraction of zeros in the prunable weights of a model, per layer and in total.

    Attributes:
        layers: layer name -> fraction of zeros in that layer's prunable weights
            (for a wrapped layer, the name of the layer inside the wrapper).
        sizes: layer name -> number of prunable weights.
        total: zeros / weights over all prunable weights of the model.
    """

    layers: dict[str, float]
    sizes: dict[str, int]
    total: float

    def __str__(self) -> str:
        width = max([len(name) for name in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'weights':>10}  sparsity"]
        for name, sparsity in self.layers.items():
            lines.append(f"{name:<{width}}  {self.sizes[name]:>10,}  {sparsity:8.2%}")
        lines.append(f"{'total':<{width}}  {sum(self.sizes.values()):>10,}  {self.total:8.2%}")
        return "\n".join(lines)


def sparsity_report(model) -> SparsityReport:
    """Measure how sparse the prunable weights of a model are.

    Works on pruned models (counting ``weight * mask``), stripped models and plain ones,
    in Keras 3 or tf_keras (tfmot wrappers included). Only prunable weights count:
    kernels of the prunable layer types, not biases or normalization parameters.

    Example:

    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    >>> sparsity_report(model).layers
    {'fc': 0.0}

    Args:
        model: a built model.

    Returns:
        A `SparsityReport`; ``print()`` it for a table.

    Raises:
        ValueError: if the model has no prunable weights.
    """
    found = _pruned_arrays(model)
    if not found:
        raise ValueError(
            f"Model '{model.name}' has no prunable weights to report on. Prunable types "
            f"are: {list(PRUNABLE_LAYER_TYPES)}."
        )
    layers, sizes, zeros = {}, {}, 0
    for _, name, arrays in found:
        size = sum(a.size for a in arrays)
        layer_zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays)
        layers[name], sizes[name] = layer_zeros / size, size
        zeros += layer_zeros
    return SparsityReport(layers=layers, sizes=sizes, total=zeros / sum(sizes.values()))


def check_m_by_n(model, m: int = 2, n: int = 4, layers: LayerSelection = None) -> bool:
    """Check that selected layers have at most ``n - m`` non-zeros in every n weights.

    Groups are taken along the input channels as `prune_low_magnitude` (and tfmot's
    ``is_pruned_m_by_n`` with ``last_channel="C_OUT"``) forms them; a trailing partial
    group may hold at most ``n - m`` non-zeros too.

    Example:

    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    >>> check_m_by_n(model, 2, 4)
    False

    Args:
        model: a pruned, stripped or plain model (Keras 3 or tf_keras).
        m: zeros required in each group. Defaults to `2`.
        n: group size. Defaults to `4`.
        layers: which layers to check, as in `prune_low_magnitude` (names, regex or
            callable). Defaults to `None` (every layer with prunable weights).

    Returns:
        True if every checked weight follows the pattern.

    Raises:
        ValueError: if ``0 < m < n`` does not hold, or the selection matches nothing.
    """
    if not (
        all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (m, n))
        and 0 < m < n
    ):
        raise ValueError(
            f"Arguments `m` and `n` must be ints with 0 < m < n. Received: m={m!r}, n={n!r}"
        )
    found = _pruned_arrays(model)
    chosen = {id(layer) for layer in _select(model, layers, [f[0] for f in found])}
    if not chosen:
        raise ValueError(
            f"Argument `layers` selects no prunable layer. Received: layers={layers!r}"
        )
    for layer, _, arrays in found:
        if id(layer) not in chosen:
            continue
        for array in arrays:
            if not 2 <= array.ndim <= 5:
                return False
            groups = np.asarray(rearrange_for_m_by_n(tf.constant(array)))
            pad = (-groups.shape[1]) % n
            groups = np.pad(groups, [(0, 0), (0, pad)]).reshape(groups.shape[0], -1, n)
            if (np.count_nonzero(groups, axis=-1) > n - m).any():
                return False
    return True


# ---------------------------------------------------------------------------------- plan


# Defaults of `pruning_plan`, and the options `finetune(prune=...)` passes on to it.
_SCHEDULE_DEFAULTS = dict(
    target_sparsity=None,
    begin_fraction=0.0,
    end_fraction=0.7,
    frequency=None,
    initial_sparsity=0.0,
    power=3,
    block_size=(1, 1),
    block_pooling_type="AVG",
    sparsity_m_by_n=None,
)
FINETUNE_PRUNE_OPTIONS = (*_SCHEDULE_DEFAULTS, "layers", "log_dir")


class PruningPlan(NamedTuple):
    """What `pruning_plan` returns: train `model` with `callbacks`, then `strip()`."""

    model: keras.Model
    callbacks: list
    schedule: Any

    def strip(self):
        """`strip_pruning(self.model)`: the plain model with zeros in its kernels."""
        return strip_pruning(self.model)


def pruning_plan(
    model,
    *,
    total_steps: int,
    target_sparsity: float | None = None,
    begin_fraction: float = 0.0,
    end_fraction: float = 0.7,
    frequency: int | None = None,
    initial_sparsity: float = 0.0,
    power: float = 3,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    layers: LayerSelection = None,
    log_dir: str | os.PathLike | None = None,
) -> PruningPlan:
    """Prepare a model to be pruned during a training run of `total_steps` steps.

    Fits a `PolynomialDecay` schedule to the run: sparsity rises from
    `initial_sparsity` at ``begin_fraction * total_steps`` to `target_sparsity` at
    ``end_fraction * total_steps`` (rounded down to whole multiples of `frequency`, so
    that the last mask update reaches the target), then the model trains on at that
    sparsity to recover. Masks are updated about 20 times (every 100 steps at most).

    Example:

    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    >>> plan = pruning_plan(model, total_steps=200, target_sparsity=0.8)
    >>> plan.schedule.get_config()["end_step"], plan.schedule.get_config()["frequency"]
    (140, 7)
    >>> # plan.model.compile(...); plan.model.fit(..., callbacks=plan.callbacks)
    >>> stripped = plan.strip()

    Args:
        model: the model to prune (Keras 3, or tf_keras which gets tfmot's wrappers).
        total_steps: number of optimizer steps the training run will take, for example
            ``epochs * ceil(num_examples / batch_size)``.
        target_sparsity: final fraction of zeros in each pruned weight, in ``[0, 1)``.
            Defaults to `None`: 0.8, or ``m / n`` with `sparsity_m_by_n`.
        begin_fraction: fraction of the run after which pruning begins. Defaults to `0.0`.
        end_fraction: fraction of the run at which `target_sparsity` is reached.
            Defaults to `0.7`.
        frequency: steps between mask updates. Defaults to `None` (about 20 updates).
        initial_sparsity: sparsity of the first update. Defaults to `0.0`.
        power: exponent of the polynomial ramp. Defaults to `3`.
        block_size: see `prune_low_magnitude`. Defaults to `(1, 1)`.
        block_pooling_type: see `prune_low_magnitude`. Defaults to `"AVG"`.
        sparsity_m_by_n: see `prune_low_magnitude`; the masks are then set at the first
            step and the ramp is not used. Defaults to `None`.
        layers: see `prune_low_magnitude`. Defaults to `None` (all prunable layers).
        log_dir: if given, a `PruningSummaries` callback logs there. Defaults to `None`.

    Returns:
        A `PruningPlan` ``(model, callbacks, schedule)``: the pruned model (compile it
        before `fit`, its variables are new), the callbacks to pass to `fit`, and the
        schedule. ``plan.strip()`` returns the stripped model after training.

    Raises:
        ValueError: for an invalid argument (see also `prune_low_magnitude`).
    """
    schedule, block_size, sparsity_m_by_n = _fit_schedule(
        total_steps=total_steps,
        target_sparsity=target_sparsity,
        begin_fraction=begin_fraction,
        end_fraction=end_fraction,
        frequency=frequency,
        initial_sparsity=initial_sparsity,
        power=power,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
    )
    pruned = prune_low_magnitude(
        model,
        pruning_schedule=schedule,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
        layers=layers,
    )
    if _is_tf_keras(model):
        tfmot = _tfmot()
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        if log_dir is not None:
            callbacks.append(tfmot.sparsity.keras.PruningSummaries(log_dir=str(log_dir)))
    else:
        callbacks = [UpdatePruningStep()]
        if log_dir is not None:
            callbacks.append(PruningSummaries(log_dir=log_dir))
    return PruningPlan(model=pruned, callbacks=callbacks, schedule=schedule)


def _fit_schedule(
    *,
    total_steps,
    target_sparsity,
    begin_fraction,
    end_fraction,
    frequency,
    initial_sparsity,
    power,
    block_size,
    block_pooling_type,
    sparsity_m_by_n,
):
    """Validate `pruning_plan`'s arguments and fit its schedule to `total_steps`."""
    if (
        not isinstance(total_steps, numbers.Integral)
        or isinstance(total_steps, bool)
        or total_steps < 1
    ):
        raise ValueError(
            f"Argument `total_steps` must be a positive int. Received: total_steps={total_steps!r}"
        )
    if not (
        isinstance(begin_fraction, numbers.Real)
        and isinstance(end_fraction, numbers.Real)
        and 0.0 <= begin_fraction < end_fraction <= 1.0
    ):
        raise ValueError(
            "Arguments `begin_fraction` and `end_fraction` must satisfy "
            "0 <= begin_fraction < end_fraction <= 1. Received: "
            f"begin_fraction={begin_fraction!r}, end_fraction={end_fraction!r}"
        )
    if frequency is not None and (
        not isinstance(frequency, numbers.Integral) or isinstance(frequency, bool) or frequency < 1
    ):
        raise ValueError(
            f"Argument `frequency` must be None or a positive int. Received: frequency={frequency!r}"
        )
    block_size, sparsity_m_by_n = check_pruning_args(
        block_size, block_pooling_type, sparsity_m_by_n
    )
    if target_sparsity is not None and (
        not isinstance(target_sparsity, numbers.Real)
        or isinstance(target_sparsity, bool)
        or not 0.0 <= target_sparsity < 1.0
    ):
        raise ValueError(
            "Argument `target_sparsity` must be None or a float in [0, 1). "
            f"Received: target_sparsity={target_sparsity!r}"
        )
    if not isinstance(power, numbers.Real) or isinstance(power, bool) or power <= 0:
        raise ValueError(f"Argument `power` must be a number > 0. Received: power={power!r}")
    if sparsity_m_by_n is not None:
        implied = sparsity_m_by_n[0] / sparsity_m_by_n[1]
        if target_sparsity is not None and abs(target_sparsity - implied) > 1e-9:
            raise ValueError(
                f"Argument `target_sparsity` must be None or m / n = {implied} with "
                f"sparsity_m_by_n={sparsity_m_by_n}. Received: target_sparsity={target_sparsity!r}"
            )
        target_sparsity = implied
    elif target_sparsity is None:
        target_sparsity = 0.8

    begin_step = int(begin_fraction * total_steps + 0.5)
    span = max(1, int(end_fraction * total_steps + 0.5) - begin_step)
    if frequency is None:
        frequency = min(100, max(1, round(span / 20)))
    frequency = min(frequency, span)
    end_step = begin_step + (span // frequency) * frequency
    if sparsity_m_by_n is not None:
        schedule = ConstantSparsity(target_sparsity, begin_step, end_step, frequency)
    else:
        schedule = PolynomialDecay(
            initial_sparsity, target_sparsity, begin_step, end_step, power, frequency
        )
    return schedule, block_size, sparsity_m_by_n


# ------------------------------------------------------------------- kerasft.finetune


def _finetune_options(prune, *, recipe: str, **other_options) -> dict | None:
    """Validate `finetune`'s ``prune=`` (None, a target sparsity, or `pruning_plan` options).

    `other_options` are the `finetune` options that rewrite layers or their variables
    (per-layer rates, regularizers, constraints), which do not yet know about pruning
    wrappers. Returns the `pruning_plan` keyword arguments, or None for no pruning.
    """
    if prune is None or prune is False:
        return None
    if recipe not in ("lp-ft", "full", "head"):
        raise ValueError(
            "Argument `prune` works with recipe 'lp-ft', 'full' or 'head' (it prunes "
            f"during the last phase). Received: recipe={recipe!r} with prune={prune!r}"
        )
    clashes = {k: v for k, v in other_options.items() if v is not None and v is not False}
    if clashes:
        raise ValueError(
            f"Argument `prune` cannot be combined with {sorted(clashes)} yet. Received: "
            f"prune={prune!r}, "
            + ", ".join(f"{k}={v!r}" for k, v in sorted(clashes.items()))
            + ". HINT: prune the fine-tuned model afterwards with `pruning_plan`."
        )
    if isinstance(prune, numbers.Real) and not isinstance(prune, bool):
        options = {"target_sparsity": prune}
    elif isinstance(prune, dict):
        options = dict(prune)
    else:
        raise ValueError(
            "Argument `prune` must be None, a target sparsity in [0, 1) or a dict of "
            f"`kerasft.pruning.pruning_plan` options. Received: prune={prune!r}"
        )
    unknown = sorted(set(options) - set(FINETUNE_PRUNE_OPTIONS))
    if unknown:
        raise ValueError(
            f"Argument `prune` has unknown option(s) {unknown}. Valid options are: "
            f"{list(FINETUNE_PRUNE_OPTIONS)} (the fine-tuning run sets `total_steps`). "
            f"Received: prune={prune!r}"
        )
    schedule_options = {k: v for k, v in options.items() if k not in ("layers", "log_dir")}
    try:
        _fit_schedule(total_steps=100, **{**_SCHEDULE_DEFAULTS, **schedule_options})
    except ValueError as e:
        raise ValueError(f"Argument `prune`: {e}") from None
    return options


def _finetune_plan(model, options: dict, total_steps: int, steps_per_epoch: int, head=None):
    """Prune `model` for a fine-tuning phase; return the plan and the first full epoch.

    Without `layers` in `options`, the largest prunable layers that the phase trains,
    together holding 95% of their weights, are pruned; the head and the small layers
    (often the first convolutions) stay dense: pruning them saves little and costs the
    most accuracy. The returned epoch index is the first whose end is at or after the
    schedule's end_step: from there on the model has its target sparsity, so the best
    weights and early stopping only look at those epochs.
    """
    options = dict(options)
    if options.get("layers") is None:
        trained = [
            layer
            for layer in _leaf_layers(model, graph_only=True)
            if is_prunable(layer) and layer.trainable and layer is not head
        ]
        if not trained:
            raise ValueError(
                f"Argument `prune`: the fine-tuning phase trains no prunable layer of model "
                f"'{model.name}' besides its head, so there is nothing to prune. Prunable "
                f"types are: {list(PRUNABLE_LAYER_TYPES)}. HINT: unfreeze more layers "
                "(`unfreeze=`) or name the layers to prune with prune=dict(layers=[...])."
            )
        options["layers"] = _largest_layers(trained, share=_FINETUNE_WEIGHT_SHARE)
    plan = pruning_plan(model, total_steps=total_steps, **options)
    end_step = plan.schedule.get_config()["end_step"]
    first_full_epoch = max(0, -(-end_step // steps_per_epoch) - 1)
    return plan, first_full_epoch


_FINETUNE_WEIGHT_SHARE = 0.95


def _largest_layers(layers: list, share: float) -> list[str]:
    """Names of the largest `layers` that together hold `share` of their prunable weights."""
    sizes = [
        (sum(int(np.prod(w.shape)) for w in prunable_weights(lyr)), lyr.name) for lyr in layers
    ]
    sizes.sort(key=lambda pair: -pair[0])
    total, kept, names = sum(size for size, _ in sizes), 0, []
    for size, name in sizes:
        if kept >= share * total:
            break
        names.append(name)
        kept += size
    return names


def _finetune_finish(plan: PruningPlan, model) -> tuple[keras.Model, dict]:
    """Strip the model pruned during `finetune`; return it and what to record."""
    stripped = _strip_model(model)
    report = sparsity_report(stripped)
    schedule = plan.schedule.get_config()
    target = schedule.get("final_sparsity", schedule.get("target_sparsity"))
    wrapped = {layer.layer.name for layer in _wrappers(model)}
    layers = {name: value for name, value in report.layers.items() if name in wrapped}
    pruned_sizes = [report.sizes[name] for name in layers]
    pruned_sparsity = (
        sum(report.layers[n] * report.sizes[n] for n in layers) / sum(pruned_sizes)
        if pruned_sizes
        else 0.0
    )
    if pruned_sparsity < target - 0.01:
        warnings.warn(
            f"kerasft: the pruned layers reached {pruned_sparsity:.1%} sparsity, short of the "
            f"target {target:.1%}: training stopped before the schedule's end_step "
            f"({schedule['end_step']}).",
            RuntimeWarning,
            stacklevel=3,
        )
    return stripped, {
        "target_sparsity": float(target),
        "sparsity": float(pruned_sparsity),
        "model_sparsity": float(report.total),
        "layers": layers,
        "schedule": {"class_name": type(plan.schedule).__name__, **schedule},
    }
