"""A model cut in two above its frozen, deterministic bottom, for training on cached features.

:func:`split_frozen_prefix` finds the highest cut below which every layer is frozen and
computes the same outputs in training as in inference (:func:`barrier_reason` says why a
layer is not), and returns the prefix (inputs to the cut, whose outputs can be cached) and
the suffix (the cut to the outputs, sharing the full model's layers).
:class:`CachedFeatureModel` trains that suffix on the cached features while speaking for
the full model to callbacks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import _keras_compat as compat
from kerasft import surgery

__all__ = [
    "CachedFeatureModel",
    "FeatureSplit",
    "barrier_reason",
    "open_tensors",
    "split_frozen_prefix",
]


@dataclass
class FeatureSplit:
    """A model cut in two at the top of its frozen, deterministic bottom.

    Attributes:
        prefix: model from the inputs to the cut (the features).
        suffix: model from the cut to the outputs; its layers are the full model's.
        prefix_layers: paths of the leaf layers below the cut.
        stopped_by: why the cut is not higher: the first layer above it and the reason.
        open_shapes: whether a tensor below the cut has a size the model leaves open
            (``None`` beyond the batch); the data must fix it, or the features would
            depend on how examples are batched.
    """

    prefix: keras.Model
    suffix: keras.Model
    prefix_layers: list[str]
    stopped_by: str
    open_shapes: bool = False


def _layer_paths(model: keras.Model) -> dict[int, str]:
    return {id(lyr): p for p, lyr in surgery.iter_layers(model)}


# Packages whose layers use `training` for dropout-like noise and BatchNormalization
# only (checked for KerasHub 0.32: its transformer, ViT and ResNet blocks pass it to
# Dropout sublayers). Noise drawn without a SeedGenerator is caught by its rate below.
_KNOWN_MODULES = ("keras.", "keras_hub.")

# Rates of random behaviour in training that some layers apply without a SeedGenerator
# (Keras's ConvNeXt StochasticDepth, KerasHub's DINOv2 DropPath and Mixtral router
# jitter call `keras.random.uniform` unseeded), which `draws_random_numbers` cannot see.
_NOISE_RATES = ("rate", "drop_path_rate", "dropout", "dropout_rate", "router_jitter_noise")


def _unseeded_noise(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` has a positive noise rate and a ``call`` that takes ``training``."""
    if isinstance(layer, keras.layers.Dropout) or not compat.call_takes_training(layer):
        return False  # Dropout's SeedGenerator is seen; no `training`, no train-only noise
    if any(
        isinstance(part, keras.layers.Dropout)
        for part in compat.flatten_layers(layer, include_self=False)
    ):
        # its rate is applied by Dropout sublayers (a KerasHub TransformerEncoder's `dropout`)
        return False
    rates = (getattr(layer, name, None) for name in _NOISE_RATES)
    return any(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates)


def barrier_reason(layer: keras.layers.Layer, trainable_ids: set[int]) -> str | None:
    """Why ``layer`` cannot sit below a feature cache (``None`` when it can).

    A layer can when it has no trainable weights and computes the same outputs in
    training as in inference: no random numbers (dropout, noise, augmentation), a
    frozen BatchNormalization, no activity regularizer, and no unknown ``training``
    behaviour (a custom layer whose ``call`` takes ``training`` is assumed to use it).
    Layers of Keras and KerasHub are known: their ``training`` reaches only dropout-like
    noise (seen as random numbers, or as a positive ``rate``/``drop_path_rate`` when drawn
    without a SeedGenerator; ``keras.layers.Dropout`` with ``rate=0`` draws none) and
    BatchNormalization. A raw operation of the graph (``x + y``, ``x[:, 0]``: a
    ``keras.Operation`` that is not a layer) has no weights, no ``training`` argument
    and draws no random numbers (Keras's random functions are not graph operations), so
    it never stops the cut: its output is constant when its inputs are.
    """
    if not isinstance(layer, keras.layers.Layer):
        return None
    if any(id(v) in trainable_ids for v in layer.weights):
        return "trainable"
    parts = compat.flatten_layers(layer)
    if compat.draws_random_numbers(layer) or any(_unseeded_noise(part) for part in parts):
        return "draws random numbers in training (dropout/noise/augmentation)"
    if any(getattr(part, "activity_regularizer", None) is not None for part in parts):
        return "adds an activity regularization loss in training"
    if any(isinstance(part, keras.layers.BatchNormalization) and part.trainable for part in parts):
        return "BatchNormalization in training mode"
    # Keras's and KerasHub's layers differ between training and inference only through
    # random numbers or BatchNormalization; a custom layer that takes `training` may use it.
    if compat.call_takes_training(layer) and not type(layer).__module__.startswith(_KNOWN_MODULES):
        return "custom layer whose call() takes `training`"
    return None


def split_frozen_prefix(
    model: keras.Model, also_trainable: Collection[keras.layers.Layer] = ()
) -> FeatureSplit | None:
    """Cut ``model`` above its frozen, deterministic bottom; ``None`` if that is empty.

    Nested Sequential/Functional models are looked into, so the cut can fall inside a
    backbone. The cut may be several tensors (e.g. a residual branch and its shortcut).

    Example:

    >>> import keras, kerasft
    >>> from kerasft.speed.prefix import split_frozen_prefix
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="body"),
    ...                       keras.layers.Dropout(0.5, name="drop"),
    ...                       keras.layers.Dense(2, name="head")])
    >>> m.get_layer("body").trainable = False
    >>> split = split_frozen_prefix(m)
    >>> split.prefix_layers, [layer.name for layer in split.suffix.layers[1:]]
    (['body'], ['drop', 'head'])

    Args:
        model: the model, with the layers to train set trainable.
        also_trainable: layers to treat as trainable too (where the cut will be once
            they are unfrozen). Defaults to `()`.

    Returns:
        A :class:`FeatureSplit`, or ``None`` when no layer with weights is below the cut.
    """
    surgery.check_operable(model)
    trainable_ids = {id(v) for v in model.trainable_weights}
    trainable_ids |= {id(v) for layer in also_trainable for v in layer.weights}
    walk = _ConstantWalk(trainable_ids, _layer_paths(model))
    flat_inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"cache_in_{i}")
        for i, t in enumerate(model.inputs)
    ]
    outputs = walk.trace(model, flat_inputs)
    if any(walk.constant.get(id(t), False) for t in outputs):
        return None  # everything frozen: nothing to train on features
    frontier = walk.frontier()
    weighted = {p for p, lyr in surgery.iter_layers(model) if lyr.weights}
    if not frontier or not any(p in weighted for p in walk.prefix_layers):
        return None
    if any(compat.has_mask(t) for t in frontier):
        return None  # a mask would be lost on the way through the cache
    prefix = keras.Model(
        flat_inputs if len(flat_inputs) > 1 else flat_inputs[0],
        frontier,
        name=f"{model.name}_frozen_prefix",
    )
    suffix = keras.Model(
        frontier, outputs if len(outputs) > 1 else outputs[0], name=f"{model.name}_trainable_suffix"
    )
    stopped_by = walk.stops[0] if walk.stops else "trainable layers"
    return FeatureSplit(prefix, suffix, walk.prefix_layers, stopped_by, walk.open_shapes)


class _ConstantWalk:
    """One walk over a model's graph, nested models included, marking constant tensors.

    A tensor is constant when every layer between the inputs and it has no reason to
    stop the cut (:func:`barrier_reason`). The walk records who consumes each tensor, so
    that the cut is where a constant tensor meets a trained consumer.

    Attributes:
        constant: ``{id(tensor): whether it is constant}``.
        consumers_of: ``{id(tensor): "const" or "train" per consumer}``.
        tensors: ``{id(tensor): tensor}``.
        prefix_layers: paths of the constant layers, in graph order.
        stops: the layers on constant inputs that are not constant, with why.
        open_shapes: whether a constant tensor has a size open beyond the batch.
    """

    def __init__(self, trainable_ids: set[int], paths: dict[int, str]):
        self.trainable_ids = trainable_ids
        self.paths = paths
        self.constant: dict[int, bool] = {}
        self.consumers_of: dict[int, list[str]] = {}
        self.tensors: dict[int, Any] = {}
        self.prefix_layers: list[str] = []
        self.stops: list[str] = []
        self.open_shapes = False

    def trace(self, model: keras.Model, flat_inputs: list) -> list:
        """Run ``model`` on ``flat_inputs`` (all constant); its flat outputs."""
        for t in flat_inputs:
            self.constant[id(t)] = True
            self.tensors[id(t)] = t
        outputs = self._run(model, flat_inputs if len(flat_inputs) > 1 else flat_inputs[0])
        return keras.tree.flatten(outputs)

    def frontier(self) -> list:
        """The constant tensors that a trained operation consumes: where to cut."""
        return [
            self.tensors[i]
            for i, users in self.consumers_of.items()
            if self.constant.get(i, False) and "train" in users
        ]

    def _run(self, container, inputs):
        def call_fn(op, *args, **kwargs):
            if surgery.is_container(op):
                return self._run(op, args[0])
            return self._visit_leaf(op, *args, **kwargs)

        return compat.run_through_graph(container, inputs, call_fn)

    def _visit_leaf(self, op, *args, **kwargs):
        inputs = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        reason = barrier_reason(op, self.trainable_ids)
        outputs = op(*args, **kwargs)
        is_const = reason is None and all(self.constant.get(id(t), False) for t in inputs)
        for t in inputs:
            self.consumers_of.setdefault(id(t), []).append("const" if is_const else "train")
        for t in keras.tree.flatten(outputs):
            self.constant[id(t)] = is_const
            self.tensors[id(t)] = t
            self.open_shapes |= is_const and _is_open(t)
        path = self.paths.get(id(op), op.name)
        if is_const and isinstance(op, keras.layers.Layer):  # raw operations are not layers
            self.prefix_layers.append(path)
        elif reason is not None and all(self.constant.get(id(t), False) for t in inputs):
            self.stops.append(f"{path!r} ({reason})")
        return outputs


def _is_open(tensor: Any) -> bool:
    return isinstance(tensor, keras.KerasTensor) and None in tuple(tensor.shape)[1:]


def open_tensors(prefix: keras.Model, specs: list) -> list[tuple]:
    """Shapes of ``prefix``'s tensors still open beyond the batch when its inputs are ``specs``."""
    inputs = [keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype.name) for spec in specs]
    found: list[tuple] = []

    def call_fn(op, *args, **kwargs):
        outputs = op(*args, **kwargs)
        found.extend(tuple(t.shape) for t in keras.tree.flatten(outputs) if _is_open(t))
        return outputs

    compat.run_through_graph(prefix, inputs[0] if len(inputs) == 1 else inputs, call_fn)
    return found


class _Ref:
    """Holds an object out of Keras's attribute tracking."""

    def __init__(self, obj: Any):
        self.obj = obj


class CachedFeatureModel(keras.Model):
    """Trains the suffix of a model on cached features, speaking for the full model.

    ``call`` runs the suffix; ``get_weights``, ``set_weights``, ``save``,
    ``save_weights`` and ``load_weights`` act on the full model, so callbacks that keep
    best weights or write checkpoints see the model being fine-tuned; ``compile``
    compiles both.

    Args:
        suffix: the trainable part (layers shared with ``full_model``).
        full_model: the model whose weights are trained.
    """

    def __init__(self, suffix: keras.Model, full_model: keras.Model, **kwargs: Any):
        super().__init__(name=f"{full_model.name}_on_features", **kwargs)
        self.suffix = suffix
        self._full = _Ref(full_model)

    @property
    def full_model(self) -> keras.Model:
        return self._full.obj

    def call(self, inputs, training=None):
        return self.suffix(inputs, training=training)

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        # the returned model is evaluated and saved as if it had been fitted itself
        self.full_model.compile(*args, **kwargs)

    def get_weights(self):
        return self.full_model.get_weights()

    def set_weights(self, weights):
        self.full_model.set_weights(weights)

    def save(self, *args, **kwargs):
        return self.full_model.save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        return self.full_model.save_weights(*args, **kwargs)

    def load_weights(self, *args, **kwargs):
        return self.full_model.load_weights(*args, **kwargs)
