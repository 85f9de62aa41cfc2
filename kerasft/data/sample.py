"""A few of a run's inputs, kept on its result for exports that need data.

A TFLite int8 export calibrates on representative inputs and checks its accuracy on
held-out ones; the run picks them from its prepared data (:func:`export_sample`), so the
engine keeps them without knowing about exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["SAMPLE_SIZE", "ExportSample", "export_sample", "class_ids", "spread_indices"]

SAMPLE_SIZE = 200
# A sample kept on a result must stay small whatever the input size (224x224x3 float32
# images are 0.6 MB each).
_SAMPLE_BYTES = 64 * 1024**2


@dataclass
class ExportSample:
    """A few of a run's inputs, kept on its result for exports that need data.

    Attributes:
        inputs: up to 200 training inputs (representative data for int8 calibration).
        held_out: up to 200 validation inputs and their class ids, or `None` without
            validation data (or for a task that is not single-label classification).
    """

    inputs: np.ndarray
    held_out: tuple[np.ndarray, np.ndarray] | None = None


def export_sample(prepared: Any, limit: int = SAMPLE_SIZE) -> ExportSample | None:
    """Pick the inputs an export of a run needs, from its prepared data.

    Training inputs come from the in-memory arrays when the run read its data into
    memory (un-augmented, spread over the whole set), else from the first batches of
    its training pipeline; held-out inputs from its validation pipeline.

    Args:
        prepared: the run's `kerasft.data.PreparedData`.
        limit: at most this many inputs of each kind (fewer for inputs over 64 MiB in
            all). Defaults to `200`.

    Returns:
        An `ExportSample`, or `None` when the model takes several inputs (a dict or
        tuple of arrays) or non-numeric ones (text), which a TFLite export does not
        calibrate on.
    """
    if prepared.arrays is not None:
        x = prepared.arrays[0]
        if not isinstance(x, np.ndarray):
            return None
        inputs = x[spread_indices(len(x), _fit(limit, x))]
    else:
        inputs = _take(prepared.train, limit)
        if inputs is None:
            return None
    if np.asarray(inputs).dtype.kind not in "biuf":  # text and other non-numeric inputs
        return None
    held_out = None
    spec = getattr(prepared, "spec", None)
    if prepared.validation is not None and getattr(spec, "task", None) == "classification":
        pairs = _take(prepared.validation, limit, labels=True)
        if pairs is not None:
            held_out = (pairs[0], class_ids(pairs[1]))
    return ExportSample(inputs=np.asarray(inputs), held_out=held_out)


def class_ids(y: Any) -> np.ndarray:
    """Class ids from ids `(n,)`, one-hot rows `(n, k)` or 0/1 binary targets `(n, 1)`."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return y.argmax(-1)
    return np.rint(y.reshape(len(y))).astype(np.int64)


def spread_indices(n: int, k: int) -> np.ndarray:
    """`k` indices spread evenly over `range(n)` (data is often sorted by class)."""
    if k >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def _fit(limit: int, x: np.ndarray) -> int:
    per_example = max(1, x[:1].nbytes)
    return max(1, min(limit, _SAMPLE_BYTES // per_example))


def _take(dataset: tf.data.Dataset, limit: int, *, labels: bool = False):
    """The first `limit` examples of a batched `(x, y)` pipeline, or `None` for dict inputs."""
    xs, ys, count = [], [], 0
    for element in dataset:
        x, y = element[0], element[1]
        if not isinstance(x, tf.Tensor):
            return None
        x = x.numpy()
        if not xs:
            limit = _fit(limit, x)
        xs.append(x)
        ys.append(np.asarray(y))
        count += len(x)
        if count >= limit:
            break
    if not xs:
        return None
    x = np.concatenate(xs)[:limit]
    return (x, np.concatenate(ys)[:limit]) if labels else x
