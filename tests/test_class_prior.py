"""HeadConfig(class_prior=...): the returned model predicts for the class proportions given."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import kerasft
from kerasft import datasets


def _dense_digits_model(use_bias: bool = True) -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    outputs = keras.layers.Dense(10, activation="softmax", use_bias=use_bias, name="head")(h)
    return keras.Model(inputs, outputs, name="dense_digits")


def _skewed(x: np.ndarray, y: np.ndarray, prior: np.ndarray, seed: int = 0):
    """Examples of ``(x, y)`` drawn in ``prior``'s proportions (as many of class 0 as there are)."""
    rng = np.random.default_rng(seed)
    per_class = {c: rng.permutation(np.flatnonzero(y == c)) for c in range(10)}
    total = int(len(per_class[0]) / prior[0])
    keep = np.concatenate([per_class[c][: int(round(prior[c] * total))] for c in range(10)])
    return x[keep], y[keep]


def test_class_prior_shifts_the_head_bias_and_predicts_for_those_proportions(digits, monkeypatch):
    # 30 labels of each digit (auto: a holdout, a choice, then all labels), the model to
    # meet a population where half the digits are 0: once, at the very end, after the
    # refit, the returned model's head bias moves by log(prior / seen); nothing else does.
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=30, seed=0)
    prior = np.full(10, 0.5 / 9)
    prior[0] = 0.5
    seen = []  # the weights of every model the shift is applied to, before it
    apply = kerasft.engine.prior.apply

    def spied(model, spec, options):
        seen.append((model, [w.copy() for w in model.get_weights()]))
        return apply(model, spec, options)

    monkeypatch.setattr(kerasft.engine.prior, "apply", spied)
    result = kerasft.finetune(
        _dense_digits_model(),
        (split.x_train, split.y_train),
        verbose=0,
        head=kerasft.HeadConfig(class_prior=prior * 7),  # scaled to sum to 1
    )
    assert result.selection is not None  # a choosing run, then all labels
    assert len(seen) == 1 and seen[0][0] is result.model
    assert result.class_prior == pytest.approx(prior.tolist())
    before, after = seen[0][1], result.model.get_weights()
    for a, b in zip(before[:-1], after[:-1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(after[-1] - before[-1], np.log(prior / 0.1), rtol=1e-5, atol=1e-5)
    # on digits drawn in those proportions, the shifted model beats the same one unshifted
    xt, yt = _skewed(split.x_test, split.y_test, prior)  # digits not trained on
    assert np.mean(yt == 0) == pytest.approx(0.5, abs=0.02)
    unshifted = keras.models.clone_model(result.model)
    unshifted.set_weights(before)
    accuracy = {
        name: float(np.mean(m.predict(xt, verbose=0).argmax(1) == yt))
        for name, m in (("plain", unshifted), ("shifted", result.model))
    }
    assert accuracy["shifted"] > accuracy["plain"]
    assert result.evaluate((xt, yt))["accuracy"] == pytest.approx(accuracy["shifted"])


def test_class_prior_counts_class_weights_in_what_training_saw(digits_small):
    # balanced weights on balanced labels change nothing training saw: the same shift
    x, y = digits_small
    prior = {c: (2.0 if c < 5 else 1.0) for c in range(10)}
    result = kerasft.finetune(
        _dense_digits_model(),
        (x, y),
        recipe="head",
        head_epochs=1,
        class_weight="balanced",
        verbose=0,
        head=kerasft.HeadConfig(class_prior=prior),
    )
    expected = np.asarray([prior[c] for c in range(10)]) / 15.0
    assert result.class_prior == pytest.approx(expected.tolist())
    # the model card lists what was asked for, as numbers
    card = kerasft.export.model_card(result=result).to_markdown()
    assert "class_prior" in card and '"0": 2.0' in card


@pytest.mark.parametrize(
    "value",
    [[0.5, -0.5], [1.0], "rare", {0: 0.5, "a": 0.5}, [0.2, float("nan")], [True, False]],
)
def test_class_prior_bad_values_name_the_argument(value):
    with pytest.raises(ValueError, match="Argument `class_prior` must be None"):
        kerasft.HeadConfig(class_prior=value)


def test_class_prior_that_does_not_fit_the_model_or_task_fails_before_training(digits_small):
    x, y = digits_small
    data = (x, y)
    with pytest.raises(ValueError, match="has 3 proportions, but the labels have 10 classes"):
        kerasft.finetune(
            _dense_digits_model(), data, verbose=0, head=kerasft.HeadConfig(class_prior=[1, 1, 1])
        )
    with pytest.raises(ValueError, match=r"missing ids \[9\]"):
        kerasft.plan(
            _dense_digits_model(),
            data,
            head=kerasft.HeadConfig(class_prior={c: 1 for c in range(9)}),
        )
    with pytest.raises(ValueError, match="needs a Dense head with a bias"):
        kerasft.plan(
            _dense_digits_model(use_bias=False),
            data,
            head=kerasft.HeadConfig(class_prior=[1] * 10),
        )
    with pytest.raises(ValueError, match="task='regression'"):
        kerasft.finetune(
            _dense_digits_model(),
            (x, y.astype("float32") + 0.5),
            verbose=0,
            head=kerasft.HeadConfig(task="regression", class_prior=[1, 1]),
        )
