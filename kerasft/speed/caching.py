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

The pieces live in their own modules: :mod:`kerasft.speed.prefix` (the cut, and the
model that trains the suffix), :mod:`kerasft.speed.store` (the store) and
:mod:`kerasft.speed.keys` (its keys); this module runs them phase by phase, and their
names still import from here.
"""

from __future__ import annotations

import dataclasses
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
from kerasft.speed.keys import inputs_key, prefix_key
from kerasft.speed.prefix import (
    CachedFeatureModel,
    FeatureSplit,
    barrier_reason,
    open_tensors,
    split_frozen_prefix,
)
from kerasft.speed.store import Features, FeatureStore, check_feature_store

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

_Features = Features  # its name before it moved to kerasft.speed.store


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
class _Kept:
    """Features kept for the next phase, with what they were computed from."""

    model_id: int
    layers: tuple[str, ...]
    variable_ids: list[int]
    values: list[np.ndarray]
    shapes: list[tuple]
    features: Features


def check_cache_features(value: Any) -> None:
    if not (value is True or value is False or value == "auto"):
        raise ValueError(
            "Argument `cache_features` must be True, False or 'auto'. Received: "
            f"cache_features={value!r}"
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
                "Argument `cache_budget` must be a number of bytes >= 0. Received: "
                f"cache_budget={budget!r}"
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
            return (
                "the input pipeline draws random numbers (augmentation), so features change "
                "every epoch"
            )
        if self.prepared.arrays is None:
            return (
                "the training data is streamed (larger than memory or built from a "
                "pipeline), and kerasft caches features of in-memory data only"
            )
        if self.distributed:
            return (
                "training runs under a tf.distribute strategy, where kerasft does not cache "
                "features"
            )
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
    ) -> Features:
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
        unknown = open_tensors(prefix, in_specs) if open_shapes else []
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
        result = Features(train, None, nbytes, [path] if path else [])
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

    def _keep(self, model: keras.Model, split: FeatureSplit, features: Features) -> None:
        """Keep ``features`` for a later phase whose cut is the same as ``split``'s."""
        self._kept = _Kept(
            id(model),
            tuple(split.prefix_layers),
            [id(v) for v in split.prefix.weights],
            [v.numpy() for v in split.prefix.weights],
            [tuple(t.shape) for t in split.prefix.outputs],
            features,
        )

    def _kept_for(self, model: keras.Model, split: FeatureSplit) -> Features | None:
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
        reason = (
            f"{len(split.prefix_layers)} frozen layers below the cut; "
            f"cut stopped by {split.stopped_by}"
        )
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
    ) -> tuple[Features, str | None, bool]:
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
