"""Which layers get adapters and which train in full: regexes, classes, defaults.

Targets are selected by ``kerasft.select_layers`` over the walk with sublayers: regexes
match in full against a layer's path or its name, so ``"query"`` and
``"backbone/.*/query"`` both work, as PEFT's ``target_modules`` users expect; layer
classes, layers and callables work too. The
default targets follow the architecture: every projection (attention and feed-forward)
of the top half of the attention blocks when there are any, else every Dense and 1x1
convolution below the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from kerasft import surgery
from kerasft.peft import _walk

# Names of the query/value projections: Keras MultiHeadAttention's EinsumDense layers
# are "query"/"value", and KerasHub's Backbone.default_lora_layer_names() adds
# "query_dense"/"value_dense" for its own attention layers.
_ATTENTION_NAMES = ("query", "value", "query_dense", "value_dense")


def listing(nodes: Sequence[_walk.Node]) -> str:
    return "[" + ", ".join(repr(n.path) for n in nodes) + "]"


def _entries(value: Any) -> list[Any]:
    """The entries of ``targets``/``train``; each must select a layer."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _select(
    model: keras.Model, nodes: list[_walk.Node], item: Any, argument: str
) -> list[_walk.Node]:
    """The nodes ``item`` selects, by ``kerasft.select_layers``'s rule, in walk order."""
    ids = {
        id(layer)
        for layer in surgery.select_layers(model, item, argument=argument, sublayers=_walk.descend)
    }
    return [n for n in nodes if id(n.layer) in ids]


def _default_targets(model: keras.Model, nodes: list[_walk.Node], head: Any) -> list[_walk.Node]:
    names = set(_ATTENTION_NAMES)
    for n in nodes:
        if callable(getattr(n.layer, "default_lora_layer_names", None)):
            names.update(n.layer.default_lora_layer_names())
    attention = [
        n
        for n in nodes
        if n.layer.name in names
        and isinstance(n.layer, (keras.layers.Dense, keras.layers.EinsumDense))
    ]
    if attention:
        return _top_blocks(nodes, attention, head)

    convs = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)

    def pointwise(layer: keras.layers.Layer) -> bool:
        return isinstance(layer, convs) and all(k == 1 for k in layer.kernel_size)

    return [
        n
        for n in nodes
        if n.layer is not head and (isinstance(n.layer, keras.layers.Dense) or pointwise(n.layer))
    ]


def _top_blocks(
    nodes: list[_walk.Node], attention: list[_walk.Node], head: Any
) -> list[_walk.Node]:
    """Every projection (attention and feed-forward) of the top half of the attention blocks.

    A block is what holds an attention layer (``.../transformer_layer_3`` holding
    ``.../transformer_layer_3/self_attention_layer/query``). On MiniLM and 400 reviews,
    adapters on all projections of the top three of six blocks reached 0.703 against
    0.648 for the query/value projections of all six (``benchmarks/peft.py``), and the
    untouched bottom half can run once, its outputs cached.
    """
    blocks: list[str] = []
    for n in attention:
        parts = n.path.split("/")
        block = "/".join(parts[:-2]) if len(parts) > 2 else "/".join(parts[:-1])
        if block and block not in blocks:
            blocks.append(block)
    if len(blocks) < 2:
        return attention
    top = blocks[len(blocks) - -(-len(blocks) // 2) :]
    dense = (keras.layers.Dense, keras.layers.EinsumDense)
    return [
        n
        for n in nodes
        if n.layer is not head
        and isinstance(n.layer, dense)
        and any(n.path.startswith(b + "/") for b in top)
    ]


def resolve_targets(
    model: keras.Model, nodes: list[_walk.Node], targets: Any, head: Any
) -> list[_walk.Node]:
    adaptable = [n for n in nodes if _walk.supports_keras_lora(n.layer)]
    if targets is None:
        chosen = _default_targets(model, adaptable, head)
        if not chosen:
            raise ValueError(
                f"No default LoRA targets in model {model.name!r}: it has no attention "
                "query/value projections and no Dense or 1x1 convolution below the head. "
                f"Pass `targets`. Layers that can take adapters: {listing(adaptable)}."
            )
        return chosen
    ids: set[int] = set()
    for item in _entries(targets):
        hits = _select(model, nodes, item, "targets")
        usable = [n for n in hits if _walk.supports_keras_lora(n.layer)]
        if not usable:
            raise ValueError(
                f"Argument `targets` entry {item!r} selects nothing to adapt: it matches only "
                f"layers that cannot take adapters: {listing(hits)}. Layers that can take "
                f"adapters (Dense, EinsumDense, Embedding, Conv): {listing(adaptable)}."
            )
        ids |= {id(n.layer) for n in usable}
    return [n for n in nodes if id(n.layer) in ids]


def resolve_trained(
    model: keras.Model, nodes: list[_walk.Node], train: Any, head: Any
) -> list[_walk.Node]:
    ids: set[int] = set()
    for item in _entries(train):
        if item == "head":
            if head is None:
                raise ValueError(
                    f"Argument `train` asks for 'head', but model {model.name!r} has no layer "
                    f"with weights. Received: train={train!r}"
                )
            ids.add(id(head))
        elif item == "norm":
            ids |= {
                id(n.layer)
                for n in nodes
                if isinstance(n.layer, _walk.NORM_TYPES) and n.own_weights
            }
        else:
            hits = _select(model, nodes, item, "train")
            weighted = [n for n in hits if n.layer.weights]
            if not weighted:
                raise ValueError(
                    f"Argument `train` entry {item!r} matches only layers without weights: "
                    f"{listing(hits)}. Use 'head', 'norm', or a regex over layer paths such as "
                    f"{listing([n for n in nodes if n.layer.weights][:8])}."
                )
            ids |= {id(n.layer) for n in weighted}
    return [n for n in nodes if id(n.layer) in ids]
