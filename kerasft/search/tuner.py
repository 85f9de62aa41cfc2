"""``kerasft.search``: the search itself, on KerasTuner's tuner and project directory.

:func:`search` checks its arguments and the space, loads the model once, builds the
oracle (:mod:`kerasft.search.oracles`) and the trials (:mod:`kerasft.search.trials`),
and runs them in KerasTuner's project directory, which holds a fingerprint of the
search so that only the same search continues there.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import keras
import keras_tuner
from keras_tuner.engine.base_tuner import BaseTuner

from kerasft import configs, convert
from kerasft._fileio import atomic_file, make_scratch_directory
from kerasft.callbacks import monitor_mode
from kerasft.engine.loading import load_model
from kerasft.engine.options import Options
from kerasft.search.oracles import ORACLES, make_oracle
from kerasft.search.result import SearchResult, format_params
from kerasft.search.space import NOT_SEARCHED, Param, parse_space, warn_incomparable
from kerasft.search.trials import Trials
from kerasft.speed.store import FeatureStore

__all__ = ["search"]

_FINGERPRINT = "kerasft_search.json"
# Compiled networks the search's own store keeps: one per phase of each distinct network
# (an `unfreeze` value, a recipe), so that trials differing in rates, epochs or data
# order trace their training steps once in all.
COMPILED_MODELS = 8


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
    of a frozen bottom are computed once for the whole search, and a phase that trains
    the same network as an earlier trial's (same layers trainable, loss, metrics and
    optimizer settings; rates and epochs may differ) trains in that trial's compiled
    copy instead of tracing its steps again (``compiled_models=8``; see
    :mod:`kerasft.speed.compiled`). A ``feature_store`` given as a fixed keyword is used
    as it is.

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
    params = _parse_search_space(space, fixed, objective, oracle)
    direction = monitor_mode(objective, fixed.get("metrics") or ())
    store = fixed.pop("feature_store", None)
    store = FeatureStore(compiled_models=COMPILED_MODELS) if store is None else store
    model = _load_once(model, fixed)
    temporary = directory is None
    root = make_scratch_directory("search") if temporary else os.fspath(directory)
    try:
        fingerprint = _fingerprint(model, params, objective, oracle, seed, fixed)
        _check_project(os.path.join(root, project_name), fingerprint, overwrite)
        trials = Trials(
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
        made = make_oracle(
            params,
            oracle,
            objective,
            direction,
            max_trials=max_trials,
            seed=seed,
            epochs=fixed.get("epochs", Options().recipe.epochs),
            fixed=fixed,
        )
        tuner = _make_tuner(trials, made, root, project_name, overwrite)
        _write_fingerprint(tuner.project_dir, fingerprint)
        _run_trials(tuner, trials)
        result = trials.result(
            tuner.oracle, None if temporary else os.path.join(root, project_name)
        )
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    trials.log(
        f"kerasft search: best {objective} {result.best.best_score:.4g} in trial "
        f"{result.best_trial} {format_params(result.best_params)}; {len(result.trials)} "
        f"trials, {result.seconds:.1f} s; {store}"
    )
    return result


def _parse_search_space(
    space: Mapping[str, Any], fixed: dict[str, Any], objective: str, oracle: str
) -> list[Param]:
    """The parameters of ``space``, checked against the fixed keywords and the oracle."""
    params = parse_space(space, fixed)
    if oracle == "hyperband" and "epochs" in space:
        raise ValueError(
            "Argument `space` has 'epochs', but oracle='hyperband' sets each trial's epochs "
            "from its budget (up to the `epochs` keyword). Remove 'epochs' from `space`."
        )
    warn_incomparable(params, objective)
    return params


def _check_project(project_dir: str, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Refuse a project directory this search may neither replace nor continue."""
    if overwrite:
        _check_replaceable(project_dir)
    else:
        _check_fingerprint(project_dir, fingerprint)


def _run_trials(tuner: BaseTuner, trials: Trials) -> None:
    """Run the trials still to run; a trial's error is raised as itself."""
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
            "Argument `project_name` must be the name of a directory inside `directory`: "
            f"not '.', '..', nor a path. Received: project_name={project_name!r}"
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
            f"Argument `{key}={keywords[key]!r}` cannot be given to search(): {NOT_SEARCHED[key]}."
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
            f"The project directory {project_dir!r} holds another search (it differs in "
            f"{differ}), so its trials cannot be continued. HINT: pass overwrite=True to start "
            "afresh, or another `project_name` / `directory`."
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


def _make_tuner(
    trials: Trials, oracle: keras_tuner.Oracle, root: str, project_name: str, overwrite: bool
) -> BaseTuner:
    with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
        return _Tuner(
            trials, oracle=oracle, directory=root, project_name=project_name, overwrite=overwrite
        )


class _Tuner(BaseTuner):
    """KerasTuner's worker: runs a trial with :class:`Trials`, keeps no model files."""

    def __init__(self, runner: Trials, **kwargs: Any):
        super().__init__(hypermodel=None, **kwargs)
        self.runner = runner

    def run_trial(self, trial, *args, **kwargs):
        return self.runner.run(trial)

    def save_model(self, trial_id, model, step=0):
        pass

    def load_model(self, trial):
        raise NotImplementedError("kerasft.search keeps the best FinetuneResult, not trial models.")
