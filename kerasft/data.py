"""Turn what users pass as training data into batched ``tf.data`` pipelines, checked.

Accepted forms: an ``(x, y)`` tuple of arrays; a ``tf.data.Dataset`` of ``(x, y)``
pairs, batched or not; a dataset of dicts as tensorflow-datasets yields without
``as_supervised`` (``{"image": ..., "label": ...}``); a tensorflow-datasets builder. The
number of classes and the label encoding (sparse integers, one-hot, binary) are read off
the labels, which are checked before any training starts: range, integrality, one-hot
width, finite inputs, input shape against the model.

When no validation data is given, a seeded, stratified split is held out. Datasets small
enough (``memory_budget`` bytes) and free of random ops are read into memory once, which
makes the split exact and the epochs cheap; larger or random pipelines are streamed and
split by a seeded hash of each example's position.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat

__all__ = ["DataSpec", "PreparedData", "prepare_data", "to_arrays", "has_random_ops", "LABEL_MODES"]

LABEL_MODES = ("sparse", "one_hot", "binary")
_AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class DataSpec:
    """What the labels say about the task."""

    num_classes: int
    label_mode: str
    class_counts: dict[int, int] = field(default_factory=dict)


@dataclass
class PreparedData:
    """Batched train/validation pipelines and what kerasft learned about them."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    spec: DataSpec
    n_train: int
    n_validation: int
    batch_size: int
    in_memory: bool
    arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_train / self.batch_size))


def _is_tfds_builder(obj: Any) -> bool:
    # A builder can only exist once tensorflow_datasets is imported; skip its slow import.
    if "tensorflow_datasets" not in sys.modules:
        return False
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # pragma: no cover - tfds is a dependency
        return False
    return isinstance(obj, tfds.core.DatasetBuilder)


def _supervised_keys(element_spec: dict, argument: str) -> tuple[str, str]:
    for x_key, y_key in (("image", "label"), ("x", "y"), ("features", "label"), ("text", "label")):
        if x_key in element_spec and y_key in element_spec:
            return x_key, y_key
    raise ValueError(
        f"Argument `{argument}` is a dataset of dicts with keys {sorted(element_spec)}; kerasft "
        "cannot tell inputs from labels. HINT: load it with `as_supervised=True`, or map it "
        "to (x, y) pairs: `ds.map(lambda d: (d['image'], d['label']))`."
    )


def as_dataset(data: Any, argument: str = "data") -> tf.data.Dataset | tuple[np.ndarray, np.ndarray]:
    """Normalise ``data`` into a ``tf.data.Dataset`` of (x, y) or a pair of arrays."""
    if _is_tfds_builder(data):
        splits = list(data.info.splits.keys())
        if "train" not in splits:
            raise ValueError(
                f"Argument `{argument}` is a tensorflow-datasets builder without a 'train' "
                f"split (splits: {splits}). HINT: pass `builder.as_dataset(split=...)`."
            )
        data = data.as_dataset(split="train", as_supervised=data.info.supervised_keys is not None)
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, dict):
            x_key, y_key = _supervised_keys(spec, argument)
            data = data.map(lambda d: (d[x_key], d[y_key]), num_parallel_calls=_AUTOTUNE)
            spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) != 2:
            got = f"{len(spec)}-tuples" if isinstance(spec, tuple) else type(spec).__name__
            raise ValueError(
                f"Argument `{argument}` must yield (x, y) pairs, but it yields {got}: {spec}. "
                "HINT: kerasft needs labels; map the dataset to (inputs, labels), and drop "
                "sample weights."
            )
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(
                f"Argument `{argument}` must be an (x, y) pair of arrays, but got a "
                f"{type(data).__name__} of length {len(data)}."
            )
        x, y = (np.asarray(a) for a in data)
        if len(x) != len(y):
            raise ValueError(
                f"Argument `{argument}`: x and y must have the same length. Received: "
                f"len(x)={len(x)}, len(y)={len(y)}."
            )
        return x, y
    raise TypeError(
        f"Argument `{argument}` must be a tf.data.Dataset of (x, y), an (x, y) tuple of "
        f"arrays, or a tensorflow-datasets builder. Received: {type(data).__name__}."
    )


def has_random_ops(ds: tf.data.Dataset) -> bool:
    """Whether the dataset's graph draws random numbers (augmentation, random crops...).

    Shuffling is not counted: it reorders examples without changing them.
    """
    try:
        ops = list(compat.dataset_op_names(ds))
    except Exception:  # an opaque pipeline: assume the worst
        return True
    return any(("Random" in op and "Shuffle" not in op) or op.startswith("Stateless") for op in ops)


def _model_input_shape(model: Any) -> tuple | None:
    try:
        return tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError):
        return None


def _check_input_shape(shape: tuple, expected: tuple | None, argument: str) -> None:
    if expected is None:
        return
    ok = len(shape) == len(expected) and all(
        e is None or s is None or e == s for s, e in zip(shape, expected)
    )
    if not ok:
        exp = tuple(expected)
        raise ValueError(
            f"Argument `{argument}`: each input has shape {tuple(shape)}, but the model expects "
            f"{exp} (None = any). HINT: resize or reshape the inputs to {exp}"
            + (", e.g. add a channel axis with x[..., None]." if len(shape) + 1 == len(exp) else ".")
        )


def _unbatch_if_needed(ds: tf.data.Dataset, expected: tuple | None, argument: str) -> tf.data.Dataset:
    x_spec = ds.element_spec[0]
    rank = x_spec.shape.rank
    if expected is None or rank is None:
        return ds
    if rank == len(expected) + 1:
        return ds.unbatch()
    if rank == len(expected):
        return ds
    _check_input_shape(tuple(x_spec.shape), expected, argument)
    return ds


def to_arrays(ds: tf.data.Dataset, *, memory_budget: float = float("inf")) -> tuple[np.ndarray, np.ndarray] | None:
    """Read an unbatched (x, y) dataset into arrays; ``None`` if it exceeds the budget."""
    xs, ys, size = [], [], 0
    for x, y in ds.batch(1024).as_numpy_iterator():
        size += x.nbytes + y.nbytes
        if size > memory_budget:
            return None
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0,)), np.zeros((0,))
    return np.concatenate(xs), np.concatenate(ys)


def infer_spec(
    y: np.ndarray,
    *,
    num_classes: int | None = None,
    label_mode: str | None = None,
    head_units: int | None = None,
    argument: str = "data",
) -> DataSpec:
    """Read the label encoding and class count off ``y``, checking it on the way.

    Raises:
        ValueError: float labels that are not whole numbers, negative labels, labels
            ``>= num_classes``, a one-hot width other than ``num_classes``, fewer than 2
            classes.
    """
    if label_mode is not None and label_mode not in LABEL_MODES:
        raise ValueError(
            f"Argument `label_mode` must be one of {LABEL_MODES}. Received: label_mode={label_mode!r}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2
    ):
        raise ValueError(
            f"Argument `num_classes` must be an integer >= 2 (a softmax over one class is "
            f"always 1.0; use num_classes=2 for a binary task). Received: num_classes={num_classes!r}"
        )
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError(f"Argument `{argument}` is empty: it yields no examples.")
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"Argument `{argument}`: labels must be numbers, but have dtype {y.dtype}. "
            "HINT: map class names to integers 0..n-1."
        )
    if y.ndim == 2 and y.shape[1] > 1:
        width = y.shape[1]
        if label_mode not in (None, "one_hot"):
            raise ValueError(
                f"Argument `label_mode={label_mode!r}` does not fit labels of shape "
                f"{y.shape} (one-hot rows). Use label_mode='one_hot' or None."
            )
        if not np.all(np.isfinite(y)) or y.min() < 0 or not np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
            raise ValueError(
                f"Argument `{argument}`: labels of shape {y.shape} look one-hot but rows are "
                "not probability vectors (non-negative, summing to 1)."
            )
        if num_classes is not None and num_classes != width:
            raise ValueError(
                f"Argument `num_classes={num_classes}` does not match the one-hot label width "
                f"{width}. Pass num_classes={width}, or fix the labels."
            )
        counts = np.bincount(np.argmax(y, axis=1), minlength=width)
        return DataSpec(width, "one_hot", {i: int(c) for i, c in enumerate(counts)})
    if y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Argument `{argument}`: labels must be integers of shape (n,) or one-hot of shape "
            f"(n, num_classes). Received labels of shape {y.shape}."
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise ValueError(f"Argument `{argument}`: labels contain NaN or inf.")
        if not np.all(y == np.round(y)):
            bad = y[y != np.round(y)][:3]
            raise ValueError(
                f"Argument `{argument}`: labels are floats that are not class indices "
                f"(e.g. {bad.tolist()}); a classification head needs integer labels in "
                "[0, num_classes) or one-hot rows. HINT: regression is not supported."
            )
    yi = y.astype("int64")
    if yi.min() < 0:
        raise ValueError(
            f"Argument `{argument}`: labels must be in [0, num_classes), but the smallest is {yi.min()}."
        )
    top = int(yi.max())
    if num_classes is not None and top >= num_classes:
        raise ValueError(
            f"Argument `{argument}`: label {top} is out of range for num_classes={num_classes}; "
            f"labels must be in [0, {num_classes}). HINT: pass num_classes={top + 1} or "
            "leave it None to infer it."
        )
    n = num_classes if num_classes is not None else top + 1
    if n < 2:
        raise ValueError(
            f"Argument `{argument}`: all labels are {top}; a classifier needs at least 2 classes."
        )
    counts = np.bincount(yi, minlength=n)
    if label_mode == "binary" and n != 2:
        raise ValueError(
            f"Argument `label_mode='binary'` needs labels in {{0, 1}}, but there are {n} classes."
        )
    mode = label_mode
    if mode is None:
        mode = "binary" if (n == 2 and head_units == 1) else "sparse"
    if mode == "one_hot":
        raise ValueError(
            "Argument `label_mode='one_hot'` needs labels of shape (n, num_classes); the labels "
            f"are integers of shape {y.shape}. Use label_mode='sparse'."
        )
    return DataSpec(n, mode, {i: int(c) for i, c in enumerate(counts)})


def _labels_of(y: np.ndarray, spec: DataSpec) -> np.ndarray:
    if spec.label_mode == "one_hot":
        return np.argmax(y, axis=1)
    return np.asarray(y).reshape(len(y), -1)[:, 0].astype("int64")


def _stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        val.extend(rng.choice(idx, size=k, replace=False))
    val = np.sort(np.asarray(val, dtype=np.int64))
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def _cast_labels(y: np.ndarray, spec: DataSpec) -> np.ndarray:
    if spec.label_mode == "one_hot":
        return y.astype("float32")
    y = np.asarray(y).reshape(len(y), -1)[:, 0]
    if spec.label_mode == "binary":
        return y.astype("float32")[:, None]
    return y.astype("int64")


def _check_x(x: np.ndarray, expected: tuple | None, argument: str) -> None:
    if x.dtype.kind not in "biuf":
        raise ValueError(
            f"Argument `{argument}`: inputs must be numeric arrays, but have dtype {x.dtype}."
        )
    _check_input_shape(tuple(x.shape[1:]), expected, argument)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
        raise ValueError(
            f"Argument `{argument}`: {bad} of {len(x)} inputs contain NaN or inf. "
            "HINT: clean or drop them before fine-tuning (np.isfinite)."
        )


def check_batching(batch_size: Any, validation_split: Any) -> None:
    """Raise unless ``batch_size`` is a positive integer and ``validation_split`` in [0, 1)."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if (isinstance(validation_split, bool) or not isinstance(validation_split, (int, float))
            or not 0.0 <= validation_split < 1.0):
        raise ValueError(
            f"Argument `validation_split` must be in [0, 1). Received: validation_split={validation_split!r}"
        )


def make_pipeline(x, y, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(_AUTOTUNE)


def prepare_data(
    data: Any,
    *,
    model: Any = None,
    validation_data: Any = None,
    validation_split: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
    num_classes: int | None = None,
    label_mode: str | None = None,
    head_units: int | None = None,
    memory_budget: float = 2 * 1024**3,
    shuffle: bool = True,
    check_classes: bool = True,
) -> PreparedData:
    """Check ``data`` and build batched, prefetched train and validation pipelines.

    Args:
        data: training data in any accepted form (see module docstring).
        model: the model the data will feed; its input shape is checked. Defaults to `None`.
        validation_data: data in any accepted form, or ``None`` to hold out
            ``validation_split`` of ``data`` (seeded, stratified). Defaults to `None`.
        validation_split: fraction held out when ``validation_data`` is ``None``, in
            ``[0, 1)``; ``0`` trains without validation. Defaults to `0.2`.
        batch_size: batch size of the returned pipelines. Defaults to `32`.
        seed: seed of the split and of shuffling. Defaults to `0`.
        num_classes: override the class count read off the labels. Defaults to `None`.
        label_mode: override the label encoding: ``"sparse"``, ``"one_hot"`` or
            ``"binary"``. Defaults to `None`.
        head_units: width of the model's current head (binary detection). Defaults to `None`.
        memory_budget: bytes up to which a dataset is read into memory. Defaults to 2 GiB.
        shuffle: shuffle the training pipeline every epoch. Defaults to `True`.
        check_classes: refuse label gaps (classes without examples). Defaults to `True`.

    Returns:
        A :class:`PreparedData`.

    Raises:
        ValueError / TypeError: for any of the problems listed in :func:`infer_spec`,
            empty data, wrong structure, shapes that do not fit the model, NaN/inf inputs.
    """
    check_batching(batch_size, validation_split)
    expected = _model_input_shape(model) if model is not None else None
    source = as_dataset(data, "data")
    in_memory = True
    if isinstance(source, tf.data.Dataset):
        ds = _unbatch_if_needed(source, expected, "data")
        if has_random_ops(ds):
            arrays = None
        else:
            arrays = to_arrays(ds, memory_budget=memory_budget)
        if arrays is None:
            return _prepare_streaming(
                ds, model=model, validation_data=validation_data, validation_split=validation_split,
                batch_size=batch_size, seed=seed, num_classes=num_classes, label_mode=label_mode,
                head_units=head_units, expected=expected,
            )
        x, y = arrays
    else:
        x, y = source
    if len(x) == 0:
        raise ValueError("Argument `data` is empty: it yields no examples.")
    _check_x(x, expected, "data")
    spec = infer_spec(y, num_classes=num_classes, label_mode=label_mode, head_units=head_units)
    empty = [c for c, n in spec.class_counts.items() if n == 0]
    if validation_data is None and validation_split > 0:
        train_idx, val_idx = _stratified_split(_labels_of(y, spec), validation_split, seed)
        xv, yv = x[val_idx], y[val_idx]
        x, y = x[train_idx], y[train_idx]
        if len(xv) == 0:
            raise ValueError(
                f"Argument `validation_split={validation_split}` holds out nothing from "
                f"{len(train_idx)} examples (every class has a single example). Pass "
                "validation_data=, or validation_split=0 to train without validation."
            )
    elif validation_data is not None:
        vsource = as_dataset(validation_data, "validation_data")
        if isinstance(vsource, tf.data.Dataset):
            vds = _unbatch_if_needed(vsource, expected, "validation_data")
            xv, yv = to_arrays(vds)
        else:
            xv, yv = vsource
        if len(xv) == 0:
            raise ValueError("Argument `validation_data` is empty: it yields no examples.")
        _check_x(xv, expected, "validation_data")
        infer_spec(yv, num_classes=spec.num_classes, label_mode=spec.label_mode,
                   head_units=head_units, argument="validation_data")
    else:
        xv = yv = None
    if empty and num_classes is None and check_classes:
        raise ValueError(
            f"Argument `data`: classes {empty} have no examples (labels run 0..{spec.num_classes - 1}). "
            "HINT: relabel classes to 0..n-1, or pass num_classes= if the gap is intended."
        )
    if x.dtype == np.float64:
        x = x.astype("float32")
    train = make_pipeline(x, _cast_labels(y, spec), batch_size, seed, shuffle=shuffle)
    val = None if xv is None else make_pipeline(xv, _cast_labels(yv, spec), batch_size, seed, shuffle=False)
    return PreparedData(
        train=train, validation=val, spec=spec, n_train=len(x), n_validation=0 if xv is None else len(xv),
        batch_size=batch_size, in_memory=in_memory, arrays=(x, _cast_labels(y, spec)),
    )


def _prepare_streaming(ds, *, model, validation_data, validation_split, batch_size, seed,
                       num_classes, label_mode, head_units, expected) -> PreparedData:
    """Large or random pipelines: scan labels once, split by a seeded hash of position."""
    _check_input_shape(tuple(ds.element_spec[0].shape), expected, "data")
    labels = []
    finite = True
    for y, ok in ds.batch(1024).map(
        lambda x, y: (y, tf.reduce_all(tf.math.is_finite(tf.cast(x, tf.float32))))
    ).as_numpy_iterator():
        labels.append(y)
        finite &= bool(ok)
    if not labels:
        raise ValueError("Argument `data` is empty: it yields no examples.")
    if not finite:
        raise ValueError("Argument `data`: some inputs contain NaN or inf. HINT: filter them out.")
    y_all = np.concatenate(labels)
    spec = infer_spec(y_all, num_classes=num_classes, label_mode=label_mode, head_units=head_units)

    def cast(x, y):
        if spec.label_mode == "one_hot":
            return x, tf.cast(y, tf.float32)
        y = tf.reshape(y, [-1])[0] if y.shape.rank else y
        if spec.label_mode == "binary":
            return x, tf.cast(tf.reshape(y, [1]), tf.float32)
        return x, tf.cast(y, tf.int64)

    n = len(y_all)
    if validation_data is None and validation_split > 0:
        def is_val(i, _):
            u = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), i]))
            return u < validation_split

        def is_train(i, element):
            return tf.logical_not(is_val(i, element))

        def drop_index(_, element):
            return element

        indexed = ds.enumerate()
        train = indexed.filter(is_train).map(drop_index)
        val = indexed.filter(is_val).map(drop_index)
        n_val = int(round(n * validation_split))
    elif validation_data is not None:
        vsource = as_dataset(validation_data, "validation_data")
        if not isinstance(vsource, tf.data.Dataset):
            vsource = tf.data.Dataset.from_tensor_slices(vsource)
        train, val = ds, _unbatch_if_needed(vsource, expected, "validation_data")
        n_val = int(val.cardinality()) if int(val.cardinality()) > 0 else 0
    else:
        train, val, n_val = ds, None, 0
    train = train.map(cast, num_parallel_calls=_AUTOTUNE).shuffle(
        min(n, 10_000), seed=seed).batch(batch_size).prefetch(_AUTOTUNE)
    if val is not None:
        val = val.map(cast, num_parallel_calls=_AUTOTUNE).batch(batch_size).prefetch(_AUTOTUNE)
    return PreparedData(train=train, validation=val, spec=spec, n_train=n - n_val,
                        n_validation=n_val, batch_size=batch_size, in_memory=False)
