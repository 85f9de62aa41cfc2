"""Turn what users pass as training data into batched ``tf.data`` pipelines, checked.

Accepted forms: an ``(x, y)`` pair where ``x`` is an array, a tuple or list of arrays or a
dict of arrays (multi-input models), raw strings, variable-length integer sequences or a
pandas ``DataFrame``; a ``DataFrame`` with ``label_columns=``; a ``tf.data.Dataset`` of
``(x, y)`` pairs (``x`` a tensor, tuple or dict), batched or not; a dataset of dicts as
tensorflow-datasets yields without ``as_supervised`` (``{"image": ..., "label": ...}``); a
tensorflow-datasets builder. The task and label encoding are read off the labels (see
:mod:`kerasft.data.labels`) and every input is checked by name against the model (see
:mod:`kerasft.data.inputs`) before any training starts. A KerasHub task's preprocessor
(tokenizer, image converter) runs once over in-memory data, not every epoch.

When no validation data is given, a seeded split is held out, stratified by class. Datasets
small enough (``memory_budget`` bytes) and free of random ops are read into memory once,
which makes the split exact and the epochs cheap; larger or random pipelines are streamed
and split by a seeded hash of each example's position.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft.data import inputs as inputs_lib
from kerasft.data.inputs import InputSignature
from kerasft.data.labels import DataSpec, cast_labels, infer_spec, stratify_labels

__all__ = [
    "PreparedData",
    "prepare_data",
    "has_random_ops",
    "to_arrays",
    "make_pipeline",
    "check_batching",
    "read_examples",
]

_AUTOTUNE = tf.data.AUTOTUNE
_PREPROCESS_BATCH = 256


@dataclass
class PreparedData:
    """Batched train/validation pipelines and what kerasft learned about them.

    Attributes:
        train, validation: batched pipelines of ``(x, y)`` in the model's input structure.
        spec: the task and label encoding.
        n_train, n_validation: examples in each.
        batch_size: the batch size.
        in_memory: whether the data was read into memory (then ``arrays`` holds it).
        arrays: ``(x, y)`` of the training split, ``x`` in the model's input structure,
            ``y`` as the loss takes it.
        signature: the model's inputs the data was checked against.
        augmentation: the :class:`kerasft.augment.Augmentation` of training batches, if any.
        validation_arrays: ``(x, y)`` of the validation split when in memory.
        seed: the seed of the split and the shuffles.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    spec: DataSpec
    n_train: int
    n_validation: int
    batch_size: int
    in_memory: bool
    arrays: tuple[Any, np.ndarray] | None = None
    signature: InputSignature | None = None
    augmentation: Any = None
    validation_arrays: tuple[Any, np.ndarray] | None = None
    seed: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_train / self.batch_size))

    def combined(self) -> PreparedData:
        """Training and validation examples together, without validation (for a refit).

        Raises:
            ValueError: data that is not in memory.
        """
        if self.arrays is None:
            raise ValueError("Only in-memory data can be combined with its validation split.")
        x, y = self.arrays
        if self.validation_arrays is not None:
            xv, yv = self.validation_arrays
            x = keras.tree.map_structure(lambda a, b: np.concatenate([a, b]), x, xv)
            y = np.concatenate([y, yv])
        transform = self.augmentation.inputs if self.augmentation is not None else None
        train = make_pipeline(x, y, self.batch_size, self.seed, shuffle=True, transform=transform)
        return dataclasses.replace(
            self,
            train=train,
            validation=None,
            n_train=len(y),
            n_validation=0,
            arrays=(x, y),
            validation_arrays=None,
        )


def check_batching(batch_size: Any, validation_split: Any) -> None:
    """Raise unless ``batch_size`` is a positive integer and ``validation_split`` in [0, 1)."""
    if (
        not isinstance(batch_size, (int, np.integer))
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise ValueError(
            f"Argument `batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float))
        or not 0.0 <= validation_split < 1.0
    ):
        raise ValueError(
            "Argument `validation_split` must be in [0, 1). "
            f"Received: validation_split={validation_split!r}"
        )


def _is_tfds_builder(obj: Any) -> bool:
    # A builder can only exist once tensorflow_datasets is imported; skip its slow import.
    if "tensorflow_datasets" not in sys.modules:
        return False
    import tensorflow_datasets as tfds

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


def as_source(
    data: Any, argument: str = "data", label_columns: Any = None
) -> tf.data.Dataset | tuple[Any, Any]:
    """``data`` as a ``tf.data.Dataset`` of ``(x, y)`` or an ``(x, y)`` pair.

    Raises:
        ValueError / TypeError: a structure that is not ``(x, y)``, a DataFrame without
            its label columns.
    """
    if _is_tfds_builder(data):
        splits = list(data.info.splits.keys())
        if "train" not in splits:
            raise ValueError(
                f"Argument `{argument}` is a tensorflow-datasets builder without a 'train' "
                f"split (splits: {splits}). HINT: pass `builder.as_dataset(split=...)`."
            )
        data = data.as_dataset(split="train", as_supervised=data.info.supervised_keys is not None)
    if inputs_lib.is_dataframe(data):
        return _split_frame(data, label_columns, argument)
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
        return data[0], data[1]
    raise TypeError(
        f"Argument `{argument}` must be a tf.data.Dataset of (x, y), an (x, y) tuple of "
        f"arrays, a pandas DataFrame with `label_columns`, or a tensorflow-datasets builder. "
        f"Received: {type(data).__name__}."
    )


def _split_frame(frame: Any, label_columns: Any, argument: str) -> tuple[Any, np.ndarray]:
    if label_columns is None:
        raise ValueError(
            f"Argument `{argument}` is a DataFrame; kerasft needs to know which columns are "
            f"labels. HINT: pass label_columns='...' (one of {[str(c) for c in frame.columns]})."
        )
    names = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(
            f"Argument `label_columns={label_columns!r}`: no column {missing[0]!r} in the "
            f"DataFrame. Columns are: {[str(c) for c in frame.columns]}"
        )
    y = frame[names[0]].to_numpy() if isinstance(label_columns, str) else frame[names].to_numpy()
    return frame.drop(columns=names), y


def has_random_ops(ds: tf.data.Dataset) -> bool:
    """Whether the dataset's graph draws random numbers (augmentation, random crops...).

    Shuffling is not counted: it reorders examples without changing them.
    """
    try:
        ops = list(compat.dataset_op_names(ds))
    except Exception:  # an opaque pipeline: assume the worst
        return True
    return any(("Random" in op and "Shuffle" not in op) or op.startswith("Stateless") for op in ops)


def _unbatch_if_needed(ds: tf.data.Dataset, signature: InputSignature | None) -> tf.data.Dataset:
    """Unbatch a batched pipeline, judged by the rank of its first input against the model's."""
    first = keras.tree.flatten(ds.element_spec[0])[0]
    if signature is None or first.shape.rank is None:
        return ds
    return ds.unbatch() if first.shape.rank == len(signature.shapes[0]) + 1 else ds


def _padded(chunks: list[np.ndarray]) -> np.ndarray:
    """Concatenate chunks whose trailing dims differ (padded batches), padding with 0."""
    if len({c.shape[1:] for c in chunks}) <= 1:
        return np.concatenate(chunks)
    dims = np.max([c.shape[1:] for c in chunks], axis=0)
    return np.concatenate(
        [np.pad(c, [(0, 0)] + [(0, d - s) for s, d in zip(c.shape[1:], dims)]) for c in chunks]
    )


def to_arrays(
    ds: tf.data.Dataset, *, memory_budget: float = float("inf")
) -> tuple[Any, np.ndarray] | None:
    """Read an unbatched ``(x, y)`` dataset into arrays; ``None`` if it exceeds the budget.

    Variable-length elements (token sequences) are padded with 0 at the end.
    """
    x_spec = ds.element_spec[0]
    ragged = any(d is None for s in keras.tree.flatten(x_spec) for d in s.shape)
    batched = ds.padded_batch(1024) if ragged else ds.batch(1024)
    xs, ys, size = [], [], 0
    for x, y in batched.as_numpy_iterator():
        flat = keras.tree.flatten(x)
        size += sum(a.nbytes for a in flat) + y.nbytes
        if size > memory_budget:
            return None
        xs.append(flat)
        ys.append(y)
    if not xs:
        return np.zeros((0,)), np.zeros((0,))
    flat = [_padded(list(parts)) for parts in zip(*xs)]
    return keras.tree.pack_sequence_as(x_spec, flat), _padded(ys)


def read_examples(
    data: Any,
    *,
    signature: InputSignature | None,
    argument: str = "data",
    label_columns: Any = None,
) -> tuple[Any, np.ndarray]:
    """All of ``data`` as ``(x, y)`` arrays in the model's input structure (no checks)."""
    source = as_source(data, argument, label_columns)
    if isinstance(source, tf.data.Dataset):
        x, y = to_arrays(_unbatch_if_needed(source, signature))
    else:
        x, y = source
    return inputs_lib.normalize_inputs(x, signature, argument), np.asarray(y)


def _preprocess(x: Any, preprocessor: Callable, n: int) -> Any:
    """Run a preprocessor (a KerasHub tokenizer/converter) once over in-memory inputs."""
    parts = []
    for start in range(0, n, _PREPROCESS_BATCH):
        chunk = inputs_lib.take(x, np.arange(start, min(n, start + _PREPROCESS_BATCH)))
        # Some tokenizers (KerasHub's byte-pair ones on the `tokenizers` library) take a
        # string tensor or a list of str, never a numpy array of strings; all take a tensor.
        chunk = keras.tree.map_structure(_text_as_tensor, chunk)
        out = preprocessor(chunk)
        parts.append(
            keras.tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)), out)
        )
    flat = [np.concatenate(p) for p in zip(*[keras.tree.flatten(p) for p in parts])]
    return keras.tree.pack_sequence_as(parts[0], flat)


def _text_as_tensor(array: Any) -> Any:
    if isinstance(array, np.ndarray) and array.dtype.kind in "USO":
        return tf.constant(
            array.astype(object) if array.dtype.kind == "U" else array, dtype=tf.string
        )
    return array


def make_pipeline(
    x: Any,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    shuffle: bool,
    transform: Callable | None = None,
) -> tf.data.Dataset:
    """A batched, prefetched pipeline over in-memory ``(x, y)`` (shuffled every epoch if asked).

    ``transform(x, y) -> (x, y)`` runs on each batch (augmentation).
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if transform is not None:
        ds = ds.map(transform, num_parallel_calls=_AUTOTUNE)
    return _without_autotuning(ds.prefetch(_AUTOTUNE))


def _without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with tf.data's autotuning off.

    Over data already in memory there is nothing for it to tune, and it costs: each new
    iterator (every epoch, every evaluation) starts its tuning, which stalled the first
    step of about a third of the epochs by 200-300 ms on a 2-core machine (a 30 ms step
    at batch 8). A parallel map (augmentation) still runs in parallel; tf.data fixes its
    parallelism instead of tuning it.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _split(
    labels: np.ndarray | None, n: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices, stratified by ``labels`` when given."""
    rng = np.random.default_rng(seed)
    if labels is None:
        k = int(round(fraction * n))
        val = np.sort(rng.choice(n, size=min(max(k, 1), n - 1) if n > 1 else 0, replace=False))
    else:
        val = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
            val.extend(rng.choice(idx, size=k, replace=False))
        val = np.sort(np.asarray(val, dtype=np.int64))
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def prepare_data(
    data: Any,
    *,
    model: Any = None,
    validation_data: Any = None,
    validation_split: float | Callable[[int | None], float] = 0.2,
    batch_size: int | Callable[[int | None], int] = 32,
    seed: int = 0,
    num_classes: int | None = None,
    label_mode: str | None = None,
    task: str | None = None,
    head_units: int | None = None,
    head_activation: str | None = None,
    label_columns: Any = None,
    preprocessor: Callable | None = None,
    standardize_targets: bool = False,
    one_hot: bool = False,
    augment: Any = None,
    memory_budget: float = 2 * 1024**3,
    shuffle: bool = True,
    check_classes: bool = True,
) -> PreparedData:
    """Check ``data`` and build batched, prefetched train and validation pipelines.

    Example:

    ```python
    prepared = prepare_data((x, y), model=model, validation_split=0.2)
    prepared.spec.task, prepared.n_train, prepared.steps_per_epoch
    ```

    Args:
        data: training data in any accepted form (see the module docstring).
        model: the model the data will feed; its inputs are checked by name. Defaults to `None`.
        validation_data: data in any accepted form, or ``None`` to hold out
            ``validation_split`` of ``data`` (seeded, stratified). Defaults to `None`.
        validation_split: fraction held out when ``validation_data`` is ``None``, in
            ``[0, 1)``; ``0`` trains without validation; or a function of the number of
            examples (``None`` when streamed) that returns the fraction. Defaults to `0.2`.
        batch_size: batch size of the returned pipelines, or a function of the number of
            training examples (``None`` when streamed) that returns it. Defaults to `32`.
        seed: seed of the split and of shuffling. Defaults to `0`.
        num_classes: override the class (label, output) count read off the labels.
            Defaults to `None`.
        label_mode: override the label encoding (see :data:`LABEL_MODES`). Defaults to `None`.
        task: ``"auto"``/``None``, ``"classification"``, ``"multilabel"`` or
            ``"regression"``. Defaults to `None`.
        head_units: width of the model's current head. Defaults to `None`.
        head_activation: activation of the model's current head. Defaults to `None`.
        label_columns: the label column(s) when ``data`` is a DataFrame. Defaults to `None`.
        preprocessor: a function from raw inputs to model inputs (a KerasHub task's
            preprocessor), run once over in-memory data. Defaults to `None`.
        standardize_targets: train regression heads on targets scaled to mean 0, std 1
            (the scale is in ``spec.target_mean`` / ``target_std``). Defaults to `False`.
        one_hot: feed single-label classes as one-hot rows (``spec.label_mode`` becomes
            ``"one_hot"``), for losses and augmentations that blend labels. Defaults to `False`.
        augment: ``finetune``'s ``augment`` (see :mod:`kerasft.augment`), applied to the
            training batches. Defaults to `None`.
        memory_budget: bytes up to which a dataset is read into memory. Defaults to 2 GiB.
        shuffle: shuffle the training pipeline every epoch. Defaults to `True`.
        check_classes: refuse label gaps (classes without examples). Defaults to `True`.

    Returns:
        A :class:`PreparedData`.

    Raises:
        ValueError / TypeError: wrong structure, empty data, inputs that do not fit the
            model (named), labels that fit no task or not the one asked for.
    """
    decide = validation_split if callable(validation_split) else None
    batching = batch_size if callable(batch_size) else None
    check_batching(32 if batching else batch_size, 0.2 if decide else validation_split)
    signature = InputSignature.of(model) if model is not None else None
    raw_signature = None if preprocessor is not None else signature
    source = as_source(data, "data", label_columns)
    if isinstance(source, tf.data.Dataset):
        ds = _unbatch_if_needed(source, raw_signature)
        source = None if has_random_ops(ds) else to_arrays(ds, memory_budget=memory_budget)
        if source is None:
            return _prepare_streaming(
                ds,
                signature=signature,
                preprocessor=preprocessor,
                validation_data=validation_data,
                validation_split=decide(None) if decide else validation_split,
                batch_size=batching(None) if batching else batch_size,
                seed=seed,
                num_classes=num_classes,
                label_mode=label_mode,
                task=task,
                head_units=head_units,
                head_activation=head_activation,
                one_hot=one_hot,
                augment=augment,
            )
    x, y = _model_examples(source, raw_signature, signature, preprocessor)
    head = {"head_units": head_units, "head_activation": head_activation}
    spec = infer_spec(y, num_classes=num_classes, label_mode=label_mode, task=task, **head)
    if decide is not None:
        validation_split = decide(len(y)) if validation_data is None else 0.0
        check_batching(32, validation_split)
    xv = yv = None
    if validation_data is None and validation_split > 0:
        (x, y), (xv, yv) = _hold_out(x, y, spec, validation_split, seed)
    elif validation_data is not None:
        xv, yv = _validation_examples(
            validation_data, raw_signature, signature, label_columns, preprocessor, spec, head
        )
    _check_gaps(spec, num_classes, check_classes)
    y, yv = _encode_labels(y, yv, spec, one_hot=one_hot, standardize_targets=standardize_targets)
    x = _as_float32(x)
    if batching is not None:
        batch_size = batching(len(y))
        check_batching(batch_size, 0.0)
    augmentation = _augmentation(augment, signature, x, seed, spec)
    return _in_memory_data(
        (x, y),
        None if xv is None else (xv, yv),
        spec,
        signature,
        augmentation,
        batch_size,
        seed,
        shuffle,
    )


def _model_examples(
    source: tuple[Any, Any],
    raw_signature: InputSignature | None,
    signature: InputSignature | None,
    preprocessor: Callable | None,
) -> tuple[Any, np.ndarray]:
    """``(x, y)`` of the training data in the model's input structure, checked against it."""
    x, y = source
    x = inputs_lib.normalize_inputs(x, raw_signature, "data")
    y = np.asarray(y)
    n = inputs_lib.num_examples(x)
    if n == 0 or y.size == 0:
        raise ValueError("Argument `data` is empty: it yields no examples.")
    if n != len(y):
        raise ValueError(
            "Argument `data`: x and y must have the same length. "
            f"Received: len(x)={n}, len(y)={len(y)}."
        )
    if preprocessor is not None:
        x = inputs_lib.normalize_inputs(_preprocess(x, preprocessor, n), signature, "data")
    inputs_lib.check_inputs(x, signature, "data")
    return x, y


def _hold_out(
    x: Any, y: np.ndarray, spec: DataSpec, validation_split: float, seed: int
) -> tuple[tuple[Any, np.ndarray], tuple[Any, np.ndarray]]:
    """``((x, y), (x_val, y_val))``: a seeded validation split, stratified by class."""
    train_idx, val_idx = _split(stratify_labels(y, spec), len(y), validation_split, seed)
    if len(val_idx) == 0:
        raise ValueError(
            f"Argument `validation_split={validation_split}` holds out nothing from "
            f"{len(train_idx)} examples (every class has a single example). Pass "
            "validation_data=, or validation_split=0 to train without validation."
        )
    validation = inputs_lib.take(x, val_idx), y[val_idx]
    return (inputs_lib.take(x, train_idx), y[train_idx]), validation


def _validation_examples(
    validation_data: Any,
    raw_signature: InputSignature | None,
    signature: InputSignature | None,
    label_columns: Any,
    preprocessor: Callable | None,
    spec: DataSpec,
    head: dict[str, Any],
) -> tuple[Any, np.ndarray]:
    """``(x, y)`` of ``validation_data``, checked against the model and the training labels."""
    xv, yv = read_examples(
        validation_data,
        signature=raw_signature,
        argument="validation_data",
        label_columns=label_columns,
    )
    if len(yv) == 0:
        raise ValueError("Argument `validation_data` is empty: it yields no examples.")
    if preprocessor is not None:
        xv = inputs_lib.normalize_inputs(
            _preprocess(xv, preprocessor, len(yv)), signature, "validation_data"
        )
    inputs_lib.check_inputs(xv, signature, "validation_data")
    infer_spec(
        yv,
        num_classes=spec.num_classes,
        label_mode=spec.label_mode,
        task=spec.task,
        argument="validation_data",
        **head,
    )
    return xv, yv


def _encode_labels(
    y: np.ndarray,
    yv: np.ndarray | None,
    spec: DataSpec,
    *,
    one_hot: bool,
    standardize_targets: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels as asked: one-hot rows, and the target scale recorded in ``spec`` (updated)."""
    if one_hot and spec.label_mode == "sparse":
        rows = np.eye(spec.num_classes, dtype="float32")
        y = rows[np.asarray(y).reshape(-1).astype(int)]
        yv = None if yv is None else rows[np.asarray(yv).reshape(-1).astype(int)]
        spec.label_mode = "one_hot"
    if standardize_targets and spec.task == "regression":
        flat = np.asarray(y, dtype="float64").reshape(len(y), -1)
        spec.target_mean = flat.mean(axis=0).tolist()
        spec.target_std = np.where(flat.std(axis=0) > 0, flat.std(axis=0), 1.0).tolist()
    return y, yv


def _as_float32(x: Any) -> Any:
    return keras.tree.map_structure(
        lambda a: a.astype("float32") if a.dtype == np.float64 else a, x
    )


def _in_memory_data(
    train: tuple[Any, np.ndarray],
    validation: tuple[Any, np.ndarray] | None,
    spec: DataSpec,
    signature: InputSignature | None,
    augmentation: Any,
    batch_size: int,
    seed: int,
    shuffle: bool,
) -> PreparedData:
    """The pipelines over in-memory ``(x, y)`` training and validation examples."""
    x, y = train
    y = cast_labels(y, spec)
    pipeline = make_pipeline(
        x,
        y,
        batch_size,
        seed,
        shuffle=shuffle,
        transform=augmentation.inputs if augmentation is not None else None,
    )
    val = validation_arrays = None
    if validation is not None:
        xv, yv = validation[0], cast_labels(validation[1], spec)
        # The pipeline takes the inputs as given; the arrays (for a refit) as training's.
        val = make_pipeline(xv, yv, batch_size, seed, shuffle=False)
        validation_arrays = (_as_float32(xv), yv)
    return PreparedData(
        train=pipeline,
        validation=val,
        spec=spec,
        n_train=len(y),
        n_validation=0 if validation is None else len(validation[1]),
        batch_size=batch_size,
        in_memory=True,
        arrays=(x, y),
        signature=signature,
        augmentation=augmentation,
        seed=seed,
        validation_arrays=validation_arrays,
    )


def _augmentation(
    augment: Any, signature: InputSignature | None, x: Any, seed: int, spec: DataSpec
) -> Any:
    if augment is None:
        return None
    from kerasft.augment import build_augmentation

    flat = inputs_lib.flatten(x)
    top = max((float(np.max(a)) for a in flat if a.dtype.kind in "fiu" and a.size), default=1.0)
    return build_augmentation(
        augment,
        signature=signature,
        value_range=(0.0, 255.0 if top > 1.0 else 1.0),
        seed=seed,
        task=spec.task,
    )


def _check_gaps(spec: DataSpec, num_classes: int | None, check_classes: bool) -> None:
    empty = [c for c, k in spec.class_counts.items() if k == 0]
    if empty and num_classes is None and check_classes and spec.task == "classification":
        raise ValueError(
            f"Argument `data`: classes {empty} have no examples (labels run "
            f"0..{spec.num_classes - 1}). HINT: relabel classes to 0..n-1, or pass num_classes= "
            "if the gap is intended."
        )


def _scan_labels(ds: tf.data.Dataset) -> np.ndarray:
    """Every label of ``ds``, read in one pass that also checks the inputs are finite."""
    labels, finite = [], True
    for y, ok in (
        ds.batch(1024)
        .map(
            lambda x, y: (
                y,
                tf.reduce_all(
                    [
                        tf.reduce_all(tf.math.is_finite(tf.cast(t, tf.float32)))
                        for t in keras.tree.flatten(x)
                        if t.dtype.is_floating
                    ]
                    or [True]
                ),
            )
        )
        .as_numpy_iterator()
    ):
        labels.append(y)
        finite &= bool(ok)
    if not labels:
        raise ValueError("Argument `data` is empty: it yields no examples.")
    if not finite:
        raise ValueError("Argument `data`: some inputs contain NaN or inf. HINT: filter them out.")
    return np.concatenate(labels)


def _split_streaming(
    ds: tf.data.Dataset, n: int, validation_data, validation_split, seed, preprocessor, signature
) -> tuple[tf.data.Dataset, tf.data.Dataset | None, int]:
    """``(train, validation, n_validation)``: a seeded hash of position, or the data given."""
    if validation_data is None and validation_split > 0:

        def is_val(i, _):
            u = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), i]))
            return u < validation_split

        indexed = ds.enumerate()
        train = indexed.filter(lambda i, e: tf.logical_not(is_val(i, e))).map(lambda _, e: e)
        val = indexed.filter(is_val).map(lambda _, e: e)
        n_val = int(round(n * validation_split))
    elif validation_data is not None:
        vsource = as_source(validation_data, "validation_data")
        if not isinstance(vsource, tf.data.Dataset):
            vsource = tf.data.Dataset.from_tensor_slices(vsource)
        val = _unbatch_if_needed(vsource, None if preprocessor is not None else signature)
        if preprocessor is not None:
            val = val.map(lambda x, y: (preprocessor(x), y), num_parallel_calls=_AUTOTUNE)
        train, n_val = ds, max(int(val.cardinality()), 0)
    else:
        train, val, n_val = ds, None, 0
    return train, val, n_val


def _prepare_streaming(
    ds: tf.data.Dataset,
    *,
    signature,
    preprocessor,
    validation_data,
    validation_split,
    batch_size,
    seed,
    num_classes,
    label_mode,
    task,
    head_units,
    head_activation,
    one_hot=False,
    augment=None,
) -> PreparedData:
    """Large or random pipelines: scan labels once, split by a seeded hash of position."""
    if preprocessor is not None:
        ds = ds.map(lambda x, y: (preprocessor(x), y), num_parallel_calls=_AUTOTUNE)
    y_all = _scan_labels(ds)
    spec = infer_spec(
        y_all,
        num_classes=num_classes,
        label_mode=label_mode,
        task=task,
        head_units=head_units,
        head_activation=head_activation,
    )
    sparse_to_one_hot = one_hot and spec.label_mode == "sparse"
    if sparse_to_one_hot:
        spec.label_mode = "one_hot"

    def cast(x, y):
        if sparse_to_one_hot:
            return x, tf.one_hot(
                tf.cast(tf.reshape(y, [-1])[0] if y.shape.rank else y, tf.int32), spec.num_classes
            )
        if spec.label_mode in ("one_hot", "multi_hot", "continuous"):
            return x, tf.cast(
                tf.reshape(y, [-1]) if spec.label_mode == "continuous" else y, tf.float32
            )
        y = tf.reshape(y, [-1])[0] if y.shape.rank else y
        if spec.label_mode == "binary":
            return x, tf.cast(tf.reshape(y, [1]), tf.float32)
        return x, tf.cast(y, tf.int64)

    n = len(y_all)
    train, val, n_val = _split_streaming(
        ds, n, validation_data, validation_split, seed, preprocessor, signature
    )
    train = (
        train.map(cast, num_parallel_calls=_AUTOTUNE)
        .shuffle(min(n, 10_000), seed=seed)
        .batch(batch_size)
    )
    first = inputs_lib.flatten(next(iter(train.take(1)))[0])
    augmentation = _augmentation(augment, signature, [np.asarray(t) for t in first], seed, spec)
    if augmentation is not None:
        train = train.map(augmentation.inputs, num_parallel_calls=_AUTOTUNE)
    if val is not None:
        val = val.map(cast, num_parallel_calls=_AUTOTUNE).batch(batch_size).prefetch(_AUTOTUNE)
    return PreparedData(
        train=train.prefetch(_AUTOTUNE),
        validation=val,
        spec=spec,
        n_train=n - n_val,
        n_validation=n_val,
        batch_size=batch_size,
        in_memory=False,
        signature=signature,
        augmentation=augmentation,
    )
