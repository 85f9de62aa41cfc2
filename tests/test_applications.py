"""Real architectures end to end: every keras.applications family and four KerasHub classifiers.

Each network is built with random weights (``weights=None``: nothing downloads) at the
smallest input size its family accepts, fine-tuned with LP-FT on real handwritten digits
(4 per class, upsampled and tiled to 3 channels), evaluated, and exported as a
SavedModel whose served probabilities must match the model's (two KerasHub tasks keep
their preprocessor, which the export must run too). The graphs hold what kerasft
must understand: raw operations (ConvNeXt's ``x + y``, ViT's ``x[:, 0]``), 1x1
convolution heads (MobileNet, MobileNetV3), nested backbones, KerasHub layers.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft import datasets, surgery

A = keras.applications


def _top(build, size, **kwargs):
    return build(weights=None, input_shape=(size, size, 3), classes=10, **kwargs)


def _flat_user_head(build, size):
    """``include_top=False`` with the application's own pooling, then the user's Dense."""
    base = build(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
    return keras.Model(
        base.input, keras.layers.Dense(10, activation="softmax", name="head")(base.output)
    )


def _nested_user_head(build, size):
    """The transfer-learning guide's pattern: inputs -> backbone model -> pooling -> Dense."""
    base = build(weights=None, include_top=False, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x))


def _hub_vit(size):
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
    )
    return keras_hub.models.ViTImageClassifier(backbone, num_classes=10)


def _hub_resnet(size):
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(size, size, 3),
    )
    return keras_hub.models.ResNetImageClassifier(backbone, num_classes=10)


def _hub_vit_preprocessed(size):
    """A ViT task with its preprocessor kept: raw pixels in, scaled to [-1, 1] by the task."""
    import keras_hub

    converter = keras_hub.layers.ViTImageConverter(
        image_size=(size, size), scale=1 / 127.5, offset=-1
    )
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ViTImageClassifier(
        _hub_vit(size).backbone, num_classes=10, preprocessor=preprocessor
    )


def _hub_efficientnet_preprocessed(size):
    """An EfficientNet task (num_features its config leaves out) with its preprocessor kept."""
    import keras_hub

    backbone = keras_hub.models.EfficientNetBackbone(
        width_coefficient=0.1,
        depth_coefficient=0.1,
        stackwise_kernel_sizes=[3, 3],
        stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[32, 16],
        stackwise_output_filters=[16, 24],
        stackwise_expansion_ratios=[1, 6],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"],
        image_shape=(size, size, 3),
        num_features=64,
    )
    converter = keras_hub.layers.EfficientNetImageConverter(image_size=(size, size), scale=1 / 255)
    preprocessor = keras_hub.models.EfficientNetImageClassifierPreprocessor(
        image_converter=converter
    )
    return keras_hub.models.EfficientNetImageClassifier(
        backbone, num_classes=10, preprocessor=preprocessor
    )


# name: (smallest input size, builder, head layer name); sizes are the families' minimums.
FAMILIES = {
    "ResNet50": (32, lambda s: _top(A.ResNet50, s), "predictions"),
    "ResNet50V2": (32, lambda s: _top(A.ResNet50V2, s), "predictions"),
    "MobileNet": (32, lambda s: _top(A.MobileNet, s, alpha=0.25), "conv_preds"),
    "MobileNetV2": (32, lambda s: _top(A.MobileNetV2, s, alpha=0.35), "predictions"),
    "MobileNetV3Small": (32, lambda s: _top(A.MobileNetV3Small, s), "logits"),
    "EfficientNetB0": (32, lambda s: _top(A.EfficientNetB0, s), "predictions"),
    "EfficientNetV2B0": (32, lambda s: _top(A.EfficientNetV2B0, s), "predictions"),
    "ConvNeXtTiny": (32, lambda s: _top(A.ConvNeXtTiny, s), "convnext_tiny_head_dense"),
    "DenseNet121": (32, lambda s: _nested_user_head(A.DenseNet121, s), "head"),
    "InceptionV3": (75, lambda s: _top(A.InceptionV3, s), "predictions"),
    "Xception": (71, lambda s: _flat_user_head(A.Xception, s), "head"),
    "NASNetMobile": (32, lambda s: _top(A.NASNetMobile, s), "predictions"),
    "VGG16": (32, lambda s: _top(A.VGG16, s), "predictions"),
    "KerasHubViT": (32, _hub_vit, "predictions"),
    "KerasHubResNet": (32, _hub_resnet, "predictions"),
    "KerasHubViTPreprocessed": (32, _hub_vit_preprocessed, "predictions"),
    "KerasHubEfficientNetPreprocessed": (32, _hub_efficientnet_preprocessed, "predictions"),
}
# Measured here (2 cores): 2-13 s each; the others took 18-62 s and are marked slow.
QUICK = {
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "VGG16",
    "KerasHubViT",
    "KerasHubResNet",
    "KerasHubViTPreprocessed",
    "KerasHubEfficientNetPreprocessed",
}


@pytest.fixture(scope="module")
def digits4():
    split = datasets.digits_few_shot(shots=4)
    return split.x_train.astype("float32"), split.y_train


def _images(digits, size):
    x, y = digits
    x = tf.image.resize(x, (size, size)).numpy()
    return np.repeat(x, 3, axis=-1), y


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in FAMILIES]
)
def test_family_finetunes_evaluates_and_exports(name, digits4, tmp_path):
    size, build, head_name = FAMILIES[name]
    keras.utils.set_random_seed(0)
    model = build(size)
    assert kerasft.find_head(model).name == head_name
    x, y = _images(digits4, size)

    result = kerasft.finetune(model, (x, y), head_epochs=1, epochs=1, batch_size=8, verbose=0)

    assert [p.name for p in result.phases] == ["head", "finetune"]
    assert all(np.isfinite(p.history["loss"]).all() for p in result.phases)
    assert not result.head_rebuilt  # 10 classes, as built
    head = kerasft.find_head(result.model)
    assert head.name == head_name and surgery.head_units(head) == 10
    # the frozen body's features are computed once and the head trains on them
    head_phase = result.speed.phases[0]
    assert head_phase.cached, head_phase.reason
    if name == "ConvNeXtTiny":  # its residual adds are raw operations: the cut goes through them
        assert head_phase.reason.endswith("cut stopped by 'convnext_tiny_head_dense' (trainable)")

    report = result.evaluate((x, y))
    assert 0.0 <= report["accuracy"] <= 1.0

    path = result.export(str(tmp_path / name))
    loaded = tf.saved_model.load(path)  # referenced while serving: it owns the variables
    served = loaded.serve(tf.constant(x[:8]))
    probabilities = served["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # What the export serves is what the model predicts (a KerasHub task's preprocessor included).
    expected = kerasft.export.served_probabilities(result.model, x[:8])
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    np.testing.assert_array_equal(served["class_id"].numpy(), np.argmax(expected, axis=1))
    assert path.metadata["serving_check"]["max_abs_difference"] < 1e-4


def test_conv_head_is_rebuilt_for_other_classes(digits4, tmp_path):
    # MobileNetV3 built for 7 classes, fine-tuned on 10: a new 1x1 conv of 10 filters
    keras.utils.set_random_seed(0)
    model = A.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=7, classifier_activation=None
    )
    x, y = _images(digits4, 32)
    result = kerasft.finetune(model, (x, y), recipe="head", epochs=1, batch_size=8, verbose=0)
    assert result.head_rebuilt
    head = kerasft.find_head(result.model)
    assert isinstance(head, keras.layers.Conv2D) and surgery.head_units(head) == 10
    assert result.model.output.shape == (None, 10)
    assert surgery.head_activation(result.model) == "linear"  # logits kept, as built
    assert result.speed.phases[0].cached
    path = result.export(str(tmp_path / "mnv3"))
    assert kerasft.export.read_export_metadata(path)["output_kind"] == "logits"
