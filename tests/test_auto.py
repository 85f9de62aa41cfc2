"""recipe="auto": decisions read off the model and the data, and what they promise."""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import pytest
from test_tasks import small_bert_classifier

import kerasft
from kerasft import datasets
from kerasft.engine import auto
from kerasft.engine import plan as plan_lib
from kerasft.engine.options import RecipeOptions


@pytest.fixture(scope="module")
def digits_split():
    return datasets.digits_few_shot(shots=10, seed=0)


def test_batch_size_and_holdout_follow_the_number_of_examples():
    assert [auto.auto_batch_size(n) for n in (20, 80, 160, 320, 5000, None)] == [
        8,
        8,
        16,
        32,
        32,
        32,
    ]
    assert auto.auto_validation_split(150) == 0.0  # too few to choose on
    assert auto.auto_validation_split(400) == 0.2 and auto.auto_validation_split(50_000) == 0.1
    # a transformer's line is 500: its winner trains again for the whole budget anyway
    assert auto.auto_validation_split(499, "transformer") == 0.0
    assert auto.auto_validation_split(500, "transformer") == 0.2
    assert auto.auto_validation_split(400, "cnn") == 0.2


def test_families_are_read_off_the_model(shipped_model):
    cnn = auto.profile_model(shipped_model, kerasft.find_head(shipped_model))
    assert cnn.family == "cnn" and cnn.blocks == 3 and cnn.top_blocks is None
    mlp = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )
    assert auto.profile_model(mlp, mlp.layers[-1]).family == "mlp"
    task = small_bert_classifier(["a fine film", "a dull film"])
    bert = auto.profile_model(task, kerasft.find_head(task))
    assert bert.family == "transformer" and bert.text and bert.attention_blocks == 2
    chosen = kerasft.select_layers(task, pattern=bert.top_blocks)
    assert [lyr.name for lyr in chosen] == ["transformer_layer_1", "pooled_dense", "logits"]


def test_small_data_plan_says_what_was_decided_and_why(shipped_model, digits_split):
    plan = kerasft.plan(shipped_model, (digits_split.x_train, digits_split.y_train))
    d = plan.decision
    assert [p.name for p in plan.phases] == ["probe", "finetune"] and plan.phases[0].probe
    assert d.selection == "none" and d.batch_size == 8 and d.optimizer == "adam"
    assert d.steps == d.epochs * 13 and 5 <= d.epochs <= 30
    text = str(plan)
    assert (
        "recipe='auto' decided" in text
        and "too few to hold some out" in text
        and "closed form" in text
    )


def test_user_options_win_over_the_decision(shipped_model, digits_split):
    data = (digits_split.x_train, digits_split.y_train)
    plan = kerasft.plan(shipped_model, data, epochs=3, lr=1e-4, batch_size=16, optimizer="sgd")
    d = plan.decision
    assert (d.epochs, d.rate, d.batch_size, d.optimizer) == (3, 1e-4, 16, "sgd")
    assert plan.phases[1].epochs == 3 and float(plan.phases[1].rate) == 1e-4
    # head_epochs belongs to a head trained by gradient: without a recipe it means LP-FT ...
    assert [p.name for p in kerasft.plan(shipped_model, data, head_epochs=2).phases] == [
        "head",
        "finetune",
    ]
    # ... and with recipe="auto" it is refused with the way out.
    with pytest.raises(ValueError, match=r"`head_epochs=2`.*closed form.*HINT"):
        kerasft.plan(shipped_model, data, recipe="auto", head_epochs=2)
    with pytest.raises(ValueError, match=r"`lr='find'`.*recipe='auto'"):
        kerasft.plan(shipped_model, data, recipe="auto", lr="find")


def test_small_data_trains_on_every_label_and_beats_the_probe(shipped_model, digits_split):
    result = kerasft.finetune(
        shipped_model, (digits_split.x_train, digits_split.y_train), verbose=0
    )
    assert [p.name for p in result.phases] == ["probe", "finetune"] and result.selection is None
    assert result.phases[1].epochs == result.decision.epochs  # a fixed budget: no early stop
    assert (
        result.probe.pooling == "head input" and "cross-validation" in result.probe.head.selection
    )
    test = (digits_split.x_test, digits_split.y_test)
    assert result.evaluate(test)["accuracy"] > 0.95  # measured 0.979 here (seed 0)


@pytest.mark.slow
def test_holdout_choice_then_refit_on_all_labels(shipped_model, digits):
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=25, seed=1)  # 250 examples: a holdout, then a refit
    result = kerasft.finetune(shipped_model, (split.x_train, split.y_train), verbose=0, epochs=3)
    chosen = result.selection
    assert (
        result.decision.refit and chosen is not None and chosen.best_phase in ("probe", "finetune")
    )
    assert chosen.phases[0].name == "probe" and "val_accuracy" in chosen.phases[0].history
    assert (
        result.phases[0].epochs == 1 and sum(result.spec.class_counts.values()) == 250
    )  # every label
    assert "refit:" in str(result.plan)
    if chosen.best_phase == "probe":  # chosen again, by cross-validation on all 250 labels
        assert "cross-validation" in result.probe.head.selection
    else:  # the probe the fine-tune grew from is fitted again as chosen, nothing chosen again
        assert result.probe.head.selection == "given"
        assert (
            result.probe.head.strength == chosen.probe.head.strength
            and "as chosen before" in result.probe.describe()
        )
    assert result.evaluate((split.x_test, split.y_test))["accuracy"] > 0.95
    # 250 labels: the convolutional network trains at three times its rate, nothing halved,
    # in the choosing run and in the refit
    assert not chosen.halving and not result.halving
    assert chosen.decision.rate == pytest.approx(9e-4) and not chosen.decision.candidates
    assert "carry the body further" in str(result.plan)
    if chosen.best_phase == "finetune":
        assert chosen.phases[1].learning_rate == pytest.approx(9e-4)
        assert result.phases[1].learning_rate == pytest.approx(9e-4)
        assert float(result.plan.phases[1].rate) == pytest.approx(9e-4)


def test_choosing_run_fine_tunes_half_the_budget_only_before_a_refit(shipped_model):
    profile = auto.profile_model(shipped_model, kerasft.find_head(shipped_model))
    holdout = dict(n_examples=300, n_train=240, batch_size=16, given_validation=False)
    chosen = auto.decide(profile, user={}, **holdout)
    assert chosen.refit and chosen.refit_epochs == 20 and chosen.epochs == 10
    assert chosen.steps == 10 * 15 and "half of them (10 epochs)" in " ".join(chosen.reasons)
    dense = dataclasses.replace(profile, family="mlp")
    assert auto.decide(dense, user={}, **holdout).refit_epochs == 20
    bert = dataclasses.replace(profile, family="transformer")  # 60 steps: 4 epochs of 15
    text = auto.decide(bert, user={}, **holdout)
    assert text.refit_epochs == 4 and text.epochs == 2 and text.steps == 2 * 15
    # a convolutional or dense fine-tune that wins continues for the other half; a
    # transformer's trains again for the whole budget
    said = {
        p.family: " ".join(auto.decide(p, user={}, **holdout).reasons) for p in (profile, dense)
    }
    assert all("continues on all labels for the other 10" in why for why in said.values())
    assert "a refit of it all 4" in " ".join(text.reasons) and "continues" not in text.reasons[2]
    assert [auto.continues_winner(f) for f in ("cnn", "mlp", "transformer")] == [True, True, False]
    assert chosen.refit_continues and not text.refit_continues
    # L2-SP anchors on the weights a run starts from: its winner trains again
    anchored = auto.decide(profile, user={"l2sp": 1e-4}, **holdout)
    assert not anchored.refit_continues and "a refit of it all 20" in " ".join(anchored.reasons)
    # epochs given, no holdout, validation data given, or no refit: the whole budget
    assert auto.decide(profile, user={"epochs": 6}, **holdout).refit_epochs is None
    for n, n_train, given in ((100, 100, False), (240, 240, True), (6000, 4800, False)):
        other = auto.decide(
            profile, n_examples=n, n_train=n_train, batch_size=16, given_validation=given, user={}
        )
        assert other.refit_epochs is None and "half of them" not in " ".join(other.reasons)
        assert other.steps >= 300 or other.epochs == 30  # the whole budget


def test_a_convolutional_or_dense_budget_covers_at_least_15_epochs(shipped_model):
    profile = auto.profile_model(shipped_model, kerasft.find_head(shipped_model))
    dense = dataclasses.replace(profile, family="mlp")
    common = dict(batch_size=32, given_validation=False, user={})
    for family in (profile, dense):
        # 4,800 examples train, 150 steps an epoch: 300 steps would be 2 passes; 15 are taken
        many = auto.decide(family, n_examples=6000, n_train=4800, **common)
        assert (many.epochs, many.steps, many.refit_epochs) == (15, 15 * 150, None)
        assert "sees its data at least 15 times" in " ".join(many.reasons)
        # 2,400 train of 3,000: chosen on half of those 15 epochs, the winner refitted on all
        refit = auto.decide(family, n_examples=3000, n_train=2400, **common)
        assert refit.refit and (refit.refit_epochs, refit.epochs) == (15, 7)
        # a few hundred examples: about 300 steps, at most 30 epochs, as before
        few = auto.decide(family, n_examples=300, n_train=240, **common)
        assert few.refit_epochs == 30 and "about 300 optimizer steps" in " ".join(few.reasons)
    # a transformer keeps its floor of 3 epochs; epochs= wins over every floor
    bert = dataclasses.replace(profile, family="transformer")
    assert auto.decide(bert, n_examples=6000, n_train=4800, **common).epochs == 3
    given = dict(common, user={"epochs": 4})
    assert auto.decide(profile, n_examples=3000, n_train=2400, **given).epochs == 4


def test_rate_candidates_only_on_validation_data_given(shipped_model):
    profile = auto.profile_model(shipped_model, kerasft.find_head(shipped_model))
    common = dict(n_train=240, batch_size=32, given_validation=False)
    dense = dataclasses.replace(profile, family="mlp")
    # a holdout of the user's own labels: the family's rate, nothing halved
    held = auto.decide(dense, n_examples=300, user={}, **common)
    assert held.selection == "holdout, then refit" and held.candidates == ()
    assert held.rate == pytest.approx(1e-3) and "successive halving" not in " ".join(held.reasons)
    # validation data given: the family's rate and three times it, by successive halving
    given = auto.decide(
        dense, n_examples=240, n_train=240, batch_size=32, given_validation=True, user={}
    )
    assert given.candidates == pytest.approx((3e-3,)) and "successive halving" in " ".join(
        given.reasons
    )
    # a rate given: one rate
    assert (
        auto.decide(
            dense,
            n_examples=240,
            n_train=240,
            batch_size=32,
            given_validation=True,
            user={"lr": 1e-3},
        ).candidates
        == ()
    )
    small = auto.decide(
        profile, n_examples=100, n_train=100, batch_size=8, given_validation=False, user={}
    )
    assert small.selection == "none" and small.candidates == ()
    # a convolutional network: with 200 labels or more, three times its rate outright;
    # with fewer and validation data given, both rates by successive halving
    many = auto.decide(profile, n_examples=300, user={}, **common)
    assert many.candidates == () and many.rate == pytest.approx(3 * small.rate)
    assert "successive halving" not in " ".join(many.reasons)
    assert auto.decide(profile, n_examples=300, user={"lr": 1e-3}, **common).rate == 1e-3
    few = auto.decide(
        profile, n_examples=100, n_train=100, batch_size=8, given_validation=True, user={}
    )
    assert few.rate == small.rate and few.candidates == pytest.approx((3 * small.rate,))
    bert = dataclasses.replace(profile, family="transformer")
    assert auto.decide(bert, n_examples=300, user={}, **common).candidates == ()


def test_halving_continues_the_rate_that_scores_best(shipped_model, digits):
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=5, seed=3)
    val = (split.x_test[:200], split.y_test[:200])
    data = (split.x_train, split.y_train)
    plan = kerasft.plan(shipped_model, data, validation_data=val, epochs=4)
    assert plan.phases[1].candidates and " or " in str(plan)
    result = kerasft.finetune(shipped_model, data, validation_data=val, epochs=4, verbose=0)
    tried = result.halving
    assert len(tried) == 2 and all(t["score"] is not None for t in tried)
    won = max(tried, key=lambda t: t["score"])["lr"]
    finetune = result.phases[1]
    assert finetune.learning_rate == pytest.approx(won)
    # the winner's first half is kept, not trained again: four epochs of history in all
    assert finetune.epochs == 4 and len(finetune.history["val_accuracy"]) == 4
    assert finetune.history["val_accuracy"][1] == pytest.approx(
        max(t["score"] for t in tried), abs=1e-3
    )


def test_never_worse_on_validation_than_the_probe(shipped_model, digits):
    """A fine-tune that diverges loses to the probe, and the probe's weights come back."""
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=10, seed=2)
    val = (split.x_test[:300], split.y_test[:300])
    result = kerasft.finetune(
        shipped_model,
        (split.x_train, split.y_train),
        validation_data=val,
        lr=5.0,
        optimizer="sgd",
        epochs=2,
        verbose=0,
    )
    probe_acc = result.phases[0].history["val_accuracy"][0]
    assert result.best_phase == "probe" and result.best_score == pytest.approx(probe_acc, abs=1e-4)
    assert result.evaluate(val)["accuracy"] == pytest.approx(probe_acc, abs=1e-6)


@pytest.mark.slow
def test_text_task_probes_both_poolings_and_keeps_the_users_preprocessor(tmp_path):
    from kerasft.jobs import textdata

    keras_hub = pytest.importorskip("keras_hub")
    reviews = textdata.rotten_tomatoes_few_shot(n_train=120, n_test=60, seed=0)
    small = small_bert_classifier(reviews.x_train)
    tokenizer = small.preprocessor.tokenizer
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=128,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=128
    )  # > needed
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor)
    with pytest.raises(ValueError, match=r"holds nothing out of 120 examples"):  # refused late:
        kerasft.finetune(
            task, (reviews.x_train, reviews.y_train), monitor="val_loss", copy=False, verbose=0
        )
    assert task.preprocessor is preprocessor and preprocessor.sequence_length == 128  # as it came
    result = kerasft.finetune(task, (reviews.x_train, reviews.y_train), epochs=1, verbose=0)
    assert set(result.probe.candidates) == {"cls", "mean"}
    assert (
        result.decision.sequence_length < 128 and result.model.preprocessor.sequence_length == 128
    )
    assert task.preprocessor.sequence_length == 128
    model = result.model
    if result.probe.pooling == "mean":
        assert type(model).__name__ == "PooledTextClassifier" and model.pooling == "mean"
    path = str(tmp_path / "task.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(reviews.x_test[:8], verbose=0),
        model.predict(reviews.x_test[:8], verbose=0),
        atol=1e-5,
    )


@pytest.mark.slow
def test_copy_false_leaves_the_users_task_whole_through_a_refit():
    """A probe on mean pooling returns another task; the user's keeps its preprocessor."""
    from kerasft.jobs import textdata

    reviews = textdata.rotten_tomatoes_few_shot(n_train=240, n_test=16, seed=0)
    task = small_bert_classifier(reviews.x_train)
    preprocessor = task.preprocessor
    data = (reviews.x_train, reviews.y_train)
    # 240 labels, a fifth held out as asked (a transformer holds none out below 500 by
    # itself), then the winner trained again on all of them
    result = kerasft.finetune(
        task, data, copy=False, epochs=1, seed=0, verbose=0, validation_split=0.2
    )
    assert result.selection is not None and "on all 240 labels" in result.decision.reasons[-1]
    assert result.probe.pooling == "mean" and result.model is not task
    assert task.preprocessor is preprocessor and preprocessor.sequence_length == 32
    assert task.predict(reviews.x_test, verbose=0).shape == (16, 2)
    assert result.model.predict(reviews.x_test, verbose=0).shape == (16, 2)


def test_a_transformer_holds_nothing_out_below_500_examples():
    """Below 500 labels a transformer's choosing run is left out: no holdout, no refit."""
    from kerasft.jobs import textdata

    reviews = textdata.rotten_tomatoes_few_shot(n_train=240, n_test=16, seed=0)
    task = small_bert_classifier(reviews.x_train)
    plan = kerasft.plan(task, (reviews.x_train, reviews.y_train))
    assert plan.decision.profile.family == "transformer" and plan.decision.selection == "none"
    assert "240 examples are too few to hold some out and choose on (< 500)" in str(plan)
    assert not plan.decision.refit and plan.decision.refit_epochs is None
    with pytest.raises(ValueError, match=r"holds nothing out of 240 examples \(fewer than 500\)"):
        kerasft.plan(task, (reviews.x_train, reviews.y_train), monitor="val_loss")


def test_a_validation_monitor_is_kept_for_the_choice_not_the_refit(shipped_model, digits):
    """The holdout is scored on the monitor given; the refit on all labels holds nothing out."""
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=21, seed=4)  # 210 examples: holdout, then refit
    data = (split.x_train, split.y_train)
    result = kerasft.finetune(shipped_model, data, monitor="val_loss", epochs=2, verbose=0)
    assert result.selection.monitor == "val_loss" and result.monitor == "loss"
    small = (split.x_train[:100], split.y_train[:100])  # too few to hold out: said so
    with pytest.raises(ValueError, match=r"recipe='auto' holds nothing out of 100 examples"):
        kerasft.plan(shipped_model, small, monitor="val_loss")


def test_each_phase_counts_its_own_training_metrics(shipped_model, digits_split):
    """A phase's first epoch does not count the evaluation that ended the phase before."""
    data = (digits_split.x_train, digits_split.y_train)
    result = kerasft.finetune(
        shipped_model,
        data,
        recipe="lp-ft",
        head_epochs=1,
        epochs=1,
        validation_split=0.2,
        verbose=0,
    )
    n = 80  # 100 labels, 20 held out
    for phase in result.phases:
        correct = phase.history["accuracy"][0] * n
        assert correct == pytest.approx(round(correct), abs=1e-3), (phase.name, correct)


def test_a_probe_must_beat_a_cnn_that_moves_further_by_two_standard_errors(shipped_model, digits):
    """From 200 labels a CNN's probe wins the holdout only by more than 1/sqrt(held out)."""
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=21, seed=4)  # 210 examples: 40 held out
    data = (split.x_train, split.y_train)
    plan = kerasft.plan(shipped_model, data)
    held_out = int(re.search(r"selection: (\d+) held out", str(plan)).group(1))
    assert plan.decision.selection == "holdout, then refit" and held_out == 40
    assert plan.decision.probe_margin == pytest.approx(1 / np.sqrt(40))
    assert "the probe wins the holdout only by more than 0.16 of accuracy" in str(plan)
    assert plan.decision.continues is False
    # Not when the holdout is scored on another monitor, the rate or budget is given, or
    # below 200 labels.
    assert kerasft.plan(shipped_model, data, monitor="val_loss").decision.probe_margin == 0
    assert kerasft.plan(shipped_model, data, lr=1e-3).decision.probe_margin == 0
    assert kerasft.plan(shipped_model, data, epochs=3).decision.probe_margin == 0
    small = kerasft.plan(shipped_model, (split.x_train[:100], split.y_train[:100]))
    assert small.decision.probe_margin == 0 and "the probe wins" not in str(small)


def test_a_probe_must_beat_a_cnn_regressor_by_two_standard_errors_of_its_loss(
    shipped_model, digits
):
    """For regression the margin is 2*sqrt(2/held out) of the probe's mean squared error."""
    x, _ = digits
    ink = x.reshape(len(x), -1).mean(axis=1)  # a real-valued target of each image
    data = (x[:210], ink[:210])  # 210 examples: 42 held out
    model = keras.Model(
        shipped_model.inputs, keras.layers.Dense(1)(shipped_model.layers[-2].output)
    )
    plan = kerasft.plan(model, data, head=kerasft.HeadConfig(task="regression"))
    held_out = int(re.search(r"selection: (\d+) held out", str(plan)).group(1))
    assert plan.decision.selection == "holdout, then refit" and held_out == 42
    assert plan.decision.probe_margin == pytest.approx(2 * np.sqrt(2 / 42))
    assert "where the fine-tune's loss is more than 1.44 times the probe's" in str(plan)
    # Below 200 labels a regression head still trains at three times the rate.
    small = kerasft.plan(model, (x[:100], ink[:100]), head=kerasft.HeadConfig(task="regression"))
    assert small.decision.rate == pytest.approx(9e-4) and "a regression target" in str(small)
    assert small.decision.probe_margin == 0  # nothing held out to choose on
    # Not for another loss, whose spread a mean squared error's does not tell.
    huber = kerasft.HeadConfig(task="regression", loss="huber")
    assert kerasft.plan(model, data, head=huber).decision.probe_margin == 0


def test_the_probe_handicap_is_a_fraction_of_its_loss(shipped_model, digits):
    """A loss-scored probe wins only where the fine-tune's loss is over (1 + margin) times its."""
    from kerasft.engine.hooks import _Tracker
    from kerasft.engine.runner import probe_handicap

    x, y = digits
    ink = x.reshape(len(x), -1).mean(axis=1)
    regressor = keras.Model(
        shipped_model.inputs, keras.layers.Dense(1)(shipped_model.layers[-2].output)
    )
    head = kerasft.HeadConfig(task="regression")
    decision = kerasft.plan(regressor, (x[:200], ink[:200]), head=head).decision
    margin = 2 * np.sqrt(2 / 40)  # 0.447
    assert decision.probe_margin_relative and decision.probe_margin == pytest.approx(margin)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for probe, finetuned, winner in (
        (80.6, 86.8, "finetune"),
        (92.5, 130.1, "finetune"),
        (92.5, 140.0, "probe"),
    ):
        tracker = _Tracker("val_loss", "min", final_only=True)
        logs = {"val_loss": probe}
        assert probe_handicap(decision, probe) == pytest.approx(margin * probe)
        tracker.offer(logs, model, "probe", probe_handicap(decision, probe))
        tracker.phase = "finetune"
        tracker.set_model(model)
        tracker.on_train_begin()
        tracker.on_epoch_end(0, {"val_loss": finetuned})
        tracker.on_train_end()
        assert tracker.best_phase == winner, (probe, finetuned)
    # Of accuracy the margin is the handicap itself, whatever the probe scored.
    split = datasets.few_shot_split(x, y, shots=21, seed=4)  # 210 examples: 40 held out
    accuracy = kerasft.plan(shipped_model, (split.x_train, split.y_train)).decision
    assert not accuracy.probe_margin_relative
    assert probe_handicap(accuracy, 0.9) == pytest.approx(1 / np.sqrt(40))
    assert probe_handicap(accuracy, None) == 0.0
    assert probe_handicap(None, 0.9) == 0.0


def test_a_handicapped_candidate_wins_only_by_more_than_its_handicap():
    """The tracker takes the handicap off the probe's score, not off what it reports."""
    from kerasft.engine.hooks import _Tracker

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    probe_weights = [w.copy() for w in model.get_weights()]
    for finetuned, winner in ((0.90, "finetune"), (0.80, "probe")):
        model.set_weights(probe_weights)
        tracker = _Tracker("val_accuracy", "max", final_only=True, tie_break="val_loss")
        tracker.offer({"val_accuracy": 0.95, "val_loss": 0.2}, model, "probe", handicap=0.1)
        model.set_weights([w + 1.0 for w in probe_weights])
        tracker.phase = "finetune"
        tracker.set_model(model)
        tracker.on_train_begin()
        tracker.on_epoch_end(0, {"val_accuracy": finetuned, "val_loss": 0.3})
        tracker.on_train_end()
        assert tracker.best_phase == winner
        assert tracker.best_value == pytest.approx(0.95 if winner == "probe" else finetuned)
        kept = probe_weights[0] if winner == "probe" else probe_weights[0] + 1.0
        np.testing.assert_allclose(tracker.best_weights[0], kept)


def test_a_probe_trained_by_gradient_carries_the_same_handicap(digits):
    """Where the closed form is unavailable the probe trains by ``fit``: its margin holds."""
    from kerasft.engine.hooks import _Tracker

    x, y = digits[0][:200], digits[1][:200]
    flat = x.reshape(200, -1).astype("float32") / 255.0
    model = keras.Sequential([keras.Input((flat.shape[1],)), keras.layers.Dense(10)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, metrics=["accuracy"])
    tracker = _Tracker("val_accuracy", "max", final_only=True, tie_break="val_loss")
    tracker.phase, tracker.handicap = "probe", lambda value: 1.0  # a whole accuracy: never wins
    model.fit(
        flat[:160],
        y[:160],
        validation_data=(flat[160:], y[160:]),
        epochs=2,
        verbose=0,
        callbacks=[tracker],
    )
    assert tracker.best_phase == "probe"  # alone it is the best there is
    tracker.phase, tracker.handicap = "finetune", None
    tracker.on_train_begin()
    tracker.on_epoch_end(0, {"val_accuracy": 0.1, "val_loss": 2.3})
    tracker.on_train_end()
    assert tracker.best_phase == "finetune" and tracker.best_value == pytest.approx(0.1)


def test_a_dense_network_below_the_holdout_line_returns_its_probe(digits):
    """A tabular MLP with < 200 labels and nothing held out: the probe, no fine-tune."""
    x, y = digits
    flat = x.reshape(len(x), -1).astype("float32") / 255.0
    inputs = keras.Input((flat.shape[1],))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    mlp = keras.Model(inputs, keras.layers.Dense(5, name="head")(hidden))
    mlp.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    source = y < 5
    mlp.fit(flat[source], y[source], epochs=3, batch_size=64, verbose=0)  # "pretrained" on 0-4
    target = np.flatnonzero(y >= 5)
    train, test = target[:120], target[120:]
    data = (flat[train], y[train] - 5)
    result = kerasft.finetune(mlp, data, seed=0, verbose=0)
    assert result.decision.epochs == 0 and [p.name for p in result.phases] == ["probe"]
    assert "fine-tune: none, the probe is returned" in str(result.plan)
    assert "the fine-tune trains on all labels" not in str(result.plan)
    assert result.evaluate((flat[test], y[test] - 5))["accuracy"] > 0.6
    # Asked for a fine-tune (epochs or a rate), it fine-tunes.
    for given in ({"epochs": 2}, {"lr": 1e-3}):
        plan = kerasft.plan(mlp, data, **given)
        assert plan.decision.epochs > 0 and "the probe is returned" not in str(plan), given
    # Not with a holdout to choose on, nor for regression, nor for a model with embeddings.
    profile = auto.profile_model(mlp, mlp.layers[-1])
    assert profile.family == "mlp" and not profile.embeddings
    small = dict(n_examples=120, n_train=120, batch_size=8, given_validation=False, user={})
    assert auto.decide(profile, task="classification", **small).epochs == 0
    assert auto.decide(profile, task="regression", **small).epochs > 0
    held = dict(small, n_examples=240, n_train=192)
    assert auto.decide(profile, task="classification", **held).epochs > 0
    tokens = keras.Input((6,), dtype="int32")
    bag = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
    text = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.Dense(4)(bag)))
    words = auto.profile_model(text, text.layers[-1])
    assert words.family == "mlp" and words.embeddings
    assert auto.decide(words, task="classification", **small).epochs > 0
    # With a holdout, a model with embeddings keeps its fine-tune unless the probe is
    # clearly better; a tabular MLP and a regressor with embeddings choose on the scores.
    kept = auto.decide(words, task="classification", **held)
    assert kept.probe_margin == pytest.approx(1 / np.sqrt(48)) and not kept.probe_margin_relative
    assert any("a model that trains its embeddings wins" in r for r in kept.reasons)
    assert auto.decide(profile, task="classification", **held).probe_margin == 0
    assert auto.decide(words, task="regression", **held).probe_margin == 0
    # A model with embeddings counts 600 steps (a step moves only the vectors of its
    # batch's words): 25 epochs of 24 steps; a tabular MLP 300, under its floor of 15.
    assert any(
        r.startswith("budget: about 600 optimizer steps for a model with embeddings: 25")
        for r in kept.reasons
    ), kept.reasons
    tabular = auto.decide(profile, task="classification", **held)
    assert any(r.startswith("budget: 15 epochs of 24 steps") for r in tabular.reasons)
    # After its warmup, a classifier with embeddings keeps its peak rate to the end; the
    # others decay along a cosine, and so does the plan's phase.
    assert kept.schedule == "warmup_constant"
    assert any("warmup 10% and then that rate to the end" in r for r in kept.reasons)
    assert tabular.schedule == "warmup_cosine"
    assert auto.decide(words, task="regression", **held).schedule == "warmup_cosine"
    # ... and starts from the probe's head with its kernel halved; the others as it is.
    assert kept.head_scale == 0.5
    assert any(
        r.startswith("head: the fine-tune starts from the probe's head") for r in kept.reasons
    )
    assert tabular.head_scale == auto.decide(words, task="regression", **held).head_scale == 1.0
    phases = plan_lib.build_plan(
        text, text.layers[-1], RecipeOptions(recipe="auto"), 24, decision=kept
    ).phases
    assert [p.schedule for p in phases] == ["constant", "warmup_constant"]


def test_a_cnn_regressor_fine_tunes_from_a_new_head_not_the_probes(shipped_model, digits):
    """Regression with training BatchNormalization: the fine-tune starts from a head drawn
    afresh with its bias at the targets' mean; the probe stays a candidate."""
    from kerasft import probe as probe_lib

    x, y = digits
    ink = x.reshape(len(x), -1).mean(axis=1).astype("float32")  # a real-valued target
    regressor = keras.Model(
        shipped_model.inputs, keras.layers.Dense(1)(shipped_model.layers[-2].output)
    )
    head = kerasft.HeadConfig(task="regression")
    seen = []

    class FirstStep(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if not seen:
                dense = self.model.layers[-1]
                seen.append((np.array(dense.kernel), np.array(dense.bias)))

    result = kerasft.finetune(
        regressor,
        (x[:100], ink[:100]),
        head=head,
        epochs=1,
        seed=0,
        verbose=0,
        callbacks=[FirstStep()],
    )
    plan = str(result.plan)
    assert result.decision.fresh_head and "from a new head" in plan
    assert "head: with fewer than 500 labels, the fine-tune starts" in plan
    kernel, bias = seen[0]
    assert bias == pytest.approx([ink[:100].mean()], rel=1e-5)
    assert not np.allclose(kernel, result.probe.head.kernel.reshape(kernel.shape))
    # The drawn kernel is a new Dense layer's (Glorot uniform), not the probe's.
    limit = np.sqrt(6.0 / (kernel.shape[0] + kernel.shape[1]))
    assert np.all(np.abs(kernel) <= limit) and np.std(kernel) > limit / 4
    layer = keras.layers.Dense(1)
    layer.build((None, 4))
    probe_lib.redraw_head(layer, np.array([2.5]), seed=1)
    assert np.array(layer.bias) == pytest.approx([2.5])
    # Not from 500 labels up, for classification, nor with BatchNormalization in
    # inference mode.
    many = kerasft.plan(regressor, (x[:500], ink[:500]), head=head)
    assert not many.decision.fresh_head and "from the probe" in str(many)
    assert not kerasft.plan(shipped_model, (x[:100], y[:100])).decision.fresh_head
    frozen_bn = kerasft.plan(regressor, (x[:100], ink[:100]), head=head, train_bn=False)
    assert not frozen_bn.decision.fresh_head and "from the probe" in str(frozen_bn)


def test_a_planned_new_head_with_no_closed_form_probe_says_it_is_not_drawn(
    shipped_model, digits, capsys
):
    """A sigmoid regression head whose targets leave 0-1 has no closed-form probe (nor a
    targets' mean in its units): the fine-tune starts from the head trained in its place,
    and the run says so where the plan had promised a new one."""
    x, y = digits
    regressor = keras.Model(
        shipped_model.inputs,
        keras.layers.Dense(1, activation="sigmoid")(shipped_model.layers[-2].output),
    )
    head = kerasft.HeadConfig(task="regression", activation="sigmoid")
    result = kerasft.finetune(
        regressor, (x[:100], y[:100].astype("float32")), head=head, epochs=1, seed=0, verbose=1
    )
    out = capsys.readouterr().out
    assert result.decision.fresh_head and result.probe is None
    assert "no closed-form probe" in out
    assert "not one drawn afresh as planned" in out
    assert "starts from a head drawn afresh" not in out
