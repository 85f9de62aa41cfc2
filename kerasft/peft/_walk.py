"""Walk a model's layer tree with paths, and tell adapter weights from base weights.

The walk is ``kerasft.surgery.walk_layers``, looking into sublayers. Paths join layer
names with ``/`` from the model down, through nested models and the sublayers of
subclassed layers: ``"bert_backbone/transformer_layer_0/
self_attention_layer/query"``. Adapter wrappers are leaves: the wrapped layer carries
the wrapper's name, so a layer keeps its path when it is wrapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from kerasft import _keras_compat as compat
from kerasft import surgery
from kerasft.peft.layers import LoRA, is_in_place_dora

NORM_TYPES = tuple(
    t
    for t in (
        getattr(keras.layers, name, None)
        for name in (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "RMSNormalization",
        )
    )
    if t is not None
)


@dataclass(frozen=True)
class Node:
    """One layer of the tree: its path, the layer, its ancestors, and its own weights."""

    path: str
    layer: keras.layers.Layer
    ancestors: tuple[keras.layers.Layer, ...]
    own_weights: tuple[keras.Variable, ...]

    @property
    def base_weights(self) -> list[keras.Variable]:
        """Own weights minus adapter weights: what the pretrained model had here."""
        adapters = {id(v) for v in adapter_variables(self.layer)}
        return [v for v in self.own_weights if id(v) not in adapters]


def descend(layer: keras.layers.Layer) -> bool:
    """Whether the walk looks inside ``layer``: everywhere but into adapter wrappers."""
    return not isinstance(layer, LoRA)


def walk(model: keras.layers.Layer) -> list[Node]:
    """All layers below ``model`` (parents before children), each once, inputs skipped.

    ``kerasft.surgery.walk_layers`` with sublayers, stopping at adapter wrappers.
    """
    return [
        Node(n.path, n.layer, n.ancestors, tuple(own_weights(n.layer)))
        for n in surgery.walk_layers(model, sublayers=descend)
    ]


def own_weights(layer: keras.layers.Layer) -> list[keras.Variable]:
    """Weights created by ``layer`` itself, not by its sublayers (all of them for wrappers)."""
    if isinstance(layer, LoRA):
        return list(layer.weights)
    inner = {id(v) for sub in compat.direct_sublayers(layer) for v in sub.weights}
    return [v for v in layer.weights if id(v) not in inner]


def keras_lora_variables(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The ``A``/``B`` variables that Keras's ``enable_lora`` added, or ``[]``."""
    if not getattr(layer, "lora_enabled", False):
        return []
    if hasattr(layer, "lora_embeddings_a"):
        return [layer.lora_embeddings_a, layer.lora_embeddings_b]
    return [layer.lora_kernel_a, layer.lora_kernel_b]


def adapter_variables(layer: keras.layers.Layer) -> list[keras.Variable]:
    """Adapter variables of ``layer`` (Keras LoRA, in-place DoRA, a wrapper), or ``[]``."""
    if isinstance(layer, LoRA):
        return layer.adapter_variables
    if is_in_place_dora(layer):
        return keras_lora_variables(layer) + [layer.dora_magnitude]
    return keras_lora_variables(layer)


def is_adapted(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, LoRA) or getattr(layer, "lora_enabled", False)


def base_class(layer: keras.layers.Layer) -> str:
    """Class name of the pretrained layer (the wrapped one for wrappers).

    In-place DoRA keeps the name of the layer's own class (``DoRA[EinsumDense]`` is
    named ``EinsumDense``).
    """
    return type(layer.layer if isinstance(layer, LoRA) else layer).__name__


def supports_keras_lora(layer: keras.layers.Layer) -> bool:
    return callable(getattr(layer, "enable_lora", None)) and not isinstance(layer, keras.Model)


def last_weighted_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The last layer with weights in graph order, looking into nested models.

    What ``train=("head",)`` means for adapters. It is not ``kerasft.find_head`` on
    purpose: adapters go on any Functional model (a KerasHub backbone, an encoder whose
    output is a LayerNormalization or a Dense followed by a residual add), where
    ``find_head`` asks for a classifier at the output (a Dense or 1x1 convolution, then
    weightless layers only) and raises otherwise.
    """
    weighted = [
        n.layer
        for n in surgery.walk_layers(model)
        if n.layer.weights and not surgery.is_container(n.layer)
    ]
    return weighted[-1] if weighted else None


def num_elements(variables: list[keras.Variable]) -> int:
    total = 0
    for v in variables:
        n = 1
        for d in v.shape:
            n *= int(d)
        total += n
    return total


def num_bytes(variables: list[keras.Variable]) -> int:
    import numpy as np

    return sum(
        num_elements([v]) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in variables
    )


def check_model(model: Any, argument: str = "model") -> None:
    """Raise unless ``model`` is a Functional (KerasHub included) or Sequential model."""
    if isinstance(model, keras.Sequential) or compat.is_functional(model):
        if not model.built:
            raise ValueError(
                f"Argument `{argument}` must be a built model; {model.name!r} is not built. "
                "HINT: give it an Input or call `model.build(input_shape)`."
            )
        return
    if isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `{argument}` must be a Functional or Sequential Keras model, but "
            f"received a subclassed model of type {type(model).__name__}, whose layers "
            "kerasft cannot rebuild or address by path. HINT: build it with the Functional "
            "API, or call `enable_lora(rank)` on its layers yourself."
        )
    raise TypeError(
        f"Argument `{argument}` must be a Keras model. Received: {argument}={model!r} "
        f"of type {type(model).__name__}."
    )
