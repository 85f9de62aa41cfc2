"""L2-SP and weight clipping: the penalty, its effect on training, saving with the model."""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest

import kerasft
from kerasft import regularizers


def test_docstring_examples_run():
    result = doctest.testmod(regularizers)
    assert result.attempted >= 4 and result.failed == 0


def test_l2sp_value_and_config_round_trip():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype("float32")
    w = w0 + rng.normal(size=(3, 4)).astype("float32")
    reg = kerasft.L2SP(alpha=0.3, reference=w0)
    assert float(reg(keras.ops.convert_to_tensor(w))) == pytest.approx(
        0.3 * np.sum((w - w0) ** 2), rel=1e-5
    )
    assert float(reg(keras.ops.convert_to_tensor(w0))) == 0.0
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(restored, kerasft.L2SP) and restored.alpha == 0.3
    np.testing.assert_array_equal(restored.reference, w0)


def test_apply_l2sp_adds_penalties_of_trainable_layers_only(shipped_model):
    report = kerasft.apply_l2sp(shipped_model, alpha=0.5, beta=0.01, new_layers="predictions")
    assert "fc/kernel" in report["l2sp"] and "block1_conv1/kernel" in report["l2sp"]
    assert report["l2"] == ["predictions/kernel", "predictions/bias"]
    assert not any("bn" in p for p in report["l2sp"]), "normalization layers are skipped by default"
    # At the pretrained point the L2-SP terms are zero; only the new head's L2 remains.
    head = shipped_model.get_layer("predictions").kernel
    expected = 0.01 * float(np.sum(keras.ops.convert_to_numpy(head) ** 2))
    expected += 0.01 * float(
        np.sum(keras.ops.convert_to_numpy(shipped_model.get_layer("predictions").bias) ** 2)
    )
    assert float(sum(shipped_model.losses)) == pytest.approx(expected, rel=1e-4)
    fc = shipped_model.get_layer("fc").kernel
    fc.assign(fc + 0.1)
    n = int(np.prod(fc.shape))
    assert float(sum(shipped_model.losses)) == pytest.approx(expected + 0.5 * 0.01 * n, rel=1e-3)
    kerasft.freeze(shipped_model, names=["fc"])
    assert float(sum(shipped_model.losses)) == pytest.approx(expected, rel=1e-4)


def test_l2sp_keeps_weights_closer_to_pretrained(shipped_model, digits_small):
    pretrained = {n: shipped_model.get_layer(n).get_weights()[0] for n in ("block2_conv2", "fc")}
    common = dict(recipe="full", epochs=2, validation_split=0.0, patience=None, verbose=0)
    plain = kerasft.finetune(shipped_model, digits_small, **common)
    anchored = kerasft.finetune(shipped_model, digits_small, l2sp=1.0, **common)
    assert len(anchored.regularization.l2sp["l2sp"]) > 0

    def moved(result, name):
        return np.linalg.norm(result.model.get_layer(name).get_weights()[0] - pretrained[name])

    assert moved(anchored, "fc") < 0.7 * moved(plain, "fc")
    assert moved(anchored, "block2_conv2") < 0.85 * moved(plain, "block2_conv2")
    assert moved(anchored, "fc") > 0, "L2-SP pulls weights back, it does not freeze them"


def test_regularized_model_saves_and_loads(tmp_path, shipped_model):
    kerasft.apply_l2sp(shipped_model, alpha=0.2, beta=0.0)
    kerasft.clip_weights(shipped_model, 0.05, layers="fc")
    path = str(tmp_path / "anchored.keras")
    shipped_model.save(path)
    loaded = keras.models.load_model(path)
    reg = loaded.get_layer("fc").kernel_regularizer
    assert isinstance(reg, kerasft.L2SP) and reg.alpha == 0.2
    np.testing.assert_array_equal(reg.reference, shipped_model.get_layer("fc").get_weights()[0])
    assert isinstance(loaded.get_layer("fc").kernel_constraint, kerasft.ClipWeights)
    assert loaded.get_layer("fc").kernel.constraint is not None
    assert float(sum(loaded.losses)) == pytest.approx(0.0, abs=1e-6)


def test_clip_weights_bounds_chosen_layers_only(shipped_model, shipped_model_path, digits_small):
    x, y = digits_small
    paths = kerasft.clip_weights(shipped_model, 0.02, layers=["fc", "predictions"])
    assert paths == ["fc/kernel", "fc/bias", "predictions/kernel", "predictions/bias"]
    assert np.abs(shipped_model.get_layer("fc").get_weights()[0]).max() > 0.02
    shipped_model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert np.abs(shipped_model.get_layer("fc").get_weights()[0]).max() <= 0.02 + 1e-7
    assert np.abs(shipped_model.get_layer("block2_conv2").get_weights()[0]).max() > 0.02
    everything = kerasft.clip_weights(keras.models.load_model(shipped_model_path), 1.0)
    assert not any("bn" in p for p in everything), "normalization scales are not clipped by default"


def test_finetune_clip_weights(shipped_model, digits_small):
    result = kerasft.finetune(
        shipped_model,
        digits_small,
        recipe="full",
        epochs=1,
        clip_weights=(0.03, r"block2_conv\d"),
        verbose=0,
    )
    assert result.regularization.clip_weights == ["block2_conv1/kernel", "block2_conv2/kernel"]
    for name in ("block2_conv1", "block2_conv2"):
        assert np.abs(result.model.get_layer(name).get_weights()[0]).max() <= 0.03 + 1e-7


def test_errors(shipped_model, digits_small):
    with pytest.raises(
        ValueError, match=r"Argument `alpha` must be a finite number >= 0. Received: alpha=-1"
    ):
        kerasft.L2SP(alpha=-1, reference=np.zeros(2))
    with pytest.raises(
        ValueError, match=r"Argument `c` must be a finite number > 0. Received: c=0"
    ):
        kerasft.ClipWeights(0)
    with pytest.raises(
        ValueError,
        match=r"No layer of model .* matches 'nope' in argument `new_layers`. Existing layers",
    ):
        kerasft.apply_l2sp(shipped_model, new_layers="nope")
    with pytest.raises(ValueError, match=r"Invalid regex '\[' in argument `layers`"):
        kerasft.clip_weights(shipped_model, 0.1, layers="[")
    with pytest.raises(
        ValueError, match=r"Argument `l2sp` must be a finite number >= 0. Received: l2sp=-0.1"
    ):
        kerasft.finetune(shipped_model, digits_small, l2sp=-0.1, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"Argument `clip_weights` must be a bound c > 0.*Received: clip_weights='tight'",
    ):
        kerasft.finetune(shipped_model, digits_small, clip_weights="tight", verbose=0)
    with pytest.raises(
        ValueError, match=r"L2SP reference has shape \(2,\) but the weight has shape \(3,\)"
    ):
        kerasft.L2SP(0.1, reference=np.zeros(2))(keras.ops.zeros((3,)))
