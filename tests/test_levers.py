"""Quality levers: augmentation in the input pipeline, label smoothing, focal loss, TTA."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft import augment as augment_lib
from kerasft import data as data_lib
from kerasft import datasets

QUICK = dict(head_epochs=1, epochs=1, verbose=0)


@pytest.fixture(scope="module")
def split():
    return datasets.digits_few_shot(shots=10, seed=0)


def test_input_augmentation_changes_batches_and_turns_caching_off(shipped_model, split):
    prepared = data_lib.prepare_data(
        (split.x_train, split.y_train), model=shipped_model, augment="light", seed=0
    )
    assert prepared.augmentation.on_inputs and data_lib.has_random_ops(prepared.train)
    first, second = (next(iter(prepared.train))[0].numpy() for _ in range(2))
    assert first.shape == (32, 28, 28, 1) and not np.allclose(first, second)
    result = kerasft.finetune(
        shipped_model, (split.x_train, split.y_train), augment="light", **QUICK
    )
    phase = result.speed.phases[0]
    assert (
        not phase.cached and "augment='light'" in phase.reason and "feature_mixup" in phase.reason
    )


def test_feature_mixup_keeps_the_cache_and_blends_labels(shipped_model, split):
    result = kerasft.finetune(
        shipped_model, (split.x_train, split.y_train), augment="feature_mixup", **QUICK
    )
    assert result.speed.phases[0].cached and result.label_mode == "one_hot"
    assert result.evaluate((split.x_test, split.y_test))["accuracy"] > 0.6
    x = tf.constant(np.arange(8, dtype="float32").reshape(4, 2))
    y = tf.one_hot([0, 1, 2, 3], 4)
    mixed_x, mixed_y = augment_lib.mixup_batch(x, y, 0.2, seed=1)
    np.testing.assert_allclose(mixed_y.numpy().sum(axis=1), 1.0, rtol=1e-6)  # still distributions
    assert not np.allclose(mixed_x.numpy(), x.numpy())


@pytest.mark.parametrize("preset", ["mixup", "cutmix", "randaugment"])
def test_image_presets_train(shipped_model, split, preset):
    result = kerasft.finetune(
        shipped_model,
        (split.x_train, split.y_train),
        augment=preset,
        recipe="head",
        epochs=1,
        verbose=0,
    )
    assert result.phases[0].epochs == 1 and np.isfinite(result.phases[0].history["loss"][0])


def test_a_list_of_layers_and_bad_augment(shipped_model, split):
    layers = [keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomZoom(0.1)]
    result = kerasft.finetune(
        shipped_model,
        (split.x_train, split.y_train),
        augment=layers,
        recipe="head",
        epochs=1,
        verbose=0,
    )
    assert result.phases[0].epochs == 1
    with pytest.raises(ValueError, match=r"`augment` must be None, one of \['light'"):
        kerasft.finetune(shipped_model, (split.x_train, split.y_train), augment="strong", verbose=0)
    tabular = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(2, activation="softmax", name="head")]
    )
    with pytest.raises(ValueError, match=r"`augment='light'` augments images, but the model takes"):
        kerasft.finetune(
            tabular, (np.ones((20, 8), "float32"), np.arange(20) % 2), augment="light", verbose=0
        )
    with pytest.raises(
        ValueError, match=r"`augment='mixup'` mixes labels, which regression targets are not"
    ):
        kerasft.finetune(
            tabular,
            (np.ones((20, 8), "float32"), np.linspace(0, 1, 20) + 0.01),
            augment="mixup",
            task="regression",
            verbose=0,
        )


def test_label_smoothing_and_focal_loss(shipped_model, split):
    smooth = kerasft.finetune(
        shipped_model, (split.x_train, split.y_train), label_smoothing=0.1, **QUICK
    )
    loss = smooth.model.loss
    assert smooth.label_mode == "one_hot" and isinstance(loss, keras.losses.CategoricalCrossentropy)
    assert loss.get_config()["label_smoothing"] == 0.1
    focal = kerasft.finetune(
        shipped_model,
        (split.x_train, split.y_train),
        loss="focal",
        class_weight="balanced",
        **QUICK,
    )
    assert isinstance(focal.model.loss, keras.losses.CategoricalFocalCrossentropy)
    assert focal.model.loss.get_config()["alpha"] == pytest.approx([0.1] * 10)  # balanced classes
    assert focal.evaluate((split.x_test, split.y_test))["accuracy"] > 0.6
    binary = kerasft.finetune(
        shipped_model,
        (split.x_train, (split.y_train % 2)),
        label_mode="binary",
        loss="focal",
        **QUICK,
    )
    assert isinstance(binary.model.loss, keras.losses.BinaryFocalCrossentropy)
    with pytest.raises(
        ValueError, match=r"`label_smoothing` must be in \[0, 1\). Received: label_smoothing=1.5"
    ):
        kerasft.finetune(
            shipped_model, (split.x_train, split.y_train), label_smoothing=1.5, verbose=0
        )


def test_tta_averages_flips(shipped_model, split):
    result = kerasft.finetune(shipped_model, (split.x_train, split.y_train), **QUICK)
    plain = result.evaluate((split.x_test, split.y_test))
    tta = result.evaluate((split.x_test, split.y_test), tta=True)
    probs = result.model.predict(split.x_test, verbose=0)
    flipped = result.model.predict(split.x_test[:, :, ::-1], verbose=0)
    expected = np.mean(((probs + flipped) / 2).argmax(1) == split.y_test)
    assert tta["accuracy"] == pytest.approx(expected) and tta["accuracy"] != plain["accuracy"]
    tabular = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(2, activation="softmax", name="head")]
    )
    with pytest.raises(ValueError, match=r"`tta=True` averages over horizontal flips of images"):
        kerasft.evaluate(tabular, (np.ones((4, 8), "float32"), np.arange(4) % 2), tta=True)
