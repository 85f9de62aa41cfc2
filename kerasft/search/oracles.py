"""KerasTuner's oracles, which draw each trial's values, with ``finetune``'s defaults first.

:func:`make_oracle` builds the random, Bayesian or Hyperband oracle over a space; the
random and Bayesian ones run ``finetune``'s defaults as their first trial when the space
holds them, so a search ends no worse than a plain ``finetune`` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras_tuner

from kerasft.search.space import Param, baseline_values

__all__ = ["ORACLES", "make_oracle"]

ORACLES = ("random", "bayesian", "hyperband")


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


def make_oracle(
    params: list[Param],
    oracle: str,
    objective: str,
    direction: str,
    *,
    max_trials: int,
    seed: int,
    epochs: int,
    fixed: Mapping[str, Any],
) -> keras_tuner.Oracle:
    """The ``oracle`` (one of :data:`ORACLES`) drawing values of ``params``.

    Args:
        params: the searched keywords (:func:`kerasft.search.space.parse_space`).
        oracle: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        objective: the quantity the trials report.
        direction: ``"min"`` or ``"max"``.
        max_trials: trials to run at most (and failed trials in a row to accept).
        seed: the search's seed (the oracle gets ``seed + 1``).
        epochs: the most epochs a Hyperband trial gets.
        fixed: the fixed ``finetune`` keywords, for the first trial at the defaults.

    Returns:
        A KerasTuner oracle.
    """
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
        made.baseline = baseline_values(params, fixed)
    return made
