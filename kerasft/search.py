"""``kerasft.search``: try several ``finetune`` configurations and keep the best one.

Each trial is one ``finetune`` call with some keywords drawn from a search space (rates,
``unfreeze`` depth, recipe, label smoothing...). KerasTuner's oracles choose them
(random search, Bayesian optimisation, Hyperband) and keep the trials in a project
directory, so a search that stops can be started again and continues after the trials
it finished. Every trial fine-tunes a fresh copy of the pretrained model, and all of
them share one :class:`kerasft.speed.FeatureStore`: the outputs of a frozen bottom are
computed once for the whole search, not once per trial.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import keras_tuner
import numpy as np
from keras_tuner.engine.base_tuner import BaseTuner

from kerasft import configs, convert
from kerasft._fileio import atomic_file, make_scratch_directory
from kerasft.callbacks import monitor_mode
from kerasft.engine.loading import load_model
from kerasft.engine.options import Options
from kerasft.engine.result import FinetuneResult
from kerasft.speed.caching import FeatureStore

__all__ = [
    "search",
    "SearchResult",
    "TrialRow",
    "ORACLES",
    "baseline_values",
    "parse_space",
    "searchable_keywords",
]

ORACLES = ("random", "bayesian", "hyperband")
# Keywords that are about the run, not the model it returns, or that make the trials'
# objectives incomparable (another validation set), with why.
_NOT_SEARCHED = {
    "validation_data": "the objective must be measured on the same validation data in every trial",
    "validation_split": "the objective must be measured on the same validation data in every trial",
    "monitor": "the search sets it to `objective`",
    "callbacks": "it does not change the fine-tuned model",
    "tensorboard": "it does not change the fine-tuned model",
    "checkpoint_dir": "a search resumes trial by trial from its project directory",
    "copy": "every trial fine-tunes a fresh copy of the model",
    "verbose": "search() has its own `verbose`",
    "feature_store": "it does not change the fine-tuned model",
    "distribute": "it does not change the fine-tuned model",
    "safe_mode": "it does not change the fine-tuned model",
}
_LOSS_CHANGING = ("label_smoothing", "loss", "class_weight")
_METRICS = ("search/seconds", "search/feature_seconds", "search/fit_seconds")
_FINGERPRINT = "kerasft_search.json"
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


def _short(params: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) + "}"


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return value if isinstance(value, str) else repr(value)


# ----------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class _Param:
    """One searched keyword: a choice of values, or a float/int range."""

    name: str
    kind: str  # "choice", "float" or "int"
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    labels: tuple[str, ...] | None = None  # choices of mixed types are searched by label

    def add_to(self, hp: Any) -> None:
        if self.kind == "choice":
            if self.labels is None:
                hp.Choice(self.name, list(self.values))
            else:
                hp.Choice(self.name, list(self.labels), ordered=False)
        elif self.kind == "float":
            hp.Float(self.name, self.low, self.high, sampling="log" if self.log else "linear")
        else:
            hp.Int(
                self.name, int(self.low), int(self.high), sampling="log" if self.log else "linear"
            )

    def decode(self, value: Any) -> Any:
        if self.labels is not None:
            return self.values[self.labels.index(value)]
        if self.kind == "choice":
            return next((v for v in self.values if v == value and type(v) is type(value)), value)
        return int(value) if self.kind == "int" else float(value)  # not NumPy scalars

    def encode(self, value: Any) -> Any:
        """The oracle's value for ``value``, or ``None`` when the space does not hold it."""
        if self.kind == "choice":
            for i, v in enumerate(self.values):
                same = (
                    math.isclose(v, value, rel_tol=1e-9)
                    if isinstance(v, float) and isinstance(value, float)
                    else v == value
                )
                if type(v) is type(value) and same:
                    return v if self.labels is None else self.labels[i]
            return None
        number = int if self.kind == "int" else (int, float)
        ok = (
            isinstance(value, number)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )
        return value if ok else None

    def describe(self) -> list:
        if self.kind == "choice":
            return ["choice", [repr(v) for v in self.values]]
        return [self.kind, self.low, self.high, "log" if self.log else "linear"]


def searchable_keywords() -> list[str]:
    """The ``finetune`` keywords a search space may hold."""
    return sorted(k for k in Options().keywords() if k not in _NOT_SEARCHED)


def parse_space(space: Any, fixed: Mapping[str, Any]) -> list[_Param]:
    """Check ``space`` against ``finetune``'s keywords and values; return its parameters.

    Raises:
        ValueError: an empty space, a keyword that cannot be searched or is also fixed, a
            bad specification, or a value ``finetune`` would refuse.
    """
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            "Argument `space` must be a non-empty dict {finetune keyword: values}, e.g. "
            f"{{'lr': [1e-3, 1e-2], 'unfreeze': [1, 2, 'all']}}. Received: space={space!r}"
        )
    params = []
    for name, spec in space.items():
        if name in _NOT_SEARCHED:
            raise ValueError(f"Argument `space` cannot search {name!r}: {_NOT_SEARCHED[name]}.")
        if name not in searchable_keywords():
            raise ValueError(
                f"Argument `space` has {name!r}, which is not a finetune keyword. Keywords that "
                f"can be searched: {searchable_keywords()}"
            )
        if name in fixed:
            raise ValueError(
                f"Keyword {name!r} is both in `space` and fixed ({name}={fixed[name]!r}). "
                "Pass it in one place."
            )
        param = _parse_spec(name, spec)
        for value in param.values if param.kind == "choice" else (param.low, param.high):
            value = int(value) if param.kind == "int" else value
            try:
                Options.from_keywords(**{**fixed, name: value})
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"Argument `space[{name!r}]`: finetune refuses {name}={value!r}: {e}"
                ) from None
        params.append(param)
    return params


def _parse_spec(name: str, spec: Any) -> _Param:
    valid = (
        f"Argument `space[{name!r}]` must be a list of values (a choice), ('float', low, high), "
        f"('float', low, high, 'log'), ('int', low, high) or ('int', low, high, 'log'). "
        f"Received: space[{name!r}]={spec!r}"
    )
    if isinstance(spec, list):
        if not spec:
            raise ValueError(
                f"Argument `space[{name!r}]` is an empty list: give at least one value."
            )
        labels = [repr(v) for v in spec]
        if len(set(labels)) != len(labels):
            raise ValueError(f"Argument `space[{name!r}]` repeats a value. Received: {spec!r}")
        kinds = {type(v) for v in spec}
        native = len(kinds) == 1 and kinds <= {int, float, str, bool}
        return _Param(name, "choice", tuple(spec), labels=None if native else tuple(labels))
    if not isinstance(spec, tuple) or len(spec) not in (3, 4) or spec[0] not in ("float", "int"):
        raise ValueError(valid)
    kind, low, high, *rest = spec
    if rest not in ([], ["log"]):
        raise ValueError(valid)
    number = int if kind == "int" else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, number) for v in (low, high)) or not low < high:
        raise ValueError(f"{valid}. Bounds must be {kind}s with low < high.")
    if rest and low <= 0:
        raise ValueError(
            f"Argument `space[{name!r}]`: a log range needs low > 0. Received: low={low!r}"
        )
    return _Param(name, kind, low=low, high=high, log=bool(rest))


# ----------------------------------------------------------------------------- the search


def search(
    model: keras.Model | str | os.PathLike,
    data: Any,
    space: Mapping[str, Any],
    *,
    max_trials: int = 8,
    objective: str = "val_loss",
    oracle: str = "random",
    directory: str | os.PathLike | None = None,
    project_name: str = "kerasft_search",
    overwrite: bool = False,
    seed: int = 0,
    verbose: int = 1,
    **finetune_keywords: Any,
) -> SearchResult:
    """Search ``finetune`` keywords for the best fine-tuned model on ``objective``.

    Each trial calls ``kerasft.finetune(model, data, **finetune_keywords, **drawn)`` on a
    fresh copy of ``model``, with ``monitor=objective`` (the weights each trial returns
    are its best on the objective, and that value is its score) and ``seed=seed`` (the
    same split, shuffles and new head in every trial, so that trials differ only by
    what was drawn). All trials share one :class:`kerasft.speed.FeatureStore`: features
    of a frozen bottom are computed once for the whole search.

    With the random and Bayesian oracles, the first trial runs ``finetune``'s defaults
    when the space holds them (``finetune_lr=None`` standing for ``lr / 10``), so the
    search ends no worse on its objective than a plain ``finetune`` call.

    Trials are kept in KerasTuner's project directory ``directory/project_name``;
    calling ``search`` again with the same arguments continues after the finished trials
    (a larger ``max_trials`` adds trials). A directory written by a search with another
    space, objective, oracle, seed or fixed keywords is refused.

    Example:

    ```python
    result = kerasft.search("saved_models/mnist_cnn.keras", (x, y),
                            space={"lr": ("float", 1e-3, 3e-2, "log"), "unfreeze": [1, 2, "all"]},
                            max_trials=8, epochs=5)
    print(result.table())
    result.best.evaluate((x_test, y_test))
    ```

    Args:
        model: as for :func:`kerasft.finetune` (a path is loaded once).
        data: as for :func:`kerasft.finetune`.
        space: ``{finetune keyword: specification}``: a list of values to choose from,
            ``("float", low, high)``, ``("float", low, high, "log")``, ``("int", low, high)``
            or ``("int", low, high, "log")``.
        max_trials: trials to run at most (in all, counting earlier searches on the
            directory). Defaults to `8`.
        objective: the logged quantity to optimise; whether it is minimised comes from
            :func:`kerasft.monitor_mode`. Defaults to `"val_loss"`.
        oracle: ``"random"``, ``"bayesian"`` (a Gaussian process after
            ``min(3 per keyword, max_trials // 2)`` random trials) or ``"hyperband"``
            (trials get budgets of ``epochs``, up to the ``epochs`` keyword, and the
            promising ones are run again with more, bracket after bracket until
            ``max_trials``; each trial trains from the pretrained model). Defaults to
            `"random"`.
        directory: parent of the project directory; ``None`` uses a temporary directory,
            removed at the end. Defaults to `None`.
        project_name: the project directory's name. Defaults to `"kerasft_search"`.
        overwrite: start afresh, deleting the trials of an earlier search. Defaults to `False`.
        seed: seed of the oracle and of every trial. Defaults to `0`.
        verbose: 0 silent, 1 a line per trial, 2 also ``finetune``'s lines per epoch.
            Defaults to `1`.
        **finetune_keywords: fixed keywords of every trial (``epochs=5``, ``recipe=``,
            configs such as ``lora=kerasft.LoraConfig(rank=4)``...). The space and the
            results name every option by its flat keyword (``lora_rank``, ``l2sp``...).

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError / TypeError: a bad argument, space or keyword (before any trial), or
            what ``finetune`` raised in a trial (the search stops; finished trials stay
            in the directory).
        RuntimeError: no trial completed.
    """
    start = time.perf_counter()
    _check_arguments(max_trials, objective, oracle, project_name, overwrite, seed, verbose)
    fixed = _check_fixed(configs.flatten(finetune_keywords), objective)
    params = parse_space(space, fixed)
    if oracle == "hyperband" and "epochs" in space:
        raise ValueError(
            "Argument `space` has 'epochs', but oracle='hyperband' sets each trial's epochs "
            "from its budget (up to the `epochs` keyword). Remove 'epochs' from `space`."
        )
    _warn_incomparable(params, objective)
    direction = monitor_mode(objective, fixed.get("metrics") or ())
    store = fixed.pop("feature_store", None)
    store = FeatureStore() if store is None else store
    model = _load_once(model, fixed)
    temporary = directory is None
    root = make_scratch_directory("search") if temporary else os.fspath(directory)
    try:
        fingerprint = _fingerprint(model, params, objective, oracle, seed, fixed)
        if overwrite:
            _check_replaceable(os.path.join(root, project_name))
        else:
            _check_fingerprint(os.path.join(root, project_name), fingerprint)
        trials = _Trials(
            model,
            data,
            params,
            fixed,
            objective,
            direction,
            store,
            seed,
            verbose,
            epochs_budget=oracle == "hyperband",
        )
        tuner = _make_tuner(
            trials,
            params,
            oracle,
            objective,
            direction,
            max_trials,
            seed,
            root,
            project_name,
            overwrite,
            fixed.get("epochs", Options().recipe.epochs),
        )
        _write_fingerprint(tuner.project_dir, fingerprint)
        trials.earlier = {t.trial_id for t in tuner.oracle.trials.values() if t.status != "RUNNING"}
        trials.log(
            f"kerasft search: {len(trials.earlier)} trials finished earlier in {tuner.project_dir}"
            if trials.earlier
            else None
        )
        try:
            with _quiet_retracing():
                tuner.search(verbose=0)
        except keras_tuner.errors.FatalError as e:
            if e.__cause__ is not None:
                raise e.__cause__ from None
            raise
        result = trials.result(
            tuner.oracle, None if temporary else os.path.join(root, project_name)
        )
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    trials.log(
        f"kerasft search: best {objective} {result.best.best_score:.4g} in trial {result.best_trial} "
        f"{_short(result.best_params)}; {len(result.trials)} trials, {result.seconds:.1f} s; {store}"
    )
    return result


@contextlib.contextmanager
def _quiet_retracing():
    """Drop TensorFlow's warning that functions are traced again: every trial builds new ones."""
    logger = logging.getLogger("tensorflow")

    def keep(record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _check_arguments(max_trials, objective, oracle, project_name, overwrite, seed, verbose) -> None:
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(
            f"Argument `max_trials` must be an integer >= 1. Received: max_trials={max_trials!r}"
        )
    if not isinstance(objective, str) or not objective:
        raise ValueError(
            f"Argument `objective` must be the name of a logged quantity such as 'val_loss' or "
            f"'val_accuracy'. Received: objective={objective!r}"
        )
    if oracle not in ORACLES:
        raise ValueError(
            f"Argument `oracle` must be one of {list(ORACLES)}. Received: oracle={oracle!r}"
        )
    if (
        not isinstance(project_name, str)
        or project_name in ("", ".", "..")
        or any(sep in project_name for sep in (os.sep, os.altsep) if sep)
    ):
        # "." or ".." would make the project the directory itself or its parent, which
        # KerasTuner deletes with overwrite=True.
        raise ValueError(
            "Argument `project_name` must be the name of a directory inside `directory`: not '.', '..', "
            f"nor a path. Received: project_name={project_name!r}"
        )
    if not isinstance(overwrite, bool):
        raise ValueError(
            f"Argument `overwrite` must be True or False. Received: overwrite={overwrite!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Argument `seed` must be an integer >= 0. Received: seed={seed!r}")
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"Argument `verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")


def _check_fixed(keywords: dict[str, Any], objective: str) -> dict[str, Any]:
    """The fixed ``finetune`` keywords, checked."""
    valid = sorted(Options().keywords())
    for key in keywords:
        if key not in valid:
            raise TypeError(
                f"search() got an unexpected keyword argument {key!r}. It takes the finetune "
                f"keywords: {valid}"
            )
    refused = {
        "copy": keywords.get("copy", True) is not True,
        "checkpoint_dir": "checkpoint_dir" in keywords,
        "monitor": keywords.get("monitor", objective) != objective,
    }
    for key in (k for k, bad in refused.items() if bad):
        raise ValueError(
            f"Argument `{key}={keywords[key]!r}` cannot be given to search(): {_NOT_SEARCHED[key]}."
        )
    if keywords.get("feature_store") is not None and not isinstance(
        keywords["feature_store"], FeatureStore
    ):
        raise TypeError(
            "Argument `feature_store` must be a kerasft.speed.FeatureStore or None. "
            f"Received: feature_store={keywords['feature_store']!r}"
        )
    fixed = {k: v for k, v in keywords.items() if k != "monitor"}
    try:
        Options.from_keywords(**fixed)
    except (ValueError, TypeError) as e:
        raise type(e)(f"search(): {e}") from None
    return fixed


def _warn_incomparable(params: list[_Param], objective: str) -> None:
    changed = [p.name for p in params if p.name in _LOSS_CHANGING]
    name = objective.removeprefix("val_")
    if changed and (name == "loss" or name.endswith("_loss")):
        warnings.warn(
            f"kerasft.search: the space changes {changed}, so the trials compute {objective!r} with different "
            f"losses and their values are not fully comparable. HINT: objective='val_accuracy'.",
            UserWarning,
            stacklevel=3,
        )


def _load_once(model: Any, fixed: Mapping[str, Any]) -> keras.Model:
    """The model every trial copies: loaded or converted once, not once per trial."""
    safe_mode = fixed.get("safe_mode", True)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, safe_mode=safe_mode, verbose=0)
    if convert.is_tf_keras(model):
        return convert.to_keras3(model, safe_mode=safe_mode, verbose=0).model
    return model


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return f"<{type(value).__name__}>"


def _fingerprint(model, params, objective, oracle, seed, fixed) -> dict[str, Any]:
    return {
        "model": model.name,
        "params": int(model.count_params()),
        "objective": objective,
        "oracle": oracle,
        "seed": seed,
        "space": {p.name: p.describe() for p in params},
        "fixed": {k: _jsonable(v) for k, v in sorted(fixed.items())},
    }


def _check_fingerprint(project_dir: str, fingerprint: dict[str, Any]) -> None:
    """Refuse a project directory written by another search."""
    if not os.path.isdir(project_dir) or not os.listdir(project_dir):
        return
    try:
        with open(os.path.join(project_dir, _FINGERPRINT), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    if saved != fingerprint:
        differ = sorted(
            k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k)
        )
        raise ValueError(
            f"The project directory {project_dir!r} holds another search (it differs in {differ}), so its "
            "trials cannot be continued. HINT: pass overwrite=True to start afresh, or another "
            "`project_name` / `directory`."
        )


def _check_replaceable(project_dir: str) -> None:
    """Refuse ``overwrite=True`` on a directory that is not a kerasft search project.

    KerasTuner deletes the project directory it is given to overwrite, whatever it holds.
    """
    if not os.path.lexists(project_dir):
        return
    if (
        os.path.isdir(project_dir)
        and not os.path.islink(project_dir)
        and (not os.listdir(project_dir) or os.path.isfile(os.path.join(project_dir, _FINGERPRINT)))
    ):
        return
    raise ValueError(
        f"The project directory {project_dir!r} exists and is not a kerasft search (it has no "
        f"{_FINGERPRINT}); overwrite=True deletes only an earlier search's project. HINT: choose "
        "another `project_name` or `directory`."
    )


def _write_fingerprint(project_dir: str, fingerprint: dict[str, Any]) -> None:
    with (
        atomic_file(os.path.join(project_dir, _FINGERPRINT)) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        json.dump(fingerprint, f, indent=1)


def baseline_values(params: list[_Param], fixed: Mapping[str, Any]) -> dict[str, Any] | None:
    """The oracle's values for ``finetune``'s defaults, or ``None`` when the space lacks one.

    ``finetune_lr=None`` (the default) stands for a tenth of the run's ``lr``.
    """
    defaults = Options().keywords()
    values: dict[str, Any] = {}
    for param in params:
        default = defaults[param.name]
        if param.name == "finetune_lr" and default is None:
            lr = next(
                (p.decode(values[p.name]) for p in params if p.name == "lr" and p.name in values),
                fixed.get("lr", defaults["lr"]),
            )
            default = lr / 10 if isinstance(lr, (int, float)) else None
        value = None if default is None else param.encode(default)
        if value is None:
            return None
        values[param.name] = value
    return values


class _Baseline:
    """An oracle whose first trial is ``baseline`` (finetune's defaults), when given."""

    baseline: dict[str, Any] | None = None

    def populate_space(self, trial_id):
        if self.baseline is not None and not self.trials:
            return {"status": "RUNNING", "values": dict(self.baseline)}
        return super().populate_space(trial_id)


class _RandomOracle(_Baseline, keras_tuner.oracles.RandomSearchOracle):
    pass


class _BayesianOracle(_Baseline, keras_tuner.oracles.BayesianOptimizationOracle):
    pass


def _make_tuner(
    trials,
    params,
    oracle,
    objective,
    direction,
    max_trials,
    seed,
    root,
    project_name,
    overwrite,
    epochs,
) -> BaseTuner:
    hp = keras_tuner.HyperParameters()
    for param in params:
        param.add_to(hp)
    common = dict(
        objective=keras_tuner.Objective(objective, direction),
        hyperparameters=hp,
        seed=seed + 1,  # KerasTuner draws a random seed for 0
        max_consecutive_failed_trials=max_trials,
    )  # combinations finetune refuses fail fast
    if oracle == "random":
        made = _RandomOracle(max_trials=max_trials, **common)
    elif oracle == "bayesian":
        initial = max(1, min(3 * len(params), max_trials // 2))
        made = _BayesianOracle(max_trials=max_trials, num_initial_points=initial, **common)
    else:
        # Brackets repeat (no limit of iterations) until `max_trials`.
        made = keras_tuner.oracles.HyperbandOracle(
            max_epochs=max(1, epochs), factor=3, hyperband_iterations=None, **common
        )
        made.max_trials = max_trials
    if oracle != "hyperband":  # Hyperband's brackets draw every configuration
        made.baseline = baseline_values(params, trials.fixed)
    with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
        return _Tuner(
            trials, oracle=made, directory=root, project_name=project_name, overwrite=overwrite
        )


class _Tuner(BaseTuner):
    """KerasTuner's worker: runs a trial with :class:`_Trials`, keeps no model files."""

    def __init__(self, runner: _Trials, **kwargs: Any):
        super().__init__(hypermodel=None, **kwargs)
        self.runner = runner

    def run_trial(self, trial, *args, **kwargs):
        return self.runner.run(trial)

    def save_model(self, trial_id, model, step=0):
        pass

    def load_model(self, trial):
        raise NotImplementedError("kerasft.search keeps the best FinetuneResult, not trial models.")


class _Trials:
    """Runs trials: keywords from drawn values, one ``finetune`` call, the score reported."""

    def __init__(
        self, model, data, params, fixed, objective, direction, store, seed, verbose, epochs_budget
    ):
        self.model, self.data, self.params, self.fixed = (
            model,
            data,
            {p.name: p for p in params},
            fixed,
        )
        self.objective, self.direction, self.store, self.seed = objective, direction, store, seed
        self.verbose, self.epochs_budget = verbose, epochs_budget
        self.best: tuple[str, float, FinetuneResult] | None = None
        self.messages: dict[str, str] = {}
        self.earlier: set[str] = set()

    def log(self, message: str | None) -> None:
        if self.verbose and message:
            print(message, flush=True)

    def params_of(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The ``finetune`` keywords a trial's drawn values stand for."""
        out = {
            name: param.decode(values[name])
            for name, param in self.params.items()
            if name in values
        }
        if self.epochs_budget and "tuner/epochs" in values:
            out["epochs"] = int(values["tuner/epochs"])
        return out

    def keywords(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "seed": self.seed,
            **self.fixed,
            **params,
            "monitor": self.objective,
            "feature_store": self.store,
            "verbose": 2 if self.verbose == 2 else 0,
        }

    def run(self, trial: Any) -> dict[str, float]:
        params = self.params_of(trial.hyperparameters.values)
        keywords = self.keywords(params)
        try:
            Options.from_keywords(**keywords)
        except (ValueError, TypeError) as e:  # a combination of drawn values finetune refuses
            self.messages[trial.trial_id] = str(e)
            self.log(f"kerasft search: trial {trial.trial_id} {_short(params)}: not run: {e}")
            raise keras_tuner.errors.FailedTrialError(str(e)) from None
        start = time.perf_counter()
        try:
            result = _finetune(self.model, self.data, keywords)
        except Exception as e:
            raise keras_tuner.errors.FatalError(f"trial {trial.trial_id} failed: {e}") from e
        seconds = time.perf_counter() - start
        score = self._score(result)
        if math.isfinite(score) and (
            self.best is None
            or (score < self.best[1] if self.direction == "min" else score > self.best[1])
        ):
            self.best = (trial.trial_id, score, result)
        features = sum(p.feature_seconds for p in result.speed.phases) if result.speed else 0.0
        fit = sum(p.seconds for p in result.phases)
        sources = sorted(
            {p.feature_source for p in (result.speed.phases if result.speed else []) if p.cached}
        )
        self.log(
            f"kerasft search: trial {trial.trial_id} {_short(params)}: {self.objective} {score:.4g} in {seconds:.1f} s "
            f"(features {features:.2f} s: {'; '.join(sources) or 'none cached'}; fit {fit:.1f} s)"
        )
        return dict(zip((self.objective, *_METRICS), (score, seconds, features, fit)))

    def _score(self, result: FinetuneResult) -> float:
        if result.best_score is not None:
            return float(result.best_score)
        logged = sorted({k for p in result.phases for k in p.history})
        if self.objective in logged:  # never finite: the loss diverged
            return float("nan")
        error = ValueError(
            f"Argument `objective={self.objective!r}` is not a quantity the trials log. "
            f"They log: {logged}"
        )
        raise keras_tuner.errors.FatalError(str(error)) from error

    def row(self, trial: Any) -> TrialRow:
        metrics = trial.metrics
        seconds, features, fit = (
            metrics.get_last_value(m) if metrics.exists(m) else None for m in _METRICS
        )
        message = self.messages.get(trial.trial_id)
        if message is None and trial.message:  # KerasTuner keeps the traceback
            message = trial.message.strip().splitlines()[-1].split(": ", 1)[-1]
        score = trial.score if trial.status == "COMPLETED" else None
        return TrialRow(
            trial.trial_id,
            self.params_of(trial.hyperparameters.values),
            None if score is None else float(score),
            seconds,
            trial.status,
            features,
            fit,
            trial.trial_id in self.earlier,
            message,
        )

    def result(self, oracle: Any, directory: str | None) -> SearchResult:
        """The search's result; the best configuration is run again if it ran in an earlier search."""
        ordered = sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))
        rows = [self.row(t) for t in ordered]
        done = [
            t
            for t in ordered
            if t.status == "COMPLETED" and t.score is not None and math.isfinite(t.score)
        ]
        if not done:
            failures = [f"trial {r.trial_id} {r.params}: {r.message}" for r in rows]
            raise RuntimeError(f"No trial of the search completed. {failures[:5]}")
        best_trial = oracle.get_best_trials(1)[0]
        params = self.params_of(best_trial.hyperparameters.values)
        if self.best is not None and self.best[0] == best_trial.trial_id:
            best = self.best[2]
        else:
            self.log(
                f"kerasft search: running the best trial {best_trial.trial_id} again {_short(params)} "
                "(it finished in an earlier search)"
            )
            best = _finetune(self.model, self.data, self.keywords(params))
        return SearchResult(
            best=best,
            best_params=params,
            best_trial=best_trial.trial_id,
            trials=rows,
            objective=self.objective,
            direction=self.direction,
            directory=directory,
            store=self.store,
        )


def _finetune(model: keras.Model, data: Any, keywords: dict[str, Any]) -> FinetuneResult:
    from kerasft.finetuning import finetune

    flat, groups = configs.sort_keywords(
        keywords, caller="search"
    )  # the space names options by flat keyword
    return finetune(model, data, **flat, **groups)
