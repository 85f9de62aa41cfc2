"""Labels and model outputs read as checked arrays, and the task they describe.

Every entry point of :mod:`kerasft.evaluation` takes its labels and outputs through
:func:`as_arrays` (numbers, 1-D or 2-D, finite, as many of each), then reads the task
off them (:func:`resolve_task`), class ids or a label matrix off the labels, and
probabilities off the outputs, each with a message that says what was wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kerasft.evaluation.report import TASKS

__all__ = [
    "as_arrays",
    "checked_probabilities",
    "class_ids",
    "is_binary",
    "label_matrix",
    "num_columns",
    "resolve_task",
    "sigmoid",
    "softmax",
]

_PROBABILITY_TOLERANCE = 1e-5  # float32 softmax can give 1.0000001


def as_arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, value in (("y_true", y_true), ("y_pred", y_pred)):
        a = np.asarray(value)
        if a.dtype == bool:
            a = a.astype("int64")
        if not np.issubdtype(a.dtype, np.number):
            raise TypeError(
                f"Argument `{name}` must hold numbers. Received dtype {a.dtype} "
                f"(first value {a.ravel()[:1].tolist()}). Map class names to ids first."
            )
        if a.ndim not in (1, 2):
            raise ValueError(
                f"Argument `{name}` must be 1-D (examples,) or 2-D (examples, columns). "
                f"Received: shape {a.shape}"
            )
        if a.shape[0] == 0:
            raise ValueError(f"Argument `{name}` is empty: there is nothing to evaluate.")
        bad = ~np.isfinite(a)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"Argument `{name}`: {int(bad.sum())} of {a.size} values are NaN or infinite "
                f"(first in row {row}); values must be finite."
                + (" HINT: a model that diverged outputs NaN." if name == "y_pred" else "")
            )
        arrays.append(a)
    if len(arrays[0]) != len(arrays[1]):
        raise ValueError(
            "Arguments `y_true` and `y_pred` must hold the same number of examples. "
            f"Received: {len(arrays[0])} labels and {len(arrays[1])} predictions."
        )
    return arrays[0], arrays[1].astype("float64")


def num_columns(a: np.ndarray) -> int:
    return 1 if a.ndim == 1 else a.shape[1]


def is_binary(a: np.ndarray) -> bool:
    return bool(np.isin(a, (0, 1)).all())


def resolve_task(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> str:
    if task != "auto" and task not in TASKS:
        raise ValueError(
            f"Argument `task` must be 'auto' or one of {list(TASKS)}. Received: task={task!r}"
        )
    if task != "auto":
        return task
    width, true_width = num_columns(y_pred), num_columns(y_true)
    if not np.all(y_true == np.round(y_true)):
        return "regression"
    if width == 1:
        return "binary" if true_width == 1 and is_binary(y_true) else "regression"
    if true_width > 1:
        if true_width == width and is_binary(y_true):
            if np.all(y_true.sum(axis=1) == 1):
                return "binary" if width == 2 else "multiclass"
            return "multilabel"
        return "regression"
    return "binary" if width == 2 else "multiclass"


def class_ids(
    y_true: np.ndarray, num_classes: int, width: int, task: str
) -> tuple[np.ndarray, bool]:
    """Class ids `(n,)` from ids or one-hot rows, and whether the rows were one-hot."""
    if y_true.ndim == 2 and y_true.shape[1] != 1:
        if y_true.shape[1] != width:
            raise ValueError(
                f"Argument `y_true`: a label matrix of width {y_true.shape[1]} does not match "
                f"the {width} output(s) of `y_pred`; one-hot labels must have shape "
                f"(n, {width}), class ids shape (n,)."
            )
        sums = y_true.sum(axis=1)
        if not is_binary(y_true) or not np.all(sums == 1):
            row = int(np.argmax(~np.isin(y_true, (0, 1)).any(axis=1) | (sums != 1)))
            raise ValueError(
                f"Argument `y_true`: rows of a label matrix must be one-hot for task={task!r}; "
                f"row {row} is {y_true[row].tolist()}. For several labels per example use "
                "task='multilabel'."
            )
        return y_true.argmax(axis=1), True
    y = y_true.reshape(-1)
    fractional = y != np.round(y)
    if fractional.any():
        raise ValueError(
            f"Argument `y_true`: float targets such as {y[fractional][0].item()!r} with "
            f"task={task!r}; class labels must be whole numbers in [0, {num_classes}) or one-hot "
            "rows. For float targets use task='regression'."
        )
    bad = y[(y < 0) | (y >= num_classes)]
    if len(bad):
        hint = ""
        if y.min() == 1 and y.max() == num_classes:
            hint = " HINT: the labels look 1-based; subtract 1."
        raise ValueError(
            f"Argument `y_true`: label {int(bad[0])} is out of range for {num_classes} "
            f"classes; labels must be in [0, {num_classes}).{hint}"
        )
    return y.astype("int64"), False


def label_matrix(y_true: np.ndarray, y_pred: np.ndarray, name: str) -> np.ndarray:
    if y_true.ndim != 2:
        raise ValueError(
            f"Argument `{name}`: task='multilabel' needs a 0/1 label matrix of shape "
            f"(n, {num_columns(y_pred)}). Received: shape {y_true.shape}. For one class id per "
            "example use task='multiclass'."
        )
    if y_true.shape[1] != num_columns(y_pred) or y_pred.ndim != 2:
        raise ValueError(
            f"Argument `{name}`: a label matrix of width {y_true.shape[1]} does not match "
            f"the {num_columns(y_pred)} output(s) of `y_pred`; expected shape "
            f"(n, {num_columns(y_pred)})."
        )
    if not is_binary(y_true):
        row, col = np.argwhere(~np.isin(y_true, (0, 1)))[0]
        raise ValueError(
            f"Argument `{name}`: a multilabel matrix holds 0/1 values, but row {row}, "
            f"column {col} is {y_true[row, col].item()!r}."
        )
    return y_true.astype("int64")


def checked_probabilities(y_pred: np.ndarray) -> np.ndarray:
    low, high = float(y_pred.min()), float(y_pred.max())
    tol = _PROBABILITY_TOLERANCE
    if low < -tol or high > 1 + tol:
        value = low if low < -tol else high
        raise ValueError(
            f"Argument `y_pred`: value {value:.4g} is outside [0, 1], so these outputs are "
            "not probabilities. Pass from_logits=True if the model ends without a "
            "softmax/sigmoid."
        )
    return np.clip(y_pred, 0.0, 1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))
