"""Learning-rate schedules: values against their formulas, serialization, saving and resuming."""

from __future__ import annotations

import doctest
import math

import keras
import numpy as np
import pytest

import kerasft
from kerasft import schedules
from kerasft.schedules import (
    OneCycle,
    Scaled,
    WarmupCosineDecay,
    WarmupExponentialDecay,
    WarmupStepDecay,
)


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_docstring_examples_run():
    result = doctest.testmod(schedules, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


def test_warmup_cosine_matches_formula():
    peak, total, warm, final = 2e-3, 100, 10, 1e-5
    sched = WarmupCosineDecay(peak, total_steps=total, warmup_steps=warm, final_learning_rate=final)
    steps = [0, 1, 5, 9, 10, 11, 40, 55, 99, 100, 150]

    def formula(s):
        if s < warm:
            return peak * s / warm
        p = min((s - warm) / (total - warm), 1.0)
        return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * p))

    np.testing.assert_allclose(
        _values(sched, steps), [formula(s) for s in steps], rtol=1e-5, atol=1e-9
    )
    assert float(sched(10)) == pytest.approx(peak)
    assert float(sched(55)) == pytest.approx((peak + final) / 2, rel=1e-5)


def test_one_cycle_follows_fastai_combined_cos():
    top, total, pct, div, div_final = 1e-2, 200, 0.3, 25.0, 1e4
    sched = OneCycle(top, total_steps=total, pct_start=pct, div=div, div_final=div_final)

    def cos_anneal(start, end, pos):  # fastai SchedCos
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2

    def formula(s):
        pos = min(s / total, 1.0)
        if pos < pct:
            return cos_anneal(top / div, top, pos / pct)
        return cos_anneal(top, top / div_final, (pos - pct) / (1 - pct))

    steps = [0, 1, 30, 59, 60, 61, 100, 130, 199, 200, 260]
    np.testing.assert_allclose(
        _values(sched, steps), [formula(s) for s in steps], rtol=1e-4
    )  # float32
    assert float(sched(0)) == pytest.approx(top / div)
    assert float(sched(60)) == pytest.approx(top)
    assert float(sched(200)) == pytest.approx(top / div_final, rel=1e-4)
    assert np.argmax(_values(sched, range(total))) == 60


def test_step_and_exponential_decay_with_warmup():
    step = WarmupStepDecay(
        0.1, decay_steps=30, decay_rate=0.5, warmup_steps=10, min_learning_rate=0.01
    )
    expected = [0.0, 0.05, 0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.01]
    np.testing.assert_allclose(
        _values(step, [0, 5, 10, 39, 40, 69, 70, 100, 500]), expected, rtol=1e-6
    )

    expo = WarmupExponentialDecay(1e-3, decay_steps=50, decay_rate=0.1, warmup_steps=20)
    steps = [0, 10, 20, 45, 70, 120]
    formula = [1e-3 * s / 20 if s < 20 else 1e-3 * 0.1 ** ((s - 20) / 50) for s in steps]
    np.testing.assert_allclose(_values(expo, steps), formula, rtol=1e-5)


def test_start_step_and_multiplier():
    base = WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=10)
    later = WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=10, start_step=40)
    np.testing.assert_allclose(
        _values(later, range(0, 60, 7)), _values(base, range(40, 100, 7)), rtol=1e-6
    )

    half = base.scaled(0.5)
    np.testing.assert_allclose(_values(half, [5, 50]), 0.5 * _values(base, [5, 50]), rtol=1e-6)
    assert base.multiplier == 1.0, "scaled() must not change the original"
    base.multiplier = 0.25
    assert float(base(10)) == pytest.approx(0.25e-3)
    assert float(kerasft.scale_schedule(2e-3, 0.1)) == pytest.approx(2e-4)


def test_scaled_wraps_keras_schedules():
    inner = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=90, warmup_target=1e-2, warmup_steps=10
    )
    wrapped = kerasft.scale_schedule(inner, 0.1)
    assert isinstance(wrapped, Scaled)
    np.testing.assert_allclose(
        _values(wrapped, [5, 10, 60]), 0.1 * _values(inner, [5, 10, 60]), rtol=1e-6
    )
    assert wrapped.peak_learning_rate == pytest.approx(1e-2)


@pytest.mark.parametrize(
    "schedule",
    [
        WarmupCosineDecay(
            1e-3, total_steps=50, warmup_steps=5, final_learning_rate=1e-6, multiplier=0.5
        ),
        OneCycle(3e-3, total_steps=80, pct_start=0.4, div=10.0, div_final=100.0, start_step=7),
        WarmupStepDecay(0.1, decay_steps=10, decay_rate=0.3, warmup_steps=2),
        WarmupExponentialDecay(0.1, decay_steps=10, decay_rate=0.3, min_learning_rate=1e-4),
        Scaled(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), multiplier=0.3),
        Scaled(OneCycle(1e-2, 40), multiplier=2.0),
    ],
    ids=lambda s: type(s).__name__,
)
def test_serialization_round_trip(schedule):
    config = keras.optimizers.schedules.serialize(schedule)
    assert config["registered_name"].startswith("kerasft>")
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    steps = [0, 3, 9, 27, 60, 100]
    np.testing.assert_allclose(_values(restored, steps), _values(schedule, steps), rtol=1e-7)


def _dense_model():
    inputs = keras.Input((64,))
    x = keras.layers.Dense(16, activation="relu", name="fc")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def test_model_saved_mid_run_loads_and_resumes_exactly(tmp_path, digits):
    x, y = digits
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(x[:256], (8, 8))).reshape(256, 64) / 255.0
    y = y[:256]

    def compiled(model):
        sched = OneCycle(5e-2, total_steps=16, pct_start=0.25)
        model.compile(
            keras.optimizers.SGD(sched, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    keras.utils.set_random_seed(1)
    straight = compiled(_dense_model())
    start = straight.get_weights()
    straight.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)

    interrupted = compiled(_dense_model())
    interrupted.set_weights(start)
    interrupted.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "mid_run.keras")
    interrupted.save(path)
    resumed = keras.models.load_model(path)
    opt = resumed.optimizer
    assert isinstance(opt._learning_rate, OneCycle)
    assert int(opt.iterations) == 8
    assert float(opt.learning_rate) == pytest.approx(float(OneCycle(5e-2, 16, 0.25)(8)))
    resumed.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: WarmupCosineDecay(1e-3, total_steps=10, warmup_steps=10),
            r"Argument `warmup_steps` must be < `total_steps`. Received: warmup_steps=10, "
            r"total_steps=10",
        ),
        (
            lambda: WarmupCosineDecay(-1.0, total_steps=10),
            r"`peak_learning_rate`.*Received: peak_learning_rate=-1.0",
        ),
        (
            lambda: OneCycle(1e-3, total_steps=10, pct_start=1.5),
            r"`pct_start` must be in \(0, 1\). Received: pct_start=1.5",
        ),
        (
            lambda: OneCycle(1e-3, total_steps=0),
            r"`total_steps` must be a positive integer. Received: total_steps=0",
        ),
        (
            lambda: WarmupStepDecay(0.1, decay_steps=10, decay_rate=1.5),
            r"`decay_rate` must be in \(0, 1\]. Received: decay_rate=1.5",
        ),
        (
            lambda: WarmupExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, start_step=-1),
            r"Received: start_step=-1",
        ),
    ],
)
def test_errors_name_argument_and_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_type_errors():
    with pytest.raises(
        TypeError, match=r"`schedule` must be a keras.optimizers.schedules.LearningRateSchedule"
    ):
        Scaled(0.1)
    with pytest.raises(TypeError, match=r"Received: learning_rate='fast'"):
        kerasft.scale_schedule("fast", 0.5)
    sched = WarmupCosineDecay(1e-3, total_steps=10)
    with pytest.raises(ValueError, match=r"Received: multiplier=-2"):
        sched.multiplier = -2
