"""How sparse a model's prunable weights are: per-layer reports and the m-by-n check.

`sparsity_report` counts the zeros in the prunable weights of a pruned, stripped or
plain model (Keras 3, or tf_keras with tfmot's wrappers); `check_m_by_n` checks the
structured pattern that sparse tensor cores need.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft.pruning.prune import (
    LayerSelection,
    leaf_layers,
    masked_value,
    select_layers,
    tf_keras_module,
)
from kerasft.pruning.wrapper import (
    PRUNABLE_LAYER_TYPES,
    PruneLowMagnitude,
    is_prunable,
    prunable_weights,
    rearrange_for_m_by_n,
)

__all__ = ["SparsityReport", "sparsity_report", "check_m_by_n"]

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


def _pruned_arrays(model) -> list[tuple[Any, str, list[np.ndarray]]]:
    """``(layer, name, effective weights)`` for each layer with prunable weights."""
    tfk = tf_keras_module()
    tfmot_wrapper = None
    if tfk is not None and "tensorflow_model_optimization" in sys.modules:
        from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

        tfmot_wrapper = pruning_wrapper.PruneLowMagnitude
    found = []
    for layer in leaf_layers(model):
        if isinstance(layer, PruneLowMagnitude) or (
            tfmot_wrapper is not None and isinstance(layer, tfmot_wrapper)
        ):
            arrays = [masked_value(w, m) for w, m, _ in layer.pruning_vars]
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
    chosen = {id(layer) for layer in select_layers(model, layers, [f[0] for f in found])}
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
