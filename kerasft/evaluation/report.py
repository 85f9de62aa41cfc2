"""The evaluation report: the figures of a model on labelled data, as a record and a table.

:class:`EvaluationReport` holds them for one task, reads one figure by name
(``report["accuracy"]``), goes to JSON and back, and prints as scikit-learn's
``classification_report`` with ROC-AUC and the thresholds added and a confusion matrix
below (per-output errors and residuals for regression).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasft._fileio import atomic_file
from kerasft._records import read_json, record_from_dict

__all__ = ["TASKS", "EvaluationReport"]

TASKS = ("multiclass", "binary", "multilabel", "regression")
_MAX_PRINTED_CLASSES = 20  # a wider confusion matrix does not fit a terminal


@dataclass
class EvaluationReport:
    """Evaluation figures of a model on labelled data, for one task.

    Built by `report_from_predictions` or `evaluate_model`. Fields that do not apply to
    the task are `None`. Per-class lists follow `class_names` (for regression: one entry
    per output). `str(report)` is a readable table; `to_dict()`/`to_json()` give plain
    JSON (the arrays in `predictions` are left out) and `from_dict()`/`from_json()` read
    it back.

    Example:

    >>> from kerasft.evaluation import report_from_predictions
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
                f"{key!r} is not a figure of this {self.task} report. "
                f"Figures are: {sorted(figures)}"
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
