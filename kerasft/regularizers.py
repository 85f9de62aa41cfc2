"""Keeping pretrained knowledge: the L2-SP regularizer and a weight-clipping constraint.

L2-SP (Li, Grandvalet & Davoine, ICML 2018) pulls fine-tuned weights toward their
pretrained values, ``alpha * ||w - w0||^2``, instead of toward zero as plain weight
decay does, and puts a plain ``beta * ||w||^2`` on the new layers. Here it is a
registered Keras regularizer that holds its reference values, attached to each weight
the usual way (``kernel_regularizer`` ...) so it shows in ``model.losses`` and is saved
with the model. ``ClipWeights`` is a registered constraint that keeps weights in
``[-c, c]`` after each update.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kerasft import _keras_compat as compat
from kerasft import surgery

__all__ = ["L2SP", "apply_l2sp", "ClipWeights", "clip_weights"]

_PACKAGE = "kerasft"
# Variable names whose regularizer / constraint attribute has another stem.
_ATTRIBUTE_STEMS = {
    "depthwise_kernel": "depthwise",
    "pointwise_kernel": "pointwise",
    "recurrent_kernel": "recurrent",
}
_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def check_strength(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError naming argument ``name`` unless finite and >= 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not np.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"Argument `{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def _encode(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array, dtype="float32")
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def _decode(blob: dict[str, Any]) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(blob["data"]), dtype=blob.get("dtype", "float32"))
    return data.reshape(blob["shape"]).copy()


@keras.saving.register_keras_serializable(package=_PACKAGE)
class L2SP(keras.regularizers.Regularizer):
    """Penalty ``alpha * sum((w - w0) ** 2)``: stay close to the pretrained ``w0``.

    Keras's convention (as ``keras.regularizers.L2``) without the paper's 1/2. The
    reference values are part of the config (base64 float32), so a model saved with
    this regularizer reloads with its pretrained anchor; that adds about 5.4 bytes per
    regularized weight to the saved config.

    Example:

    >>> reg = L2SP(alpha=0.5, reference=np.zeros((2,), "float32"))
    >>> float(reg(keras.ops.convert_to_tensor([1.0, 2.0])))
    2.5

    Args:
        alpha: strength of the pull toward the reference.
        reference: the pretrained values, same shape as the weight.

    Raises:
        ValueError: for a negative ``alpha`` or a missing reference.
    """

    def __init__(self, alpha: float, reference: np.ndarray | dict[str, Any]):
        self.alpha = check_strength("alpha", alpha)
        if isinstance(reference, dict):
            reference = _decode(reference)
        if reference is None:
            raise ValueError("Argument `reference` (the pretrained values) is required.")
        self.reference = np.asarray(reference, dtype="float32").copy()
        # A variable rather than a constant: the traced train step then captures a
        # handle instead of embedding a copy of the weights in the graph.
        self._reference = keras.Variable(self.reference, trainable=False, name="l2sp_reference")

    def __call__(self, x):
        if tuple(x.shape) != self.reference.shape:
            raise ValueError(
                f"L2SP reference has shape {self.reference.shape} but the weight has shape "
                f"{tuple(x.shape)}."
            )
        diff = x - keras.ops.cast(self._reference, x.dtype)
        return self.alpha * keras.ops.sum(keras.ops.square(diff))

    def get_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "reference": _encode(self.reference)}


def _attribute(layer: keras.layers.Layer, variable, suffix: str) -> str | None:
    """Name of the layer attribute (e.g. ``kernel_regularizer``) that governs ``variable``."""
    stem = _ATTRIBUTE_STEMS.get(variable.name, variable.name)
    attr = f"{stem}_{suffix}"
    return attr if hasattr(layer, attr) else None


def _trainable_kind(layer: keras.layers.Layer) -> list:
    # Frozen layers report no trainable weights; their variables are still listed here.
    return compat.trainable_kind_weights(layer)


def _select(model: keras.Model, layers: Any, argument: str) -> list:
    """The leaf layers ``layers`` selects (all when `None`), as ``kerasft.select_layers`` does."""
    chosen = surgery.select_layers(model, layers, argument=argument)
    # A subclassed model nested in a graph is a leaf of the walk, not a layer with regularizers.
    return [layer for layer in chosen if not isinstance(layer, keras.Model)]


def _attach(layer, variable, suffix: str, value, unsaved: list[str]) -> None:
    attr = _attribute(layer, variable, suffix)
    if attr is None:
        unsaved.append(variable.path)
    else:
        setattr(layer, attr, value)
    setattr(variable, suffix, value)


def apply_l2sp(
    model: keras.Model,
    alpha: float = 1e-3,
    beta: float = 1e-3,
    *,
    new_layers: str | Sequence[str] | None = None,
    reference: keras.Model | None = None,
    include_normalization: bool = False,
) -> dict[str, list[str]]:
    """Put L2-SP on a model: pretrained weights pulled to their start, new ones to zero.

    Each weight of a pretrained layer gets ``L2SP(alpha, reference=w0)`` as its
    regularizer, each weight of a new layer gets ``keras.regularizers.L2(beta)`` (the
    paper's second term). The regularizers are set both on the variable (so
    ``model.losses`` includes them from the next step; recompile or call
    ``kerasft.callbacks.sync_optimizer`` if a train function was already traced) and
    on the layer's ``kernel_regularizer``-style attribute, so they are saved.

    Example:

    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(3, name="body")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> sorted(apply_l2sp(model, alpha=0.1, beta=0.01, new_layers="head"))
    ['l2', 'l2sp', 'unsaved']

    Args:
        model: the model to regularize, with its pretrained weights loaded.
        alpha: strength of the pull toward the pretrained values. Defaults to `1e-3`.
        beta: L2 strength on the weights of ``new_layers``; ``0`` leaves them
            unregularized. Defaults to `1e-3`.
        new_layers: the layers that are new, e.g. a replaced head, as
            ``kerasft.select_layers`` takes them (regexes matched in full against layer
            paths or names, classes, a callable). Defaults to `None` (every layer is pretrained,
            unless ``reference`` says otherwise).
        reference: the pretrained model to take ``w0`` from; layers are matched by name
            and weight shapes, and layers it lacks count as new. Defaults to `None`
            (the model's current weights are ``w0``).
        include_normalization: also regularize normalization layers' scale and offset.
            Defaults to `False`.

    Returns:
        ``{"l2sp": [paths], "l2": [paths], "unsaved": [paths]}``: the weights given
        each penalty, and those of layers without a regularizer attribute (regularized,
        but not saved with the model).

    Raises:
        ValueError: for a negative strength or a regex matching no layer.
    """
    alpha = check_strength("alpha", alpha)
    beta = check_strength("beta", beta)
    new_ids = {id(lyr) for lyr in _select(model, new_layers, "new_layers")} if new_layers else set()
    ref_layers = {}
    if reference is not None:
        ref_layers = {lyr.name: lyr for lyr in _select(reference, None, "reference")}
    report: dict[str, list[str]] = {"l2sp": [], "l2": [], "unsaved": []}
    replaced = []
    for layer in _select(model, None, "model"):
        if isinstance(layer, _NORMALIZATION) and not include_normalization:
            continue
        variables = _trainable_kind(layer)
        if not variables:
            continue
        anchors = None
        if id(layer) not in new_ids:
            if reference is None:
                anchors = [keras.ops.convert_to_numpy(v) for v in variables]
            else:
                twin = ref_layers.get(layer.name)
                twin_vars = _trainable_kind(twin) if twin is not None else []
                if [tuple(v.shape) for v in twin_vars] == [tuple(v.shape) for v in variables]:
                    anchors = [keras.ops.convert_to_numpy(v) for v in twin_vars]
        for i, v in enumerate(variables):
            if getattr(v, "regularizer", None) is not None and (anchors is not None or beta):
                replaced.append(v.path)
            if anchors is not None:
                reg = L2SP(alpha, reference=anchors[i])
                report["l2sp"].append(v.path)
            elif not beta:
                continue
            else:
                reg = keras.regularizers.L2(beta)
                report["l2"].append(v.path)
            _attach(layer, v, "regularizer", reg, report["unsaved"])
    if replaced:
        warnings.warn(f"apply_l2sp replaced the existing regularizers of {replaced}.", stacklevel=2)
    if report["unsaved"]:
        warnings.warn(
            f"Weights {report['unsaved']} belong to layers without a regularizer argument: "
            "they are regularized now but the regularizer will not be saved with the model.",
            stacklevel=2,
        )
    return report


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClipWeights(keras.constraints.Constraint):
    """Constraint keeping every weight in ``[-c, c]`` (applied after each optimizer step).

    Example:

    >>> keras.ops.convert_to_numpy(ClipWeights(0.5)(keras.ops.array([-2.0, 0.1, 0.7]))).tolist()
    [-0.5, 0.10000000149011612, 0.5]

    Args:
        c: the bound, > 0.

    Raises:
        ValueError: for a non-positive ``c``.
    """

    def __init__(self, c: float):
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not np.isfinite(c) or c <= 0:
            raise ValueError(f"Argument `c` must be a finite number > 0. Received: c={c!r}")
        self.c = float(c)

    def __call__(self, w):
        return keras.ops.clip(w, -self.c, self.c)

    def get_config(self) -> dict[str, Any]:
        return {"c": self.c}


def clip_weights(
    model: keras.Model, c: float, layers: str | Sequence[str] | None = None
) -> list[str]:
    """Attach ``ClipWeights(c)`` to the trainable weights of chosen layers.

    The constraint goes on the variable (the optimizer applies it after each update)
    and on the layer's ``kernel_constraint``-style attribute, so it is saved.

    Example:

    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    >>> clip_weights(model, 0.1, layers="fc")
    ['fc/kernel', 'fc/bias']

    Args:
        model: the model.
        c: the bound, > 0.
        layers: the layers to constrain, as ``kerasft.select_layers`` takes them
            (regexes matched in full against layer paths or names, classes, a callable).
            Defaults to `None` (every layer but normalization layers, whose scales
            are not weights to bound).

    Returns:
        Paths of the constrained weights.

    Raises:
        ValueError: for a non-positive ``c`` or a regex matching no layer.
    """
    constraint = ClipWeights(c)
    done, unsaved = [], []
    for layer in _select(model, layers, "layers"):
        if layers is None and isinstance(layer, _NORMALIZATION):
            continue
        for v in _trainable_kind(layer):
            _attach(layer, v, "constraint", constraint, unsaved)
            done.append(v.path)
    if unsaved:
        warnings.warn(
            f"Weights {unsaved} belong to layers without a constraint argument: they are "
            "clipped now but the constraint will not be saved with the model.",
            stacklevel=2,
        )
    return done
