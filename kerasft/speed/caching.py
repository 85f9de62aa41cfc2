"""Feature caching: train only the trainable part of a network, on stored features.

While the bottom of a network is frozen and deterministic in training (no trainable
weights, BatchNormalization frozen, no dropout or random augmentation before the cut)
and the input pipeline has no random ops, that bottom's outputs are a fixed function of
the inputs. :class:`FeatureCache` computes them once per phase and trains only the
suffix on them: the head phase of LP-FT, and the fine-tuning phase when ``unfreeze``
leaves the lower layers frozen. The suffix shares its layer objects with the full model,
so the trained weights land in the model that ``finetune`` returns, and the fitted
model reports the full model's weights to callbacks (``get_weights``/``save``).

Features are kept in memory up to ``budget`` bytes; beyond it they are written to a
``tf.data`` cache file in a temporary directory, removed when the cache is closed. The
order of batches is the same as without caching: every phase draws its own seeded
shuffle (shuffle seed ``seed + phase index``) whether it trains on inputs or features.

When the caller says which layers the next phase will unfreeze (``later_trainable``) and
that lowers the cut, the features at the lower cut are computed once, the head phase's
features are derived from them by running only the layers between the two cuts, and the
next phase reuses them (after checking that the weights below the cut did not change).

A :class:`FeatureStore` keeps features across ``finetune`` calls (the trials of
``kerasft.search``): the cache looks features up there before computing them, keyed by
what determines them exactly (the prefix's graph and layer configurations, its weights'
values, and the inputs' values), so a fresh copy of the same pretrained model on the same
data finds the features of an earlier call.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft import data as data_lib
from kerasft import surgery
from kerasft._fileio import make_scratch_directory

__all__ = [
    "FeatureCache",
    "FeatureSplit",
    "FeatureStore",
    "PhaseSetup",
    "split_frozen_prefix",
    "CachedFeatureModel",
    "CACHE_CHOICES",
    "barrier_reason",
    "check_cache_features",
    "prefix_key",
]

CACHE_CHOICES = (True, False, "auto")
_SHUFFLE_WINDOW = 10_000  # shuffle buffer of file-cached features, as data.py's streaming path
_PHASE_SEED_STEP = 1  # phase k shuffles with seed + k
# Inference batch for features: on 2 CPU cores, MobileNetV2 at 96 px ran 1.9x faster in
# batches of 64 than of 256 (activations stay in cache).
_FEATURE_BATCH = 64

# Where a phase's features came from (``PhaseSetup.feature_source``).
COMPUTED = "computed"
KEPT = "kept from the previous phase"
DERIVED = "derived from the next phase's features (kept for it)"
STORED = "reused from the feature store"
STORED_BOTH = "reused from the feature store (the next phase's too, kept for it)"
DERIVED_FROM_STORED = (
    "derived from the next phase's features (reused from the feature store, kept for it)"
)


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
        return False  # its rate is applied by Dropout sublayers (a KerasHub TransformerEncoder's `dropout`)
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
    >>> from kerasft.speed.caching import split_frozen_prefix
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
    paths = _layer_paths(model)
    constant: dict[int, bool] = {}
    consumers_of: dict[int, list[str]] = {}
    prefix_layers: list[str] = []
    stops: list[str] = []
    tensors: dict[int, Any] = {}
    open_shapes = False

    def visit_leaf(op, *args, **kwargs):
        nonlocal open_shapes
        inputs = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
        reason = barrier_reason(op, trainable_ids)
        outputs = op(*args, **kwargs)
        is_const = reason is None and all(constant.get(id(t), False) for t in inputs)
        for t in inputs:
            consumers_of.setdefault(id(t), []).append("const" if is_const else "train")
        for t in keras.tree.flatten(outputs):
            constant[id(t)] = is_const
            tensors[id(t)] = t
            open_shapes |= is_const and _is_open(t)
        path = paths.get(id(op), op.name)
        if is_const and isinstance(op, keras.layers.Layer):  # raw operations are not layers
            prefix_layers.append(path)
        elif reason is not None and all(constant.get(id(t), False) for t in inputs):
            stops.append(f"{path!r} ({reason})")
        return outputs

    def run(container, inputs):
        def call_fn(op, *args, **kwargs):
            if surgery.is_container(op):
                return run(op, args[0])
            return visit_leaf(op, *args, **kwargs)

        return compat.run_through_graph(container, inputs, call_fn)

    flat_inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=f"cache_in_{i}")
        for i, t in enumerate(model.inputs)
    ]
    for t in flat_inputs:
        constant[id(t)] = True
        tensors[id(t)] = t
    outputs = keras.tree.flatten(
        run(model, flat_inputs if len(flat_inputs) > 1 else flat_inputs[0])
    )
    if any(constant.get(id(t), False) for t in outputs):
        return None  # everything frozen: nothing to train on features
    frontier = [
        tensors[i]
        for i, users in consumers_of.items()
        if constant.get(i, False) and "train" in users
    ]
    weighted = {p for p, lyr in surgery.iter_layers(model) if lyr.weights}
    if not frontier or not any(p in weighted for p in prefix_layers):
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
    return FeatureSplit(
        prefix, suffix, prefix_layers, stops[0] if stops else "trainable layers", open_shapes
    )


def _is_open(tensor: Any) -> bool:
    return isinstance(tensor, keras.KerasTensor) and None in tuple(tensor.shape)[1:]


def _open_tensors(prefix: keras.Model, specs: list) -> list[tuple]:
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


@dataclass
class PhaseSetup:
    """What to fit in one phase.

    Attributes:
        model: the model to compile and fit (the full model, or a
            :class:`CachedFeatureModel` over cached features).
        train: batched training pipeline.
        validation: batched validation pipeline or ``None``.
        cached: whether the phase trains on cached features.
        reason: why it does or does not.
        feature_seconds: seconds spent computing the features.
        feature_bytes: size of the cached training and validation features.
        feature_source: ``"computed"``, derived from features kept for the next
            phase, ``"kept from the previous phase"``, or ``"reused from the feature
            store"`` (see :class:`FeatureStore`).
        compile_kwargs: extra ``compile`` keywords for the phase (XLA, steps per
            execution).
    """

    model: keras.Model
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    cached: bool
    reason: str
    feature_seconds: float = 0.0
    feature_bytes: int = 0
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    feature_source: str = ""


@dataclass
class _Features:
    """Cached outputs of a prefix: tuples of arrays, or file datasets of tuples."""

    train: Any
    validation: Any
    nbytes: int
    paths: list[str]

    @property
    def in_memory(self) -> bool:
        parts = [self.train] + ([] if self.validation is None else [self.validation])
        return all(
            isinstance(p, tuple) and all(isinstance(a, np.ndarray) for a in p) for p in parts
        )


class FeatureStore:
    """Features of frozen prefixes kept in memory across ``finetune`` calls.

    Pass one store to several calls (``finetune(..., feature_store=store)``; every trial
    of ``kerasft.search`` shares one): each call's feature cache looks its features up
    here before computing them. An entry is keyed by what determines the features
    exactly: the prefix's graph (layer classes, configurations and connections, the
    cut tensors), the values of its weights (not the variables: every call fine-tunes a
    fresh copy of the pretrained model), and the values of the training and validation
    inputs (their order as prepared; a phase's shuffle draws from the features
    afterwards). A prefix whose configuration cannot be serialized is never stored.
    Features that went to a cache file (beyond ``cache_budget``) are not kept.

    The store holds at most ``budget`` bytes; the least recently used entries are
    dropped to make room. It lives in memory only.

    Example:

    ```python
    store = kerasft.speed.FeatureStore(budget=2 * 1024**3)
    a = kerasft.finetune(model, (x, y), feature_store=store)
    b = kerasft.finetune(model, (x, y), feature_store=store, lr=3e-3)  # features reused
    print(store)
    ```

    Args:
        budget: bytes of features kept at most. Defaults to 1 GiB.

    Raises:
        ValueError: a ``budget`` that is not a number of bytes >= 0.
    """

    def __init__(self, budget: float = 1024**3):
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
            raise ValueError(
                f"Argument `budget` must be a number of bytes >= 0. Received: budget={budget!r}"
            )
        self.budget = budget
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: collections.OrderedDict[str, _Features] = collections.OrderedDict()

    @property
    def nbytes(self) -> int:
        """Bytes of features held."""
        return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return (
            f"FeatureStore({len(self)} entries, {self.nbytes / 2**20:.1f} of {self.budget / 2**20:.0f} MiB; "
            f"{self.hits} hits, {self.misses} misses, {self.evictions} evicted)"
        )

    def get(self, key: str) -> _Features | None:
        """The features stored under ``key`` (a new record of the same arrays), or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return dataclasses.replace(entry, paths=[])

    def put(self, key: str, features: _Features) -> bool:
        """Keep in-memory ``features`` under ``key``, dropping the oldest entries to fit.

        Returns:
            Whether they were stored (not when they are on file or exceed the budget).
        """
        if not features.in_memory or features.nbytes > self.budget:
            return False
        for part in (features.train, features.validation or ()):
            for array in part:
                array.setflags(write=False)  # shared by later calls: nobody may change them
        self._entries.pop(key, None)
        while self._entries and self.nbytes + features.nbytes > self.budget:
            self._entries.popitem(last=False)
            self.evictions += 1
        self._entries[key] = dataclasses.replace(features, paths=[])
        return True

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        self._entries.clear()


def check_feature_store(value: Any) -> None:
    if value is not None and not isinstance(value, FeatureStore):
        raise TypeError(
            "Argument `feature_store` must be a kerasft.speed.FeatureStore or None. "
            f"Received: feature_store={value!r} (of type {type(value).__name__})"
        )


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


@dataclass
class _Kept:
    """Features kept for the next phase, with what they were computed from."""

    model_id: int
    layers: tuple[str, ...]
    variable_ids: list[int]
    values: list[np.ndarray]
    shapes: list[tuple]
    features: _Features


def check_cache_features(value: Any) -> None:
    if not (value is True or value is False or value == "auto"):
        raise ValueError(
            f"Argument `cache_features` must be True, False or 'auto'. Received: cache_features={value!r}"
        )


class FeatureCache:
    """Builds each phase's model and pipelines, on cached features when that is exact.

    Example:

    ```python
    cache = FeatureCache(prepared, mode="auto", seed=0)
    setup = cache.setup_phase(model, 0)
    setup.model.compile(...); setup.model.fit(setup.train, validation_data=setup.validation)
    cache.close()
    ```

    Args:
        prepared: the :class:`kerasft.data.PreparedData` of the run.
        mode: ``True`` (cache, or raise where caching would change results),
            ``False`` (never) or ``"auto"`` (cache where exact). Defaults to `"auto"`.
        seed: base seed of the per-phase shuffles. Defaults to `0`.
        budget: bytes of features kept in memory; more go to a cache file.
            Defaults to 1 GiB.
        directory: where cache files go; a temporary directory by default.
            Defaults to `None`.
        distributed: training runs under a ``tf.distribute`` strategy (caching off).
            Defaults to `False`.
        verbose: print one line per phase about caching. Defaults to `0`.
        store: a :class:`FeatureStore` shared with other runs: features are looked up
            there before they are computed, and kept there once computed.
            Defaults to `None`.

    Raises:
        ValueError: a bad ``mode``/``budget``, or ``mode=True`` where caching would
            change results (random ops in the input pipeline) or is impossible.
        TypeError: a ``store`` that is not a :class:`FeatureStore`.
    """

    def __init__(
        self,
        prepared: data_lib.PreparedData,
        *,
        mode: Any = "auto",
        seed: int = 0,
        budget: float = 1024**3,
        directory: str | None = None,
        distributed: bool = False,
        verbose: int = 0,
        store: FeatureStore | None = None,
    ):
        check_cache_features(mode)
        check_feature_store(store)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
            raise ValueError(
                f"Argument `cache_budget` must be a number of bytes >= 0. Received: cache_budget={budget!r}"
            )
        self.prepared = prepared
        self.mode = mode
        self.seed = seed
        self.budget = budget
        self.directory = directory
        self.distributed = distributed
        self.verbose = verbose
        self.store = store
        self._inputs_key: str | None = None
        self._tmpdir: str | None = None
        self._finalizer = None
        self._validation: tuple[Any, np.ndarray] | None = None
        self._kept: _Kept | None = None
        self.random_pipeline = self._pipeline_is_random()
        if mode is True:
            problem = self._global_problem()
            if problem:
                raise ValueError(
                    f"Argument `cache_features=True`, but {problem}. Caching would change "
                    "results. Pass cache_features='auto' (cache only where exact) or False."
                )

    def _pipeline_is_random(self) -> bool:
        if self.prepared.arrays is not None:
            return False
        return data_lib.has_random_ops(self.prepared.train)

    def _global_problem(self) -> str | None:
        augmentation = self.prepared.augmentation
        if augmentation is not None and augmentation.on_inputs:
            return (
                f"the training inputs are augmented (augment={augmentation.name!r}), so the frozen "
                "bottom sees new inputs every epoch; augment='feature_mixup' keeps the cache"
            )
        if self.random_pipeline:
            return "the input pipeline draws random numbers (augmentation), so features change every epoch"
        if self.prepared.arrays is None:
            return (
                "the training data is streamed (larger than memory or built from a "
                "pipeline), and kerasft caches features of in-memory data only"
            )
        if self.distributed:
            return "training runs under a tf.distribute strategy, where kerasft does not cache features"
        return None

    def _phase_seed(self, index: int) -> int:
        return self.seed + _PHASE_SEED_STEP * index

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(msg, flush=True)

    def setup_phase(
        self,
        model: keras.Model,
        index: int,
        *,
        later_trainable: Collection[keras.layers.Layer] | None = None,
    ) -> PhaseSetup:
        """Model and pipelines for phase ``index`` (0-based) of ``model`` as frozen now.

        Args:
            model: the model, with this phase's layers set trainable.
            index: the phase's index, which seeds its shuffle.
            later_trainable: the layers the next phase will train, when known. If they
                put the next phase's cut lower than this one's, the features at that
                lower cut are computed now and kept for the next phase, and this phase's
                features are derived from them by running only the layers between the
                two cuts. Defaults to `None`.

        The speed path never fails a run: if cutting the model or computing the
        features raises (a layer or graph kerasft does not understand), the phase runs
        on its inputs, its ``reason`` says why, and one line is printed when verbose
        (a ``RuntimeWarning`` with ``mode=True``, where caching was asked for).
        """
        raw = self.plain_setup(model, index)
        if self.mode is False:
            return raw
        problem = self._global_problem()
        if problem:
            raw.reason = problem
            self._log(f"kerasft: not caching features: {problem}")
            return raw
        try:
            split = split_frozen_prefix(model)
        except Exception as e:  # whatever the failure, the inputs path is exact
            return self._fall_back(raw, "cutting the model above its frozen layers", e)
        if split is None:
            reason = "no frozen layer with weights below the trainable ones"
            if self.mode is True and index == 0:
                random = [
                    p for p, lyr in surgery.leaf_layers(model) if compat.draws_random_numbers(lyr)
                ]
                raise ValueError(
                    f"Argument `cache_features=True`, but model {model.name!r} has {reason} in "
                    f"the first phase (random layers: {random or 'none'}; augmentation at the "
                    "input changes the features every epoch). HINT: pass cache_features='auto'."
                )
            raw.reason = reason
            return raw
        try:
            return self._cached_setup(model, index, split, later_trainable)
        except Exception as e:
            self._kept = None  # possibly half made
            error = e
        if later_trainable:
            # The next phase's lower cut may be what failed; this phase's own may not.
            try:
                return self._cached_setup(model, index, split)
            except Exception as e:
                self._kept, error = None, e
        return self._fall_back(raw, "computing the frozen layers' features", error)

    def _fall_back(self, raw: PhaseSetup, step: str, error: Exception) -> PhaseSetup:
        """``raw`` (the phase on its inputs), with why caching was abandoned."""
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raw.reason = f"caching abandoned: {step} failed ({type(error).__name__}: {message[:300]})"
        self._log(f"kerasft: not caching features: {raw.reason}; training on the inputs")
        if self.mode is True:
            warnings.warn(
                f"Argument `cache_features=True`, but {raw.reason}. The phase trains on its "
                "inputs instead (same results, slower).",
                RuntimeWarning,
                stacklevel=3,
            )
        return raw

    def plain_setup(self, model: keras.Model, index: int) -> PhaseSetup:
        """Phase ``index`` of ``model`` on its inputs, without caching (the phase's own shuffle)."""
        p = self.prepared
        if p.arrays is None:
            return PhaseSetup(model, p.train, p.validation, False, "caching off")
        x, y = p.arrays
        augmentation = p.augmentation
        train = data_lib.make_pipeline(
            x,
            y,
            p.batch_size,
            self._phase_seed(index),
            shuffle=True,
            transform=augmentation.inputs if augmentation is not None else None,
        )
        return PhaseSetup(model, train, p.validation, False, "caching off")

    def _validation_arrays(self) -> tuple[Any, np.ndarray] | None:
        """The validation inputs and labels as arrays, read once from their pipeline."""
        if self.prepared.validation is None:
            return None
        if self._validation is None:
            xs, ys = [], []
            for xb, yb in self.prepared.validation:
                xs.append([t.numpy() for t in keras.tree.flatten(xb)])
                ys.append(yb.numpy())
            x = tuple(np.concatenate(parts) for parts in zip(*xs))
            self._validation = (x[0] if len(x) == 1 else x, np.concatenate(ys))
        return self._validation

    def _features(
        self,
        prefix: keras.Model,
        train_inputs: Any,
        validation_inputs: Any,
        open_shapes: bool = False,
    ) -> _Features:
        """``prefix``'s outputs on the training and validation inputs (arrays or file datasets).

        Raises:
            ValueError: ``open_shapes`` and a tensor below the cut whose size the data
                does not fix (set per batch, as by a ``TextVectorization`` that pads to
                the longest text), so features computed in other batches would differ.
        """
        # The data fixes sizes the model leaves open (an `Input((None, None, 3))` fed
        # 32x32 images), so the features' size is known before they are computed.
        shapes = _example_shapes(train_inputs)
        in_specs = [
            tf.TensorSpec((None, *(s if len(s) == len(t.shape) - 1 else t.shape[1:])), t.dtype)
            for t, s in zip(prefix.inputs, shapes)
        ]
        unknown = _open_tensors(prefix, in_specs) if open_shapes else []
        if unknown:
            raise ValueError(
                f"tensors below the cut have shapes {unknown[:3]}, whose size is set by each "
                "batch, not by the data (a layer pads or crops to its batch), so features "
                "computed in other batches would differ"
            )
        single = len(in_specs) == 1
        # One trace for every batch size and both splits: tracing a deep prefix costs
        # about as much as running it over a few thousand small images.
        fn = tf.function(
            lambda *xs: tuple(
                keras.tree.flatten(prefix(xs[0] if single else list(xs), training=False))
            ),
            input_signature=in_specs,
        )
        out_specs = [
            tf.TensorSpec(t.shape, t.dtype) for t in fn.get_concrete_function().structured_outputs
        ]
        unknown = [tuple(s.shape) for s in out_specs if None in tuple(s.shape)[1:]]
        if unknown:
            raise ValueError(
                f"the features at the cut have shapes {unknown}, whose size is set by each batch"
            )
        train, nbytes, path = self._compute(
            fn, in_specs, out_specs, train_inputs, self.prepared.n_train
        )
        result = _Features(train, None, nbytes, [path] if path else [])
        if validation_inputs is not None:
            result.validation, vbytes, vpath = self._compute(
                fn, in_specs, out_specs, validation_inputs, self.prepared.n_validation
            )
            result.nbytes += vbytes
            result.paths += [vpath] if vpath else []
        return result

    def _compute(self, fn, in_specs: list, out_specs: list, inputs: Any, n: int):
        """Features of ``inputs``: a tuple of arrays in memory, or a file dataset."""
        per_example = sum(int(np.prod(s.shape[1:])) * s.dtype.size for s in out_specs)
        total = per_example * n

        def batches():
            if isinstance(inputs, tf.data.Dataset):
                yield from inputs.batch(_FEATURE_BATCH)
                return
            parts = tuple(keras.tree.flatten(inputs))  # model.inputs order (dicts by sorted key)
            dtypes = [s.dtype.as_numpy_dtype for s in in_specs]
            for i in range(0, n, _FEATURE_BATCH):
                yield tuple(
                    np.asarray(a[i : i + _FEATURE_BATCH], dtype=d) for a, d in zip(parts, dtypes)
                )

        if total <= self.budget:
            parts = [[] for _ in out_specs]
            for xb in batches():
                for part, out in zip(parts, fn(*xb)):
                    part.append(out.numpy())
            return (
                tuple(
                    np.concatenate(p) if p else np.zeros((0, *s.shape[1:]), s.dtype.as_numpy_dtype)
                    for p, s in zip(parts, out_specs)
                ),
                total,
                None,
            )

        def generate():
            for xb in batches():
                yield fn(*xb)

        # A known length lets Keras count steps as it does for in-memory features.
        ds = (
            tf.data.Dataset.from_generator(generate, output_signature=tuple(out_specs))
            .unbatch()
            .apply(tf.data.experimental.assert_cardinality(n))
        )
        path = os.path.join(self._cache_dir(), f"features_{len(os.listdir(self._cache_dir()))}")
        ds = ds.cache(path)
        ds.reduce(tf.constant(0, tf.int64), lambda count, *_: count + 1)  # fill the cache file once
        return ds, total, path

    def _cache_dir(self) -> str:
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            return self.directory
        if self._tmpdir is None:
            self._tmpdir = make_scratch_directory("features")  # swept after a kill
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        return self._tmpdir

    def _keep(self, model: keras.Model, split: FeatureSplit, features: _Features) -> None:
        """Keep ``features`` for a later phase whose cut is the same as ``split``'s."""
        self._kept = _Kept(
            id(model),
            tuple(split.prefix_layers),
            [id(v) for v in split.prefix.weights],
            [v.numpy() for v in split.prefix.weights],
            [tuple(t.shape) for t in split.prefix.outputs],
            features,
        )

    def _kept_for(self, model: keras.Model, split: FeatureSplit) -> _Features | None:
        """Kept features that are exactly ``split.prefix``'s outputs now, or ``None``."""
        kept = self._kept
        if kept is None or kept.model_id != id(model) or kept.layers != tuple(split.prefix_layers):
            return None
        weights = split.prefix.weights
        if (
            kept.variable_ids != [id(v) for v in weights]
            or kept.shapes != [tuple(t.shape) for t in split.prefix.outputs]
            or not all(np.array_equal(a, v.numpy()) for a, v in zip(kept.values, weights))
        ):
            return None
        return kept.features

    def _cached_setup(
        self,
        model: keras.Model,
        index: int,
        split: FeatureSplit,
        later_trainable: Collection[keras.layers.Layer] | None = None,
    ) -> PhaseSetup:
        p = self.prepared
        x, y = p.arrays
        val = self._validation_arrays()
        start = time.perf_counter()
        suffix = split.suffix
        feats = self._kept_for(model, split)
        source = KEPT
        if feats is None:
            lower = (
                split_frozen_prefix(model, also_trainable=later_trainable)
                if later_trainable
                else None
            )
            if lower is not None and set(lower.prefix_layers) == set(split.prefix_layers):
                lower = split  # the next phase's cut is this one: compute once, keep
            elif lower is not None and not set(lower.prefix_layers) < set(split.prefix_layers):
                lower = None
            first = lower or split
            inputs = self._store_inputs_key(x, val)
            feats, key, stored = self._looked_up(first, x, None if val is None else val[0], inputs)
            source = STORED if stored else COMPUTED
            if lower is not None:
                self._keep(model, lower, feats)
            if lower is not None and lower is not split:
                # The layers between the two cuts are frozen in this phase too: run them
                # once on the kept features (the next cut's suffix, cut again here).
                source = DERIVED_FROM_STORED if stored else DERIVED
                middle = split_frozen_prefix(lower.suffix)
                if middle is None:  # nothing with weights in between: train through it
                    suffix = lower.suffix
                else:
                    base = feats
                    feats, _, derived_stored = self._looked_up(
                        middle, base.train, base.validation, key
                    )
                    feats = dataclasses.replace(feats, nbytes=feats.nbytes + base.nbytes)
                    suffix = middle.suffix
                    source = STORED_BOTH if stored and derived_stored else source
        seed = self._phase_seed(index)
        train = self._pipeline(feats.train, y, seed, shuffle=True)
        validation = (
            None if val is None else self._pipeline(feats.validation, val[1], seed, shuffle=False)
        )
        seconds = time.perf_counter() - start
        fit_model = CachedFeatureModel(suffix, model)
        fit_model.dtype_policy = model.dtype_policy
        where = f"files {feats.paths}" if feats.paths else "memory"
        reason = f"{len(split.prefix_layers)} frozen layers below the cut; cut stopped by {split.stopped_by}"
        self._log(
            f"kerasft: features of {len(split.prefix_layers)} frozen layers {source} "
            f"({feats.nbytes / 2**20:.1f} MiB in {where}, {seconds:.1f}s); training "
            f"{len(suffix.layers) - len(suffix.inputs)} layers on them"
        )
        return PhaseSetup(
            fit_model, train, validation, True, reason, seconds, feats.nbytes, feature_source=source
        )

    def _store_inputs_key(self, x: Any, val: tuple[Any, np.ndarray] | None) -> str | None:
        """The store key of this run's training and validation inputs (computed once per run)."""
        if self.store is None:
            return None
        if self._inputs_key is None:
            self._inputs_key = inputs_key(x, None if val is None else val[0])
        return self._inputs_key

    def _looked_up(
        self, split: FeatureSplit, train_inputs: Any, validation_inputs: Any, inputs: str | None
    ) -> tuple[_Features, str | None, bool]:
        """``split.prefix``'s features from the store, or computed (and stored).

        ``inputs`` is the store key of the inputs (of the run's data, or of the features
        these are computed from); ``None`` without a store.

        Returns:
            The features, their store key (``None`` when not storable) and whether they
            came from the store.
        """
        key = None if inputs is None else prefix_key(split.prefix, inputs)
        if key is not None:
            found = self.store.get(key)
            if found is not None:
                return found, key, True
        feats = self._features(split.prefix, train_inputs, validation_inputs, split.open_shapes)
        if key is not None:
            self.store.put(key, feats)
        return feats, key, False

    def _pipeline(
        self, feats: Any, labels: np.ndarray, seed: int, shuffle: bool
    ) -> tf.data.Dataset:
        batch_size = self.prepared.batch_size
        augmentation = self.prepared.augmentation
        # Only training batches (shuffled) are augmented; on features, only feature MixUp applies.
        transform = augmentation.features if shuffle and augmentation is not None else None
        if not isinstance(feats, tf.data.Dataset):
            return data_lib.make_pipeline(
                _unwrap(feats), labels, batch_size, seed, shuffle=shuffle, transform=transform
            )
        ds = tf.data.Dataset.zip(
            (feats.map(_unwrap_tf), tf.data.Dataset.from_tensor_slices(labels))
        )
        if shuffle:
            ds = ds.shuffle(
                min(len(labels), _SHUFFLE_WINDOW), seed=seed, reshuffle_each_iteration=True
            )
        ds = ds.batch(batch_size)
        if transform is not None:
            ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def close(self) -> None:
        """Drop kept features; remove the cache files written here (its own temporary directory)."""
        self._kept = None
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._tmpdir = None


def _example_shapes(inputs: Any) -> list[tuple]:
    """Shapes of one example of each input, from arrays or a dataset of examples."""
    if isinstance(inputs, tf.data.Dataset):
        return [tuple(spec.shape) for spec in keras.tree.flatten(inputs.element_spec)]
    return [tuple(np.shape(a)[1:]) for a in keras.tree.flatten(inputs)]


def _unwrap(feats: tuple):
    return feats[0] if len(feats) == 1 else feats


def _unwrap_tf(*feats):
    return feats[0] if len(feats) == 1 else feats
