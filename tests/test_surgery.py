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
    assert paths == [
        "backbone",
        "backbone/rescale",
        "backbone/conv1",
        "backbone/bn1",
        "backbone/conv2",
        "pool",
        "head",
    ]


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
        "rescale",
        "block1_conv1",
        "block1_bn1",
        "block1_relu1",
        "block1_conv2",
        "block1_bn2",
        "block1_relu2",
        "block1_pool",
    ]
    assert not m.get_layer("block1_conv1").trainable and m.get_layer("block2_conv1").trainable
    kerasft.unfreeze(m)
    assert not m.get_layer("block1_bn1").trainable, "BN stays frozen unless train_bn=True"
    assert m.get_layer("block1_conv1").trainable
    kerasft.unfreeze(m, train_bn=True)
    assert m.get_layer("block1_bn1").trainable
    kerasft.freeze(m, pattern=r"^block2_")
    assert [n for n, t in kerasft.trainable_state(m).items() if not t] == [
        "block2_conv1",
        "block2_bn1",
        "block2_relu1",
        "block2_conv2",
        "block2_bn2",
        "block2_relu2",
        "block2_pool",
    ]
    kerasft.unfreeze(m, train_bn=True)
    kerasft.freeze(m, types=keras.layers.Conv2D)
    assert {lyr.name for lyr in m.layers if not lyr.trainable} == {
        "block1_conv1",
        "block1_conv2",
        "block2_conv1",
        "block2_conv2",
    }
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
    body_before = {
        lyr.name: [w.copy() for w in lyr.get_weights()] for lyr in shipped_model.layers[:-1]
    }
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
    with pytest.raises(
        ValueError, match=r"No layer named 'dense_9'.*Existing layers are: \['rescale'"
    ):
        kerasft.freeze(shipped_model, names="dense_9")
    with pytest.raises(
        ValueError, match=r"No layer of model 'mnist_cnn' matches '\^nothing' in argument `pattern`"
    ):
        kerasft.freeze(shipped_model, pattern="^nothing")
    with pytest.raises(ValueError, match=r"Argument `indices` contains 99, out of range"):
        kerasft.freeze(shipped_model, indices=99)


def test_subclassed_model_is_refused_with_hint():
    m = Subclassed()
    m(np.zeros((1, 4), "float32"))
    with pytest.raises(
        TypeError, match=r"subclassed model of type Subclassed.*HINT: build the same"
    ):
        kerasft.freeze(m)
    with pytest.raises(TypeError, match="subclassed"):
        kerasft.replace_head(m, 2)


def test_model_without_dense_head():
    inputs = keras.Input((8, 8, 1))
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inputs))
    with pytest.raises(
        ValueError,
        match=r"has no Dense output layer, nor a 1x1 convolution classifier: its output comes from "
        r"'global_average_pooling2d.*' \(a layer of type GlobalAveragePooling2D\), and "
        r"before that, through weightless layers, from 'conv2d.*' \(a layer of type "
        r"Conv2D\).*Dense layer or a 1x1 convolution",
    ):
        kerasft.find_head(keras.Model(inputs, out))


def test_replace_head_validation(shipped_model):
    with pytest.raises(
        ValueError,
        match=r"Argument `num_classes` must be a positive integer. Received: num_classes=0",
    ):
        kerasft.replace_head(shipped_model, 0)
    with pytest.raises(ValueError, match="num_classes=1` with activation='softmax'"):
        kerasft.replace_head(shipped_model, 1)
    with pytest.raises(
        ValueError, match=r"Argument `dropout` must be in \[0, 1\). Received: dropout=1.5"
    ):
        kerasft.replace_head(shipped_model, 3, dropout=1.5)


# --------------------------------------------------------------- convolutional heads


def _mobilenet_v3(**kwargs):
    return keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10, **kwargs
    )


def test_mobilenet_v3_head_is_its_1x1_conv():
    m = _mobilenet_v3()
    head = kerasft.find_head(m)
    assert (head.name, type(head).__name__, surgery.head_units(head)) == ("logits", "Conv2D", 10)
    assert [type(t).__name__ for t in surgery.output_chain(m)[1]] == ["Flatten", "Activation"]
    assert surgery.head_activation(m) == "softmax"  # from Activation("softmax") after Flatten
    assert surgery.head_activation(_mobilenet_v3(classifier_activation=None)) == "linear"


def test_mobilenet_head_through_reshape():
    m = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(32, 32, 3), classes=10)
    assert kerasft.find_head(m).name == "conv_preds"
    assert surgery.head_activation(m) == "softmax"


def test_replace_conv_head_keeps_body_and_tail(tmp_path):
    m = _mobilenet_v3()
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    new = kerasft.replace_head(m, 3, dropout=0.1, seed=0)
    head = kerasft.find_head(new)
    assert isinstance(head, keras.layers.Conv2D) and head.kernel_size == (1, 1)
    assert (head.name, surgery.head_units(head), tuple(head.kernel.shape)) == (
        "logits",
        3,
        (1, 1, 1024, 3),
    )
    assert [type(t).__name__ for t in surgery.output_chain(new)[1]] == ["Flatten", "Activation"]
    assert new.layers[-1].name == "predictions" and surgery.head_activation(new) == "softmax"
    assert new.output.shape == (None, 3)
    body = new.get_layer("conv_2")
    assert body is m.get_layer("conv_2")  # shared, not copied
    probabilities = new.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    path = str(tmp_path / "mnv3.keras")
    new.save(path)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), probabilities, atol=1e-6
    )

    logits = kerasft.replace_head(m, 5, activation=None)
    assert logits.output.shape == (None, 5) and surgery.head_activation(logits) == "linear"
    assert isinstance(logits.layers[-1], keras.layers.Flatten)


def test_replace_head_after_reshape_gives_batch_by_classes():
    m = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(32, 32, 3), classes=10)
    new = kerasft.replace_head(m, 4, activation="sigmoid")
    assert new.output.shape == (None, 4)
    assert (
        surgery.head_units(kerasft.find_head(new)) == 4
        and surgery.head_activation(new) == "sigmoid"
    )
    assert not any(isinstance(layer, keras.layers.Reshape) for layer in new.layers[-3:])


def test_conv1d_head_and_dense_head_with_pooling_tail():
    inputs = keras.Input((6, 4))
    x = keras.layers.Conv1D(8, 3, padding="same", name="body")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D(keepdims=True)(x)
    conv = keras.Model(
        inputs, keras.layers.Flatten()(keras.layers.Conv1D(3, 1, name="cls")(pooled))
    )
    assert kerasft.find_head(conv).name == "cls" and surgery.head_activation(conv) == "linear"
    assert kerasft.replace_head(conv, 2, activation=None).output.shape == (None, 2)
    # a Dense applied at every step, then averaged, is a classifier too
    dense = keras.Model(
        inputs, keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(3, name="per_step")(x))
    )
    assert kerasft.find_head(dense).name == "per_step"
    new = kerasft.replace_head(dense, 5)
    assert new.output.shape == (None, 5) and surgery.head_activation(new) == "softmax"


def test_conv_head_on_a_wide_feature_map_is_refused():
    inputs = keras.Input((4, 4, 2))
    out = keras.layers.Flatten()(keras.layers.Conv2D(3, 1, name="per_pixel")(inputs))
    with pytest.raises(
        ValueError,
        match=r"ends in 'per_pixel' \(Conv2D, 3 outputs per position\).*"
        r"outputs shape \(None, 48\), not \(batch, 3\).*HINT: pool first",
    ):
        kerasft.find_head(keras.Model(inputs, out))
    # a 3x3 convolution is not a classifier at all
    wide = keras.Model(
        inputs,
        keras.layers.Flatten()(
            keras.layers.Conv2D(3, 3, padding="same", name="c3")(
                keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
            )
        ),
    )
    with pytest.raises(ValueError, match=r"from 'c3' \(a layer of type Conv2D\)"):
        kerasft.find_head(wide)


def test_head_units_error():
    assert surgery.head_units(keras.layers.Dense(7)) == 7
    assert surgery.head_units(keras.layers.Conv2D(5, 1)) == 5
    with pytest.raises(
        ValueError,
        match=r"Argument `layer` must be a classifier layer.*"
        r"Received: layer 'flat' of type Flatten",
    ):
        surgery.head_units(keras.layers.Flatten(name="flat"))


# ------------------------------------------------------------------- raw operations


def _raw_ops_model():
    """A residual block and a token slice written as tensor expressions (raw operations)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = x + keras.layers.Conv2D(8, 3, padding="same", name="block1_conv")(x)
    x = keras.layers.LayerNormalization(name="block1_norm")(x)
    tokens = keras.layers.Reshape((64, 8), name="reshape")(x)
    cls = tokens[:, 0]
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(cls), name="raw_ops")


def test_raw_operations_are_not_listed_and_freezing_works():
    m = _raw_ops_model()
    assert {type(op).__name__ for op in m.operations} >= {"Add", "GetItem"}
    assert [p for p, _ in surgery.iter_layers(m)] == [
        "stem",
        "block1_conv",
        "block1_norm",
        "reshape",
        "head",
    ]
    frozen = kerasft.freeze(m, up_to="block1_norm")
    assert [layer.name for layer in frozen] == ["stem", "block1_conv", "block1_norm"]
    assert sorted(v.path for v in m.trainable_weights) == ["head/bias", "head/kernel"]
    assert kerasft.find_head(m).name == "head"
    assert [layer.name for layer in kerasft.find_backbone(m)] == [
        "stem",
        "block1_conv",
        "block1_norm",
    ]
    new = kerasft.replace_head(m, 2, activation=None)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    assert new.predict(x, verbose=0).shape == (2, 2)


def test_output_from_a_raw_operation_is_refused_by_name():
    inputs = keras.Input((4,))
    out = keras.layers.Dense(3, name="dense")(inputs) * 2.0
    with pytest.raises(
        ValueError, match=r"its output comes from 'multiply.*' \(a raw operation of type Multiply\)"
    ):
        kerasft.find_head(keras.Model(inputs, out))


def test_layer_groups_and_pruning_see_through_raw_operations():
    from kerasft import layerwise
    from kerasft.pruning.prune import prune_low_magnitude, strip_pruning

    m = _raw_ops_model()
    groups = [
        (name, [layer.name for layer in layers]) for name, layers in layerwise.layer_groups(m)
    ]
    assert groups == [
        ("stem", ["stem"]),
        ("block1", ["block1_conv", "block1_norm"]),
        ("head", ["head"]),
    ]
    pruned = prune_low_magnitude(m)  # clones the graph: the raw `+` and `[:, 0]` are kept
    assert {type(op).__name__ for op in pruned.operations} >= {
        "Add",
        "GetItem",
        "PruneLowMagnitude",
    }
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        strip_pruning(pruned).predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
