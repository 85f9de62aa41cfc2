"""PNG plots of a fine-tuning run: training curves across phases, the LR finder, a confusion matrix.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas, so plotting
never touches `pyplot`'s global state or needs a display, and works the same in scripts,
tests and notebooks. Each function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import image as mpl_image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kerasft._fileio import atomic_file

if TYPE_CHECKING:
    from kerasft.evaluation import EvaluationReport

__all__ = ["plot_history", "plot_lr_find", "plot_confusion_matrix", "plot_report"]

_DPI = 100

# How kerasft.suggest_learning_rates picks each rate, for the legend of plot_lr_find.
_SUGGESTION_MEANINGS = {
    "valley": "in the longest descent",
    "steep": "steepest descent",
    "minimum": "rate of the lowest loss / 10",
}


def _parse_phases(phases: Any) -> list[tuple[str, dict, int]]:
    """``(name, history, epochs)`` per phase, from a result, its history or pairs."""
    if hasattr(phases, "phases") and not isinstance(phases, Sequence):  # a FinetuneResult
        phases = [(p.name, p.history) for p in phases.phases]
    elif (
        isinstance(phases, Mapping)
        and phases
        and all(isinstance(h, Mapping) or hasattr(h, "history") for h in phases.values())
    ):  # FinetuneResult.history: {phase name: history}
        phases = list(phases.items())
    if isinstance(phases, (str, bytes, Mapping)) or not isinstance(phases, Sequence):
        raise ValueError(
            "Argument `phases` must be a FinetuneResult or a list of (name, history) pairs. "
            f"Received: phases of type {type(phases).__name__}"
        )
    if not phases:
        raise ValueError("Argument `phases` must hold at least one (name, history) pair.")
    return [_parse_phase(i, phase) for i, phase in enumerate(phases)]


def _parse_phase(i: int, phase: Any) -> tuple[str, dict, int]:
    if not isinstance(phase, (tuple, list)) or len(phase) != 2:
        raise ValueError(
            f"Argument `phases[{i}]` must be a (name, history) pair. Received: {phase!r}"
        )
    name, history = phase
    history = getattr(history, "history", history)  # a keras.callbacks.History
    if not isinstance(history, Mapping):
        raise ValueError(
            f"Argument `phases[{i}]` ({name!r}): history must be a dict of per-epoch "
            f"lists. Received: {type(history).__name__}"
        )
    lengths = {key: len(values) for key, values in history.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"Argument `phases[{i}]` ({name!r}): every series must have one value per "
            f"epoch, but the lengths differ: {lengths}"
        )
    return str(name), dict(history), next(iter(lengths.values()), 0)


def plot_history(
    phases: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
    path: str | os.PathLike,
) -> str:
    """Plot training curves of several fine-tuning phases end to end, boundaries marked.

    One panel per quantity: `loss` first, then each metric (`accuracy`, ...), each with
    its `val_` counterpart dashed; a `learning_rate` (or `lr`) series gets a log-scale
    panel, and so does a loss whose values are all positive and span more than 10x (one
    early spike would otherwise flatten the rest of the curve). Epochs are numbered
    continuously across phases and a vertical line marks where each phase starts,
    labelled with its name. A quantity a phase did not log is left blank for that phase.

    Example:

    ```python
    result = kerasft.finetune(model, (x, y))
    plot_history(result, "/tmp/history.png")
    plot_history(
        [("head", {"loss": [1.2, 0.6], "val_loss": [0.9, 0.7]}),
         ("full", {"loss": [0.5, 0.4], "val_loss": [0.6, 0.55]})],
        "/tmp/history.png",
    )
    ```

    Args:
        phases: a `kerasft.FinetuneResult`, its `.history` dict, or `(name, history)`
            pairs in training order, where `history` maps a quantity to its per-epoch
            values: a Keras `History.history` dict, or a `keras.callbacks.History` itself.
        path: destination file, ending in `.png`.

    Returns:
        The absolute path of the PNG.

    Raises:
        ValueError: if `phases` is empty, a phase is not a `(name, history)` pair, its
            series have different lengths, no phase has any epoch, or `path` does not
            end in `.png`.
    """
    path = _check_png_path(path)
    parsed = _parse_phases(phases)
    total = sum(epochs for _, _, epochs in parsed)
    if total == 0:
        raise ValueError("Argument `phases` holds no epochs: every history is empty.")

    panels = _history_panels(key for _, history, _ in parsed for key in history)
    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.0 * cols, 3.6 * rows), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, keys) in zip(axes, panels):
        _draw_history_panel(ax, title, keys, parsed, total)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(" → ".join(name for name, _, _ in parsed))
    return _save(fig, path)


def _draw_history_panel(
    ax, title: str, keys: list[str], parsed: list[tuple[str, dict, int]], total: int
) -> None:
    """One panel of :func:`plot_history`: the series of ``keys``, the phases marked."""
    colours = {"train": "tab:blue", "val": "tab:orange"}
    drawn = []
    for key in keys:
        ys = _series_across_phases(key, parsed)
        drawn.extend(ys)
        xs = np.arange(1, total + 1)
        is_val = key.startswith("val_")
        ax.plot(
            xs,
            ys,
            marker="o" if total <= 30 else None,
            markersize=3,
            linestyle="--" if is_val else "-",
            color=colours["val" if is_val else "train"] if len(keys) <= 2 else None,
            label=key,
        )
    if title in ("learning_rate", "lr") or (title.endswith("loss") and _spans_decades(drawn)):
        ax.set_yscale("log")
    _mark_phases(ax, parsed, total)
    ax.set_xlim(0.5, total + 0.5)
    ax.set_title(title)
    ax.set_xlabel("epoch (all phases)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def _series_across_phases(key: str, parsed: list[tuple[str, dict, int]]) -> list[float]:
    """One continuous series across phases; NaN where a phase lacks the key."""
    ys = []
    for _, history, epochs in parsed:
        values = history.get(key)
        ys.extend([float(v) for v in values] if values is not None else [np.nan] * epochs)
    return ys


def _mark_phases(ax, parsed: list[tuple[str, dict, int]], total: int) -> None:
    """A dotted line where each phase starts, every other phase shaded, each named."""
    start = 0
    for i, (name, _, epochs) in enumerate(parsed):
        if i > 0:
            ax.axvline(start + 0.5, color="0.4", linestyle=":", linewidth=1)
        if i % 2:
            ax.axvspan(start + 0.5, start + epochs + 0.5, color="0.94", zorder=0)
        ax.text(
            start + 0.5 + 0.02 * total,
            1.0,
            name,
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
            color="0.3",
        )
        start += epochs


def plot_lr_find(
    learning_rates: Sequence[float],
    losses: Sequence[float],
    suggestions: Mapping[str, float] | None,
    path: str | os.PathLike,
) -> str:
    """Plot an LR-finder sweep: loss against learning rate (log scale), suggestions marked.

    Each suggestion is marked on the curve at its rate, and its legend entry says how it
    was chosen (`valley`: inside the longest descent; `steep`: the steepest descent;
    `minimum`: a tenth of the rate of the lowest loss, so its marker sits left of the
    lowest point). A star marks the lowest point of the plotted curve itself. The y-axis
    is clipped to the interesting range: from the lowest loss to a little above the
    starting loss, so that the divergence at the end of the sweep does not flatten the
    curve. Non-finite losses are left out.

    Example:

    ```python
    lrs = np.geomspace(1e-6, 1, 50)
    plot_lr_find(lrs, losses, {"valley": 3e-3, "steep": 1e-3}, "/tmp/lr_find.png")
    ```

    Args:
        learning_rates: learning rates of the sweep, all positive.
        losses: (smoothed) loss at each learning rate.
        suggestions: name -> suggested learning rate, e.g. `{"valley": 3e-3}`; `None`
            values are skipped. May be `None` or empty.
        path: destination file, ending in `.png`.

    Returns:
        The absolute path of the PNG.

    Raises:
        ValueError: if the two sequences differ in length, hold fewer than 2 points or
            no finite loss, a learning rate or a suggestion is not positive, or `path`
            does not end in `.png`.
    """
    path = _check_png_path(path)
    lrs, loss, suggestions = _check_lr_sweep(learning_rates, losses, suggestions)
    finite = np.isfinite(loss)

    fig = Figure(figsize=(7.0, 4.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(lrs[finite], loss[finite], color="tab:blue", label="loss")
    ax.set_xscale("log")
    _clip_lr_find_losses(ax, loss[finite])
    _mark_suggestions(ax, lrs[finite], loss[finite], suggestions)
    _mark_lowest_loss(ax, lrs[finite], loss[finite])
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate finder")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def _check_lr_sweep(
    learning_rates: Sequence[float],
    losses: Sequence[float],
    suggestions: Mapping[str, float] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float | None]]:
    """The arguments of :func:`plot_lr_find` as float64 arrays and a dict, validated."""
    lrs = np.asarray(learning_rates, dtype="float64").ravel()
    loss = np.asarray(losses, dtype="float64").ravel()
    if len(lrs) != len(loss):
        raise ValueError(
            "Arguments `learning_rates` and `losses` must have the same length. "
            f"Received: {len(lrs)} learning rates and {len(loss)} losses."
        )
    if len(lrs) < 2:
        raise ValueError(
            f"Argument `learning_rates` must hold at least 2 points. Received: {len(lrs)}"
        )
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(
            "Argument `learning_rates` must be positive and finite (log scale). "
            f"Received: min={lrs.min()!r}"
        )
    if not np.isfinite(loss).any():
        raise ValueError("Argument `losses` holds no finite value: nothing to plot.")
    suggestions = dict(suggestions or {})
    for name, lr in suggestions.items():
        if lr is not None and not (isinstance(lr, (int, float, np.floating)) and lr > 0):
            raise ValueError(
                f"Argument `suggestions[{name!r}]` must be a positive learning rate or None. "
                f"Received: {lr!r}"
            )
    return lrs, loss, suggestions


def _clip_lr_find_losses(ax, loss: np.ndarray) -> None:
    """Show the losses from the lowest to a bit above the first, padded by 5%."""
    low = loss.min()
    first = loss[0]
    high = loss.max()
    # Divergence at high LRs dwarfs the curve; show up to a bit above the start.
    top = min(high, first + 0.5 * max(first - low, 1e-12)) if first > low else high
    pad = 0.05 * max(top - low, 1e-12)
    ax.set_ylim(low - pad, top + pad)


def _mark_suggestions(
    ax, lrs: np.ndarray, loss: np.ndarray, suggestions: dict[str, float | None]
) -> None:
    """A marker on the curve at each suggested rate, its legend saying how it was chosen."""
    order = np.argsort(lrs)
    markers = iter(["o", "s", "^", "D", "v", "P", "X"])
    colours = iter(["tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    for name, lr in suggestions.items():
        if lr is None:
            continue
        y = np.interp(np.log(lr), np.log(lrs[order]), loss[order])
        meaning = _SUGGESTION_MEANINGS.get(name)
        ax.plot(
            [lr],
            [y],
            marker=next(markers, "o"),
            markersize=9,
            linestyle="none",
            color=next(colours, "black"),
            label=f"{name} ({meaning}): {lr:.2e}" if meaning else f"{name}: {lr:.2e}",
        )


def _mark_lowest_loss(ax, lrs: np.ndarray, loss: np.ndarray) -> None:
    """A star at the lowest point of the curve."""
    low = loss.min()
    lowest = int(np.argmin(loss))
    ax.plot(
        [lrs[lowest]],
        [low],
        marker="*",
        markersize=12,
        linestyle="none",
        color="black",
        label=f"lowest loss {low:.4g} at {lrs[lowest]:.2e}",
    )


def plot_confusion_matrix(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
) -> str:
    """Plot the confusion matrix of a test set: counts, colour by row share.

    Rows are true classes, columns predicted ones. Cells show counts; the colour is the
    share of the row (the per-class recall on the diagonal), so rare classes stay
    readable. The title gives accuracy and the number of examples.

    Example:

    ```python
    probabilities = model.predict(x_test)
    plot_confusion_matrix(y_test, probabilities.argmax(-1), [str(i) for i in range(10)],
                          "/tmp/confusion.png")
    ```

    Args:
        y_true: true class ids, shape `(n,)`.
        y_pred: predicted class ids `(n,)`, or probabilities `(n, num_classes)` (the
            arg-max is taken).
        class_names: one name per class, in class-id order.
        path: destination file, ending in `.png`.

    Returns:
        The absolute path of the PNG.

    Raises:
        ValueError: if the label arrays are empty or differ in length, hold a class id
            outside `[0, len(class_names))`, or `path` does not end in `.png`.
    """
    path = _check_png_path(path)
    names = [str(n) for n in class_names]
    k = len(names)
    if k == 0:
        raise ValueError("Argument `class_names` must hold at least one name.")
    y_true, y_pred = _check_class_ids(y_true, y_pred, k)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)

    size = min(max(4.0, 0.55 * k + 2.0), 20.0)
    fig = Figure(figsize=(size + 1.0, size), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    if k <= 30:  # beyond that the numbers are unreadable
        _write_counts(ax, matrix, share)
    long_names = max(map(len, names)) > 3
    ax.set_xticks(
        range(k), names, rotation=45 if long_names else 0, ha="right" if long_names else "center"
    )
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(matrix) / matrix.sum()
    ax.set_title(f"Confusion matrix: accuracy {accuracy:.1%} on {matrix.sum()} examples")
    return _save(fig, path)


def _check_class_ids(y_true: Any, y_pred: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as flat integer arrays of class ids in ``[0, k)``.

    Probabilities ``(n, k)`` in ``y_pred`` become their arg-max.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        if y_pred.shape[1] != k:
            raise ValueError(
                f"Argument `y_pred` holds probabilities for {y_pred.shape[1]} classes, but "
                f"`class_names` has {k} names."
            )
        y_pred = y_pred.argmax(axis=-1)
    y_pred = y_pred.reshape(-1)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(
            "Arguments `y_true` and `y_pred` must be non-empty and of the same length. "
            f"Received: {len(y_true)} and {len(y_pred)} labels."
        )
    for arg, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.equal(np.mod(y, 1), 0)):
                raise ValueError(
                    f"Argument `{arg}` must hold integer class ids. Received: {y[:5]!r}"
                )
        bad = y[(y < 0) | (y >= k)]
        if len(bad):
            raise ValueError(
                f"Argument `{arg}` holds class ids outside [0, {k}) for {k} class names: "
                f"{sorted(set(bad.astype(int).tolist()))[:10]}"
            )
    return y_true.astype(int), y_pred.astype(int)


def _write_counts(ax, matrix: np.ndarray, share: np.ndarray) -> None:
    """The count in every non-empty cell, white on the darker ones."""
    k = len(matrix)
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )


def _spans_decades(values: Sequence[float]) -> bool:
    """Whether the finite ``values`` are all positive and span more than a factor of 10."""
    finite = np.asarray(values, dtype="float64")
    finite = finite[np.isfinite(finite)]
    return finite.size > 0 and finite.min() > 0 and finite.max() > 10 * finite.min()


def _check_png_path(path: Any) -> str:
    path = os.path.abspath(os.fspath(path))
    if not path.lower().endswith(".png"):
        raise ValueError(f"Argument `path` must end with '.png'. Received: path={path!r}")
    return path


def _history_panels(keys) -> list[tuple[str, list[str]]]:
    """Group series into panels: 'loss' first, then metrics, learning rate last."""
    order: list[str] = []
    series: dict[str, list[str]] = {}
    for key in keys:
        base = key[4:] if key.startswith("val_") else key
        if base not in series:
            order.append(base)
            series[base] = []
        if key not in series[base]:
            series[base].append(key)

    def rank(base: str) -> tuple[int, int]:
        if base == "loss":
            return (0, 0)
        if base in ("learning_rate", "lr"):
            return (2, 0)
        return (1, order.index(base))

    panels = []
    for base in sorted(order, key=rank):
        keys_ = sorted(series[base], key=lambda k: k.startswith("val_"))
        panels.append((base, keys_))
    return panels


def _save(fig: Figure, path: str) -> str:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_report(report: EvaluationReport, path: str | os.PathLike) -> str:
    """Plot an evaluation report, with the views that suit its task.

    - multiclass and binary: the confusion matrix (as `plot_confusion_matrix` draws it)
      beside a bar chart of F1 per class, the macro F1 marked;
    - multilabel: precision, recall and F1 per label, each label's threshold in its name;
    - regression, for each output: residuals (`true - predicted`) against predictions,
      and predictions against true values with the identity line. This needs the
      arrays of `report.predictions`, which a report read back from JSON lacks.

    Example:

    ```python
    report = kerasft.evaluation.evaluate_model(model, x_test, y_test)
    plot_report(report, "/tmp/report.png")
    ```

    Args:
        report: a `kerasft.evaluation.EvaluationReport`.
        path: destination file, ending in `.png`.

    Returns:
        The absolute path of the PNG.

    Raises:
        TypeError: if `report` is not an evaluation report.
        ValueError: if `path` does not end in `.png`, or a regression report holds no
            predictions.
    """
    path = _check_png_path(path)
    task = getattr(report, "task", None)
    if task not in ("multiclass", "binary", "multilabel", "regression"):
        raise TypeError(
            "Argument `report` must be a kerasft.evaluation.EvaluationReport. "
            f"Received: {type(report).__name__}"
        )
    if task == "regression":
        fig = _regression_figure(report)
    elif task == "multilabel":
        fig = _multilabel_figure(report)
    else:
        fig = _classification_figure(report)
    return _save(fig, path)


def _classification_figure(report: EvaluationReport) -> Figure:
    """The confusion-matrix PNG pasted pixel for pixel, F1 bars to its right."""
    matrix = np.asarray(report.confusion_matrix, dtype=int)
    true_ids, pred_ids = np.nonzero(matrix)
    counts = matrix[true_ids, pred_ids]
    with tempfile.TemporaryDirectory() as tmp:
        drawn = plot_confusion_matrix(
            np.repeat(true_ids, counts),
            np.repeat(pred_ids, counts),
            report.class_names,
            os.path.join(tmp, "confusion.png"),
        )
        image = mpl_image.imread(drawn)
    k = len(report.class_names)
    image_h, image_w = image.shape[:2]
    bars_w = 560
    height = max(image_h, int(_DPI * (0.3 * k + 1.6)))
    fig = Figure(figsize=((image_w + bars_w) / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    fig.figimage(image, xo=0, yo=height - image_h)
    left = max(map(len, report.class_names)) * 7 + 30  # room for the class names
    ax = fig.add_axes(
        [
            (image_w + left) / (image_w + bars_w),
            60 / height,
            (bars_w - left - 30) / (image_w + bars_w),
            (height - 110) / height,
        ]
    )
    _f1_bars(ax, report.class_names, {"F1": report.f1}, report.averages["macro"]["f1"])
    macro = report.averages["macro"]["f1"]
    ax.set_title(f"F1 per class; dashed: macro F1 {macro:.3f}")
    return fig


def _multilabel_figure(report: EvaluationReport) -> Figure:
    k = len(report.class_names)
    fig = Figure(figsize=(7.5, max(3.0, 0.55 * k + 1.5)), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = [f"{n} (t={t:.2g})" for n, t in zip(report.class_names, report.thresholds)]
    series = {"precision": report.precision, "recall": report.recall, "F1": report.f1}
    _f1_bars(ax, names, series, report.averages["macro"]["f1"])
    ax.set_title(
        f"Per label: micro F1 {report.averages['micro']['f1']:.3f}, "
        f"subset accuracy {report.accuracy:.1%}, Hamming loss {report.hamming_loss:.3f}"
    )
    return fig


def _f1_bars(ax, names, series: Mapping[str, Sequence[float]], macro_f1: float) -> None:
    """Horizontal bars, first name on top; one bar per series in each group."""
    k = len(names)
    height = 0.8 / len(series)
    colours = {"precision": "tab:blue", "recall": "tab:orange", "F1": "tab:green"}
    for i, (label, values) in enumerate(series.items()):
        ys = np.arange(k) + (i - (len(series) - 1) / 2) * height
        ax.barh(ys, values, height=height, color=colours.get(label), label=label)
        if k * len(series) <= 60:  # beyond that the numbers overlap
            for y, v in zip(ys, values):
                ax.text(min(v, 1.0) + 0.01, y, f"{v:.2f}", va="center", fontsize=7)
    ax.axvline(macro_f1, color="0.3", linestyle="--", linewidth=1, label=f"macro F1 {macro_f1:.3f}")
    ax.set_yticks(range(k), names)
    ax.set_ylim(k - 0.5, -0.5)
    ax.set_xlim(0.0, 1.12)
    ax.set_xlabel("score")
    if len(series) > 1:  # below the axes, where it hides no bar
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    ax.grid(alpha=0.3, axis="x")


def _regression_figure(report: EvaluationReport) -> Figure:
    if not report.predictions:
        raise ValueError(
            "Argument `report` holds no predictions (a report read back from JSON keeps only "
            "its figures), so residuals cannot be drawn. Plot a report from "
            "`report_from_predictions` or `evaluate_model`."
        )
    truth = np.asarray(report.predictions["y_true"]).reshape(report.num_examples, -1)
    pred = np.asarray(report.predictions["y_pred"]).reshape(report.num_examples, -1)
    m = truth.shape[1]
    fig = Figure(figsize=(11.0, 4.2 * m), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(m, 2, squeeze=False)
    size = 12 if len(truth) <= 2000 else 3
    for j, name in enumerate(report.class_names):
        left, right = axes[j]
        left.scatter(pred[:, j], truth[:, j] - pred[:, j], s=size, alpha=0.5, rasterized=True)
        left.axhline(0.0, color="0.3", linewidth=1)
        left.set_xlabel(f"predicted {name}")
        left.set_ylabel("residual (true - predicted)")
        left.set_title(f"{name}: residuals, RMSE {report.rmse[j]:.4g}")
        right.scatter(truth[:, j], pred[:, j], s=size, alpha=0.5, rasterized=True)
        low = min(truth[:, j].min(), pred[:, j].min())
        high = max(truth[:, j].max(), pred[:, j].max())
        right.plot([low, high], [low, high], color="0.3", linestyle="--", linewidth=1)
        right.set_xlabel(f"true {name}")
        right.set_ylabel(f"predicted {name}")
        right.set_title(f"{name}: predicted vs true, R2 {report.r2[j]:.3f}")
        for ax in (left, right):
            ax.grid(alpha=0.3)
    return fig
