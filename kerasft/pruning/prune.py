"""Wrap a model's prunable layers for magnitude pruning, and strip the wrappers after training.

`prune_low_magnitude` returns a copy of a Keras 3 model whose selected layers are wrapped
in `PruneLowMagnitude`, so their smallest weights are masked to zero as training
proceeds; `strip_pruning` returns a plain model whose kernels hold the zeros. tf_keras
models are handed to tfmot unchanged. Also the layer selection (``layers=``) and the
tf_keras helpers that the other pruning modules share.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence

import keras
import numpy as np

from kerasft import surgery
from kerasft.pruning.schedules import ConstantSparsity, check_schedule, to_tfmot_schedule
from kerasft.pruning.wrapper import (
    PRUNABLE_LAYER_TYPES,
    PruneLowMagnitude,
    check_pruning_args,
    check_weight_ranks,
    is_prunable,
    prunable_weights,
)

__all__ = ["prune_low_magnitude", "strip_pruning", "LayerSelection"]

LayerSelection = None | str | Sequence[str] | Callable[[keras.layers.Layer], bool]


# ------------------------------------------------------------------------------ helpers


def tf_keras_module():
    """The `tf_keras` module if it is imported, else `None`."""
    # Only an already-imported tf_keras can own the object: never import it ourselves.
    return sys.modules.get("tf_keras")


def is_tf_keras(obj) -> bool:
    """Whether `obj` is a tf_keras layer or model, or a non-empty list of tf_keras layers."""
    tfk = tf_keras_module()
    if tfk is None:
        return False
    if isinstance(obj, (list, tuple)):
        return bool(obj) and all(isinstance(o, tfk.layers.Layer) for o in obj)
    return isinstance(obj, tfk.layers.Layer)


def tfmot_module():
    """`tensorflow_model_optimization`, imported now (only ever for tf_keras models)."""
    import tensorflow_model_optimization as tfmot

    return tfmot


def _check_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "kerasft.pruning needs the TensorFlow backend (its masks are TensorFlow ops, "
            f"like tfmot's schedules). Current backend: {keras.backend.backend()!r}. "
            "HINT: set KERAS_BACKEND=tensorflow before importing keras."
        )


def leaf_layers(model, graph_only: bool = False) -> list:
    """Layers of `model`, descending into nested models (only graph ones if asked).

    The walk is ``kerasft.surgery.walk_layers``; without ``graph_only`` it also looks into
    subclassed and tf_keras models.
    """
    if graph_only:
        return [layer for _, layer in surgery.leaf_layers(model)]
    return [
        n.layer for n in surgery.walk_layers(model, sublayers=_is_model) if not _is_model(n.layer)
    ]


def _is_model(layer) -> bool:
    tfk = tf_keras_module()
    return isinstance(layer, keras.Model) or (tfk is not None and isinstance(layer, tfk.Model))


def _looked_into(layer) -> bool:
    """Where a `layers=` selection looks: into models, and into pruning wrappers (a
    wrapped layer keeps its name, so a stripped and a pruned model select alike)."""
    return _is_model(layer) or hasattr(layer, "pruning_vars")


def select_layers(model, layers: LayerSelection, candidates: list) -> list:
    """Apply the `layers=` selection to `candidates` (the prunable layers of `model`).

    Strings, classes and layers select as ``kerasft.select_layers`` does (a regex matched
    in full against each layer's path or name); a name that only matched names before
    is honoured with a FutureWarning. A callable is asked about each candidate only.
    """
    if layers is None:
        return candidates
    if callable(layers) and not isinstance(layers, type) and not hasattr(layers, "weights"):
        return [layer for layer in candidates if layers(layer)]
    ids = {id(layer) for layer in candidates}

    def select(spec) -> list:
        found = surgery.select_layers(
            model, spec, argument="layers", sublayers=_looked_into, legacy="name"
        )
        return [layer for layer in found if id(layer) in ids]

    if isinstance(layers, (list, tuple, set)) and all(isinstance(n, str) for n in layers):
        # Each listed name must be prunable: a name is a promise, not a filter.
        chosen: set[int] = set()
        for name in layers:
            hits = select(name)
            if not hits:
                raise ValueError(
                    f"Layer {name!r} has no prunable weights. Prunable types are: "
                    f"{list(PRUNABLE_LAYER_TYPES)}. Prunable layers of model '{model.name}' "
                    f"are: {[layer.name for layer in candidates]}"
                )
            chosen |= {id(layer) for layer in hits}
        return [layer for layer in candidates if id(layer) in chosen]
    chosen = {id(layer) for layer in select(layers)}
    return [layer for layer in candidates if id(layer) in chosen]


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


def masked_value(weight, mask) -> np.ndarray:
    """``weight * mask`` as a numpy array."""
    return np.asarray(weight.numpy()) * np.asarray(mask.numpy())


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
        layers: which layers of a model to prune: `None` for every prunable layer; a
            string, a layer class or a layer, selected as ``kerasft.select_layers``
            does (a string is a regex matched in full against each layer's path or
            name; non-prunable matches are skipped); a list of names or regexes (each
            must select a prunable layer); or a callable ``layer -> bool`` asked about
            each prunable layer. Layers inside nested models are included.
            Defaults to `None`.

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
    if is_tf_keras(model_or_layers):
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
    if not surgery.is_container(model):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model, which cannot be cloned with "
            "wrapped layers. HINT: build it as a Functional or Sequential model, or wrap "
            "its layers with `prune_low_magnitude(layer)` where you create them."
        )
    leaves = leaf_layers(model, graph_only=True)
    candidates = [
        layer for layer in leaves if is_prunable(layer) and not isinstance(layer, PruneLowMagnitude)
    ]
    if not candidates and not any(isinstance(layer, PruneLowMagnitude) for layer in leaves):
        raise ValueError(
            f"Argument `model_or_layers`: model '{model.name}' has no prunable layer. "
            f"Prunable types are: {list(PRUNABLE_LAYER_TYPES)}. Received layers of types: "
            f"{sorted({type(layer).__name__ for layer in leaves})}"
        )
    selected = select_layers(model, layers, candidates)
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
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a raw operation (`x + y`, `x[:, 0]`): no weights, shared as is
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
    surgery.settle_adapted_layers(pruned)
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
    tfmot = tfmot_module()
    params = dict(
        block_size=block_size, block_pooling_type=block_pooling_type, sparsity_m_by_n=m_by_n
    )
    if schedule is not None:
        params["pruning_schedule"] = to_tfmot_schedule(schedule)
    prune = tfmot.sparsity.keras.prune_low_magnitude
    tfk = tf_keras_module()
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
        for layer in leaf_layers(to_prune)
        if registry.supports(layer) or hasattr(layer, "get_prunable_weights")
    ]
    selected = {id(layer) for layer in select_layers(to_prune, layers, candidates)}
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
    if is_tf_keras(model):
        return tfmot_module().sparsity.keras.strip_pruning(model)
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
    stripped = strip_model(model)
    _compile_like(model, stripped)
    return stripped


def strip_model(model):
    """`strip_pruning` for a Keras 3 graph model, without compiling the copy."""
    if not surgery.is_container(model):
        raise ValueError(
            f"Model '{model.name}' is a subclassed model and cannot be cloned. HINT: copy "
            "the masked weights yourself: `weight.assign(weight * mask)` for each "
            "`(weight, mask, threshold)` in `layer.pruning_vars`."
        )
    copies = []

    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a raw operation: no weights, shared as is
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
    surgery.settle_adapted_layers(stripped)
    return stripped


def _stripped_weights(wrapper: PruneLowMagnitude) -> list[np.ndarray]:
    masked = {id(w): masked_value(w, m) for w, m, _ in wrapper.pruning_vars}
    return [masked.get(id(v), np.asarray(v.numpy())) for v in wrapper.layer.weights]
