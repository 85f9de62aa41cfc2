"""The trials of a search: each one ``finetune`` call on drawn keywords, and its score.

:class:`Trials` is what KerasTuner's worker runs: it turns a trial's drawn values into
``finetune`` keywords, fine-tunes a fresh copy of the model with them, reports the
objective and the seconds spent, keeps the best result, and reads the finished trials
back as :class:`~kerasft.search.result.TrialRow` objects and a
:class:`~kerasft.search.result.SearchResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import keras
import keras_tuner

from kerasft import configs
from kerasft.engine.options import Options
from kerasft.engine.result import FinetuneResult
from kerasft.search.result import SearchResult, TrialRow, format_params
from kerasft.speed.compiled import REUSED

__all__ = ["Trials"]

_METRICS = ("search/seconds", "search/feature_seconds", "search/fit_seconds")


class Trials:
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
            self.log(
                f"kerasft search: trial {trial.trial_id} {format_params(params)}: not run: {e}"
            )
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
        speeds = result.speed.phases if result.speed else []
        sources = sorted({p.feature_source for p in speeds if p.cached})
        reused = sum(p.compiled == REUSED for p in speeds)
        self.log(
            f"kerasft search: trial {trial.trial_id} {format_params(params)}: "
            f"{self.objective} {score:.4g} in {seconds:.1f} s "
            f"(features {features:.2f} s: {'; '.join(sources) or 'none cached'}; fit {fit:.1f} s; "
            f"{reused} of {len(speeds)} phases reused compiled steps)"
        )
        return dict(zip((self.objective, *_METRICS), (score, seconds, features, fit)))

    def _score(self, result: FinetuneResult) -> float:
        # A run that chose on held-out data and then trained again on all labels: the
        # choice's score is the trial's (the refit holds nothing out to score on).
        chosen = result.selection if result.selection is not None else result
        if chosen.best_score is not None:
            return float(chosen.best_score)
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
        """The search's result; the best configuration runs again if it ran in an earlier search."""
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
                f"kerasft search: running the best trial {best_trial.trial_id} again "
                f"{format_params(params)} (it finished in an earlier search)"
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
