"""Pruning schedules: at which training steps to update the masks, and to which sparsity.

`ConstantSparsity` and `PolynomialDecay` replicate tfmot's schedules of the same names
(`tensorflow_model_optimization.sparsity.keras` 0.8.1, `pruning_schedule.py`) op for op,
so the same step gives the same decision in both libraries; `from_tfmot_schedule` and
`to_tfmot_schedule` translate between them, and `check_schedule` accepts any callable
that follows the same contract. Both classes are registered with Keras, so a model saved
mid-pruning loads again.
"""

from __future__ import annotations

import abc
import numbers

import keras
import tensorflow as tf

__all__ = [
    "PruningSchedule",
    "ConstantSparsity",
    "PolynomialDecay",
    "from_tfmot_schedule",
    "to_tfmot_schedule",
    "check_schedule",
]

_PACKAGE = "kerasft"  # registered names are "kerasft>ConstantSparsity"...: never change them


class PruningSchedule(abc.ABC):
    """Decides at which steps to prune and to which sparsity.

    A schedule is called with the current pruning step (an int64 scalar tensor) and
    returns ``(should_prune, sparsity)``: a boolean scalar tensor and a float32 scalar
    tensor in ``[0, 1)``. tfmot's `PruningSchedule` objects follow the same contract and
    are accepted wherever a schedule is. Subclasses used in saved models must implement
    `get_config()` and be registered with `keras.saving.register_keras_serializable()`.
    """

    @abc.abstractmethod
    def __call__(self, step):
        """Return ``(should_prune, sparsity)`` for `step`."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """Return the constructor arguments as a JSON-serializable dict."""

    @classmethod
    def from_config(cls, config: dict) -> PruningSchedule:
        return cls(**config)

    @staticmethod
    def _should_prune_in_step(step, begin_step, end_step, frequency):
        # Same ops as tfmot, so that a step gives the same boolean in both libraries.
        is_in_pruning_range = tf.math.logical_and(
            tf.math.greater_equal(step, begin_step),
            tf.math.logical_or(tf.math.less_equal(step, end_step), tf.math.less(end_step, 0)),
        )
        is_pruning_turn = tf.math.equal(
            tf.math.floormod(tf.math.subtract(step, begin_step), frequency), 0
        )
        return tf.math.logical_and(is_in_pruning_range, is_pruning_turn)


def _check_steps(begin_step, end_step, frequency, allow_forever: bool) -> None:
    if not isinstance(begin_step, numbers.Integral) or begin_step < 0:
        raise ValueError(
            f"Argument `begin_step` must be an int >= 0. Received: begin_step={begin_step!r}"
        )
    valid_end = "an int >= begin_step" + (", or -1 to prune forever" if allow_forever else "")
    if (
        not isinstance(end_step, numbers.Integral)
        or (end_step == -1 and not allow_forever)
        or (end_step != -1 and end_step < begin_step)
    ):
        raise ValueError(
            f"Argument `end_step` must be {valid_end}. Received: end_step={end_step!r} "
            f"with begin_step={begin_step}"
        )
    if not isinstance(frequency, numbers.Integral) or frequency <= 0:
        raise ValueError(
            f"Argument `frequency` must be an int > 0. Received: frequency={frequency!r}"
        )


def _check_sparsity(value, name: str) -> None:
    if not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"Argument `{name}` must be a float in [0, 1). Received: {name}={value!r}")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantSparsity(PruningSchedule):
    """Prune to a constant sparsity every `frequency` steps in ``[begin_step, end_step]``.

    Same arguments and results as `tfmot.sparsity.keras.ConstantSparsity`.

    Args:
        target_sparsity: fraction of weights set to zero, in ``[0, 1)``.
        begin_step: first step at which masks are updated.
        end_step: last step at which masks may be updated, or ``-1`` to keep updating
            until training ends. Defaults to `-1`.
        frequency: update the masks every `frequency` steps. Defaults to `100`.

    Example:

    >>> schedule = ConstantSparsity(0.5, begin_step=0, frequency=10)
    >>> [bool(schedule(tf.constant(s, tf.int64))[0]) for s in (9, 10)]
    [False, True]
    """

    def __init__(
        self, target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100
    ):
        _check_sparsity(target_sparsity, "target_sparsity")
        _check_steps(begin_step, end_step, frequency, allow_forever=True)
        self.target_sparsity = target_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step):
        return (
            self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency),
            tf.constant(self.target_sparsity, dtype=tf.float32),
        )

    def get_config(self) -> dict:
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolynomialDecay(PruningSchedule):
    """Raise sparsity from `initial_sparsity` to `final_sparsity` along a polynomial.

    ``sparsity(step) = final + (initial - final) * (1 - p) ** power`` with
    ``p = clip((step - begin_step) / (end_step - begin_step), 0, 1)``, applied every
    `frequency` steps in ``[begin_step, end_step]``: sparsity rises fast at first, then
    levels off (Zhu & Gupta, 2017). Same arguments and results as
    `tfmot.sparsity.keras.PolynomialDecay`.

    Args:
        initial_sparsity: sparsity at `begin_step`, in ``[0, 1)``.
        final_sparsity: sparsity reached at `end_step`, in ``[0, 1)``.
        begin_step: first step at which masks are updated.
        end_step: step at which `final_sparsity` is reached (pick it so that
            ``end_step - begin_step`` is a multiple of `frequency`, or the last update
            falls short of `final_sparsity`).
        power: exponent of the decay. Defaults to `3`.
        frequency: update the masks every `frequency` steps. Defaults to `100`.

    Example:

    >>> schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
    >>> round(float(schedule(tf.constant(100, tf.int64))[1]), 3)
    0.8
    """

    def __init__(
        self,
        initial_sparsity: float,
        final_sparsity: float,
        begin_step: int,
        end_step: int,
        power: float = 3,
        frequency: int = 100,
    ):
        _check_sparsity(initial_sparsity, "initial_sparsity")
        _check_sparsity(final_sparsity, "final_sparsity")
        _check_steps(begin_step, end_step, frequency, allow_forever=False)
        self.initial_sparsity = initial_sparsity
        self.final_sparsity = final_sparsity
        self.power = power
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def __call__(self, step):
        p = tf.math.minimum(
            1.0,
            tf.math.maximum(
                0.0,
                tf.math.divide(
                    tf.dtypes.cast(step - self.begin_step, tf.float32),
                    self.end_step - self.begin_step,
                ),
            ),
        )
        sparsity = tf.math.add(
            tf.math.multiply(
                self.initial_sparsity - self.final_sparsity, tf.math.pow(1 - p, self.power)
            ),
            self.final_sparsity,
        )
        return (
            self._should_prune_in_step(step, self.begin_step, self.end_step, self.frequency),
            sparsity,
        )

    def get_config(self) -> dict:
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


_TFMOT_SCHEDULES = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay}


def from_tfmot_schedule(schedule):
    """Translate tfmot's built-in schedules to the identical kerasft ones.

    Other objects are returned as they are. The translation lets a pruned Keras 3 model
    save and load without tfmot (whose configs nest ``class_name`` in a way Keras 3
    cannot read back).
    """
    cls = type(schedule)
    if cls.__module__.startswith("tensorflow_model_optimization") and (
        cls.__name__ in _TFMOT_SCHEDULES
    ):
        return _TFMOT_SCHEDULES[cls.__name__](**schedule.get_config()["config"])
    return schedule


def to_tfmot_schedule(schedule):
    """Translate kerasft's built-in schedules to the identical tfmot ones (for tf_keras models).

    Other objects are returned as they are. Imports tfmot, which switches `tf.keras` to
    Keras 2 for the process: call it only for a tf_keras model.
    """
    import tensorflow_model_optimization as tfmot

    if isinstance(schedule, ConstantSparsity):
        return tfmot.sparsity.keras.ConstantSparsity(**schedule.get_config())
    if isinstance(schedule, PolynomialDecay):
        return tfmot.sparsity.keras.PolynomialDecay(**schedule.get_config())
    return schedule


_SCHEDULE_HELP = (
    "a `ConstantSparsity` or `PolynomialDecay` (from kerasft or tfmot), or a callable "
    "`schedule(step) -> (should_prune, sparsity)` taking an int64 scalar tensor and "
    "returning a boolean and a float scalar"
)


def check_schedule(schedule) -> None:
    """Check that `schedule` can drive the masks: call it once, at step 0.

    Raises:
        ValueError: if it is not callable, fails at step 0, or does not return a pair
            ``(bool scalar, float scalar in [0, 1])``.
    """
    if not callable(schedule) or isinstance(schedule, type):
        raise ValueError(
            f"Argument `pruning_schedule` must be {_SCHEDULE_HELP}. "
            f"Received: pruning_schedule={schedule!r}"
        )
    try:
        result = schedule(tf.constant(0, tf.int64))
    except Exception as e:
        raise ValueError(
            f"Argument `pruning_schedule` failed when called at step 0 "
            f"({type(e).__name__}: {e}). It must be {_SCHEDULE_HELP}. "
            f"Received: pruning_schedule={schedule!r}"
        ) from None
    problem = None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        problem = f"returned {result!r} at step 0"
    else:
        should_prune, sparsity = (tf.convert_to_tensor(v) for v in result)
        if should_prune.dtype != tf.bool or should_prune.shape.rank != 0:
            problem = f"returned should_prune={should_prune!r} at step 0"
        elif not sparsity.dtype.is_floating or sparsity.shape.rank != 0:
            problem = f"returned sparsity={sparsity!r} at step 0"
        elif not 0.0 <= float(sparsity) <= 1.0:
            problem = f"returned sparsity={float(sparsity)} (outside [0, 1]) at step 0"
    if problem:
        raise ValueError(
            f"Argument `pruning_schedule` must be {_SCHEDULE_HELP}; it {problem}. "
            f"Received: pruning_schedule={schedule!r}"
        )
