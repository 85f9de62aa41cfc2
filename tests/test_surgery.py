"""Model surgery on real Keras models: selection, freezing, heads, nested backbones."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import Subclassed, nested_model, sequential_model

import kerasft
from kerasft import surgery


def test_iter_layers_descends_into_nested_models():
    paths = [p for p, _ in surgery.iter_layers(nested_model())]
    assert paths == ["backbone", "backbone/rescale", "backbone/conv1", "backbone/bn1",
                     "backbone/conv2", "pool", "head"]


def test_find_head_and_backbone():
    m = nested_model()
    assert kerasft.find_head(m).name == "head"
    assert kerasft.find_backbone(m).name == "backbone"


def test_find_head_through_trailing_softmax():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="dense")(inputs)
    out = keras.layers.Softmax(name="softmax")(x)
    m = keras.Model(inputs, out)
    assert kerasft.find_head(m).name == "dense"
    assert surgery.head_activation(m) == "softmax"


def test_freeze_selectors(shipped_model):
    m = shipped_model
    frozen = kerasft.freeze(m, up_to="block1_pool")
    assert [lyr.name for lyr in frozen] == [
        "rescale", "block1_conv1", "block1_bn1", "block1_relu1", "block1_conv2", "block1_bn2",
        "block1_relu2", "block1_pool"]
    assert not m.get_layer("block1_conv1").trainable and m.get_layer("block2_conv1").trainable
    kerasft.unfreeze(m)
    assert not m.get_layer("block1_bn1").trainable, "BN stays frozen unless train_bn=True"
    assert m.get_layer("block1_conv1").trainable
    kerasft.unfreeze(m, train_bn=True)
    assert m.get_layer("block1_bn1").trainable
    kerasft.freeze(m, pattern=r"^block2_")
    assert [n for n, t in kerasft.trainable_state(m).items() if not t] == [
        "block2_conv1", "block2_bn1", "block2_relu1", "block2_conv2", "block2_bn2", "block2_relu2",
        "block2_pool"]
    kerasft.unfreeze(m, train_bn=True)
    kerasft.freeze(m, types=keras.layers.Conv2D)
    assert {lyr.name for lyr in m.layers if not lyr.trainable} == {
        "block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2"}
    kerasft.unfreeze(m, train_bn=True)
    kerasft.freeze(m, indices=[-1, -3])
    assert not m.get_layer("predictions").trainable and not m.get_layer("fc").trainable
    assert m.get_layer("dropout").trainable


def test_count_params_follows_freezing(shipped_model):
    m = shipped_model
    total = m.count_params()
    kerasft.freeze(m)
    counts = kerasft.count_params(m)
    assert counts.trainable == 0 and counts.total == total
    kerasft.unfreeze(m, names="predictions")
    assert kerasft.count_params(m).trainable == 128 * 10 + 10


def test_nested_backbone_freeze_and_partial_unfreeze():
    m = nested_model()
    kerasft.freeze(m)
    assert m.trainable_weights == []
    kerasft.unfreeze(m, names=["backbone/conv2", "head"])
    names = sorted(v.path for v in m.trainable_weights)
    assert names == sorted(["conv2/kernel", "conv2/bias", "head/kernel", "head/bias"])
    backbone = m.get_layer("backbone")
    assert backbone.trainable and not backbone.get_layer("conv1").trainable
    kerasft.freeze(m, names="backbone")
    assert sorted(v.path for v in m.trainable_weights) == ["head/bias", "head/kernel"]


def test_replace_head_keeps_body_weights(shipped_model):
    body_before = {lyr.name: [w.copy() for w in lyr.get_weights()] for lyr in shipped_model.layers[:-1]}
    new = kerasft.replace_head(shipped_model, 3, dropout=0.2, seed=1)
    assert new.output.shape == (None, 3)
    assert new.get_layer("predictions").units == 3
    assert isinstance(new.layers[-2], keras.layers.Dropout) and new.layers[-2].rate == 0.2
    for name, weights in body_before.items():
        for a, b in zip(weights, new.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_replace_head_on_sequential_logits():
    m = sequential_model()
    new = kerasft.replace_head(m, 4, activation=None)
    assert new.output.shape == (None, 4)
    assert surgery.head_activation(new) == "linear"
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype("float32")
    assert new.predict(x, verbose=0).shape == (2, 4)


def test_unknown_layer_name_lists_existing(shipped_model):
    with pytest.raises(ValueError, match=r"No layer named 'dense_9'.*Existing layers are: \['rescale'"):
        kerasft.freeze(shipped_model, names="dense_9")
    with pytest.raises(ValueError, match=r"Argument `pattern='\^nothing'` matches no layer"):
        kerasft.freeze(shipped_model, pattern="^nothing")
    with pytest.raises(ValueError, match=r"Argument `indices` contains 99, out of range"):
        kerasft.freeze(shipped_model, indices=99)


def test_subclassed_model_is_refused_with_hint():
    m = Subclassed()
    m(np.zeros((1, 4), "float32"))
    with pytest.raises(TypeError, match=r"subclassed model of type Subclassed.*HINT: build the same"):
        kerasft.freeze(m)
    with pytest.raises(TypeError, match="subclassed"):
        kerasft.replace_head(m, 2)


def test_model_without_dense_head():
    inputs = keras.Input((8, 8, 1))
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inputs))
    with pytest.raises(ValueError, match=r"has no Dense output layer.*GlobalAveragePooling2D"):
        kerasft.find_head(keras.Model(inputs, out))


def test_replace_head_validation(shipped_model):
    with pytest.raises(ValueError, match=r"Argument `num_classes` must be a positive integer. Received: num_classes=0"):
        kerasft.replace_head(shipped_model, 0)
    with pytest.raises(ValueError, match="num_classes=1` with activation='softmax'"):
        kerasft.replace_head(shipped_model, 1)
    with pytest.raises(ValueError, match=r"Argument `dropout` must be in \[0, 1\). Received: dropout=1.5"):
        kerasft.replace_head(shipped_model, 3, dropout=1.5)
