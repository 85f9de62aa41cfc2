"""What a search found: :class:`SearchResult`, one :class:`TrialRow` per trial, a plot."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasft._fileio import atomic_file
from kerasft.engine.result import FinetuneResult
from kerasft.speed.store import FeatureStore

__all__ = ["SearchResult", "TrialRow", "format_params"]

_DPI = 100


@dataclass
class TrialRow:
    """One trial of a search.

    Attributes:
        trial_id: KerasTuner's id of the trial.
        params: the ``finetune`` keywords the trial searched (and ``epochs`` under Hyperband).
        objective: the trial's best value of the objective (``None`` unless it completed).
        seconds: wall seconds of its ``finetune`` call.
        status: ``"COMPLETED"``, ``"FAILED"`` (see ``message``) or ``"RUNNING"``
            (interrupted; run again by the next search on the directory).
        feature_seconds: seconds its phases spent getting cached features.
        fit_seconds: seconds its phases spent in ``fit`` (tracing included).
        earlier: whether it finished in an earlier search on the same directory.
        message: why it failed, if it did.
    """

    trial_id: str
    params: dict[str, Any]
    objective: float | None
    seconds: float | None
    status: str
    feature_seconds: float | None = None
    fit_seconds: float | None = None
    earlier: bool = False
    message: str | None = None


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        best: the :class:`kerasft.FinetuneResult` of the best trial (its configuration is
            run again once when that trial finished in an earlier search).
        best_params: the keywords of the best trial.
        best_trial: its id.
        trials: one :class:`TrialRow` per trial, in the order they started.
        objective: the quantity compared, and ``direction``: ``"min"`` or ``"max"``.
        directory: the project directory (``None`` for a temporary one, removed at the end).
        store: the :class:`kerasft.speed.FeatureStore` the trials shared.
        seconds: wall seconds of this call.
    """

    best: FinetuneResult = field(repr=False)
    best_params: dict[str, Any]
    best_trial: str
    trials: list[TrialRow] = field(repr=False)
    objective: str
    direction: str
    directory: str | None
    store: FeatureStore = field(repr=False)
    seconds: float = 0.0

    def table(self) -> str:
        """The trials as a text table (the best one marked ``*``)."""
        names = sorted({k for row in self.trials for k in row.params})
        header = ["", "trial", "status", self.objective, "seconds", "features s", "fit s", *names]
        lines = [header]
        for row in self.trials:
            lines.append(
                [
                    "*" if row.trial_id == self.best_trial else "",
                    row.trial_id,
                    row.status.lower(),
                    _fmt(row.objective),
                    _fmt(row.seconds, ".1f"),
                    _fmt(row.feature_seconds, ".2f"),
                    _fmt(row.fit_seconds, ".1f"),
                    *(_fmt(row.params.get(k, "")) for k in names),
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines
        )

    def __str__(self) -> str:
        return self.table()

    def to_dataframe(self) -> Any:
        """The trials as a pandas DataFrame, one row per trial, one column per keyword.

        Raises:
            ImportError: when pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "SearchResult.to_dataframe() needs pandas: pip install pandas"
            ) from None
        rows = [
            {
                "trial_id": r.trial_id,
                "status": r.status,
                self.objective: r.objective,
                "seconds": r.seconds,
                "feature_seconds": r.feature_seconds,
                "fit_seconds": r.fit_seconds,
                "earlier": r.earlier,
                **{
                    k: v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)
                    for k, v in r.params.items()
                },
            }
            for r in self.trials
        ]
        return pd.DataFrame(rows).set_index("trial_id")

    def plot(self, path: str | os.PathLike) -> str:
        """Plot the objective of each completed trial and the best so far; write a PNG.

        Args:
            path: destination file, ending in `.png`.

        Returns:
            The absolute path of the PNG.

        Raises:
            ValueError: no trial completed, or `path` does not end in `.png`.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = os.path.abspath(os.fspath(path))
        if not path.lower().endswith(".png"):
            raise ValueError(f"Argument `path` must end with '.png'. Received: path={path!r}")
        done = [
            (i + 1, r)
            for i, r in enumerate(self.trials)
            if r.objective is not None and math.isfinite(r.objective)
        ]
        if not done:
            raise ValueError(
                "No trial of the search completed with a finite objective: nothing to plot."
            )
        xs = np.array([i for i, _ in done])
        ys = np.array([r.objective for _, r in done])
        best_so_far = (
            np.minimum.accumulate(ys) if self.direction == "min" else np.maximum.accumulate(ys)
        )
        fig = Figure(figsize=(7.0, 4.5), dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        ax.plot(
            xs,
            ys,
            marker="o",
            linestyle="none",
            color="tab:blue",
            label=f"{self.objective} of the trial",
        )
        ax.step(xs, best_so_far, where="post", color="tab:orange", label="best so far")
        best = next((i, r.objective) for i, r in done if r.trial_id == self.best_trial)
        # Numbered from 1 as on the x-axis; KerasTuner's ids (the table's) count from 0.
        ax.plot(
            [best[0]],
            [best[1]],
            marker="*",
            markersize=14,
            linestyle="none",
            color="tab:red",
            label=f"best: trial {best[0]} (id {self.best_trial})",
        )
        ax.set_xlabel("trial (in the order run)")
        ax.set_ylabel(self.objective)
        ax.set_title(f"Search: {self.objective} per trial ({self.direction}imised)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=9)
        ax.grid(alpha=0.3)
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
        return path


def format_params(params: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + "}"


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return value if isinstance(value, str) else repr(value)
