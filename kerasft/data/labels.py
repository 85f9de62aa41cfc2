"""Labels: what the targets say about the task, checked before any training.

``task="auto"`` reads the task off the targets and the model's head:

- integer (or whole-number float) labels for a classifier head: single-label
  classification, ``"sparse"``, or ``"binary"`` for two classes and a one-unit head;
- rows that sum to 1: one-hot classification;
- a 0/1 matrix whose rows do not: multi-label classification (``"multi_hot"``);
- other float targets, or whole numbers for a one-unit linear head: regression
  (``"continuous"``, one or several outputs).

Each reading can be forced with ``task=`` (``"classification"``, ``"multilabel"``,
``"regression"``) and ``label_mode=``; targets that do not fit the task are refused with
the reason and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DataSpec",
    "TASKS",
    "LABEL_MODES",
    "check_choices",
    "infer_spec",
    "cast_labels",
    "stratify_labels",
    "class_weights",
]

TASKS = ("classification", "multilabel", "regression")
LABEL_MODES = ("sparse", "one_hot", "binary", "multi_hot", "continuous")


@dataclass
class DataSpec:
    """What the labels say about the task.

    Attributes:
        num_classes: classes (classification), labels (multi-label) or outputs (regression).
        label_mode: ``"sparse"``, ``"one_hot"``, ``"binary"``, ``"multi_hot"`` or ``"continuous"``.
        class_counts: examples per class (per label for multi-label; empty for regression).
        task: ``"classification"``, ``"multilabel"`` or ``"regression"``.
        target_mean, target_std: per-output mean and standard deviation of regression
            targets when they are standardised for training, else ``None``.
        num_examples: examples the labels were read from.
    """

    num_classes: int
    label_mode: str
    class_counts: dict[int, int] = field(default_factory=dict)
    task: str = "classification"
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    num_examples: int = 0

    @property
    def units(self) -> int:
        """The width of the head this task needs."""
        return 1 if self.label_mode == "binary" else self.num_classes


def check_choices(task: Any, label_mode: Any, num_classes: Any) -> None:
    """Check ``task``, ``label_mode`` and ``num_classes`` alone, before any labels are read."""
    if task not in (None, "auto", *TASKS):
        raise ValueError(
            f"Argument `task` must be 'auto' or one of {list(TASKS)}. Received: task={task!r}"
        )
    if label_mode is not None and label_mode not in LABEL_MODES:
        raise ValueError(
            f"Argument `label_mode` must be one of {LABEL_MODES}. "
            f"Received: label_mode={label_mode!r}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, (int, np.integer))
        or isinstance(num_classes, bool)
        or num_classes < 1
    ):
        raise ValueError(
            "Argument `num_classes` must be a positive integer (>= 2 for a classifier: a softmax "
            f"over one class is always 1.0). Received: num_classes={num_classes!r}"
        )


def infer_spec(
    y: Any,
    *,
    num_classes: int | None = None,
    label_mode: str | None = None,
    task: str | None = None,
    head_units: int | None = None,
    head_activation: str | None = None,
    argument: str = "data",
) -> DataSpec:
    """Read the task, the label encoding and the class count off ``y``, checking it.

    Raises:
        ValueError: labels that fit no task, or not the one asked for: float labels that
            are not class indices with ``task="classification"``, negative or too large
            class ids, a one-hot width other than ``num_classes``, fewer than 2 classes.
    """
    check_choices(task, label_mode, num_classes)
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError(f"Argument `{argument}` is empty: it yields no examples.")
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"Argument `{argument}`: labels must be numbers, but have dtype {y.dtype}. "
            "HINT: map class names to integers 0..n-1."
        )
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"Argument `{argument}`: labels contain NaN or inf.")
    kind = _task_of(y, task, label_mode, head_units, head_activation)
    if kind == "regression":
        width = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
        if num_classes is not None and num_classes != width:
            raise ValueError(
                f"Argument `num_classes={num_classes}` does not match the {width} regression "
                f"target(s). Pass num_classes={width} or None."
            )
        spec = DataSpec(width, "continuous", {}, "regression")
    elif kind == "multilabel":
        spec = _multilabel_spec(y, num_classes, argument)
    elif y.ndim == 2 and y.shape[1] > 1:
        spec = _one_hot_spec(y, num_classes, label_mode, argument)
    else:
        spec = _sparse_spec(y, num_classes, label_mode, head_units, argument)
    spec.num_examples = len(y)
    return spec


def _task_of(
    y: np.ndarray,
    task: str | None,
    label_mode: str | None,
    head_units: int | None,
    head_activation: str | None,
) -> str:
    if label_mode == "multi_hot":
        return "multilabel"
    if label_mode == "continuous":
        return "regression"
    if task not in (None, "auto"):
        return task
    whole = y.dtype.kind in "biu" or bool(np.all(y == np.round(y)))
    matrix = y.ndim == 2 and y.shape[1] > 1
    if matrix:
        zero_one = bool(np.all((y == 0) | (y == 1)))
        one_hot = zero_one and bool(np.all(y.sum(axis=1) == 1))
        if one_hot:
            return "classification"
        return "multilabel" if zero_one else "regression"
    if y.ndim > 2 or not whole:
        return "regression"
    linear_one_unit = head_units == 1 and head_activation == "linear"
    if linear_one_unit and y.dtype.kind == "f" and not np.all((y == 0) | (y == 1)):
        return "regression"
    return "classification"


def _multilabel_spec(y: np.ndarray, num_classes: int | None, argument: str) -> DataSpec:
    if y.ndim != 2 or not np.all((y == 0) | (y == 1)):
        raise ValueError(
            f"Argument `{argument}`: multi-label targets must be a 0/1 matrix of shape "
            f"(n, num_labels). Received labels of shape {y.shape} with values "
            f"{np.unique(y)[:5].tolist()}."
        )
    width = y.shape[1]
    if num_classes is not None and num_classes != width:
        raise ValueError(
            f"Argument `num_classes={num_classes}` does not match the label matrix width {width}. "
            f"Pass num_classes={width}, or fix the labels."
        )
    counts = y.sum(axis=0).astype(int)
    return DataSpec(width, "multi_hot", {i: int(c) for i, c in enumerate(counts)}, "multilabel")


def _one_hot_spec(
    y: np.ndarray, num_classes: int | None, label_mode: str | None, argument: str
) -> DataSpec:
    width = y.shape[1]
    if label_mode not in (None, "one_hot"):
        raise ValueError(
            f"Argument `label_mode={label_mode!r}` does not fit labels of shape {y.shape} (one-hot "
            "rows). Use label_mode='one_hot' or None."
        )
    if y.min() < 0 or not np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            f"Argument `{argument}`: labels of shape {y.shape} look one-hot but rows are not "
            "probability vectors (non-negative, summing to 1)."
        )
    if num_classes is not None and num_classes != width:
        raise ValueError(
            f"Argument `num_classes={num_classes}` does not match the one-hot label width {width}. "
            f"Pass num_classes={width}, or fix the labels."
        )
    counts = np.bincount(np.argmax(y, axis=1), minlength=width)
    return DataSpec(width, "one_hot", {i: int(c) for i, c in enumerate(counts)})


def _sparse_spec(
    y: np.ndarray,
    num_classes: int | None,
    label_mode: str | None,
    head_units: int | None,
    argument: str,
) -> DataSpec:
    if y.ndim == 2:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Argument `{argument}`: labels must be integers of shape (n,) or one-hot of shape "
            f"(n, num_classes). Received labels of shape {y.shape}."
        )
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        bad = y[y != np.round(y)][:3]
        raise ValueError(
            f"Argument `{argument}`: labels are floats that are not class indices "
            f"(e.g. {bad.tolist()}); a classification head needs integer labels in "
            "[0, num_classes) or one-hot rows. HINT: for float targets pass task='regression' "
            "(or leave task='auto')."
        )
    yi = y.astype("int64")
    if yi.min() < 0:
        raise ValueError(
            f"Argument `{argument}`: labels must be in [0, num_classes), but the smallest is "
            f"{yi.min()}."
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
    if label_mode == "binary" and n != 2:
        raise ValueError(
            f"Argument `label_mode='binary'` needs labels in {{0, 1}}, but there are {n} classes."
        )
    if label_mode == "one_hot":
        raise ValueError(
            "Argument `label_mode='one_hot'` needs labels of shape (n, num_classes); the labels "
            f"are integers of shape {y.shape}. Use label_mode='sparse'."
        )
    mode = label_mode or ("binary" if (n == 2 and head_units == 1) else "sparse")
    counts = np.bincount(yi, minlength=n)
    return DataSpec(n, mode, {i: int(c) for i, c in enumerate(counts)})


def stratify_labels(y: np.ndarray, spec: DataSpec) -> np.ndarray | None:
    """One class id per example to stratify a split by, or ``None`` (regression)."""
    if spec.task == "regression":
        return None
    if spec.label_mode == "one_hot":
        return np.argmax(y, axis=1)
    if spec.label_mode == "multi_hot":
        # The rarest label of each example keeps every label in both splits.
        counts = np.asarray([spec.class_counts[i] for i in range(spec.num_classes)], dtype=float)
        rarity = np.where(y > 0, counts[None, :], np.inf)
        return np.where(np.isfinite(rarity.min(axis=1)), rarity.argmin(axis=1), -1)
    return np.asarray(y).reshape(len(y), -1)[:, 0].astype("int64")


def cast_labels(y: np.ndarray, spec: DataSpec) -> np.ndarray:
    """Labels as the loss of ``spec``'s task takes them (standardised regression targets)."""
    if spec.label_mode in ("one_hot", "multi_hot"):
        return np.asarray(y, dtype="float32")
    if spec.label_mode == "continuous":
        y = np.asarray(y, dtype="float32").reshape(len(y), -1)
        if spec.target_mean is not None:
            y = (y - np.asarray(spec.target_mean, "float32")) / np.asarray(
                spec.target_std, "float32"
            )
        return y
    y = np.asarray(y).reshape(len(y), -1)[:, 0]
    if spec.label_mode == "binary":
        return y.astype("float32")[:, None]
    return y.astype("int64")


def class_weights(spec: DataSpec, class_weight: Any) -> dict[int, float] | None:
    """Per-class weights: ``"balanced"``, a dict ``{class id: weight}``, or ``None``.

    ``"balanced"`` gives class ``c`` the weight ``n / (k * count_c)`` (scikit-learn's
    rule); for multi-label targets it gives each label's positives the weight
    ``negatives / positives`` of that label.

    Raises:
        ValueError: class weights for a regression task, unknown classes, bad values.
    """
    if class_weight is None:
        return None
    if spec.task == "regression":
        raise ValueError(
            f"Argument `class_weight={class_weight!r}` applies to classification, but the targets "
            "are regression targets. HINT: pass class_weight=None, or sample weights in the data."
        )
    counts = np.asarray([spec.class_counts.get(i, 0) for i in range(spec.num_classes)], dtype=float)
    safe = np.where(counts > 0, counts, 1.0)
    if class_weight == "balanced" and spec.task == "multilabel":
        # The weight of each label's positives against its negatives.
        return {i: float((spec.num_examples - counts[i]) / safe[i]) for i in range(len(counts))}
    if class_weight == "balanced":
        return {i: float(counts.sum() / (len(counts) * safe[i])) for i in range(len(counts))}
    if not isinstance(class_weight, dict):
        raise ValueError(
            "Argument `class_weight` must be None, 'balanced' or a dict {class id: weight}. "
            f"Received: class_weight={class_weight!r}"
        )
    unknown = [
        k
        for k in class_weight
        if not isinstance(k, (int, np.integer)) or not 0 <= k < spec.num_classes
    ]
    if unknown:
        raise ValueError(
            f"Argument `class_weight` has keys {unknown} that are not class ids in "
            f"[0, {spec.num_classes})."
        )
    bad = {
        k: v
        for k, v in class_weight.items()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
    }
    if bad:
        raise ValueError(
            f"Argument `class_weight` must map class ids to weights >= 0. Received: {bad}"
        )
    return {i: float(class_weight.get(i, 1.0)) for i in range(spec.num_classes)}
