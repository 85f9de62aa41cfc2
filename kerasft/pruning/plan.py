"""Fit a pruning schedule to a training run of known length, in one call.

`pruning_plan` validates its options, fits a `PolynomialDecay` ramp (or a
`ConstantSparsity` for m-by-n sparsity) to ``total_steps``, wraps the model with
`prune_low_magnitude` and returns it with the callbacks to train it, as a `PruningPlan`.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, NamedTuple

import keras

from kerasft.pruning.callbacks import PruningSummaries, UpdatePruningStep
from kerasft.pruning.prune import (
    LayerSelection,
    is_tf_keras,
    prune_low_magnitude,
    strip_pruning,
    tfmot_module,
)
from kerasft.pruning.schedules import ConstantSparsity, PolynomialDecay
from kerasft.pruning.wrapper import check_pruning_args

__all__ = ["PruningPlan", "pruning_plan", "fit_schedule", "SCHEDULE_DEFAULTS"]

# Defaults of `pruning_plan`'s schedule options (`finetune(prune=...)` passes them on).
SCHEDULE_DEFAULTS = dict(
    target_sparsity=None,
    begin_fraction=0.0,
    end_fraction=0.7,
    frequency=None,
    initial_sparsity=0.0,
    power=3,
    block_size=(1, 1),
    block_pooling_type="AVG",
    sparsity_m_by_n=None,
)


class PruningPlan(NamedTuple):
    """What `pruning_plan` returns: train `model` with `callbacks`, then `strip()`."""

    model: keras.Model
    callbacks: list
    schedule: Any

    def strip(self):
        """`strip_pruning(self.model)`: the plain model with zeros in its kernels."""
        return strip_pruning(self.model)


def pruning_plan(
    model,
    *,
    total_steps: int,
    target_sparsity: float | None = None,
    begin_fraction: float = 0.0,
    end_fraction: float = 0.7,
    frequency: int | None = None,
    initial_sparsity: float = 0.0,
    power: float = 3,
    block_size: tuple[int, int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: tuple[int, int] | None = None,
    layers: LayerSelection = None,
    log_dir: str | os.PathLike | None = None,
) -> PruningPlan:
    """Prepare a model to be pruned during a training run of `total_steps` steps.

    Fits a `PolynomialDecay` schedule to the run: sparsity rises from
    `initial_sparsity` at ``begin_fraction * total_steps`` to `target_sparsity` at
    ``end_fraction * total_steps`` (rounded down to whole multiples of `frequency`, so
    that the last mask update reaches the target), then the model trains on at that
    sparsity to recover. Masks are updated about 20 times (every 100 steps at most).

    Example:

    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    >>> plan = pruning_plan(model, total_steps=200, target_sparsity=0.8)
    >>> plan.schedule.get_config()["end_step"], plan.schedule.get_config()["frequency"]
    (140, 7)
    >>> # plan.model.compile(...); plan.model.fit(..., callbacks=plan.callbacks)
    >>> stripped = plan.strip()

    Args:
        model: the model to prune (Keras 3, or tf_keras which gets tfmot's wrappers).
        total_steps: number of optimizer steps the training run will take, for example
            ``epochs * ceil(num_examples / batch_size)``.
        target_sparsity: final fraction of zeros in each pruned weight, in ``[0, 1)``.
            Defaults to `None`: 0.8, or ``m / n`` with `sparsity_m_by_n`.
        begin_fraction: fraction of the run after which pruning begins. Defaults to `0.0`.
        end_fraction: fraction of the run at which `target_sparsity` is reached.
            Defaults to `0.7`.
        frequency: steps between mask updates. Defaults to `None` (about 20 updates).
        initial_sparsity: sparsity of the first update. Defaults to `0.0`.
        power: exponent of the polynomial ramp. Defaults to `3`.
        block_size: see `prune_low_magnitude`. Defaults to `(1, 1)`.
        block_pooling_type: see `prune_low_magnitude`. Defaults to `"AVG"`.
        sparsity_m_by_n: see `prune_low_magnitude`; the masks are then set at the first
            step and the ramp is not used. Defaults to `None`.
        layers: see `prune_low_magnitude`. Defaults to `None` (all prunable layers).
        log_dir: if given, a `PruningSummaries` callback logs there. Defaults to `None`.

    Returns:
        A `PruningPlan` ``(model, callbacks, schedule)``: the pruned model (compile it
        before `fit`, its variables are new), the callbacks to pass to `fit`, and the
        schedule. ``plan.strip()`` returns the stripped model after training.

    Raises:
        ValueError: for an invalid argument (see also `prune_low_magnitude`).
    """
    schedule, block_size, sparsity_m_by_n = fit_schedule(
        total_steps=total_steps,
        target_sparsity=target_sparsity,
        begin_fraction=begin_fraction,
        end_fraction=end_fraction,
        frequency=frequency,
        initial_sparsity=initial_sparsity,
        power=power,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
    )
    pruned = prune_low_magnitude(
        model,
        pruning_schedule=schedule,
        block_size=block_size,
        block_pooling_type=block_pooling_type,
        sparsity_m_by_n=sparsity_m_by_n,
        layers=layers,
    )
    if is_tf_keras(model):
        tfmot = tfmot_module()
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        if log_dir is not None:
            callbacks.append(tfmot.sparsity.keras.PruningSummaries(log_dir=str(log_dir)))
    else:
        callbacks = [UpdatePruningStep()]
        if log_dir is not None:
            callbacks.append(PruningSummaries(log_dir=log_dir))
    return PruningPlan(model=pruned, callbacks=callbacks, schedule=schedule)


def fit_schedule(
    *,
    total_steps,
    target_sparsity,
    begin_fraction,
    end_fraction,
    frequency,
    initial_sparsity,
    power,
    block_size,
    block_pooling_type,
    sparsity_m_by_n,
):
    """Validate `pruning_plan`'s arguments and fit its schedule to `total_steps`.

    Returns:
        ``(schedule, block_size, sparsity_m_by_n)``, the last two normalised to tuples.

    Raises:
        ValueError: for an invalid argument; the message names it.
    """
    _check_run(total_steps, begin_fraction, end_fraction, frequency)
    block_size, sparsity_m_by_n = check_pruning_args(
        block_size, block_pooling_type, sparsity_m_by_n
    )
    target_sparsity = _check_target(target_sparsity, power, sparsity_m_by_n)
    begin_step, end_step, frequency = _fit_steps(
        total_steps, begin_fraction, end_fraction, frequency
    )
    if sparsity_m_by_n is not None:
        schedule = ConstantSparsity(target_sparsity, begin_step, end_step, frequency)
    else:
        schedule = PolynomialDecay(
            initial_sparsity, target_sparsity, begin_step, end_step, power, frequency
        )
    return schedule, block_size, sparsity_m_by_n


def _check_run(total_steps, begin_fraction, end_fraction, frequency) -> None:
    """Check the length of the run, the part of it that prunes, and the update frequency."""
    if (
        not isinstance(total_steps, numbers.Integral)
        or isinstance(total_steps, bool)
        or total_steps < 1
    ):
        raise ValueError(
            f"Argument `total_steps` must be a positive int. Received: total_steps={total_steps!r}"
        )
    if not (
        isinstance(begin_fraction, numbers.Real)
        and isinstance(end_fraction, numbers.Real)
        and 0.0 <= begin_fraction < end_fraction <= 1.0
    ):
        raise ValueError(
            "Arguments `begin_fraction` and `end_fraction` must satisfy "
            "0 <= begin_fraction < end_fraction <= 1. Received: "
            f"begin_fraction={begin_fraction!r}, end_fraction={end_fraction!r}"
        )
    if frequency is not None and (
        not isinstance(frequency, numbers.Integral) or isinstance(frequency, bool) or frequency < 1
    ):
        raise ValueError(
            "Argument `frequency` must be None or a positive int. "
            f"Received: frequency={frequency!r}"
        )


def _check_target(target_sparsity, power, sparsity_m_by_n) -> float:
    """The sparsity to reach: ``target_sparsity``, m / n for m-by-n sparsity, else 0.8."""
    if target_sparsity is not None and (
        not isinstance(target_sparsity, numbers.Real)
        or isinstance(target_sparsity, bool)
        or not 0.0 <= target_sparsity < 1.0
    ):
        raise ValueError(
            "Argument `target_sparsity` must be None or a float in [0, 1). "
            f"Received: target_sparsity={target_sparsity!r}"
        )
    if not isinstance(power, numbers.Real) or isinstance(power, bool) or power <= 0:
        raise ValueError(f"Argument `power` must be a number > 0. Received: power={power!r}")
    if sparsity_m_by_n is None:
        return 0.8 if target_sparsity is None else target_sparsity
    implied = sparsity_m_by_n[0] / sparsity_m_by_n[1]
    if target_sparsity is not None and abs(target_sparsity - implied) > 1e-9:
        raise ValueError(
            f"Argument `target_sparsity` must be None or m / n = {implied} with "
            f"sparsity_m_by_n={sparsity_m_by_n}. Received: target_sparsity={target_sparsity!r}"
        )
    return implied


def _fit_steps(
    total_steps: int, begin_fraction: float, end_fraction: float, frequency: int | None
) -> tuple[int, int, int]:
    """``(begin_step, end_step, frequency)``: the end rounded down to whole updates."""
    begin_step = int(begin_fraction * total_steps + 0.5)
    span = max(1, int(end_fraction * total_steps + 0.5) - begin_step)
    if frequency is None:
        frequency = min(100, max(1, round(span / 20)))
    frequency = min(frequency, span)
    end_step = begin_step + (span // frequency) * frequency
    return begin_step, end_step, frequency
