"""Tasks beyond single-label classification: regression, multi-label, imbalance, several
outputs, and KerasHub text tasks fed raw strings."""

import keras
import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import load_diabetes

import kerasft
from kerasft import data as data_lib
from kerasft import datasets
from kerasft import probe as probe_lib
from kerasft.engine.task import WeightedBinaryCrossentropy
from kerasft.jobs import textdata


@pytest.fixture(scope="module")
def diabetes():
    d = load_diabetes()
    x, y = d.data.astype("float32"), d.target.astype("float32")
    return x[:350], y[:350], x[350:], y[350:]


def pretrained_classifier() -> keras.Model:
    """An MLP with a softmax head, as a classifier someone would fine-tune for a new target."""
    inputs = keras.Input((10,), name="features")
    x = keras.layers.Dense(32, activation="relu", name="body")(inputs)
    return keras.Model(
        inputs, keras.layers.Dense(3, activation="softmax", name="head")(x), name="mlp"
    )


def test_regression_is_detected_and_the_head_rebuilt(diabetes):
    x, y, xt, yt = diabetes
    spec = data_lib.infer_spec(y)  # whole-number float targets, no linear head to say otherwise
    assert spec.task == "classification"
    assert data_lib.infer_spec(y + 0.5).task == "regression"
    result = kerasft.finetune(
        pretrained_classifier(),
        (x, y),
        task="regression",
        recipe="full",
        epochs=40,
        lr=1e-2,
        standardize_targets=True,
        verbose=0,
    )
    assert result.task == "regression" and result.head_rebuilt
    assert kerasft.surgery.head_activation(result.model) == "linear"
    assert result.target_mean[0] == pytest.approx(
        float(np.mean(y)), rel=0.05
    )  # of the training split
    report = result.evaluate((xt, yt))
    predictions = result.model.predict(xt, verbose=0)[:, 0]
    # The scale was folded into the head: the model predicts in the targets' units.
    assert report["r2"] == pytest.approx(metrics.r2_score(yt, predictions), abs=1e-6)
    assert report["r2"] > 0.3 and report["rmse"] == pytest.approx(
        np.sqrt(metrics.mean_squared_error(yt, predictions)), rel=1e-5
    )


def test_regression_auto_for_a_linear_one_unit_head_and_huber(diabetes):
    x, y, xt, yt = diabetes
    inputs = keras.Input((10,))
    model = keras.Model(
        inputs, keras.layers.Dense(1, name="out")(keras.layers.Dense(16, name="body")(inputs))
    )
    result = kerasft.finetune(model, (x, y), recipe="full", epochs=3, loss="huber", verbose=0)
    assert result.task == "regression" and not result.head_rebuilt and result.target_std is None
    assert result.evaluate((xt, yt)).task == "regression"


def _multilabel(y):
    return np.stack([y % 2 == 0, y > 4, np.isin(y, [2, 3, 5, 7])], axis=1).astype("float32")


def test_multilabel_sigmoid_head_and_tuned_thresholds(shipped_model):
    split = datasets.digits_few_shot(shots=20, seed=0)
    y, yt = _multilabel(split.y_train), _multilabel(split.y_test)
    result = kerasft.finetune(shipped_model, (split.x_train, y), head_epochs=3, epochs=3, verbose=0)
    assert result.task == "multilabel" and result.label_mode == "multi_hot" and result.head_rebuilt
    assert kerasft.surgery.head_activation(
        result.model
    ) == "sigmoid" and result.model.output.shape == (None, 3)
    assert len(result.thresholds) == 3 and all(0 < t < 1 for t in result.thresholds)
    report = result.evaluate((split.x_test, yt))
    assert report.thresholds == pytest.approx(result.thresholds)
    predicted = (
        result.model.predict(split.x_test, verbose=0) >= np.asarray(result.thresholds)
    ).astype(int)
    assert report["macro_f1"] == pytest.approx(
        metrics.f1_score(yt, predicted, average="macro", zero_division=0)
    )
    assert report["macro_f1"] > 0.7


def test_class_weights(shipped_model):
    split = datasets.digits_few_shot(shots=30, seed=0)
    keep = (split.y_train != 3) | (np.arange(len(split.y_train)) % 10 == 0)  # class 3 rare
    x, y = split.x_train[keep], split.y_train[keep]
    spec = data_lib.infer_spec(y)
    weights = data_lib.class_weights(spec, "balanced")
    assert weights[3] == pytest.approx(len(y) / (10 * np.sum(y == 3)))
    result = kerasft.finetune(
        shipped_model, (x, y), class_weight="balanced", head_epochs=2, epochs=2, verbose=0
    )
    assert result.evaluate((split.x_test, split.y_test))["accuracy"] > 0.8
    # multi-label: positives weighted in the loss
    ml = kerasft.plan(shipped_model, (x, _multilabel(y)), class_weight="balanced")
    assert ml.phases[0].name == "probe"
    # the probe weighs the positives as the loss does: more of the rare label predicted
    features = np.random.default_rng(0).normal(size=(300, 6))
    rare = (features[:, 0] > 1.3).astype("float32")[:, None]
    targets = np.concatenate([rare, 1 - rare], axis=1)
    plain = probe_lib.fit_linear_head(features, targets, "multi_hot", 2)
    weighted = probe_lib.fit_linear_head(features, targets, "multi_hot", 2, class_weight={0: 8.0})
    assert (weighted.logits(features)[:, 0] > 0).sum() > (plain.logits(features)[:, 0] > 0).sum()
    options = kerasft.Options.from_keywords(class_weight="balanced")
    task = kerasft.engine.setup_task(
        shipped_model, data_lib.infer_spec(_multilabel(y)), options.task, seed=0
    )
    assert isinstance(task.loss, WeightedBinaryCrossentropy) and task.class_weight is None
    with pytest.raises(ValueError, match=r"`class_weight` has keys \[12\] that are not class ids"):
        kerasft.finetune(shipped_model, (x, y), class_weight={12: 2.0}, verbose=0)
    with pytest.raises(ValueError, match=r"`class_weight='balanced'` applies to classification"):
        kerasft.finetune(shipped_model, (x, y + 0.5), class_weight="balanced", verbose=0)


def test_several_outputs_need_head(shipped_model):
    split = datasets.digits_few_shot(shots=10, seed=0)
    features = shipped_model.get_layer("fc").output
    two = keras.Model(
        shipped_model.inputs, [shipped_model.output, keras.layers.Dense(1, name="aux")(features)]
    )
    with pytest.raises(
        ValueError,
        match=r"has 2 outputs \['predictions', 'aux'\]; kerasft fine-tunes one. HINT: pass head=",
    ):
        kerasft.finetune(two, (split.x_train, split.y_train), verbose=0)
    with pytest.raises(
        ValueError, match=r"`head='nope'` names no output.*\['predictions', 'aux'\]"
    ):
        kerasft.finetune(two, (split.x_train, split.y_train), head="nope", verbose=0)
    result = kerasft.finetune(
        two, (split.x_train, split.y_train), head="predictions", head_epochs=1, epochs=1, verbose=0
    )
    assert (
        len(result.model.outputs) == 1
        and result.evaluate((split.x_test, split.y_test))["accuracy"] > 0.6
    )


def test_label_matrix_width_must_match_a_kept_head(shipped_model):
    split = datasets.digits_few_shot(shots=10, seed=0)
    with pytest.raises(
        ValueError,
        match=r"`new_head=False`, but the head 'predictions' has 10 units \(softmax\) "
        r"and the data has 3 classes \(multi_hot labels\)",
    ):
        kerasft.finetune(
            shipped_model, (split.x_train, _multilabel(split.y_train)), new_head=False, verbose=0
        )


@pytest.fixture(scope="module")
def reviews():
    return textdata.rotten_tomatoes_few_shot(n_train=200, n_test=100, seed=0)


def small_bert_classifier(texts, num_classes=2):
    """A KerasHub BERT text classifier built small from a vocabulary of the review texts."""
    keras_hub = pytest.importorskip("keras_hub")
    words = sorted({w for t in texts for w in t.lower().replace(".", " ").split()})[:3000]
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=32)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=32,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=preprocessor
    )


@pytest.mark.slow
def test_keras_hub_text_classifier_on_raw_strings(reviews, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    task = small_bert_classifier(reviews.x_train)
    result = kerasft.finetune(
        task, (reviews.x_train, reviews.y_train), head_epochs=1, epochs=2, lr_mult=10, verbose=0
    )
    model = result.model
    assert type(model) is keras_hub.models.BertTextClassifier and model.preprocessor is not None
    assert task.preprocessor is not None  # the caller's task is untouched
    assert (
        result.plan.phases[1].spread
        and result.evaluate((reviews.x_test, reviews.y_test)).num_examples == 100
    )
    # One layer group per transformer layer.
    names = [
        name.split("/", 1)[-1] for name, _ in kerasft.layer_groups(model)
    ]  # backbone names are numbered
    assert "transformer_layer_0" in names and "transformer_layer_1" in names
    # Saves, loads and exports as the task it is.
    path = str(tmp_path / "task.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(reviews.x_test[:8], verbose=0),
        model.predict(reviews.x_test[:8], verbose=0),
        atol=1e-5,
    )
    # A new number of classes: a new task on the same backbone, KerasHub's way.
    three = kerasft.finetune(
        task, (reviews.x_train, np.arange(200) % 3), recipe="head", epochs=1, verbose=0
    )
    assert type(three.model) is keras_hub.models.BertTextClassifier and three.model.num_classes == 3
    three.model.save_to_preset(str(tmp_path / "preset"))
    assert (
        keras_hub.models.BertTextClassifier.from_preset(str(tmp_path / "preset")).num_classes == 3
    )


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["lp-lora", "lp-dora"])  # DoRA goes in place inside the blocks
def test_keras_hub_text_export_serves_raw_strings(reviews, tmp_path, recipe):
    import tensorflow as tf

    task = small_bert_classifier(reviews.x_train)
    result = kerasft.finetune(
        task,
        (reviews.x_train, reviews.y_train),
        recipe=recipe,
        lora_rank=2,
        head_epochs=1,
        epochs=1,
        verbose=0,
    )
    assert result.plan.phases[1].trains == "adapters"
    path = result.export(str(tmp_path / "text_export"), class_names=["rotten", "fresh"])
    served = tf.saved_model.load(path).signatures["serve"](tf.constant(list(reviews.x_test[:8])))
    expected = keras.ops.softmax(result.model.predict(reviews.x_test[:8], verbose=0)).numpy()
    np.testing.assert_allclose(
        served["probabilities"].numpy(), expected, atol=1e-4
    )  # adapters merged in
    assert [n.decode() for n in served["class_name"].numpy()] == [
        ["rotten", "fresh"][i] for i in expected.argmax(1)
    ]


def test_keras_hub_efficientnet_with_its_own_num_features_is_copied():
    # KerasHub's EfficientNetBackbone config leaves num_features out: the copy was rebuilt
    # with 1280 and failed with "Layer 'top_conv' expected 1 variables".
    import keras_hub

    from kerasft.engine.task import copy_model

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
        image_shape=(32, 32, 3),
        num_features=64,
    )
    task = keras_hub.models.EfficientNetImageClassifier(backbone, num_classes=3)
    copied = copy_model(task)
    assert copied is not task and type(copied) is type(task)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(copied.predict(x, verbose=0), task.predict(x, verbose=0), atol=1e-6)


def normalized_regressor(x: np.ndarray) -> keras.Model:
    """An MLP whose inputs go through a Normalization adapted on ``x`` (tabular models' usual)."""
    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(x)
    inputs = keras.Input((x.shape[1],), name="features")
    h = keras.layers.Dense(16, activation="relu", name="body")(norm(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(h), name="normalized_mlp")


def test_adapted_normalization_is_kept_by_the_copy_and_the_fine_tune(diabetes):
    # A copy made by clone_model + set_weights used to pass its inputs through
    # unnormalised: Normalization derives the tensors it divides by when adapted or
    # loaded, not when its weights are set.
    from kerasft.engine.task import copy_model

    x, y, xt, yt = diabetes
    model = normalized_regressor(x)
    expected = model.predict(xt, verbose=0)
    np.testing.assert_allclose(copy_model(model).predict(xt, verbose=0), expected, rtol=1e-5)

    result = kerasft.finetune(model, (x, y), recipe="head", epochs=1, seed=0, verbose=0)
    body = keras.Model(model.input, model.get_layer("body").output)
    trained = keras.Model(result.model.input, result.model.get_layer("body").output)
    # The body was frozen: the fine-tuned model sees the inputs as the pretrained one did.
    np.testing.assert_allclose(
        trained.predict(xt, verbose=0), body.predict(xt, verbose=0), rtol=1e-5
    )


def test_adapted_statistics_are_part_of_the_network_key(diabetes):
    # A compiled copy traces the statistics in as constants: a network adapted on other
    # data must not train in it.
    from kerasft.speed.keys import network_key

    x = diabetes[0]
    assert network_key(normalized_regressor(x)) == network_key(normalized_regressor(x))
    assert network_key(normalized_regressor(x)) != network_key(normalized_regressor(x * 2))
