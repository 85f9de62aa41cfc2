"""Keys of what ``finetune`` calls share: digests of what determines it exactly.

:func:`inputs_key` digests the values of the training and validation inputs;
:func:`prefix_key` digests a prefix's graph (layer classes, configurations and
connections, the cut; not the names Keras numbers globally), the values of its weights,
and the inputs' key. A fresh copy of the same pretrained model on the same data gets
the same key. :func:`network_key` digests what a training step of a network depends on
besides its weights' values (its graph, every layer's settings, what is trainable), the
key of a compiled model kept for reuse (:mod:`kerasft.speed.compiled`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import keras
import numpy as np

from kerasft import _keras_compat as compat

__all__ = ["inputs_key", "network_key", "prefix_key"]


def _update_with_arrays(digest: Any, arrays: Any) -> None:
    for array in keras.tree.flatten(arrays):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))


def inputs_key(train_inputs: Any, validation_inputs: Any) -> str:
    """A digest of the values of the training and validation inputs (arrays)."""
    digest = hashlib.blake2b(digest_size=20)
    _update_with_arrays(digest, train_inputs)
    digest.update(b"|validation|" if validation_inputs is not None else b"|none|")
    if validation_inputs is not None:
        _update_with_arrays(digest, validation_inputs)
    return digest.hexdigest()


def _without_layer_names(config: Any) -> Any:
    """``config`` with every layer name replaced by its order of appearance.

    Names do not change what a graph computes, but Keras numbers unnamed layers and raw
    operations globally (``get_item_1``, ``get_item_2``...), so two copies of one model
    differ in them. Only where a name stands is rewritten: a layer's ``name`` and the
    references to it (``keras_history``, ``input_layers``, ``output_layers``).
    """
    order: dict[str, str] = {}

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            inner = node.get("config")
            if (
                "class_name" in node
                and isinstance(inner, dict)
                and isinstance(inner.get("name"), str)
            ):
                order.setdefault(inner["name"], f"#{len(order)}")
            for value in node.values():
                collect(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                collect(value)

    def reference(value: Any) -> Any:  # [name, node_index, tensor_index], or lists of them
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            return [order.get(value[0], value[0]), *value[1:]]
        return [reference(v) for v in value] if isinstance(value, (list, tuple)) else value

    def rename(node: Any) -> Any:
        if isinstance(node, (list, tuple)):
            return [rename(value) for value in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "name" and isinstance(value, str):
                out[key] = order.get(value, value)
            elif key in ("keras_history", "input_layers", "output_layers"):
                out[key] = reference(value)
            else:
                out[key] = rename(value)
        return out

    collect(config)
    return rename(config)


def prefix_key(prefix: keras.Model, inputs: str) -> str | None:
    """The store key of ``prefix``'s outputs on the inputs whose key is ``inputs``.

    It digests the prefix's configuration (its layers, their settings and connections,
    and which tensors are its outputs, i.e. the cut), the values of its weights, and
    ``inputs``. ``None`` when the configuration cannot be serialized (a custom layer
    without ``get_config``): such features are never stored.
    """
    try:
        config = dict(prefix.get_config())
        config.pop("name", None)  # the model's name does not change what it computes
        # No `default=`: an object JSON cannot write (a function, a custom object) has no
        # reliable text, and a key it would make could not be trusted.
        text = json.dumps(_without_layer_names(config), sort_keys=True)
    except Exception:
        return None
    digest = hashlib.blake2b(digest_size=20)
    digest.update(inputs.encode())
    digest.update(text.encode())
    for variable in prefix.weights:
        _update_with_arrays(digest, keras.ops.convert_to_numpy(variable))
    return digest.hexdigest()


def network_key(model: keras.Model) -> str | None:
    """The key of ``model``'s training step, its weights' values aside.

    It digests the model's configuration (layers and connections, as for
    :func:`prefix_key`), the class, settings and trainable flag of every layer inside it
    (a nested backbone's configuration need not list a setting changed since it was
    built, such as a frozen layer's dropout set to 0), and the shape, dtype and
    trainable flag of every variable. Two models with the same key compute the same
    training step, so one compiled model can train either. ``None`` when a
    configuration cannot be serialized.

    Example:

    >>> make = lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> network_key(make()) == network_key(make())
    True
    """
    try:
        config = dict(model.get_config())
        config.pop("name", None)
        layers = []
        for layer in compat.flatten_layers(model, include_self=False):
            settings = dict(layer.get_config())
            settings.pop("name", None)
            name = f"{type(layer).__module__}.{type(layer).__qualname__}"
            if isinstance(layer, keras.layers.Normalization) and layer.input_mean is None:
                # Adapted statistics enter a traced step as constants, not as weights.
                values = b"".join(np.asarray(w).tobytes() for w in layer.get_weights())
                settings["adapted"] = hashlib.blake2b(values, digest_size=20).hexdigest()
            layers.append([name, _without_layer_names(settings), bool(layer.trainable)])
        variables = [[list(v.shape), str(v.dtype), bool(v.trainable)] for v in model.variables]
        text = json.dumps([_without_layer_names(config), layers, variables], sort_keys=True)
    except Exception:
        return None
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()
