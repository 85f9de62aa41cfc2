"""Learning-rate schedules for fine-tuning: warmup + cosine, one-cycle, step and exponential.

Every schedule here is a registered, serializable
``keras.optimizers.schedules.LearningRateSchedule``: an optimizer built with one saves
into a ``.keras`` file and ``keras.models.load_model`` rebuilds it (once ``kerasft`` is
imported) without ``custom_objects``. The rate is a pure function of the optimizer's
iteration count, so a model saved mid-run resumes where it stopped. Each schedule also
carries a ``multiplier`` held in a variable: ``kerasft.callbacks.ReduceLROnPlateauScaled``
lowers it on a plateau (Keras refuses to *set* the rate of a scheduled optimizer), and
``kerasft.layerwise`` uses it to give each layer group its own share of one schedule.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = [
    "KerasftSchedule",
    "WarmupCosineDecay",
    "OneCycle",
    "WarmupStepDecay",
    "WarmupExponentialDecay",
    "Scaled",
    "scale_schedule",
]

_PACKAGE = "kerasft"


def _check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"Argument `{name}` must be {kind} integer. Received: {name}={value!r}")


def _check_rate(name: str, value: Any, *, allow_zero: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"Argument `{name}` must be a finite number {bound}. Received: {name}={value!r}"
        )


class KerasftSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base class: a pure function of the step, times a variable ``multiplier``.

    Subclasses implement ``_rate(step)`` (a float tensor, the unscaled rate at the
    schedule's own step) and list their constructor arguments in ``get_config``.

    Args:
        start_step: the schedule step that the optimizer's iteration 0 maps to, so
            ``lr(iteration) = multiplier * rate(iteration + start_step)``. Use it to continue
            a schedule on a fresh optimizer (e.g. after recompiling). Defaults to `0`.
        multiplier: factor applied to every rate; kept in a non-trainable variable so a
            callback can change it during ``fit``. Defaults to `1.0`.
        name: name of the schedule. Defaults to `None` (the class name).
    """

    def __init__(self, start_step: int = 0, multiplier: float = 1.0, name: str | None = None):
        _check_positive_int("start_step", start_step, allow_zero=True)
        _check_rate("multiplier", multiplier)
        self.start_step = start_step
        self.name = name or type(self).__name__
        # A variable, not a float: a float is baked into the traced train function, so
        # changing it mid-fit would have no effect until the next retrace.
        self._multiplier = keras.Variable(
            float(multiplier), dtype="float32", trainable=False, name="lr_multiplier"
        )

    @property
    def multiplier(self) -> float:
        """Current multiplier (a Python float); assign to change it, even mid-``fit``."""
        return float(keras.ops.convert_to_numpy(self._multiplier))

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        _check_rate("multiplier", value)
        self._multiplier.assign(float(value))

    @property
    def peak_learning_rate(self) -> float:
        """The highest unscaled rate of the schedule."""
        raise NotImplementedError

    def _rate(self, step):
        raise NotImplementedError

    def __call__(self, step):
        step = ops.cast(step, "float32") + float(self.start_step)
        return ops.cast(self._rate(step), "float32") * ops.convert_to_tensor(self._multiplier)

    def _own_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        config = self._own_config()
        config.update(start_step=self.start_step, multiplier=self.multiplier, name=self.name)
        return config

    def scaled(self, factor: float) -> KerasftSchedule:
        """Return a copy whose rates are ``factor`` times this schedule's rates."""
        _check_rate("factor", factor)
        config = self.get_config()
        config["multiplier"] = config["multiplier"] * factor
        return type(self).from_config(config)


def _warmup(step, warmup_steps: int, peak: float):
    """Linear ramp from 0 at step 0 to ``peak`` at ``warmup_steps``."""
    return peak * step / float(max(warmup_steps, 1))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupCosineDecay(KerasftSchedule):
    """Linear warmup from 0 to a peak, then cosine decay to a final rate.

    For step ``s`` (the optimizer iteration plus ``start_step``), with warmup ``W`` and
    total ``T`` steps: ``peak * s / W`` while ``s < W``; then
    ``final + (peak - final) * (1 + cos(pi * p)) / 2`` with ``p = (s - W) / (T - W)``;
    ``final`` once ``s >= T``.

    Example:

    >>> sched = WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=10)
    >>> round(float(sched(5)), 6), round(float(sched(10)), 6), round(float(sched(100)), 6)
    (0.0005, 0.001, 0.0)

    Args:
        peak_learning_rate: rate at the end of the warmup.
        total_steps: steps of warmup plus decay.
        warmup_steps: steps of linear warmup, `< total_steps`. Defaults to `0`.
        final_learning_rate: rate at and after ``total_steps``. Defaults to `0.0`.
        start_step: schedule step of the optimizer's iteration 0. Defaults to `0`.
        multiplier: factor on every rate, changeable mid-fit. Defaults to `1.0`.
        name: name of the schedule. Defaults to `None`.

    Raises:
        ValueError: for negative rates, non-positive ``total_steps``, or
            ``warmup_steps >= total_steps``.
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        warmup_steps: int = 0,
        final_learning_rate: float = 0.0,
        start_step: int = 0,
        multiplier: float = 1.0,
        name: str | None = None,
    ):
        _check_rate("peak_learning_rate", peak_learning_rate, allow_zero=False)
        _check_positive_int("total_steps", total_steps)
        _check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
        _check_rate("final_learning_rate", final_learning_rate)
        if warmup_steps >= total_steps:
            raise ValueError(
                "Argument `warmup_steps` must be < `total_steps`. "
                f"Received: warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        super().__init__(start_step=start_step, multiplier=multiplier, name=name)
        self._peak_learning_rate = float(peak_learning_rate)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_learning_rate = float(final_learning_rate)

    @property
    def peak_learning_rate(self) -> float:
        return self._peak_learning_rate

    def _rate(self, step):
        peak, final = self._peak_learning_rate, self.final_learning_rate
        span = float(self.total_steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        decayed = final + (peak - final) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps == 0:
            return decayed
        return ops.where(step < self.warmup_steps, _warmup(step, self.warmup_steps, peak), decayed)

    def _own_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self._peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_learning_rate": self.final_learning_rate,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OneCycle(KerasftSchedule):
    """fastai's one-cycle: cosine up from ``max/div`` to ``max``, then down to ``max/div_final``.

    With ``pos = s / total_steps`` (clipped to 1): for ``pos < pct_start`` the rate is
    ``cos_anneal(max/div, max, pos/pct_start)``, afterwards
    ``cos_anneal(max, max/div_final, (pos - pct_start)/(1 - pct_start))``, where
    ``cos_anneal(a, b, p) = a + (b - a) * (1 - cos(pi * p)) / 2``. This is fastai's
    ``combined_cos(pct_start, lr_max/div, lr_max, lr_max/div_final)``. fastai also cycles
    momentum; Keras optimizers keep momentum fixed, so only the rate cycles here.

    Example:

    >>> sched = OneCycle(1e-2, total_steps=100, pct_start=0.25)
    >>> round(float(sched(0)), 6), round(float(sched(25)), 6), float(sched(100)) < 1e-6
    (0.0004, 0.01, True)

    Args:
        max_learning_rate: the peak rate, reached at ``pct_start * total_steps``.
        total_steps: length of the cycle in optimizer steps.
        pct_start: fraction of the cycle spent increasing, in ``(0, 1)``. Defaults to `0.25`.
        div: the cycle starts at ``max_learning_rate / div``. Defaults to `25.0`.
        div_final: the cycle ends at ``max_learning_rate / div_final``. Defaults to `1e5`.
        start_step: schedule step of the optimizer's iteration 0. Defaults to `0`.
        multiplier: factor on every rate, changeable mid-fit. Defaults to `1.0`.
        name: name of the schedule. Defaults to `None`.

    Raises:
        ValueError: for a non-positive rate or divisor, or ``pct_start`` outside ``(0, 1)``.
    """

    def __init__(
        self,
        max_learning_rate: float,
        total_steps: int,
        pct_start: float = 0.25,
        div: float = 25.0,
        div_final: float = 1e5,
        start_step: int = 0,
        multiplier: float = 1.0,
        name: str | None = None,
    ):
        _check_rate("max_learning_rate", max_learning_rate, allow_zero=False)
        _check_positive_int("total_steps", total_steps)
        if not isinstance(pct_start, (int, float)) or not 0.0 < pct_start < 1.0:
            raise ValueError(
                f"Argument `pct_start` must be in (0, 1). Received: pct_start={pct_start!r}"
            )
        _check_rate("div", div, allow_zero=False)
        _check_rate("div_final", div_final, allow_zero=False)
        super().__init__(start_step=start_step, multiplier=multiplier, name=name)
        self.max_learning_rate = float(max_learning_rate)
        self.total_steps = total_steps
        self.pct_start = float(pct_start)
        self.div = float(div)
        self.div_final = float(div_final)

    @property
    def peak_learning_rate(self) -> float:
        return self.max_learning_rate

    def _rate(self, step):
        top = self.max_learning_rate
        low, end = top / self.div, top / self.div_final
        pos = ops.clip(step / float(self.total_steps), 0.0, 1.0)
        up = ops.clip(pos / self.pct_start, 0.0, 1.0)
        down = ops.clip((pos - self.pct_start) / (1.0 - self.pct_start), 0.0, 1.0)
        rising = low + (top - low) * (1.0 - ops.cos(math.pi * up)) / 2.0
        # Written from the end value so that float32 keeps the small final rates exact.
        falling = end + (top - end) * (1.0 + ops.cos(math.pi * down)) / 2.0
        return ops.where(pos < self.pct_start, rising, falling)

    def _own_config(self) -> dict[str, Any]:
        return {
            "max_learning_rate": self.max_learning_rate,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div": self.div,
            "div_final": self.div_final,
        }


class _WarmupDecay(KerasftSchedule):
    """Shared part of the step and exponential decays: warmup, then ``peak * rate**k``."""

    staircase = False

    def __init__(
        self,
        peak_learning_rate: float,
        decay_steps: int,
        decay_rate: float,
        warmup_steps: int = 0,
        min_learning_rate: float = 0.0,
        start_step: int = 0,
        multiplier: float = 1.0,
        name: str | None = None,
    ):
        _check_rate("peak_learning_rate", peak_learning_rate, allow_zero=False)
        _check_positive_int("decay_steps", decay_steps)
        if not isinstance(decay_rate, (int, float)) or not 0.0 < decay_rate <= 1.0:
            raise ValueError(
                f"Argument `decay_rate` must be in (0, 1]. Received: decay_rate={decay_rate!r}"
            )
        _check_positive_int("warmup_steps", warmup_steps, allow_zero=True)
        _check_rate("min_learning_rate", min_learning_rate)
        super().__init__(start_step=start_step, multiplier=multiplier, name=name)
        self._peak_learning_rate = float(peak_learning_rate)
        self.decay_steps = decay_steps
        self.decay_rate = float(decay_rate)
        self.warmup_steps = warmup_steps
        self.min_learning_rate = float(min_learning_rate)

    @property
    def peak_learning_rate(self) -> float:
        return self._peak_learning_rate

    def _rate(self, step):
        peak = self._peak_learning_rate
        k = ops.maximum(step - self.warmup_steps, 0.0) / float(self.decay_steps)
        if self.staircase:
            k = ops.floor(k)
        decayed = ops.maximum(peak * ops.power(self.decay_rate, k), self.min_learning_rate)
        if self.warmup_steps == 0:
            return decayed
        return ops.where(step < self.warmup_steps, _warmup(step, self.warmup_steps, peak), decayed)

    def _own_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self._peak_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "warmup_steps": self.warmup_steps,
            "min_learning_rate": self.min_learning_rate,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupStepDecay(_WarmupDecay):
    """Linear warmup, then the rate drops by ``decay_rate`` every ``decay_steps`` steps.

    After warmup ``W``: ``max(peak * decay_rate ** floor((s - W) / decay_steps), min)``.

    Example:

    >>> sched = WarmupStepDecay(0.1, decay_steps=30, decay_rate=0.1, warmup_steps=10)
    >>> [round(float(sched(s)), 6) for s in (5, 10, 39, 40, 70)]
    [0.05, 0.1, 0.1, 0.01, 0.001]

    Args:
        peak_learning_rate: rate at the end of the warmup.
        decay_steps: steps between two drops.
        decay_rate: factor of each drop, in ``(0, 1]``. Defaults to `0.1`.
        warmup_steps: steps of linear warmup from 0. Defaults to `0`.
        min_learning_rate: floor of the decayed rate. Defaults to `0.0`.
        start_step: schedule step of the optimizer's iteration 0. Defaults to `0`.
        multiplier: factor on every rate, changeable mid-fit. Defaults to `1.0`.
        name: name of the schedule. Defaults to `None`.

    Raises:
        ValueError: for a non-positive rate or ``decay_steps``, or ``decay_rate``
            outside ``(0, 1]``.
    """

    staircase = True

    def __init__(
        self,
        peak_learning_rate: float,
        decay_steps: int,
        decay_rate: float = 0.1,
        warmup_steps: int = 0,
        min_learning_rate: float = 0.0,
        start_step: int = 0,
        multiplier: float = 1.0,
        name: str | None = None,
    ):
        super().__init__(
            peak_learning_rate, decay_steps, decay_rate, warmup_steps,
            min_learning_rate, start_step, multiplier, name,
        )  # fmt: skip


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupExponentialDecay(_WarmupDecay):
    """Linear warmup, then smooth exponential decay by ``decay_rate`` every ``decay_steps`` steps.

    After warmup ``W``: ``max(peak * decay_rate ** ((s - W) / decay_steps), min)``.

    Example:

    >>> sched = WarmupExponentialDecay(1e-3, decay_steps=100, decay_rate=0.5, warmup_steps=10)
    >>> round(float(sched(10)), 7), round(float(sched(110)), 7), round(float(sched(60)), 7)
    (0.001, 0.0005, 0.0007071)

    Args:
        peak_learning_rate: rate at the end of the warmup.
        decay_steps: steps over which the rate is multiplied by ``decay_rate``.
        decay_rate: decay per ``decay_steps``, in ``(0, 1]``.
        warmup_steps: steps of linear warmup from 0. Defaults to `0`.
        min_learning_rate: floor of the decayed rate. Defaults to `0.0`.
        start_step: schedule step of the optimizer's iteration 0. Defaults to `0`.
        multiplier: factor on every rate, changeable mid-fit. Defaults to `1.0`.
        name: name of the schedule. Defaults to `None`.

    Raises:
        ValueError: for a non-positive rate or ``decay_steps``, or ``decay_rate``
            outside ``(0, 1]``.
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Scaled(KerasftSchedule):
    """Any ``LearningRateSchedule`` (e.g. Keras's own) times a changeable multiplier.

    Wrap a schedule that is not from kerasft so that ``ReduceLROnPlateauScaled`` and
    the layer-wise optimizers can scale it.

    Example:

    >>> inner = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> round(float(Scaled(inner, multiplier=0.1)(10)), 6)
    0.005

    Args:
        schedule: the schedule to scale (must be serializable for saving).
        multiplier: factor on every rate, changeable mid-fit. Defaults to `1.0`.
        start_step: schedule step of the optimizer's iteration 0. Defaults to `0`.
        name: name of the schedule. Defaults to `None`.

    Raises:
        TypeError: if ``schedule`` is not a ``LearningRateSchedule``.
    """

    def __init__(
        self,
        schedule: keras.optimizers.schedules.LearningRateSchedule,
        multiplier: float = 1.0,
        start_step: int = 0,
        name: str | None = None,
    ):
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise TypeError(
                "Argument `schedule` must be a keras.optimizers.schedules.LearningRateSchedule. "
                f"Received: schedule={schedule!r}"
            )
        super().__init__(start_step=start_step, multiplier=multiplier, name=name)
        self.schedule = schedule

    @property
    def peak_learning_rate(self) -> float:
        inner = self.schedule
        if isinstance(inner, KerasftSchedule):
            return inner.peak_learning_rate * inner.multiplier
        # Keras's CosineDecay with warmup climbs from initial_learning_rate to warmup_target.
        for attr in ("warmup_target", "initial_learning_rate"):
            if getattr(inner, attr, None) is not None:
                return float(getattr(inner, attr))
        raise AttributeError(f"Cannot tell the peak rate of {type(inner).__name__}.")

    def _rate(self, step):
        return self.schedule(step)

    def _own_config(self) -> dict[str, Any]:
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule)}


def scale_schedule(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule, factor: float
) -> float | KerasftSchedule:
    """Return ``learning_rate`` times ``factor``: a float, or a new schedule.

    kerasft schedules are copied with a larger or smaller multiplier; other schedules
    are wrapped in ``Scaled``. The original is never changed.

    Example:

    >>> scale_schedule(1e-3, 0.1)
    0.0001
    >>> round(float(scale_schedule(OneCycle(1e-2, 100), 0.5)(25)), 6)
    0.005

    Args:
        learning_rate: a float rate or a ``LearningRateSchedule``.
        factor: non-negative factor.

    Returns:
        A float when ``learning_rate`` is a number, else a ``KerasftSchedule``.

    Raises:
        TypeError: when ``learning_rate`` is neither a number nor a schedule.
    """
    _check_rate("factor", factor)
    if isinstance(learning_rate, KerasftSchedule):
        return learning_rate.scaled(factor)
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return Scaled(learning_rate, multiplier=factor)
    if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool):
        return float(learning_rate) * factor
    raise TypeError(
        "Argument `learning_rate` must be a float or a LearningRateSchedule. "
        f"Received: learning_rate={learning_rate!r}"
    )
