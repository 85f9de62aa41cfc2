"""Tests for kerasft.augment: presets, checks, and what each augmentation does to real digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasft import augment
from kerasft.augment import Augmentation, build_augmentation, check_augment, mixup_batch
from kerasft.data.inputs import InputSignature


@pytest.fixture(scope="module")
def batch(digits):
    """16 real digits, two per class for classes 0-7, with one-hot labels."""
    x, y = digits
    index = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(8)])
    return x[index], keras.utils.to_categorical(y[index], 10)


def _build(preset, model, task="classification", seed=0):
    return build_augmentation(
        preset,
        signature=InputSignature.of(model),
        value_range=(0.0, 255.0),
        seed=seed,
        task=task,
    )


def _vector_model():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])


def test_check_augment_accepts_presets_and_layer_lists():
    for value in (None, *augment.PRESETS, [keras.layers.RandomFlip()]):
        check_augment(value)
    for bad in ("heavy", [], ["light"], keras.layers.RandomFlip(), 3):
        with pytest.raises(ValueError, match=r"Argument `augment` must be None, one of \["):
            check_augment(bad)
    with pytest.raises(ValueError, match=r"Received: augment='heavy'"):
        check_augment("heavy")


def test_presets_build_their_layers(shipped_model):
    assert _build(None, shipped_model) is None
    light = _build("light", shipped_model)
    kinds = [type(layer).__name__ for layer in light.layers]
    assert kinds == ["RandomZoom", "RandomTranslation", "RandomRotation"]
    assert light.mix is None and not light.one_hot and light.on_inputs
    flip = _build("light+flip", shipped_model)
    assert [type(layer).__name__ for layer in flip.layers][0] == "RandomFlip"
    [rand] = _build("randaugment", shipped_model).layers
    assert isinstance(rand, keras.layers.RandAugment) and tuple(rand.value_range) == (0.0, 255.0)
    for mix in ("mixup", "cutmix"):
        built = _build(mix, shipped_model)
        assert (built.layers, built.mix, built.one_hot, built.on_inputs) == ([], mix, True, True)
    feature = _build("feature_mixup", shipped_model)
    # feature MixUp leaves the inputs alone, so the frozen bottom's features can be cached
    assert feature.mix == "feature_mixup" and feature.one_hot and not feature.on_inputs
    # multilabel targets are blended too, but stay multi-hot rather than one-hot
    assert not _build("mixup", shipped_model, task="multilabel").one_hot
    mine = [keras.layers.RandomContrast(0.2)]
    users = _build(mine, shipped_model)
    assert users.name == "layers" and users.layers == mine and users.on_inputs


def test_build_augmentation_errors(shipped_model):
    with pytest.raises(ValueError, match=r"`augment='mixup'` mixes labels.*HINT: pass augment="):
        _build("mixup", shipped_model, task="regression")
    with pytest.raises(ValueError, match=r"`augment='light'` augments images, but the model takes"):
        _build("light", _vector_model())
    with pytest.raises(ValueError, match=r"`augment='\[\.\.\.\]'` augments images.*HINT"):
        _build([keras.layers.RandomFlip()], _vector_model())
    # feature MixUp mixes whatever the trainable layers take: any input will do
    assert _build("feature_mixup", _vector_model()).mix == "feature_mixup"
    with pytest.raises(ValueError, match="Received: augment='heavy'"):
        _build("heavy", shipped_model)


def test_light_moves_the_digits_and_keeps_labels_and_range(batch, shipped_model):
    x, y = batch
    light = _build("light", shipped_model, seed=4)
    out_x, out_y = light.inputs(tf.constant(x), tf.constant(y))
    out_x = np.asarray(out_x)
    assert out_x.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out_y), y)
    changed = np.abs(out_x - x).reshape(len(x), -1).max(axis=1) > 10
    assert changed.all()
    assert out_x.min() >= -1e-3 and out_x.max() <= 255.0 + 1e-3
    # seeded: the same seed moves the same batch the same way
    again, _ = _build("light", shipped_model, seed=4).inputs(tf.constant(x), tf.constant(y))
    np.testing.assert_allclose(np.asarray(again), out_x, atol=1e-4)


def _check_pairwise_blend(x, y, out_x, out_y):
    """Each output is w * example k + (1 - w) * some example j, images and labels alike."""
    flat, out_flat = x.reshape(len(x), -1), out_x.reshape(len(x), -1)
    partners = []
    for k in range(len(x)):
        found = None
        for j in range(len(x)):
            diff = flat[k] - flat[j]
            w = 1.0 if j == k else float(np.dot(out_flat[k] - flat[j], diff) / np.dot(diff, diff))
            if np.allclose(out_flat[k], w * flat[k] + (1 - w) * flat[j], atol=0.05):
                if np.allclose(out_y[k], w * y[k] + (1 - w) * y[j], atol=1e-4):
                    found = (j, w)
                    break
        assert found is not None, f"output {k} is no blend of example {k} with another"
        assert 0.0 <= found[1] <= 1.0 + 1e-6
        partners.append(found[0])
    return partners


def test_mixup_batch_blends_pairs_of_images_and_labels(batch):
    x, y = batch
    out_x, out_y = mixup_batch(tf.constant(x), tf.constant(y), alpha=0.2, seed=1)
    out_x, out_y = np.asarray(out_x), np.asarray(out_y)
    np.testing.assert_allclose(out_y.sum(axis=1), 1.0, atol=1e-5)
    partners = _check_pairwise_blend(x, y, out_x, out_y)
    assert sum(j != k for k, j in enumerate(partners)) >= len(x) // 2  # it did mix
    # integer labels are cast to float and blended too
    _, soft = mixup_batch(tf.constant(x), tf.constant(y.argmax(1)), alpha=0.2, seed=1)
    assert soft.dtype == tf.float32


def test_mixup_batch_on_a_structure_of_features(batch, shipped_model):
    x, y = batch
    features = keras.Model(shipped_model.input, shipped_model.get_layer("fc").output)(x)
    ids = tf.constant(np.arange(len(x)))
    out, out_y = mixup_batch({"f": features, "id": ids}, tf.constant(y), alpha=0.2, seed=2)
    np.testing.assert_array_equal(out["id"].numpy(), np.arange(len(x)))  # not float: left alone
    _check_pairwise_blend(np.asarray(features), y, out["f"].numpy(), out_y.numpy())


def test_feature_mixup_mixes_inputs_and_features_others_only_inputs(batch, shipped_model):
    x, y = batch
    feature = _build("feature_mixup", shipped_model, seed=3)
    fx, fy = feature.features(tf.constant(x), tf.constant(y))
    assert not np.array_equal(fx.numpy(), x)
    _check_pairwise_blend(x, y, fx.numpy(), fy.numpy())
    ix, _ = feature.inputs(tf.constant(x), tf.constant(y))
    assert not np.array_equal(ix.numpy(), x)
    light = _build("light", shipped_model)
    same_x, same_y = light.features(x, y)
    assert same_x is x and same_y is y


def test_keras_mixup_and_cutmix_presets_on_digits(batch, shipped_model):
    x, y = batch
    mixed_x, mixed_y = _build("mixup", shipped_model).inputs(tf.constant(x), tf.constant(y))
    np.testing.assert_allclose(mixed_y.numpy().sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(mixed_x.numpy(), x)
    cut_x, cut_y = _build("cutmix", shipped_model).inputs(tf.constant(x), tf.constant(y))
    cut_x, cut_y = cut_x.numpy(), cut_y.numpy()
    np.testing.assert_allclose(cut_y.sum(axis=1), 1.0, atol=1e-5)
    # CutMix pastes a box of another image: pixels change only inside one rectangle
    pasted = 0
    for k in range(len(x)):
        rows, cols = np.nonzero(np.abs(cut_x[k, ..., 0] - x[k, ..., 0]) > 1e-3)
        if len(rows):
            pasted += 1
            box = cut_x[k, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1, 0]
            assert any(
                np.allclose(box, x[j, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1, 0])
                for j in range(len(x))
            )
    assert pasted > 0


def test_augmentation_without_layers_or_mix_is_the_identity(batch):
    x, y = batch
    plain = Augmentation("none")
    assert not plain.on_inputs
    out_x, out_y = plain.inputs(x, y)
    assert out_x is x and out_y is y
