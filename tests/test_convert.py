"""tf_keras (Keras 2) models and legacy .h5 files converted to Keras 3, on real digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft import convert, datasets

tfk = pytest.importorskip("tf_keras")
L = tfk.layers


@pytest.fixture(scope="module")
def split():
    return datasets.digits_few_shot(shots=10)


def _tf_keras_cnn() -> tfk.Model:
    inputs = tfk.Input((28, 28, 1), name="image")
    x = L.Rescaling(1 / 255, name="rescale")(inputs)
    x = L.Conv2D(16, 3, activation="relu", name="conv1")(x)
    x = L.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = L.MaxPooling2D(name="pool1")(x)
    x = L.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = L.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = L.MaxPooling2D(name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dropout(0.2, name="drop")(x)
    outputs = L.Dense(10, activation="softmax", name="predictions")(x)
    return tfk.Model(inputs, outputs, name="legacy_cnn")


@pytest.fixture(scope="module")
def tf_keras_cnn(split):
    """A tf_keras CNN trained a few steps on 100 real digits, its first conv frozen."""
    tfk.utils.set_random_seed(0)
    model = _tf_keras_cnn()
    model.get_layer("conv1").trainable = False
    model.compile(
        tfk.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(split.x_train, split.y_train, epochs=3, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def legacy_h5(tf_keras_cnn, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("legacy") / "pretrained.h5")
    tf_keras_cnn.save(path, save_format="h5")
    return path


@pytest.fixture(scope="module")
def mnist_pretrained_h5(tmp_path_factory):
    """A tf_keras CNN pretrained on 4,000 real MNIST digits, saved as a Keras 2 .h5 file."""
    tfk.utils.set_random_seed(0)
    (x, y), _ = datasets.load_mnist("5k")
    model = _tf_keras_cnn()
    model.compile(tfk.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = str(tmp_path_factory.mktemp("mnist") / "mnist_cnn.h5")
    model.save(path, save_format="h5")
    return path, model


def _flags(model, prefix=""):
    out = []
    for layer in model.layers:
        out.append((prefix + layer.name, layer.trainable))
        if hasattr(layer, "layers"):
            out += _flags(layer, prefix + layer.name + "/")
    return out


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def test_cnn_keeps_predictions_names_flags_and_bn_statistics(tf_keras_cnn, split):
    result = convert.to_keras3(tf_keras_cnn)
    model = result.model
    assert isinstance(model, keras.Model) and not convert.is_tf_keras(model)
    x = split.x_test[:300]
    np.testing.assert_allclose(
        model.predict(x, verbose=0), tf_keras_cnn.predict(x, verbose=0), rtol=0, atol=1e-5
    )
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    assert _flags(model) == _flags(tf_keras_cnn)
    assert not model.get_layer("conv1").trainable and model.get_layer("conv2").trainable
    for name in ("bn1", "bn2"):
        moved = tf_keras_cnn.get_layer(name).moving_mean.numpy()
        assert np.abs(moved).max() > 1e-3, "the fixture's statistics must have left their init"
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model.get_layer(name).moving_mean), moved
        )
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(model.get_layer(name).moving_variance),
            tf_keras_cnn.get_layer(name).moving_variance.numpy(),
        )
    assert result.summary().startswith("kerasft: converted tf_keras model 'legacy_cnn'")
    kerasft.surgery.check_operable(model)


def test_nested_functional_and_shared_sequential(split):
    inner_in = tfk.Input((28, 28, 1))
    y = L.Rescaling(1 / 255, name="rescale")(inner_in)
    y = L.Conv2D(8, 3, name="conv")(y)
    y = L.BatchNormalization(name="bn")(y)
    backbone = tfk.Model(inner_in, L.GlobalAveragePooling2D(name="gap")(y), name="backbone")
    block = tfk.Sequential(
        [L.Dense(8, activation="relu", name="fc", input_shape=(8,))], name="block"
    )
    inputs = tfk.Input((28, 28, 1))
    features = backbone(inputs)
    twice = block(L.Dense(8, name="proj")(block(features)))  # a nested model called twice
    outputs = L.Dense(10, name="head")(L.Concatenate(name="cat")([features, twice]))
    model = tfk.Model(inputs, outputs, name="outer")
    backbone.get_layer("conv").trainable = False
    model.compile("adam", tfk.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(split.x_train, split.y_train, epochs=2, verbose=0)

    result = convert.to_keras3(model)
    converted = result.model
    x = split.x_test[:200]
    np.testing.assert_allclose(
        converted.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-5
    )
    assert _flags(converted) == _flags(model)
    assert [layer.name for layer in converted.get_layer("backbone").layers] == [
        layer.name for layer in backbone.layers
    ]
    assert kerasft.find_backbone(converted).name == "backbone"


def test_legacy_h5_through_kerasft_load_model(legacy_h5, tf_keras_cnn, split, tmp_path):
    assert convert.is_legacy_file(legacy_h5)
    model = kerasft.load_model(legacy_h5)
    x = split.x_test[:300]
    np.testing.assert_allclose(
        model.predict(x, verbose=0), tf_keras_cnn.predict(x, verbose=0), rtol=0, atol=1e-5
    )
    # A .h5 written by Keras 3 is not legacy: it loads as before.
    keras3_h5 = str(tmp_path / "keras3.h5")
    model.save(keras3_h5)
    assert not convert.is_legacy_file(keras3_h5)
    np.testing.assert_allclose(
        kerasft.load_model(keras3_h5).predict(x, verbose=0), model.predict(x, verbose=0)
    )

    result = convert.to_keras3(legacy_h5)
    assert result.saved_by == tfk.__version__ and result.max_abs_diff < 1e-5
    assert result.source == legacy_h5


def test_finetune_from_legacy_h5_improves_on_pretrained(mnist_pretrained_h5, split):
    path, pretrained = mnist_pretrained_h5
    before = _accuracy(pretrained, split.x_test, split.y_test)
    result = kerasft.finetune(
        path, (split.x_train, split.y_train), head_epochs=3, epochs=5, lr=1e-3, verbose=0
    )
    after = _accuracy(result.model, split.x_test, split.y_test)
    assert after > before + 0.05, (before, after)


def test_finetune_converts_a_tf_keras_model_first(tf_keras_cnn, split, capsys):
    # Needs kerasft/engine/runner.py::prepare_run to call convert.to_keras3 on tf_keras models.
    result = kerasft.finetune(
        tf_keras_cnn, (split.x_train, split.y_train), head_epochs=1, epochs=1, lr=1e-3, verbose=1
    )
    assert isinstance(result.model, keras.Model) and not convert.is_tf_keras(result.model)
    assert "kerasft: converted tf_keras model 'legacy_cnn'" in capsys.readouterr().out


def test_lambda_refused_under_safe_mode_with_the_recipe(split):
    inputs = tfk.Input((28, 28, 1))
    x = L.Lambda(lambda t: tf.nn.relu(t - 128.0) / 255.0, name="shift")(inputs)
    outputs = L.Dense(10, name="head")(L.Flatten(name="flat")(x))
    model = tfk.Model(inputs, outputs)
    with pytest.raises(convert.ConversionError, match=r"'shift' \(Lambda\)") as info:
        convert.to_keras3(model)
    message = str(info.value)
    assert "safe_mode=False" in message and "copy_weights" in message
    assert [p.layer for p in info.value.problems] == ["shift"]

    trusted = convert.to_keras3(model, safe_mode=False)
    x = split.x_test[:100]
    np.testing.assert_allclose(
        trusted.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )
    assert any("'tf'" in change for change in trusted.changes)  # says it will not survive a reload


def _marking_lambda_model(marker):
    def mark(t, marker=str(marker)):
        open(marker, "a").close()  # what untrusted code could do: it must never run
        return t

    inputs = tfk.Input((28, 28, 1))
    outputs = L.Dense(10, name="head")(L.Flatten(name="flat")(L.Lambda(mark, name="code")(inputs)))
    return tfk.Model(inputs, outputs)


@pytest.mark.parametrize("save_format", ["h5", "tf"])
def test_lambda_in_a_keras2_file_never_runs_under_safe_mode(tmp_path, split, save_format):
    # tf_keras's loaders ran the Lambda's code while rebuilding the model, before kerasft
    # refused the layer: the saved config is now read first.
    marker = tmp_path / "ran"
    path = str(tmp_path / ("evil.h5" if save_format == "h5" else "evil_savedmodel"))
    _marking_lambda_model(marker).save(path, save_format=save_format)
    marker.unlink()  # saving traced the model once
    data = (split.x_train[:20], split.y_train[:20])
    for call in (
        lambda: convert.to_keras3(path),
        lambda: kerasft.load_model(path),
        lambda: kerasft.plan(path, data),
        lambda: kerasft.finetune(path, data, verbose=0),
    ):
        with pytest.raises(
            convert.ConversionError, match=r"'code' \(Lambda\): its Python function would run"
        ):
            call()
        assert not marker.exists()


class _Scale(L.Layer):
    """A custom tf_keras layer: the kind Keras 3 cannot know without help."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


@keras.saving.register_keras_serializable(package="test_convert")
class Scale(keras.layers.Layer):
    """The same layer written for Keras 3."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_unconvertible_layers_each_named_with_a_recipe():
    inputs = tfk.Input((16,))
    x = _Scale(name="custom")(inputs)
    x = x * 2.0  # a TFOpLambda
    x = L.Reshape((4, 4, 1), name="grid")(x)
    x = L.LocallyConnected2D(2, 3, name="local")(x)
    model = tfk.Model(inputs, L.Dense(3, name="head")(L.Flatten(name="flat")(x)))
    with pytest.raises(convert.ConversionError) as info:
        convert.to_keras3(model)
    found = {p.layer: p.class_name for p in info.value.problems}
    assert found == {
        "custom": "_Scale",
        "tf.math.multiply": "TFOpLambda",
        "local": "LocallyConnected2D",
    }
    message = str(info.value)
    assert "custom_objects={'_Scale': MyLayer}" in message
    assert "kerasft.convert.copy_weights(tf_keras_model, keras3_model)" in message
    assert "Traceback" not in message


def test_custom_layer_converts_with_its_keras3_class(split):
    inputs = tfk.Input((28, 28, 1))
    x = _Scale(name="custom")(L.Rescaling(1 / 255, name="rescale")(inputs))
    model = tfk.Model(inputs, L.Dense(10, name="head")(L.Flatten(name="flat")(x)))
    model.get_layer("custom").set_weights([np.full((1,), 3.0, "float32")])
    result = convert.to_keras3(model, custom_objects={"_Scale": Scale})
    assert isinstance(result.model.get_layer("custom"), Scale)
    x = split.x_test[:100]
    np.testing.assert_allclose(
        result.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )


def test_copy_weights_is_the_hand_conversion(split):
    inputs = tfk.Input((28, 28, 1))
    x = L.Conv2D(4, 3, name="conv")(inputs / 255.0)  # the division is a TFOpLambda
    model = tfk.Model(inputs, L.Dense(10, name="head")(L.Flatten(name="flat")(x)))
    with pytest.raises(convert.ConversionError, match="TFOpLambda"):
        convert.to_keras3(model)
    k_in = keras.Input((28, 28, 1))
    y = keras.layers.Conv2D(4, 3, name="conv")(
        keras.layers.Rescaling(1 / 255.0, name="rescale")(k_in)
    )
    rebuilt = keras.Model(
        k_in, keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flat")(y))
    )
    assert convert.copy_weights(model, rebuilt) == ["conv", "head"]
    x = split.x_test[:100]
    np.testing.assert_allclose(
        rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )
    with pytest.raises(ValueError, match="'head'.*shapes"):
        convert.copy_weights(
            model, keras.Sequential([keras.Input((3,)), keras.layers.Dense(10, name="head")])
        )


def test_sequence_model_translations_survive_save_and_load(split, tmp_path):
    # Digits as 28 rows of 28 pixels. Keras 3 reads three things here differently from
    # Keras 2: a tensor passed by keyword (`value=`), `hard_sigmoid`, and `time_major`.
    inputs = tfk.Input((28, 28))
    x = L.Rescaling(1 / 255, name="rescale")(inputs)
    x = L.MultiHeadAttention(2, 8, name="attention")(x, value=x)
    x = L.LSTM(8, recurrent_activation="hard_sigmoid", name="lstm")(x)
    model = tfk.Model(inputs, L.Dense(10, name="head")(x))
    model.compile("adam", tfk.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(split.x_train[..., 0], split.y_train, epochs=1, verbose=0)

    result = convert.to_keras3(model)
    assert any("hard_sigmoid" in c for c in result.changes)
    assert any("time_major" in c for c in result.changes)
    x = split.x_test[:100, ..., 0]
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(result.model.predict(x, verbose=0), expected, atol=1e-5)
    path = str(tmp_path / "converted.keras")
    result.model.save(path)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), expected, atol=1e-5
    )


def test_tf_keras_mobilenet_v2(split):
    model = tfk.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10
    )
    result = convert.to_keras3(model)
    images = tf.image.resize(split.x_test[:32], (32, 32)).numpy()
    images = np.repeat(images / 127.5 - 1.0, 3, axis=-1)
    np.testing.assert_allclose(
        result.model.predict(images, verbose=0), model.predict(images, verbose=0), rtol=0, atol=1e-5
    )
    assert len(result.model.layers) == len(model.layers)
    assert any("groups=1" in c for c in result.changes)  # its DepthwiseConv2D layers


def test_bad_arguments_name_what_is_valid(tmp_path):
    with pytest.raises(TypeError, match="already a Keras 3 model"):
        convert.to_keras3(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match=r"Received: model=42 of type int"):
        convert.to_keras3(42)
    with pytest.raises(ValueError, match="no file or directory"):
        convert.to_keras3(str(tmp_path / "missing.h5"))
    not_legacy = tmp_path / "notes.txt"
    not_legacy.write_text("hello")
    with pytest.raises(ValueError, match="holds no model saved by Keras 2"):
        convert.to_keras3(str(not_legacy))
    weights = str(tmp_path / "only.weights.h5")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(weights)
    with pytest.raises(ValueError, match="holds weights only.*load_weights"):
        convert.to_keras3(weights)
    with pytest.raises(TypeError, match="a tf_keras layer .* not a model"):
        convert.to_keras3(L.Dense(2))

    class Subclassed(tfk.Model):
        def call(self, x):
            return x

    with pytest.raises(convert.ConversionError, match="subclassed model"):
        convert.to_keras3(Subclassed())


def test_tf_keras_keras_file_and_savedmodel_through_load_model(tf_keras_cnn, split, tmp_path):
    x = split.x_test[:100]
    expected = tf_keras_cnn.predict(x, verbose=0)
    keras_file = str(tmp_path / "legacy.keras")
    tf_keras_cnn.save(keras_file)  # tf_keras's own .keras format, which Keras 3 cannot read
    saved_model = str(tmp_path / "legacy_savedmodel")
    tf_keras_cnn.save(saved_model, save_format="tf")
    for path in (keras_file, saved_model):
        assert convert.is_legacy_file(path)
        model = kerasft.load_model(path)
        np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=0, atol=1e-5)
        assert _flags(model) == _flags(tf_keras_cnn)


def test_copy_weights_rebuilds_an_adapted_normalization():
    """Statistics copied into a rebuilt Normalization are the ones it normalises with."""
    from sklearn.datasets import load_diabetes

    x = load_diabetes().data.astype("float32")

    def build(adapt: bool) -> keras.Model:
        norm = keras.layers.Normalization(name="standardize")
        if adapt:
            norm.adapt(x)
        inputs = keras.Input((x.shape[1],))
        return keras.Model(inputs, keras.layers.Dense(1, name="out")(norm(inputs)))

    source, target = build(True), build(False)
    assert convert.copy_weights(source, target) == ["standardize", "out"]
    np.testing.assert_allclose(
        target.predict(x, verbose=0), source.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
