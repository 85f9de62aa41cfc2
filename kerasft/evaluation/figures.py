"""The figures of a report, from labels and a model's outputs, for each task.

:func:`report_from_predictions` reads the task, checks the options that apply to it, and
computes every figure with scikit-learn's function on the same arrays; the loss is the
cross-entropy (or MSE) Keras computes, redone in numpy. Precision, recall and F1 are 0
where they are undefined (nothing predicted, or nothing to find): scikit-learn's
``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from sklearn import metrics

from kerasft.evaluation.arrays import (
    as_arrays,
    checked_probabilities,
    class_ids,
    label_matrix,
    num_columns,
    resolve_task,
    sigmoid,
    softmax,
)
from kerasft.evaluation.report import EvaluationReport

__all__ = ["report_from_predictions"]

_ZERO_DIVISION = 0.0


def report_from_predictions(
    y_true: Any,
    y_pred: Any,
    *,
    task: str = "auto",
    from_logits: bool = False,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
    top_k: int | None = None,
    target_scale: float | Sequence[float] | None = None,
    target_offset: float | Sequence[float] | None = None,
) -> EvaluationReport:
    """Compute an `EvaluationReport` from labels and a model's outputs.

    `task="auto"` reads the task off the shapes and values: float targets or a single
    output with labels other than 0/1 mean regression; one output with 0/1 labels, or
    two outputs with labels 0/1, binary; a 0/1 label matrix whose rows all hold exactly
    one 1 is one-hot multiclass, with other rows multilabel; class ids with several
    outputs, multiclass. Pass `task` when a multilabel set happens to have one label
    per example.

    Example:

    >>> y_true = [0, 1, 2, 2]
    >>> probs = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.1, 0.6, 0.3]]
    >>> report = report_from_predictions(y_true, probs, class_names=["cat", "dog", "fox"])
    >>> report.task, report.accuracy, report.recall
    ('multiclass', 0.75, [1.0, 1.0, 0.5])
    >>> {k: round(v, 4) for k, v in report.headline.items()}
    {'accuracy': 0.75, 'macro_f1': 0.7778}

    Args:
        y_true: labels: class ids `(n,)` or one-hot rows `(n, k)` (multiclass, binary),
            a 0/1 matrix `(n, num_labels)` (multilabel), or targets `(n,)`/`(n, m)`.
        y_pred: model outputs: `(n, k)` class probabilities or logits; `(n,)`/`(n, 1)`
            for one sigmoid unit; `(n, num_labels)` label probabilities or logits;
            `(n,)`/`(n, m)` regression predictions.
        task: `"auto"` or one of `TASKS`. Defaults to `"auto"`.
        from_logits: whether `y_pred` holds logits (softmax or sigmoid is applied).
            Ignored for regression. Defaults to `False`.
        class_names: a name per class, label or regression output. Defaults to `None`
            (`"0"`, `"1"`, ...; `"output_0"`, ... for regression).
        thresholds: binary and multilabel only: a label is predicted when its
            probability is above its threshold; one float, or one per label. Pick them
            on validation data with `tune_thresholds`. Defaults to `None` (0.5).
        top_k: multiclass only, `k` of the top-k accuracy, in `[1, num_classes)`.
            Defaults to `None` (5 when there are more than 5 classes, else none).
        target_scale: regression only: targets and predictions are mapped back to
            target units by `value * target_scale + target_offset` (undoing a
            standardisation); a float or one per output. Defaults to `None` (1).
        target_offset: see `target_scale`. Defaults to `None` (0).

    Returns:
        An `EvaluationReport`.

    Raises:
        ValueError: for empty or NaN inputs, mismatched lengths, a label out of range,
            shapes that do not fit `task`, probabilities outside [0, 1] with
            `from_logits=False`, or an option that does not apply to the task.
        TypeError: if the labels or outputs are not numbers.
    """
    y_true, y_pred = as_arrays(y_true, y_pred)
    task = resolve_task(y_true, y_pred, task)
    _check_options(task, thresholds, top_k, target_scale, target_offset)
    if task == "regression":
        return _regression_report(y_true, y_pred, class_names, target_scale, target_offset)
    if task == "multilabel":
        return _multilabel_report(y_true, y_pred, from_logits, class_names, thresholds)
    return _single_label_report(task, y_true, y_pred, from_logits, class_names, thresholds, top_k)


def _check_options(task, thresholds, top_k, target_scale, target_offset) -> None:
    given = {
        "thresholds": (thresholds, ("binary", "multilabel")),
        "top_k": (top_k, ("multiclass",)),
        "target_scale": (target_scale, ("regression",)),
        "target_offset": (target_offset, ("regression",)),
    }
    for name, (value, tasks) in given.items():
        if value is not None and task not in tasks:
            raise ValueError(
                f"Argument `{name}` applies to task {' or '.join(map(repr, tasks))} only, "
                f"but the task is {task!r}. Received: {name}={value!r}"
            )


def _thresholds(thresholds, num_labels: int, task: str) -> list[float]:
    if thresholds is None:
        return [0.5] * num_labels
    values = np.atleast_1d(np.asarray(thresholds, dtype="float64"))
    if task == "binary" and values.size != 1:
        raise ValueError(
            f"Argument `thresholds`: a binary task takes one threshold. "
            f"Received: thresholds={thresholds!r}"
        )
    if values.size == 1:
        values = np.repeat(values, num_labels)
    if values.ndim != 1 or values.size != num_labels or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(
            f"Argument `thresholds` must be a probability in [0, 1] or one per label "
            f"({num_labels}). Received: thresholds={thresholds!r}"
        )
    return values.tolist()


def _names(class_names, count: int, kind: str, default: str = "{}") -> list[str]:
    if class_names is None:
        return [default.format(i) for i in range(count)]
    names = [str(n) for n in class_names]
    if len(names) != count:
        raise ValueError(
            f"Argument `class_names` must hold one name per {kind} ({count}). "
            f"Received {len(names)} names: {names[:10]}"
        )
    return names


def _categorical_loss(ids, outputs, from_logits: bool, one_hot: bool) -> float:
    """Keras's (sparse) categorical cross-entropy, averaged over examples."""
    rows = np.arange(len(ids))
    if from_logits:
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_p[rows, ids].mean())
    eps = keras.config.epsilon()
    if one_hot:  # categorical: normalise the rows, then clip
        p = np.clip(outputs / outputs.sum(axis=1, keepdims=True), eps, 1 - eps)
        return float(-np.log(p[rows, ids]).mean())
    p = np.clip(outputs, eps, 1 - eps)  # sparse: clip, then the log-softmax renormalises
    return float(-(np.log(p[rows, ids]) - np.log(p.sum(axis=1))).mean())


def _binary_loss(targets, outputs, from_logits: bool) -> float:
    """Keras's binary cross-entropy, averaged over every output of every example."""
    if from_logits:
        x = outputs
        return float(np.mean(np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x)))))
    eps = keras.config.epsilon()
    p = np.clip(outputs, eps, 1 - eps)
    return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))


def _prf(y_true, y_pred, average: str, labels=None) -> dict[str, float]:
    p, r, f, _ = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=_ZERO_DIVISION
    )
    return {"precision": p, "recall": r, "f1": f}


def _auc(y_true, scores) -> float | None:
    """ROC-AUC of one class or label; None when only one value occurs."""
    if len(np.unique(y_true)) < 2:
        return None
    return metrics.roc_auc_score(y_true, scores)


def _single_label_report(task, y_true, y_pred, from_logits, class_names, thresholds, top_k):
    width = num_columns(y_pred)
    if task == "multiclass" and width < 2:
        raise ValueError(
            f"Argument `y_pred`: task='multiclass' needs one output per class (at least 2), "
            f"but the outputs have shape {y_pred.shape}. One sigmoid unit is task='binary'."
        )
    if task == "binary" and width > 2:
        raise ValueError(
            f"Argument `y_pred`: task='binary' takes one sigmoid unit or a 2-way softmax, but "
            f"the outputs have {width} columns. For {width} classes use task='multiclass'; "
            f"for {width} independent labels, task='multilabel'."
        )
    k = max(width, 2)
    ids, one_hot = class_ids(y_true, k, width, task)
    scores, loss = _scores_and_loss(ids, y_pred, from_logits, one_hot)
    limits = None
    if task == "binary":
        limits = _thresholds(thresholds, 1, task)
        predicted = (scores[:, 1] > limits[0]).astype("int64")
    else:
        predicted = scores.argmax(axis=1)
    report = _class_figures(task, ids, predicted, scores, top_k)
    return EvaluationReport(
        task=task,
        num_examples=len(ids),
        class_names=_names(class_names, k, "class"),
        loss=loss,
        thresholds=limits,
        predictions={"y_true": ids, "y_pred": predicted, "scores": scores},
        **report,
    )


def _scores_and_loss(ids, y_pred, from_logits: bool, one_hot: bool) -> tuple[np.ndarray, float]:
    """Class probabilities `(n, k)` (rows summing to 1) and the loss Keras would report."""
    if num_columns(y_pred) == 1:  # one sigmoid unit
        outputs = y_pred.reshape(-1)
        p1 = sigmoid(outputs) if from_logits else checked_probabilities(outputs)
        return np.stack([1 - p1, p1], axis=1), _binary_loss(ids, outputs, from_logits)
    outputs = y_pred if from_logits else checked_probabilities(y_pred)
    scores = softmax(outputs) if from_logits else outputs
    sums = scores.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError(
            f"Argument `y_pred`: row {int(np.argmax(sums <= 0))} sums to 0, so it is not a row "
            "of probabilities."
        )
    # Keras's categorical loss also renormalises rows that do not sum to 1.
    return scores / sums, _categorical_loss(ids, outputs, from_logits, one_hot)


def _class_figures(task, ids, predicted, scores, top_k) -> dict[str, Any]:
    k = scores.shape[1]
    labels = np.arange(k)
    p, r, f, s = metrics.precision_recall_fscore_support(
        ids, predicted, labels=labels, average=None, zero_division=_ZERO_DIVISION
    )
    averages = {avg: _prf(ids, predicted, avg, labels) for avg in ("macro", "weighted")}
    if task == "binary":
        averages["binary"] = _prf(ids, predicted, "binary")
    per_class = [_auc(ids == c, scores[:, c]) for c in range(k)]
    if task == "binary" or k == 2:
        roc_auc = per_class[1]
    elif all(a is not None for a in per_class):
        roc_auc = metrics.roc_auc_score(
            ids, scores, multi_class="ovr", average="macro", labels=labels
        )
    else:
        roc_auc = None
    if task == "multiclass" and top_k is None and k > 5:
        top_k = 5
    if top_k is not None and not (isinstance(top_k, (int, np.integer)) and 1 <= top_k < k):
        raise ValueError(
            f"Argument `top_k` must be an integer in [1, {k}) for {k} classes. "
            f"Received: top_k={top_k!r}"
        )
    return {
        "accuracy": metrics.accuracy_score(ids, predicted),
        "precision": p,
        "recall": r,
        "f1": f,
        "support": s,
        "averages": averages,
        "confusion_matrix": metrics.confusion_matrix(ids, predicted, labels=labels),
        "top_k": top_k,
        "top_k_accuracy": None
        if top_k is None
        else metrics.top_k_accuracy_score(ids, scores, k=top_k, labels=labels),
        "roc_auc": roc_auc,
        "roc_auc_per_class": per_class,
    }


def _multilabel_report(y_true, y_pred, from_logits, class_names, thresholds):
    labels = label_matrix(y_true, y_pred, "y_true")
    if labels.shape[1] < 2:
        raise ValueError(
            "Argument `y_true`: a multilabel task needs at least 2 labels; with one label "
            "use task='binary'."
        )
    scores = sigmoid(y_pred) if from_logits else checked_probabilities(y_pred)
    limits = _thresholds(thresholds, labels.shape[1], "multilabel")
    predicted = (scores > np.asarray(limits)).astype("int64")
    p, r, f, s = metrics.precision_recall_fscore_support(
        labels, predicted, average=None, zero_division=_ZERO_DIVISION
    )
    per_label = [_auc(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]
    defined = all(a is not None for a in per_label)
    return EvaluationReport(
        task="multilabel",
        num_examples=len(labels),
        class_names=_names(class_names, labels.shape[1], "label"),
        loss=_binary_loss(labels, y_pred, from_logits),
        accuracy=metrics.accuracy_score(labels, predicted),
        precision=p,
        recall=r,
        f1=f,
        support=s,
        averages={a: _prf(labels, predicted, a) for a in ("micro", "macro", "weighted", "samples")},
        roc_auc=metrics.roc_auc_score(labels, scores, average="macro") if defined else None,
        roc_auc_per_class=per_label,
        hamming_loss=metrics.hamming_loss(labels, predicted),
        thresholds=limits,
        predictions={"y_true": labels, "y_pred": predicted, "scores": scores},
    )


def _affine(value, name: str, width: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(width, default)
    a = np.atleast_1d(np.asarray(value, dtype="float64"))
    if a.size == 1:
        a = np.repeat(a, width)
    if (
        a.ndim != 1
        or a.size != width
        or not np.all(np.isfinite(a))
        or (name == "target_scale" and np.any(a == 0))
    ):
        raise ValueError(
            f"Argument `{name}` must be a finite {'non-zero ' if name == 'target_scale' else ''}"
            f"number or one per output ({width}). Received: {name}={value!r}"
        )
    return a


def _regression_report(y_true, y_pred, class_names, target_scale, target_offset):
    truth = y_true.astype("float64").reshape(len(y_true), -1)
    pred = y_pred.reshape(len(y_pred), -1)
    if truth.shape[1] != pred.shape[1]:
        hint = ""
        if truth.shape[1] == 1 and np.all(truth == np.round(truth)):
            hint = " HINT: if these are class ids and class scores, use task='multiclass'."
        raise ValueError(
            f"Argument `y_true`: targets of width {truth.shape[1]} do not match the "
            f"{pred.shape[1]} output(s) of `y_pred`; regression needs one target per output." + hint
        )
    if len(truth) < 2:
        raise ValueError("Argument `y_true`: R2 needs at least 2 examples. Received: 1.")
    width = truth.shape[1]
    scale = _affine(target_scale, "target_scale", width, 1.0)
    offset = _affine(target_offset, "target_offset", width, 0.0)
    loss = float(np.mean((truth - pred) ** 2))  # on the model's scale, as Keras reports it
    truth, pred = truth * scale + offset, pred * scale + offset
    mse = metrics.mean_squared_error(truth, pred, multioutput="raw_values")
    mae = metrics.mean_absolute_error(truth, pred, multioutput="raw_values")
    r2 = metrics.r2_score(truth, pred, multioutput="raw_values")
    rmse = np.sqrt(mse)
    residual = truth - pred
    return EvaluationReport(
        task="regression",
        num_examples=len(truth),
        class_names=_names(class_names, width, "output", "output_{}"),
        loss=loss,
        averages={
            "mean": {"mse": mse.mean(), "mae": mae.mean(), "rmse": rmse.mean(), "r2": r2.mean()}
        },
        mse=mse,
        mae=mae,
        rmse=rmse,
        r2=r2,
        residuals={
            "mean": residual.mean(axis=0),
            "std": residual.std(axis=0),
            "min": residual.min(axis=0),
            "median": np.median(residual, axis=0),
            "max": residual.max(axis=0),
        },
        predictions={"y_true": truth, "y_pred": pred},
    )
