"""Tests for kerasft.engine.optim: each phase's schedule, layer-wise rates and stages."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerasft import _keras_compat as compat
from kerasft import schedules
from kerasft.callbacks import GradualUnfreezing
from kerasft.engine.optim import (
    phase_optimizer,
    staged_optimizer,
    warmup_constant,
    warmup_cosine,
)
from kerasft.engine.plan import Phase, Rate, Stage


def _adam(rate):
    return keras.optimizers.Adam(rate)


def _rates(optimizer) -> dict[str, float]:
    """Each sub-optimizer's rate at its current step, by name."""
    return {o.name: float(o.learning_rate) for o in optimizer.optimizers}


def test_warmup_cosine_values_at_known_steps():
    sched = warmup_cosine(1e-3, total_steps=100, warmup_fraction=0.1)
    assert isinstance(sched, schedules.WarmupCosineDecay)
    assert (sched.total_steps, sched.warmup_steps) == (100, 10)
    values = [float(sched(step)) for step in (0, 5, 10, 55, 100, 150)]
    # linear to the peak over 10 steps; halfway down the cosine at step 55; 0 from step 100
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    quarter = 1e-3 * (1 + np.cos(np.pi * 0.25)) / 2
    np.testing.assert_allclose(float(sched(10 + 90 // 4 + 0.5)), quarter, rtol=1e-5)


def test_warmup_cosine_keeps_degenerate_lengths_valid():
    # An empty phase still gets a one-step schedule at the peak.
    empty = warmup_cosine(2e-3, total_steps=0, warmup_fraction=0.5)
    assert (empty.total_steps, empty.warmup_steps) == (1, 0)
    assert float(empty(0)) == pytest.approx(2e-3)
    # A warmup of the whole phase leaves one step of decay (warmup < total is required).
    full = warmup_cosine(2e-3, total_steps=4, warmup_fraction=1.0)
    assert (full.total_steps, full.warmup_steps) == (4, 3)
    assert float(full(3)) == pytest.approx(2e-3)


def test_warmup_constant_holds_the_peak_after_its_warmup():
    sched = warmup_constant(1e-3, total_steps=100, warmup_fraction=0.1)
    assert isinstance(sched, schedules.WarmupCosineDecay)
    assert (sched.total_steps, sched.warmup_steps, sched.final_learning_rate) == (100, 10, 1e-3)
    values = [float(sched(step)) for step in (0, 5, 10, 55, 100, 150)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    # A plateau callback scales it as it scales the cosine.
    np.testing.assert_allclose(float(sched.scaled(0.5)(55)), 5e-4, rtol=1e-6)


def test_a_phase_warmed_up_then_constant_gets_that_schedule(shipped_model):
    phase = Phase(
        "finetune", epochs=3, trains="all", rate=Rate(2e-3), schedule="warmup_constant", warmup=0.2
    )
    out = phase_optimizer(shipped_model, phase, _adam, steps_per_epoch=5)
    sched = compat.learning_rate_object(out.optimizer)
    assert (sched.total_steps, sched.warmup_steps) == (15, 3)
    assert float(sched(14)) == pytest.approx(2e-3) and out.peak == 2e-3


def test_warmup_cosine_survives_serialization():
    sched = warmup_cosine(1e-3, total_steps=40, warmup_fraction=0.25)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert type(again) is schedules.WarmupCosineDecay
    for step in (0, 5, 10, 25, 40):
        assert float(again(step)) == pytest.approx(float(sched(step)))


def test_head_phase_trains_at_one_constant_rate(shipped_model):
    phase = Phase("head", epochs=2, trains="head", rate=Rate(1e-2))
    out = phase_optimizer(shipped_model, phase, _adam, steps_per_epoch=5, lr_mult=10)
    # spread=False: lr_mult does not apply to a head phase
    assert type(out.optimizer) is keras.optimizers.Adam
    assert isinstance(compat.learning_rate_object(out.optimizer), keras.Variable)
    assert float(out.optimizer.learning_rate) == pytest.approx(1e-2)
    assert (out.peak, out.callbacks, out.settle_epoch) == (1e-2, [], 0)


def test_body_phase_warms_up_over_its_own_steps(shipped_model):
    phase = Phase(
        "finetune", epochs=2, trains="all", rate=Rate(1e-3), schedule="warmup_cosine", warmup=0.3
    )
    out = phase_optimizer(shipped_model, phase, _adam, steps_per_epoch=5)
    sched = compat.learning_rate_object(out.optimizer)
    assert isinstance(sched, schedules.WarmupCosineDecay)
    assert (sched.total_steps, sched.warmup_steps, sched.peak_learning_rate) == (10, 3, 1e-3)
    assert out.peak == 1e-3


@pytest.mark.parametrize(
    "spread, expected",
    [
        # layer_decay=0.5: each group down from the top at half the rate of the one above
        (dict(layer_decay=0.5), [0.125, 0.25, 0.5, 1.0]),
        # lr_mult=10: top group 10x the bottom one, geometric in between
        (dict(lr_mult=10), [0.1, 10 ** (-2 / 3), 10 ** (-1 / 3), 1.0]),
    ],
    ids=["layer_decay", "lr_mult"],
)
def test_spread_phase_gives_each_layer_group_its_rate(shipped_model, spread, expected):
    phase = Phase("finetune", epochs=1, trains="all", rate=Rate(1e-3), spread=True)
    out = phase_optimizer(shipped_model, phase, _adam, steps_per_epoch=4, **spread)
    assert isinstance(out.optimizer, keras.optimizers.MultiOptimizer)
    rates = _rates(out.optimizer)
    assert list(rates) == ["block1", "block2", "fc", "predictions", "rest"]
    np.testing.assert_allclose(
        [rates[g] for g in ("block1", "block2", "fc", "predictions")],
        np.array(expected) * 1e-3,
        rtol=1e-5,
    )
    assert rates["rest"] == pytest.approx(1e-3)
    assert out.peak == 1e-3


def test_spread_phase_schedules_every_group_alike(shipped_model):
    phase = Phase(
        "finetune",
        epochs=2,
        trains="all",
        rate=Rate(1e-3),
        schedule="warmup_cosine",
        warmup=0.5,
        spread=True,
    )
    out = phase_optimizer(shipped_model, phase, _adam, steps_per_epoch=5, layer_decay=0.5)
    by_name = {o.name: compat.learning_rate_object(o) for o in out.optimizer.optimizers}
    for name, factor in (("block1", 0.125), ("fc", 0.5), ("predictions", 1.0)):
        sched = by_name[name]
        assert (sched.total_steps, sched.warmup_steps) == (10, 5)
        assert float(sched(5)) == pytest.approx(1e-3 * factor, rel=1e-5)
        assert float(sched(10)) == pytest.approx(0.0, abs=1e-12)


def test_spread_phase_without_spread_options_keeps_one_optimizer(shipped_model):
    phase = Phase("finetune", epochs=1, trains="all", rate=Rate(1e-3), spread=True)
    out = phase_optimizer(shipped_model, phase, _adam, steps_per_epoch=4)
    assert type(out.optimizer) is keras.optimizers.Adam


def test_spread_phase_refuses_both_spreads(shipped_model):
    phase = Phase("finetune", epochs=1, trains="all", rate=Rate(1e-3), spread=True)
    with pytest.raises(ValueError, match="lr_mult.*layer_decay"):
        phase_optimizer(shipped_model, phase, _adam, 4, lr_mult=10, layer_decay=0.5)


STAGED = Phase(
    "gradual",
    epochs=3,
    trains="stages",
    rate=Rate(1e-3),
    schedule="warmup_cosine",
    warmup=0.5,
    stages=(
        Stage(["predictions"], 0, rate=Rate(1e-2)),
        Stage(["fc"], 1, rate=Rate(1e-3)),
        Stage(["block2_conv.*"], 2, rate=Rate(1e-4)),
    ),
)


def test_staged_optimizer_freezes_all_but_the_first_stage(shipped_model):
    out = staged_optimizer(shipped_model, STAGED, _adam, steps_per_epoch=4)
    trainable = {lyr.name for lyr in shipped_model.layers if lyr.trainable and lyr.weights}
    assert trainable == {"predictions"}
    assert out.peak == 1e-2 and out.settle_epoch == 2
    [callback] = out.callbacks
    assert isinstance(callback, GradualUnfreezing)
    # Each stage's schedule runs from the epoch it joins to the end of the phase.
    by_name = {o.name: compat.learning_rate_object(o) for o in out.optimizer.optimizers}
    expected = {"phase0": (12, 6, 1e-2), "phase1": (8, 4, 1e-3), "phase2": (4, 2, 1e-4)}
    for name, (total, warm, peak) in expected.items():
        sched = by_name[name]
        assert (sched.total_steps, sched.warmup_steps) == (total, warm), name
        assert sched.peak_learning_rate == pytest.approx(peak), name


def test_staged_phase_unfreezes_stage_by_stage_during_fit(shipped_model, digits_small):
    x, y = digits_small
    x, y = x[:64], y[:64]
    before = {lyr.name: [w.copy() for w in lyr.get_weights()] for lyr in shipped_model.layers}
    out = staged_optimizer(shipped_model, STAGED, _adam, steps_per_epoch=4)
    shipped_model.compile(out.optimizer, "sparse_categorical_crossentropy")
    shipped_model.fit(x, y, batch_size=16, epochs=3, callbacks=out.callbacks, verbose=0)
    [callback] = out.callbacks
    assert callback.transitions == [(0, 0), (1, 1), (2, 2)]  # (epoch, stage)
    # Each sub-optimizer counted only the steps its layers trained.
    steps = {o.name: int(o.iterations) for o in out.optimizer.optimizers}
    assert (steps["phase0"], steps["phase1"], steps["phase2"]) == (12, 8, 4)

    def moved(name):
        after = shipped_model.get_layer(name).get_weights()
        return any(not np.array_equal(a, b) for a, b in zip(before[name], after))

    assert moved("predictions") and moved("fc") and moved("block2_conv1")
    # Not in any stage (block1), or BatchNormalization without train_bn: untouched.
    assert not moved("block1_conv1") and not moved("block2_bn1")
