"""The linear probe: closed-form heads on real features, folded into real Keras heads."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest
from sklearn import datasets as skdata
from sklearn.linear_model import LogisticRegression, Ridge

import kerasft
from kerasft import probe


@pytest.fixture(scope="module")
def pixels():
    """sklearn's 8x8 digits as 64 raw features (real handwriting), split 600 / 1197."""
    x, y = skdata.load_digits(return_X_y=True)
    return x[:600], y[:600], x[600:], y[600:]


def test_multinomial_head_matches_scikit_learn_at_the_chosen_strength(pixels):
    x, y, xt, yt = pixels
    head = probe.fit_linear_head(x, y, "sparse", 10)
    assert (
        head.selection == "5-fold cross-validation" and head.strength in probe.REGULARIZATION_GRID
    )
    mean = x.mean(0)
    std = np.sqrt(np.mean((x - mean) ** 2))  # one scale for all features
    reference = LogisticRegression(C=head.strength, max_iter=2000, tol=1e-8).fit(
        (x - mean) / std, y
    )
    expected = reference.predict_proba((xt - mean) / std)
    got = keras.ops.convert_to_numpy(keras.ops.softmax(head.logits(xt)))
    np.testing.assert_allclose(
        got, expected, atol=2e-3
    )  # the standardisation folded into raw-feature weights
    assert np.mean(head.logits(xt).argmax(1) == yt) > 0.9


def test_strength_is_chosen_on_validation_when_given(pixels):
    x, y, xt, yt = pixels
    head = probe.fit_linear_head(x, y, "sparse", 10, validation=(xt[:300], yt[:300]))
    assert head.selection == "validation"
    assert head.scores[head.strength] == min(head.scores.values())
    refit = probe.fit_linear_head(
        x, y, "sparse", 10, validation=(xt[:300], yt[:300]), refit_on_all=True
    )
    assert (
        refit.selection.endswith("refit on training and validation data")
        and refit.strength == head.strength
    )


def test_binary_multilabel_and_regression_heads(pixels):
    x, y, xt, yt = pixels
    binary = probe.fit_linear_head(x, (y % 2)[:, None].astype("float32"), "binary", 1)
    assert (
        binary.kernel.shape == (64, 1) and np.mean((binary.logits(xt)[:, 0] > 0) == (yt % 2)) > 0.85
    )
    labels = np.stack([y % 2 == 0, y >= 5, np.isin(y, [0, 4, 6, 8, 9])], axis=1).astype("float32")
    truth = np.stack([yt % 2 == 0, yt >= 5, np.isin(yt, [0, 4, 6, 8, 9])], axis=1)
    multi = probe.fit_linear_head(x, labels, "multi_hot", 3)
    assert multi.kernel.shape == (64, 3) and np.mean((multi.logits(xt) > 0) == truth) > 0.85
    xr, yr = skdata.load_diabetes(return_X_y=True)  # real regression targets
    ridge = probe.fit_linear_head(xr[:300], yr[:300, None], "continuous", 1)
    mean = xr[:300].mean(0)
    std = np.sqrt(np.mean((xr[:300] - mean) ** 2))
    expected = (
        Ridge(alpha=ridge.strength)
        .fit((xr[:300] - mean) / std, yr[:300])
        .predict((xr[300:] - mean) / std)
    )
    np.testing.assert_allclose(ridge.logits(xr[300:])[:, 0], expected, rtol=1e-6, atol=1e-6)


def test_given_strengths_fit_again_without_choosing(pixels):
    x, y, _, _ = pixels
    chosen = probe.fit_linear_head(x[:300], y[:300], "sparse", 10)
    assert chosen.strengths == (chosen.strength,) and 0.8 < chosen.accuracy <= 1.0
    assert chosen.errors.shape == (300,) and set(np.unique(chosen.errors)) <= {0.0, 1.0}
    assert chosen.accuracy == pytest.approx(1.0 - chosen.errors.mean())
    again = probe.fit_linear_head(x, y, "sparse", 10, strengths=chosen.strengths)
    assert again.selection == "given" and again.strength == chosen.strength and again.errors is None
    labels = np.stack([y % 2 == 0, y >= 5], axis=1).astype("float32")
    multi = probe.fit_linear_head(x, labels, "multi_hot", 2)
    assert len(multi.strengths) == 2 and multi.accuracy is None and multi.errors.shape == (600,)
    assert (
        probe.fit_linear_head(x, labels, "multi_hot", 2, strengths=multi.strengths).strengths
        == multi.strengths
    )
    with pytest.raises(ValueError, match="`strengths` must hold 2 value"):
        probe.fit_linear_head(x, labels, "multi_hot", 2, strengths=(1.0,))


def test_features_kept_unless_another_makes_clearly_fewer_errors(pixels):
    x, y, _, _ = pixels
    noise = np.random.default_rng(0).normal(size=(len(x), 16))
    good = probe.fit_linear_head(x, y, "sparse", 10)
    useless = probe.fit_linear_head(noise, y, "sparse", 10)
    # clearly better features win over the preferred ones; the preferred are kept otherwise
    assert probe._choose_features({"mean": useless, "cls": good}, "mean") == "cls"
    assert probe._choose_features({"mean": good, "cls": useless}, "mean") == "mean"
    # nearly the same features (a few pixels dropped): not clearly better, the preferred stay
    near = probe.fit_linear_head(x[:, 2:], y, "sparse", 10)
    assert abs(near.accuracy - good.accuracy) < 0.03
    assert probe._choose_features({"mean": near, "cls": good}, "mean") == "mean"
    assert probe._choose_features({"mean": good, "cls": near}, "mean") == "mean"


def test_bad_features_are_refused_by_name(pixels):
    x, y, _, _ = pixels
    with pytest.raises(ValueError, match="`features` and `y` must have the same length"):
        probe.fit_linear_head(x, y[:10], "sparse", 10)
    broken = x.copy()
    broken[3, 3] = np.nan
    with pytest.raises(ValueError, match="`features` holds NaN"):
        probe.fit_linear_head(broken, y, "sparse", 10)


def test_probe_sets_dense_and_conv_heads_so_the_model_predicts_the_probe(digits_small):
    x, y = digits_small
    dense = keras.models.load_model(kerasft.__path__[0] + "/../saved_models/mnist_cnn.keras")
    features = probe.head_features(dense, x)
    head = probe.fit_linear_head(features, y, "sparse", 10)
    probe.set_head_weights(kerasft.find_head(dense), head)
    np.testing.assert_allclose(
        dense.predict(x[:20], verbose=0),
        keras.ops.convert_to_numpy(keras.ops.softmax(head.logits(features[:20]))),
        atol=1e-4,
    )
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(6, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    h = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    out = keras.layers.Flatten()(keras.layers.Conv2D(10, 1, name="logits")(h))
    conv = keras.Model(inputs, out)
    feats = probe.head_features(conv, x)
    linear = probe.fit_linear_head(feats, y, "sparse", 10)
    probe.set_head_weights(conv.get_layer("logits"), linear)
    np.testing.assert_allclose(
        conv.predict(x[:20], verbose=0), linear.logits(feats[:20]), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="does not fit head"):
        probe.set_head_weights(
            conv.get_layer("logits"), probe.LinearHead(np.zeros((5, 3)), np.zeros(3), 1, 0, "")
        )


def test_features_without_signal_are_reported(shipped_model_path):
    from kerasft import datasets

    split = datasets.digits_few_shot(shots=10, seed=0)
    x, y = split.x_train, split.y_train
    assert probe.chance_loss(y, "sparse") == pytest.approx(np.log(10))
    # 0..1 pixels into a model that rescales 0..255 itself: said before training
    with pytest.warns(
        UserWarning, match=r"rescales them itself \(layer 'rescale'.*HINT: pass the pixels unscaled"
    ):
        kerasft.plan(shipped_model_path, (x / 255.0, y))
    # blank inputs: the frozen features say nothing, and the probe says so
    with pytest.warns(UserWarning, match=r"carry no signal about these labels"):
        result = kerasft.finetune(shipped_model_path, (x * 0.0, y), epochs=1, verbose=0)
    assert result.probe.no_signal
    # the same digits as the model expects: no warning
    model = keras.models.load_model(shipped_model_path)
    task = kerasft.engine.setup_task(
        model, kerasft.data.infer_spec(y), kerasft.Options.from_keywords().task, seed=0
    )
    choice = probe.fit_probe(model, task, types.SimpleNamespace(arrays=(x, y)))
    assert not choice.no_signal and choice.chance == pytest.approx(np.log(10))


def test_a_penalty_centred_on_the_pretrained_head(shipped_model, digits):
    """``centre=``: L2 towards a pretrained head of the same classes (MNIST -> digits)."""
    x, y = digits
    split = kerasft.datasets.few_shot_split(x, y, shots=3, seed=0)
    features = probe.head_features(shipped_model, split.x_train)
    test_features = probe.head_features(shipped_model, split.x_test)
    kernel0, bias0 = shipped_model.get_layer("predictions").get_weights()
    centre = (kernel0.astype("float64"), bias0.astype("float64"))

    def accuracy(head):
        return float(np.mean(head.logits(test_features).argmax(1) == split.y_test))

    zero = probe.fit_linear_head(features, split.y_train, "sparse", 10, seed=0)
    both = probe.fit_linear_head(features, split.y_train, "sparse", 10, seed=0, centre=centre)
    # Both centres tried on the same folds; the MNIST head's is the lower held-out loss here.
    assert zero.centre == "zero" and both.centre == "pretrained head"
    assert both.score < zero.score and accuracy(both) > accuracy(zero)
    # Pulled hard enough, the kernel is the pretrained one; the bias moves freely.
    pinned = probe.fit_linear_head(
        features, split.y_train, "sparse", 10, strengths=(1e-7,), centre=centre
    )
    assert pinned.centre == "pretrained head" and pinned.selection == "given"
    np.testing.assert_allclose(pinned.kernel, centre[0], atol=1e-3)
    # A centre that does not fit the problem (another width, or labels) is not used.
    wrong = (centre[0][:, :5], centre[1][:5])
    assert (
        probe.fit_linear_head(features, split.y_train, "sparse", 10, centre=wrong).centre == "zero"
    )
    binary = probe.fit_linear_head(features, split.y_train % 2, "binary", 1, centre=centre)
    assert binary.centre == "zero"


def test_centred_fits_start_from_the_neighbouring_strength(pixels, monkeypatch):
    """Cross-validation walks the strengths; each centred fit starts from the last one's."""
    import scipy.optimize

    x, y, _, _ = pixels
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    rng = np.random.default_rng(0)
    centre = (rng.normal(scale=0.1, size=(64, 10)), np.zeros(10))
    iterations = []
    minimize = scipy.optimize.minimize

    def counted(*args, **kwargs):
        solved = minimize(*args, **kwargs)
        iterations.append(solved.nit)
        return solved

    monkeypatch.setattr(scipy.optimize, "minimize", counted)
    cold = probe._fit_towards(z, y, centre, 1.0, None)
    warm = probe._fit_towards(
        z, y, centre, 1.0, None, start=probe._fit_towards(z, y, centre, 0.3, None)
    )
    # The same optimum (a convex problem), reached in fewer L-BFGS iterations.
    np.testing.assert_allclose(warm.kernel, cold.kernel, atol=2e-3)
    np.testing.assert_allclose(warm.bias, cold.bias, atol=2e-3)
    assert iterations[2] < iterations[0]
    # _select hands each fold's fit to the next strength: fewer iterations, same choice.
    problem = probe._Problem("multinomial", 10, None, 0, single_label=True, centre=centre)
    iterations.clear()
    walked = probe._select(problem, z[:200], y[:200], None, None, 3, 0)
    warm_total = sum(iterations)
    fit_towards = probe._fit_towards
    monkeypatch.setattr(
        probe,
        "_fit_towards",
        lambda x, y, c, s, w, start=None, tol=None: fit_towards(x, y, c, s, w, tol=tol),
    )
    iterations.clear()
    cold_walk = probe._select(problem, z[:200], y[:200], None, None, 3, 0)
    assert walked[0] == cold_walk[0] and warm_total < sum(iterations)


@pytest.mark.parametrize("centred", [False, True], ids=["zero", "centred"])
def test_strength_selection_solves_loosely_and_chooses_as_a_tight_solve_does(
    pixels, monkeypatch, centred
):
    """Cross-validation's fits stop at _SELECTION_TOL: the same losses and choice, fewer steps."""
    import scipy.optimize

    x, y, _, _ = pixels
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    centre = (np.random.default_rng(0).normal(scale=0.1, size=(64, 10)), np.zeros(10))
    problem = probe._Problem(
        "multinomial", 10, None, 0, single_label=True, centre=centre if centred else None
    )
    iterations = []
    minimize = scipy.optimize.minimize

    def counted(*args, **kwargs):  # scikit-learn's L-BFGS and the centred fit both call it
        solved = minimize(*args, **kwargs)
        iterations.append(solved.nit)
        return solved

    monkeypatch.setattr(scipy.optimize, "minimize", counted)
    loose = probe._select(problem, z[:300], y[:300], None, None, 5, 0)
    loose_steps = sum(iterations)
    iterations.clear()
    monkeypatch.setattr(probe, "_SELECTION_TOL", 1e-9)
    tight = probe._select(problem, z[:300], y[:300], None, None, 5, 0)
    assert loose[0] == tight[0]  # the strength chosen
    assert set(loose[3]) == set(tight[3])  # the strengths walked
    for strength, score in tight[3].items():  # within 0.7% at worst (C=100, nearly separable)
        assert abs(loose[3][strength] - score) < 0.02 * score, strength
    assert loose_steps < 0.8 * sum(iterations)


def test_finetune_centres_the_probe_on_a_kept_head_only_where_it_helps(shipped_model, digits):
    """The MNIST head is a good centre for digits; with the labels renamed it is not."""
    x, y = digits
    split = kerasft.datasets.few_shot_split(x, y, shots=3, seed=0)
    same = kerasft.finetune(shipped_model, (split.x_train, split.y_train), epochs=0, verbose=0)
    assert same.probe.head.centre == "pretrained head"
    assert "towards the pretrained head" in same.probe.describe()
    renamed = (split.y_train + 1) % 10  # class c is now called c + 1: the head means otherwise
    other = kerasft.finetune(shipped_model, (split.x_train, renamed), epochs=0, verbose=0)
    assert other.probe.head.centre == "zero"


def test_a_sigmoid_regression_head_is_probed_in_its_logits(shipped_model, digits_small):
    """Targets in 0-1 through a sigmoid head: the probe fits their logits, not the values."""
    x, y = digits_small
    share = ((y + 0.5) / 10.0).astype("float32")  # each digit's value as a share of 10
    spec = kerasft.data.infer_spec(share)

    def probed(activation: str):
        model = keras.models.clone_model(shipped_model)
        model.set_weights(shipped_model.get_weights())
        options = kerasft.Options.from_keywords(head=kerasft.HeadConfig(activation=activation))
        task = kerasft.engine.setup_task(model, spec, options.task, seed=0)
        choice = probe.fit_probe(task.model, task, types.SimpleNamespace(arrays=(x, share)))
        predicted = choice.model.predict(x, verbose=0)[:, 0]
        return choice, float(np.mean((predicted - share) ** 2))

    sigmoid, sigmoid_mse = probed("sigmoid")
    linear, linear_mse = probed("linear")
    assert probe.surgery.head_activation(sigmoid.model) == "sigmoid"
    # fitted in logits and read through the sigmoid: as close as the linear head
    assert sigmoid_mse < 1.5 * linear_mse and sigmoid_mse < 0.5 * np.var(share)
    assert sigmoid.train_loss == pytest.approx(sigmoid_mse, rel=1e-3)
    logits = np.log(share) - np.log1p(-share)
    assert float(np.squeeze(sigmoid.target_mean)) == pytest.approx(logits.mean(), abs=1e-6)
    assert float(np.squeeze(linear.target_mean)) == pytest.approx(share.mean(), rel=1e-5)
    edges = probe.pre_activation_targets(np.array([0.0, 0.5, 1.0]), "sigmoid")
    np.testing.assert_allclose(edges, [np.log(0.01 / 0.99), 0.0, np.log(0.99 / 0.01)])
    np.testing.assert_allclose(probe.pre_activation_targets(np.array([-1.0, 0.0]), "tanh")[1], 0.0)
    with pytest.raises(probe.ProbeUnavailable, match=r"outputs values in \[0, 1\].*\[0, 9\]"):
        probe.pre_activation_targets(y.astype("float64"), "sigmoid")
    with pytest.raises(probe.ProbeUnavailable, match="activation 'relu'"):
        probe.pre_activation_targets(share, "relu")
