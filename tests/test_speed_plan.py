"""Tests for kerasft.speed.plan: what SpeedPlan decides per run and phase, and its report."""

from __future__ import annotations

import itertools
import math

import keras
import numpy as np
import pytest

import kerasft
from kerasft import SpeedConfig, datasets, surgery
from kerasft.data import prepare_data
from kerasft.engine import auto, hooks
from kerasft.speed import caching
from kerasft.speed.plan import PhaseSpeed, SpeedPlan, SpeedRecord, check_options

# 300 digits, 20% held out: 240 to train in batches of 32
STEPS_PER_EPOCH = 8


@pytest.fixture()
def prepared(shipped_model, digits_small):
    return prepare_data(digits_small, model=shipped_model, validation_split=0.2, batch_size=32)


def _head_only(model):
    surgery.freeze(model)
    model.get_layer("predictions").trainable = True
    return model


def test_defaults_on_cpu(shipped_model, prepared):
    plan = SpeedPlan(shipped_model, prepared, SpeedConfig())
    try:
        record = plan.report()
        assert record.devices == ["CPU"]
        assert (record.precision, record.precision_reason) == ("float32", "full precision")
        assert record.jit_compile is False  # "auto": XLA only on accelerators
        assert record.phases == []
        assert all(layer.dtype_policy.name == "float32" for layer in shipped_model.layers)
    finally:
        plan.close()


def test_head_phase_on_cached_features_groups_steps(shipped_model, prepared):
    plan = SpeedPlan(_head_only(shipped_model), prepared, SpeedConfig())
    try:
        setup = plan.setup_phase(shipped_model, 0)
        assert setup.cached and isinstance(setup.model, caching.CachedFeatureModel)
        # "auto" groups up to 32 steps on cached features: here the whole epoch
        assert setup.compile_kwargs == {"jit_compile": False, "steps_per_execution": 8}
        [phase] = plan.report().phases
        assert phase.cached and phase.steps_per_execution == STEPS_PER_EPOCH
        assert phase.feature_bytes > 0 and phase.feature_seconds > 0
        assert phase.reason == setup.reason and phase.feature_source == setup.feature_source
        # the setup is what the phase fits: it trains the shipped model's head
        before = shipped_model.get_layer("predictions").get_weights()[0].copy()
        setup.model.compile("adam", "sparse_categorical_crossentropy", **setup.compile_kwargs)
        setup.model.fit(setup.train, validation_data=setup.validation, epochs=1, verbose=0)
        after = shipped_model.get_layer("predictions").get_weights()[0]
        assert not np.array_equal(before, after)
    finally:
        plan.close()


def test_phases_that_unfreeze_during_fit_are_not_cached(shipped_model, prepared):
    plan = SpeedPlan(_head_only(shipped_model), prepared, SpeedConfig())
    try:
        setup = plan.setup_phase(shipped_model, 0, cacheable=False)
        assert not setup.cached and setup.model is shipped_model
        assert setup.reason == "layers are unfrozen during the phase"
        assert setup.compile_kwargs["steps_per_execution"] == 1  # a full model's step: one per call
        assert plan.report().phases[0].compiled == ""  # no store that keeps compiled models
    finally:
        plan.close()


def test_options_reach_every_phase(shipped_model, prepared):
    plan = SpeedPlan(
        _head_only(shipped_model),
        prepared,
        SpeedConfig(cache_features=False, jit_compile=True, steps_per_execution=3),
    )
    try:
        first = plan.setup_phase(shipped_model, 0)
        shipped_model.get_layer("fc").trainable = True
        second = plan.setup_phase(shipped_model, 1)
        for setup in (first, second):
            assert not setup.cached and setup.model is shipped_model
            assert setup.compile_kwargs == {"jit_compile": True, "steps_per_execution": 3}
        record = plan.report()
        assert record.jit_compile is True
        assert [p.steps_per_execution for p in record.phases] == [3, 3]
    finally:
        plan.close()


def test_requested_mixed_precision_is_applied_output_kept_float32(shipped_model, prepared):
    plan = SpeedPlan(shipped_model, prepared, SpeedConfig(mixed_precision="mixed_bfloat16"))
    try:
        record = plan.report()
        assert (record.precision, record.precision_reason) == ("mixed_bfloat16", "requested")
        assert shipped_model.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
        assert shipped_model.get_layer("fc").compute_dtype == "bfloat16"
        assert shipped_model.get_layer("predictions").dtype_policy.name == "float32"
        assert shipped_model(np.zeros((1, 28, 28, 1), "float32")).dtype == "float32"
    finally:
        plan.close()


def test_report_is_a_snapshot_and_serializes(shipped_model, prepared):
    plan = SpeedPlan(_head_only(shipped_model), prepared, SpeedConfig())
    try:
        plan.setup_phase(shipped_model, 0)
        early = plan.report()
        shipped_model.get_layer("fc").trainable = True
        plan.setup_phase(shipped_model, 1)
        late = plan.report()
        assert len(early.phases) == 1 and len(late.phases) == 2
        assert isinstance(late, SpeedRecord) and all(isinstance(p, PhaseSpeed) for p in late.phases)
        late.phases.clear()
        assert len(plan.report().phases) == 2  # the report is a copy
        as_dict = plan.report().to_dict()
        assert set(as_dict) == {"devices", "precision", "precision_reason", "jit_compile", "phases"}
        assert as_dict["phases"][0] == {
            "cached": True,
            "reason": early.phases[0].reason,
            "feature_seconds": early.phases[0].feature_seconds,
            "feature_bytes": early.phases[0].feature_bytes,
            "feature_source": early.phases[0].feature_source,
            "steps_per_execution": STEPS_PER_EPOCH,
            "compiled": "",
        }
    finally:
        plan.close()


@pytest.mark.parametrize(
    "keyword, value, message",
    [
        ("cache_features", "maybe", r"`cache_features` must be True, False or 'auto'"),
        ("cache_budget", -1, r"`cache_budget` must be a number of bytes >= 0.*-1"),
        ("cache_budget", True, r"`cache_budget` must be a number of bytes >= 0.*True"),
        ("jit_compile", "yes", r"`jit_compile` must be True, False or 'auto'.*'yes'"),
        ("mixed_precision", "fp8", r"`mixed_precision` must be None, True, 'auto'.*'fp8'"),
        ("steps_per_execution", 0, r"`steps_per_execution` must be 'auto' or a positive.*0"),
    ],
)
def test_bad_options_are_refused_before_any_work(shipped_model, prepared, keyword, value, message):
    good = dict(
        cache_features="auto",
        cache_budget=1024,
        jit_compile="auto",
        mixed_precision=None,
        steps_per_execution="auto",
    )
    with pytest.raises(ValueError, match=message):
        check_options(**{**good, keyword: value})
    with pytest.raises(ValueError, match=message):  # the group is validated when built
        SpeedPlan(shipped_model, prepared, SpeedConfig(**{keyword: value}))
    assert all(layer.dtype_policy.name == "float32" for layer in shipped_model.layers)


def test_feature_store_must_be_a_feature_store(shipped_model, prepared):
    with pytest.raises(TypeError, match=r"`feature_store` must be a kerasft.speed.FeatureStore"):
        SpeedPlan(shipped_model, prepared, SpeedConfig(feature_store={}))


def test_each_phase_traces_its_training_step_once(shipped_model, digits_small, monkeypatch):
    # Left to Keras, the optimizer's slots are created in the first trace of the training
    # step and tf.function traces it again; finetune builds the optimizer before `fit`.
    traced = []
    step = keras.Model.train_step

    def counted(self, data):
        traced.append(self.name)
        return step(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counted)
    speed = SpeedConfig(cache_features=False)
    result = kerasft.finetune(
        shipped_model, digits_small, recipe="lp-ft", head_epochs=1, epochs=2, speed=speed, verbose=0
    )
    assert [p.name for p in result.phases] == ["head", "finetune"]
    assert len(traced) == 2, traced  # one per phase


def _dense_digits_model() -> keras.Model:
    """A dense network over 28x28 digits: ``auto`` halves two rates on validation data only."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="dense_digits")


@pytest.mark.parametrize("later_wins", [True, False])
def test_successive_halving_compiles_again_only_for_an_earlier_rate(
    digits, monkeypatch, later_wins
):
    # auto with validation data given and a dense network: two rates by successive
    # halving. The model is compiled once per rate tried; continuing with the last rate
    # tried needs no new compile (nor a new trace), continuing with an earlier one does.
    # Which wins is forced: every score offered is higher (or lower) than the one before.
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=30, seed=0)
    traced = _count_traces(monkeypatch, later_wins)
    result = kerasft.finetune(
        _dense_digits_model(),
        (split.x_train, split.y_train),
        validation_data=(split.x_test[:200], split.y_test[:200]),
        epochs=2,
        seed=0,
        verbose=0,
    )
    assert result.decision.profile.family == "mlp" and len(result.halving) == 2
    assert result.selection is None  # validation data given: nothing trained again
    # later wins: the second rate continues as compiled (two traces in all); earlier
    # wins: the first rate is compiled again to continue (three)
    assert len(traced) == (2 if later_wins else 3), (traced, result.halving, result.best_phase)
    assert result.best_phase == ("finetune" if later_wins else "probe")
    won = result.halving[-1 if later_wins else 0]["lr"]
    assert result.phases[1].learning_rate == pytest.approx(won)


@pytest.mark.parametrize("later_wins", [True, False])
def test_refit_trains_the_holdout_winner_again(digits_small, monkeypatch, later_wins):
    # auto on 300 examples with a dense network: a holdout, one rate (nothing halved on
    # the user's own labels), then a refit of the winner on all of them. Which wins is
    # forced: every score offered is higher (or lower) than the one before.
    traced = _count_traces(monkeypatch, later_wins)
    result = kerasft.finetune(_dense_digits_model(), digits_small, epochs=2, seed=0, verbose=0)
    chosen = result.selection
    assert chosen.decision.profile.family == "mlp" and not chosen.decision.candidates
    assert not chosen.halving and not result.halving and "halving" not in str(result.plan)
    assert chosen.best_phase == ("finetune" if later_wins else "probe")
    # one trace for the choosing run's fine-tune, one for the refit's when it won
    assert len(traced) == (2 if later_wins else 1), (traced, chosen.best_phase)
    # the refit trains the winner again: the probe, or the fine-tune for the epochs that won
    refitted = [(p.name, p.epochs) for p in result.phases]
    assert refitted == ([("probe", 1), ("finetune", 2)] if later_wins else [("probe", 1)])
    if later_wins:  # at the rate it chose with
        assert result.phases[1].learning_rate == pytest.approx(chosen.phases[1].learning_rate)
    # a probe that won is chosen again by cross-validation on all 300 labels; the probe a
    # fine-tune grows from is fitted again as it was chosen
    assert result.probe.head.selection == ("given" if later_wins else "5-fold cross-validation")
    said = "pooling and L2 strength chosen again by cross-validation" in result.summary()
    assert said != later_wins
    assert "choosing run (on the holdout):" in result.summary()


def _count_traces(monkeypatch, later_wins: bool) -> list[str]:
    """Count training-step traces; force each score offered above (or below) the last."""
    traced = []
    step = keras.Model.train_step

    def counted(self, data):
        traced.append(self.name)
        return step(self, data)

    calls = itertools.count(1)
    monkeypatch.setattr(keras.Model, "train_step", counted)
    monkeypatch.setattr(
        hooks._Tracker, "score", lambda self, logs: next(calls) * (1 if later_wins else -1)
    )
    return traced


def test_a_continuation_on_standardised_targets_predicts_in_their_units(digits_small, monkeypatch):
    # standardize_targets=True: the choosing run folds the scale into the head when it
    # ends; the continuation standardises the targets again and must start from the head
    # put back on that scale, or the returned model predicts in neither. Real digits, a
    # target in units far from 0 and 1 (ink in the image's top half, in grey levels),
    # the fine-tune forced to win.
    _count_traces(monkeypatch, later_wins=True)
    x, _ = digits_small
    y = x[:, :14].reshape(len(x), -1).mean(axis=1).astype("float32") + 500.0
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(h), name="dense_ink")
    result = kerasft.finetune(
        model, (x, y), seed=0, verbose=0, head=kerasft.HeadConfig(standardize_targets=True)
    )
    assert result.selection.best_phase == "finetune" and result.decision.continues
    assert result.target_std is not None
    predicted = result.model.predict(x, verbose=0).ravel()
    error = float(np.sqrt(np.mean((predicted - y) ** 2)))
    # in units: far better than predicting the mean, and as good as the choosing run's
    chosen = result.selection.model.predict(x, verbose=0).ravel()
    assert error < 0.5 * float(np.std(y))
    assert error < 1.5 * float(np.sqrt(np.mean((chosen - y) ** 2)))


@pytest.mark.parametrize("why", ["transformer", "l2sp"])
def test_a_fine_tune_that_won_trains_again_for_a_transformer_or_under_l2sp(
    digits_small, monkeypatch, why
):
    # the transformers' rule (auto.continues_winner), on a dense network to keep it small,
    # and L2-SP (anchored on the pretrained weights, not on the choosing run's): the
    # fine-tune that won at half the budget trains again on all labels for all of it,
    # from the probe fitted again. The fine-tune is forced to win.
    _count_traces(monkeypatch, later_wins=True)
    keywords = {}
    if why == "transformer":
        monkeypatch.setattr(auto, "continues_winner", lambda family, user=None: False)
    else:
        keywords["regularization"] = kerasft.RegularizationConfig(l2sp=1e-4)
    result = kerasft.finetune(_dense_digits_model(), digits_small, seed=0, verbose=0, **keywords)
    chosen = result.selection
    half, whole = chosen.decision.epochs, chosen.decision.refit_epochs
    assert chosen.best_phase == "finetune" and whole >= 2 and half == whole // 2
    assert [(p.name, p.epochs) for p in result.phases] == [("probe", 1), ("finetune", whole)]
    assert result.decision.epochs == whole and not result.decision.continues
    assert result.decision.steps == whole * math.ceil(300 / result.options.data.batch_size)
    assert f"a refit of it all {whole}" in str(result.plan)
    assert f"for the whole budget, {whole} epochs" in str(result.plan)
    assert result.probe.head.selection == "given"


def test_a_fine_tune_that_won_at_half_the_budget_continues_on_all_labels(digits_small, monkeypatch):
    # auto on 300 examples, no epochs given: the choosing run's fine-tune is a whole
    # schedule over half the budget; the fine-tune that wins continues from its weights on
    # all labels for the other half, with no probe before. The fine-tune is forced to win.
    traced = _count_traces(monkeypatch, later_wins=True)
    model = _dense_digits_model()
    pretrained = [w.copy() for w in model.get_weights()]
    result = kerasft.finetune(model, digits_small, seed=0, verbose=0)
    chosen = result.selection
    half, whole = chosen.decision.epochs, chosen.decision.refit_epochs
    assert chosen.best_phase == "finetune" and whole >= 2 and half == whole // 2
    assert chosen.phases[1].epochs == half
    assert [(p.name, p.epochs) for p in result.phases] == [("finetune", whole - half)]
    assert [p.name for p in result.plan.phases] == ["finetune"]
    assert result.decision.continues and result.decision.refit_epochs is None
    assert result.decision.epochs == whole - half
    assert result.decision.steps == (whole - half) * math.ceil(300 / result.options.data.batch_size)
    assert f"if it wins, it continues on all labels for the other {whole - half}" in str(
        result.plan
    )
    assert f"for the rest of the budget, {whole - half} epochs more ({whole} in all)" in str(
        result.plan
    )
    # the probe the fine-tune grew from is the one reported; the rate and batch are kept
    assert result.probe is chosen.probe
    assert result.phases[0].learning_rate == pytest.approx(chosen.phases[1].learning_rate)
    assert result.options.data.batch_size == chosen.options.data.batch_size
    assert len(traced) == 2  # the choosing run's fine-tune, then the continuation's
    # it grew from the weights that won, not from the pretrained ones: its first epoch
    # starts where the choosing run ended, below where that run started
    first = chosen.phases[1].history["loss"]
    assert result.phases[0].history["loss"][0] < first[0]
    # the user's model is left as it came (copy=True); with copy=False it is the one
    # trained, in the choosing run and on from there
    assert all(np.array_equal(a, b) for a, b in zip(pretrained, model.get_weights()))
    in_place = kerasft.finetune(model, digits_small, seed=0, verbose=0, copy=False)
    assert in_place.model is model and in_place.decision.continues
    assert not all(np.array_equal(a, b) for a, b in zip(pretrained, model.get_weights()))
