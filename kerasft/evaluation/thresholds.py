"""Decision thresholds per label, tuned for F1 on validation data."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from kerasft.evaluation.arrays import as_arrays, checked_probabilities, label_matrix, sigmoid

__all__ = ["tune_thresholds"]


def tune_thresholds(y_true: Any, scores: Any, *, from_logits: bool = False) -> list[float]:
    """Per-label decision thresholds that maximise F1 on (validation) data.

    For each label, every cut between two consecutive distinct scores is tried (the
    midpoint, so the choice does not hinge on one example), and the one with the best
    F1 of "probability > threshold" is kept; among equally good cuts, the one nearest
    0.5. Tune on validation data, then pass the result as `thresholds` when
    evaluating on the test set: tuned on the test set, the F1 is optimistic.

    Example:

    >>> y = [[1, 0], [1, 1], [0, 1], [0, 0]]
    >>> p = [[0.875, 0.25], [0.5, 0.75], [0.125, 0.5], [0.25, 0.0]]
    >>> tune_thresholds(y, p)
    [0.375, 0.375]

    Args:
        y_true: 0/1 labels, `(n,)` for one label or `(n, num_labels)`.
        scores: label probabilities (or logits) of the same shape.
        from_logits: whether `scores` are logits (a sigmoid is applied, and the
            thresholds returned are probabilities). Defaults to `False`.

    Returns:
        One threshold per label, probabilities in `[0, 1]`; `0.5` (with a warning) for
        a label that has no positive example.

    Raises:
        ValueError: for shapes that differ, labels other than 0/1, NaN scores, or
            probabilities outside [0, 1] with `from_logits=False`.
    """
    y_true, scores = as_arrays(y_true, scores)
    if y_true.ndim == 1 and scores.ndim == 1:
        y_true, scores = y_true[:, None], scores[:, None]
    labels = label_matrix(y_true, scores, "y_true")
    probs = sigmoid(scores) if from_logits else checked_probabilities(scores)
    chosen = []
    for j in range(labels.shape[1]):
        if not labels[:, j].any():
            warnings.warn(
                f"Label {j} has no positive example in `y_true`; its threshold stays 0.5.",
                stacklevel=2,
            )
            chosen.append(0.5)
            continue
        chosen.append(_best_f1_threshold(labels[:, j], probs[:, j]))
    return chosen


def _best_f1_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    distinct = np.unique(probs)
    cuts = (distinct[:-1] + distinct[1:]) / 2
    if distinct[0] > 0:  # a cut below every score: everything positive
        cuts = np.concatenate([[distinct[0] / 2], cuts])
    if len(cuts) == 0:
        return 0.5
    ordered = np.sort(probs)
    positives = np.sort(probs[labels == 1])
    predicted = len(ordered) - np.searchsorted(ordered, cuts, side="right")
    hits = len(positives) - np.searchsorted(positives, cuts, side="right")
    f1 = 2 * hits / (predicted + len(positives))
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])
