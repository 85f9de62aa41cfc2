"""Evaluation reports: the figures that say whether a fine-tune worked, from labels and outputs.

Loss and accuracy hide what matters after a fine-tune: which classes got worse, whether
the scores rank well, which threshold to use. `report_from_predictions` turns labels and a
model's outputs into an `EvaluationReport` for a multiclass, binary, multilabel or
regression task; `evaluate_model` runs the model over arrays or a `tf.data` pipeline
first. Every figure is scikit-learn's (the `sklearn.metrics` function is called on the
same arrays); the loss is the cross-entropy (or MSE) Keras computes, redone in numpy.
Precision, recall and F1 are 0 where they are undefined (nothing predicted, or nothing to
find): scikit-learn's `zero_division=0`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
from sklearn import metrics

from kerasft._fileio import atomic_file
from kerasft._records import read_json, record_from_dict

__all__ = [
    "TASKS",
    "evaluate",
    "flip_averaged",
    "EvaluationReport",
    "evaluate_model",
    "report_from_predictions",
    "tune_thresholds",
]

TASKS = ("multiclass", "binary", "multilabel", "regression")
_ZERO_DIVISION = 0.0
_MAX_PRINTED_CLASSES = 20  # a wider confusion matrix does not fit a terminal
_PROBABILITY_TOLERANCE = 1e-5  # float32 softmax can give 1.0000001


@dataclass
class EvaluationReport:
    """Evaluation figures of a model on labelled data, for one task.

    Built by `report_from_predictions` or `evaluate_model`. Fields that do not apply to
    the task are `None`. Per-class lists follow `class_names` (for regression: one entry
    per output). `str(report)` is a readable table; `to_dict()`/`to_json()` give plain
    JSON (the arrays in `predictions` are left out) and `from_dict()`/`from_json()` read
    it back.

    Example:

    >>> report = report_from_predictions([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.1])
    >>> report.task, report.accuracy, report.confusion_matrix
    ('binary', 0.75, [[2, 0], [1, 1]])
    >>> EvaluationReport.from_json(report.to_json()) == report
    True

    Attributes:
        task: one of `"multiclass"`, `"binary"`, `"multilabel"`, `"regression"`.
        num_examples: number of examples evaluated.
        class_names: names of the classes, labels or regression outputs, in column order.
        loss: the loss Keras would report: cross-entropy (sparse or one-hot categorical,
            or binary), or for regression the MSE on the model's own scale (before
            `target_scale`/`target_offset` are undone).
        accuracy: accuracy; for multilabel the subset accuracy (every label right).
        precision, recall, f1, support: per class (or label), `zero_division=0`.
        averages: `{"macro": {"precision", "recall", "f1"}, "weighted": ...}`; binary
            adds `"binary"` (class 1 as the positive class), multilabel adds `"micro"`
            and `"samples"`; regression has `{"mean": {"mse", "mae", "rmse", "r2"}}`, the
            unweighted mean over outputs (so `rmse` is the mean of per-output RMSEs).
        confusion_matrix: rows true class, columns predicted (multiclass and binary).
        top_k, top_k_accuracy: `k` and the top-k accuracy (multiclass).
        roc_auc: ROC-AUC: binary; macro one-vs-rest for multiclass when every class
            occurs; macro over labels for multilabel when every label has both values.
        roc_auc_per_class: one-vs-rest ROC-AUC per class or label, `None` where the
            class or label takes one value only.
        hamming_loss: share of wrong label decisions (multilabel).
        thresholds: decision threshold on the probability of each label (binary:
            one threshold on the probability of class 1).
        mse, mae, rmse, r2: per regression output, in target units.
        residuals: per regression output, statistics of `y_true - y_pred`: `"mean"`,
            `"std"`, `"min"`, `"median"`, `"max"`.
        predictions: the arrays behind the figures (`"y_true"`, `"y_pred"`, and the
            class probabilities `"scores"` for classification), kept in memory for
            `kerasft.plots.plot_report`; not serialised, not compared.
    """

    task: str
    num_examples: int
    class_names: list[str]
    loss: float
    accuracy: float | None = None
    precision: list[float] | None = None
    recall: list[float] | None = None
    f1: list[float] | None = None
    support: list[int] | None = None
    averages: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    top_k: int | None = None
    top_k_accuracy: float | None = None
    roc_auc: float | None = None
    roc_auc_per_class: list[float | None] | None = None
    hamming_loss: float | None = None
    thresholds: list[float] | None = None
    mse: list[float] | None = None
    mae: list[float] | None = None
    rmse: list[float] | None = None
    r2: list[float] | None = None
    residuals: dict[str, list[float]] | None = None
    predictions: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(
                f"Argument `task` must be one of {list(TASKS)}. Received: task={self.task!r}"
            )
        for f in dataclasses.fields(self):
            if f.name != "predictions":
                setattr(self, f.name, _plain(getattr(self, f.name)))

    @property
    def headline(self) -> dict[str, float]:
        """The two figures to quote: accuracy and macro F1, or mean R2 and RMSE."""
        if self.task == "regression":
            return {"r2": self.averages["mean"]["r2"], "rmse": self.averages["mean"]["rmse"]}
        key = "subset_accuracy" if self.task == "multilabel" else "accuracy"
        return {key: self.accuracy, "macro_f1": self.averages["macro"]["f1"]}

    def scalars(self) -> dict[str, float]:
        """The one-number figures, as ``report[name]`` reads them.

        ``loss`` and, as the task has them, ``accuracy``, ``macro_f1``, ``weighted_f1``,
        ``top_k_accuracy``, ``roc_auc``, ``hamming_loss``, or the mean ``mse``, ``mae``,
        ``rmse`` and ``r2`` over regression outputs. ``report["accuracy"]`` is what
        ``model.evaluate`` would have said.
        """
        out: dict[str, float] = {"loss": self.loss}
        if self.task == "regression":
            out.update(self.averages["mean"])
            return out
        out["accuracy"] = self.accuracy
        for average in ("macro", "weighted", "micro"):
            if average in self.averages:
                out[f"{average}_f1"] = self.averages[average]["f1"]
        for key in ("top_k_accuracy", "roc_auc", "hamming_loss"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def __getitem__(self, key: str) -> float:
        figures = self.scalars()
        if key not in figures:
            raise KeyError(
                f"{key!r} is not a figure of this {self.task} report. Figures are: {sorted(figures)}"
            )
        return figures[key]

    def keys(self) -> list[str]:
        return list(self.scalars())

    def __iter__(self):
        return iter(self.scalars())

    def to_dict(self) -> dict[str, Any]:
        """Every field but `predictions`, as plain Python values (JSON-serialisable)."""
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "predictions"
        }

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
        """Return the report as JSON text, and write it to `path` (atomically) if given.

        Args:
            path: file to write, or `None` to only return the text. Defaults to `None`.
            indent: JSON indentation. Defaults to `2`.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            with atomic_file(os.fspath(path)) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationReport:
        """Rebuild a report from `to_dict()` output (without its `predictions`).

        Raises:
            ValueError: if `data` has keys that are not report fields.
        """
        return record_from_dict(cls, data, exclude=("predictions",))

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> EvaluationReport:
        """Rebuild a report from JSON text or from the path of a JSON file."""
        return cls.from_dict(read_json(source))

    def __str__(self) -> str:
        if self.task == "regression":
            return _format_regression(self)
        return _format_classification(self)


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
    y_true, y_pred = _as_arrays(y_true, y_pred)
    task = _resolve_task(y_true, y_pred, task)
    _check_options(task, thresholds, top_k, target_scale, target_offset)
    if task == "regression":
        return _regression_report(y_true, y_pred, class_names, target_scale, target_offset)
    if task == "multilabel":
        return _multilabel_report(y_true, y_pred, from_logits, class_names, thresholds)
    return _single_label_report(task, y_true, y_pred, from_logits, class_names, thresholds, top_k)


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
    y_true, scores = _as_arrays(y_true, scores)
    if y_true.ndim == 1 and scores.ndim == 1:
        y_true, scores = y_true[:, None], scores[:, None]
    labels = _label_matrix(y_true, scores, "y_true")
    probs = _sigmoid(scores) if from_logits else _probabilities(scores)
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


def evaluate_model(
    model: keras.Model,
    x: Any,
    y: Any = None,
    *,
    batch_size: int = 32,
    task: str = "auto",
    from_logits: bool | None = None,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
    top_k: int | None = None,
    target_scale: float | Sequence[float] | None = None,
    target_offset: float | Sequence[float] | None = None,
) -> EvaluationReport:
    """Run `model` over data and report on its outputs (see `report_from_predictions`).

    With arrays, `model.predict(x)` is compared with `y`. With a batched `tf.data`
    pipeline (or any iterable of `(x, y)` batches), each batch is predicted and its
    labels kept alongside, in one pass, so a pipeline that reshuffles every epoch
    still pairs each label with its own prediction.

    Example:

    ```python
    report = evaluate_model(model, x_test, y_test, class_names=names)
    print(report)
    report = evaluate_model(model, test_ds)  # batched (x, y) pairs
    ```

    Args:
        model: a Keras model with one output.
        x: inputs (arrays), or a batched `tf.data.Dataset` / iterable of `(x, y)`.
        y: labels, with array inputs only. Defaults to `None`.
        batch_size: batch size of `model.predict` for array inputs. Defaults to `32`.
        task: see `report_from_predictions`. Defaults to `"auto"`.
        from_logits: whether the model outputs logits. Defaults to `None`: read off
            the last layer (a softmax/sigmoid activation or a `Softmax` layer means
            probabilities, a linear activation logits), else off the compiled loss's
            `from_logits`.
        class_names: see `report_from_predictions`. Defaults to `None`.
        thresholds: see `report_from_predictions`. Defaults to `None`.
        top_k: see `report_from_predictions`. Defaults to `None`.
        target_scale: see `report_from_predictions`. Defaults to `None`.
        target_offset: see `report_from_predictions`. Defaults to `None`.

    Returns:
        An `EvaluationReport`.

    Raises:
        ValueError: if `y` is missing for arrays or given with a dataset, a batch is not
            an `(x, y)` pair (sample weights are not supported) or is unbatched, the
            model has several outputs, `from_logits` cannot be told for a
            classification task, or `report_from_predictions` rejects the data.
    """
    y_true, y_pred = _predict(model, x, y, batch_size)
    if from_logits is None:
        from_logits = _outputs_are_logits(model)
    if from_logits is None:
        checked_true, checked_pred = _as_arrays(y_true, y_pred)
        if _resolve_task(checked_true, checked_pred, task) != "regression":
            raise ValueError(
                "Argument `from_logits` is None and cannot be told from the model: its "
                "last layer has no softmax/sigmoid/linear activation and its loss has no "
                "`from_logits`. Pass from_logits=True (outputs are logits) or False."
            )
        from_logits = False
    return report_from_predictions(
        y_true,
        y_pred,
        task=task,
        from_logits=from_logits,
        class_names=class_names,
        thresholds=thresholds,
        top_k=top_k,
        target_scale=target_scale,
        target_offset=target_offset,
    )


# --- inputs ------------------------------------------------------------------------------


def evaluate(
    model: keras.Model,
    data: Any,
    *,
    task: str = "auto",
    batch_size: int = 32,
    class_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
    label_columns: Any = None,
    from_logits: bool | None = None,
    tta: bool = False,
) -> EvaluationReport:
    """The evaluation report of ``model`` on labelled ``data``, in any form ``finetune`` takes.

    ``data`` is read as :func:`kerasft.finetune` reads it (``(x, y)`` arrays, tuples or
    dicts of arrays for several inputs, a ``tf.data`` pipeline, a tensorflow-datasets
    builder, a DataFrame with ``label_columns``); a KerasHub task gets raw strings or
    images and preprocesses them itself.

    Example:

    ```python
    report = kerasft.evaluate(model, (x_test, y_test))
    print(report)                 # per-class table, confusion matrix
    report["accuracy"], report.to_json()
    ```

    Args:
        model: a Keras model with one output.
        data: labelled data.
        task: see :func:`report_from_predictions`. Defaults to `"auto"`.
        batch_size: batch size of the predictions. Defaults to `32`.
        class_names: names of the classes (or labels, outputs). Defaults to `None`.
        thresholds: decision thresholds (binary, multi-label). Defaults to `None`.
        label_columns: the label column(s) when ``data`` is a DataFrame. Defaults to `None`.
        from_logits: whether the model outputs logits; read off its head by default.
            Defaults to `None`.
        tta: test-time augmentation: average the outputs on each image and on its
            horizontal flip (images only). Defaults to `False`.

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        ValueError: ``tta=True`` for a model whose input is not an image.
    """
    from kerasft.data import InputSignature, read_examples

    hub = "keras_hub" in type(model).__module__ or getattr(model, "preprocessor", None) is not None
    signature = None if hub else InputSignature.of(model)
    x, y = read_examples(data, signature=signature, argument="data", label_columns=label_columns)
    # Keras's array adapter takes text as Python strings, not numpy's fixed-width unicode.
    x = keras.tree.map_structure(lambda a: a.astype(object) if a.dtype.kind == "U" else a, x)
    if tta:
        if from_logits is None:
            from_logits = _outputs_are_logits(model)
        model = flip_averaged(model)
    return evaluate_model(
        model,
        x,
        y,
        batch_size=batch_size,
        task=task,
        from_logits=from_logits,
        class_names=class_names,
        thresholds=thresholds,
    )


def flip_averaged(model: keras.Model) -> keras.Model:
    """``model`` whose output is the mean of its outputs on each image and its horizontal flip.

    Raises:
        ValueError: a model whose input is not one image tensor ``(height, width, channels)``.
    """
    inputs = getattr(model, "inputs", None) or []
    if (
        len(inputs) != 1
        or len(inputs[0].shape) != 4
        or getattr(model, "preprocessor", None) is not None
    ):
        raise ValueError(
            f"Argument `tta=True` averages over horizontal flips of images, but model {model.name!r} "
            "does not take one image tensor (batch, height, width, channels). HINT: pass tta=False."
        )
    image = keras.Input(batch_shape=inputs[0].shape, dtype=inputs[0].dtype, name="image")
    flipped = keras.ops.flip(image, axis=2)  # width, channels last
    return keras.Model(
        image,
        keras.layers.Average(name="tta_mean")([model(image), model(flipped)]),
        name=f"{model.name}_tta",
    )


def _as_arrays(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
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


def _width(a: np.ndarray) -> int:
    return 1 if a.ndim == 1 else a.shape[1]


def _is_binary(a: np.ndarray) -> bool:
    return bool(np.isin(a, (0, 1)).all())


def _resolve_task(y_true: np.ndarray, y_pred: np.ndarray, task: str) -> str:
    if task != "auto" and task not in TASKS:
        raise ValueError(
            f"Argument `task` must be 'auto' or one of {list(TASKS)}. Received: task={task!r}"
        )
    if task != "auto":
        return task
    width, true_width = _width(y_pred), _width(y_true)
    if not np.all(y_true == np.round(y_true)):
        return "regression"
    if width == 1:
        return "binary" if true_width == 1 and _is_binary(y_true) else "regression"
    if true_width > 1:
        if true_width == width and _is_binary(y_true):
            if np.all(y_true.sum(axis=1) == 1):
                return "binary" if width == 2 else "multiclass"
            return "multilabel"
        return "regression"
    return "binary" if width == 2 else "multiclass"


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


def _class_ids(
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
        if not _is_binary(y_true) or not np.all(sums == 1):
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
            f"Argument `y_true`: float targets such as {y[fractional][0].item()!r} with task={task!r}; "
            f"class labels must be whole numbers in [0, {num_classes}) or one-hot rows. For "
            "float targets use task='regression'."
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


def _label_matrix(y_true: np.ndarray, y_pred: np.ndarray, name: str) -> np.ndarray:
    if y_true.ndim != 2:
        raise ValueError(
            f"Argument `{name}`: task='multilabel' needs a 0/1 label matrix of shape "
            f"(n, {_width(y_pred)}). Received: shape {y_true.shape}. For one class id per "
            "example use task='multiclass'."
        )
    if y_true.shape[1] != _width(y_pred) or y_pred.ndim != 2:
        raise ValueError(
            f"Argument `{name}`: a label matrix of width {y_true.shape[1]} does not match "
            f"the {_width(y_pred)} output(s) of `y_pred`; expected shape (n, {_width(y_pred)})."
        )
    if not _is_binary(y_true):
        row, col = np.argwhere(~np.isin(y_true, (0, 1)))[0]
        raise ValueError(
            f"Argument `{name}`: a multilabel matrix holds 0/1 values, but row {row}, "
            f"column {col} is {y_true[row, col].item()!r}."
        )
    return y_true.astype("int64")


def _probabilities(y_pred: np.ndarray) -> np.ndarray:
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


# --- losses, matching Keras ------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits))


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


# --- the reports -----------------------------------------------------------------------


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
    width = _width(y_pred)
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
    ids, one_hot = _class_ids(y_true, k, width, task)
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
    if _width(y_pred) == 1:  # one sigmoid unit
        outputs = y_pred.reshape(-1)
        p1 = _sigmoid(outputs) if from_logits else _probabilities(outputs)
        return np.stack([1 - p1, p1], axis=1), _binary_loss(ids, outputs, from_logits)
    outputs = y_pred if from_logits else _probabilities(y_pred)
    scores = _softmax(outputs) if from_logits else outputs
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
    labels = _label_matrix(y_true, y_pred, "y_true")
    if labels.shape[1] < 2:
        raise ValueError(
            "Argument `y_true`: a multilabel task needs at least 2 labels; with one label "
            "use task='binary'."
        )
    scores = _sigmoid(y_pred) if from_logits else _probabilities(y_pred)
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


# --- running the model -----------------------------------------------------------------


def _single_output(outputs: Any) -> np.ndarray:
    if isinstance(outputs, dict):
        outputs = list(outputs.values()) if len(outputs) != 1 else next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(
                f"Argument `model` has {len(outputs)} outputs; a report covers one. "
                "HINT: evaluate keras.Model(model.inputs, model.outputs[i]) for output i."
            )
        outputs = outputs[0]
    return np.asarray(outputs)


def _predict(model, x, y, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    if y is not None:
        if hasattr(x, "element_spec"):
            raise ValueError(
                "Argument `y` must be None when `x` is a tf.data.Dataset: the labels come "
                "from its (x, y) batches."
            )
        return np.asarray(y), _single_output(model.predict(x, batch_size=batch_size, verbose=0))
    if hasattr(x, "__array__"):
        raise ValueError(
            f"Argument `y` is required when `x` is an array (received x of shape "
            f"{np.shape(x)}); or pass a dataset of (x, y) batches as `x`."
        )
    labels, outputs = [], []
    for i, batch in enumerate(x):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            size = len(batch) if isinstance(batch, (tuple, list)) else 1
            raise ValueError(
                f"Argument `x`: batch {i} must be an (x, y) pair. Received a batch of {size} "
                "element(s); sample weights are not supported."
            )
        batch_y = np.asarray(batch[1])
        if batch_y.ndim == 0:
            raise ValueError(
                "Argument `x`: the dataset yields single examples (scalar labels); batch it "
                "first, e.g. dataset.batch(32)."
            )
        outputs.append(_single_output(model.predict_on_batch(batch[0])))
        labels.append(batch_y)
    if not labels:
        raise ValueError("Argument `x`: the dataset is empty: there is nothing to evaluate.")
    return np.concatenate(labels), np.concatenate(outputs)


def _outputs_are_logits(model) -> bool | None:
    """True/False when the model's last layer (or its loss) tells; None otherwise."""
    layer = model
    while hasattr(layer, "outputs") and getattr(layer, "layers", None):
        layer = layer.layers[-1]  # Sequential/functional: the last layer makes the output
    if layer is not model or hasattr(model, "outputs"):
        if isinstance(layer, keras.layers.Softmax):
            return False
        activation = getattr(layer, "activation", None)
        if activation in (keras.activations.softmax, keras.activations.sigmoid):
            return False
        if activation is keras.activations.linear:
            return True
    from_logits = getattr(getattr(model, "loss", None), "from_logits", None)
    return None if from_logits is None else bool(from_logits)


# --- plain values and text -------------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy scalars and arrays to Python numbers and lists; NaN to None."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    first = max([len(r[0]) for r in rows] + [12])
    widths = [max(10, len(h)) for h in header[1:]]
    line = [
        f"{header[0]:>{first}}  " + "".join(f"{h:>{w + 1}}" for h, w in zip(header[1:], widths))
    ]
    for row in rows:
        cells = "".join(f"{c:>{w + 1}}" for c, w in zip(row[1:], widths))
        line.append(f"{row[0]:>{first}}  {cells}".rstrip())
    return line


def _format_classification(report: EvaluationReport) -> str:
    k = len(report.class_names)
    unit = "labels" if report.task == "multilabel" else "classes"
    lines = [f"EvaluationReport: {report.task}, {report.num_examples} examples, {k} {unit}"]
    figures = [f"loss {report.loss:.4f}"]
    if report.task == "multilabel":
        figures += [
            f"subset accuracy {report.accuracy:.4f}",
            f"Hamming loss {report.hamming_loss:.4f}",
            f"ROC-AUC (macro) {_fmt(report.roc_auc)}",
        ]
    else:
        figures.append(f"accuracy {report.accuracy:.4f}")
        if report.top_k is not None:
            figures.append(f"top-{report.top_k} accuracy {report.top_k_accuracy:.4f}")
        kind = "" if report.task == "binary" else " (macro, one-vs-rest)"
        figures.append(f"ROC-AUC{kind} {_fmt(report.roc_auc)}")
    if report.task == "binary":
        figures.append(
            f"F1 of class {report.class_names[1]!r} {report.averages['binary']['f1']:.4f}"
        )
    lines += [" | ".join(figures), ""]
    lines += _rows(*_class_table(report))
    if report.confusion_matrix is not None:
        lines.append("")
        if k <= _MAX_PRINTED_CLASSES:
            lines += _format_matrix(report.confusion_matrix, report.class_names)
        else:
            lines.append(f"Confusion matrix: {k} classes, too many to print (see to_dict()).")
    return "\n".join(lines)


def _class_table(report: EvaluationReport) -> tuple[list[str], list[list[str]]]:
    """sklearn's classification_report layout, plus ROC-AUC and the thresholds."""
    header = ["", "precision", "recall", "f1-score", "ROC-AUC", "support"]
    if report.thresholds is not None:
        header.insert(5, "threshold")
    rows = []
    for i, name in enumerate(report.class_names):
        row = [
            name,
            _fmt(report.precision[i]),
            _fmt(report.recall[i]),
            _fmt(report.f1[i]),
            _fmt(report.roc_auc_per_class[i]),
            str(report.support[i]),
        ]
        if report.thresholds is not None:  # binary: one threshold, on class 1
            shown = report.task == "multilabel" or i == 1
            threshold = report.thresholds[min(i, len(report.thresholds) - 1)]
            row.insert(5, _fmt(threshold, ".3g") if shown else "")
        rows.append(row)
    rows.append([""] * len(header))
    total = str(sum(report.support))
    for avg in ("micro", "macro", "weighted", "samples"):
        if avg in report.averages:
            a = report.averages[avg]
            rows.append(
                [f"{avg} avg", _fmt(a["precision"]), _fmt(a["recall"]), _fmt(a["f1"])]
                + [""] * (len(header) - 5)
                + [total]
            )
    return header, rows


def _format_matrix(matrix: list[list[int]], names: list[str]) -> list[str]:
    first = max(len(n) for n in names)
    cell = max(max(len(str(v)) for row in matrix for v in row), max(len(n) for n in names)) + 1
    lines = [
        "Confusion matrix (rows: true class, columns: predicted):",
        " " * first + " " + "".join(f"{n:>{cell}}" for n in names),
    ]
    for name, row in zip(names, matrix):
        lines.append(f"{name:>{first}} " + "".join(f"{v:>{cell}}" for v in row))
    return lines


def _format_regression(report: EvaluationReport) -> str:
    m = len(report.class_names)
    mean = report.averages["mean"]
    lines = [
        f"EvaluationReport: regression, {report.num_examples} examples, {m} output(s)",
        f"loss (MSE, model scale) {report.loss:.6g} | mean R2 {mean['r2']:.4f} | "
        f"mean RMSE {mean['rmse']:.6g} | mean MAE {mean['mae']:.6g}",
        "",
    ]
    header = ["", "MSE", "RMSE", "MAE", "R2", "resid mean", "resid std", "resid min", "resid max"]
    res = report.residuals
    rows = [
        [
            name,
            _fmt(report.mse[i], ".5g"),
            _fmt(report.rmse[i], ".5g"),
            _fmt(report.mae[i], ".5g"),
            _fmt(report.r2[i]),
            _fmt(res["mean"][i], ".4g"),
            _fmt(res["std"][i], ".4g"),
            _fmt(res["min"][i], ".4g"),
            _fmt(res["max"][i], ".4g"),
        ]
        for i, name in enumerate(report.class_names)
    ]
    if m > 1:
        rows.append(
            [
                "mean",
                _fmt(mean["mse"], ".5g"),
                _fmt(mean["rmse"], ".5g"),
                _fmt(mean["mae"], ".5g"),
                _fmt(mean["r2"]),
            ]
            + [""] * 4
        )
    return "\n".join(lines + _rows(header, rows))
