"""kerasft.peft: LoRA/DoRA adapters on the shipped MNIST CNN, a small KerasHub BERT, and
small Functional models; merge, adapter files, int8, reports and error messages."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re

import keras
import numpy as np
import pytest
from helpers import Subclassed

from kerasft import datasets, peft
from kerasft.peft import _walk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "saved_models", "mnist_cnn.keras")

# Real sentences (short movie-review lines) and their sentiment, for the BERT tests.
SENTENCES = [
    ("a wonderful film with great acting", 1),
    ("the plot was boring and slow", 0),
    ("i loved every minute of it", 1),
    ("a terrible waste of time", 0),
    ("the best movie of the year", 1),
    ("the acting was awful", 0),
    ("funny and moving", 1),
    ("dull characters and a bad script", 0),
]


def load_mnist_cnn() -> keras.Model:
    return keras.models.load_model(MNIST, compile=False)


@pytest.fixture(scope="module")
def digits10():
    return datasets.digits_few_shot(shots=10)


def snapshot(model: keras.Model) -> list[tuple[keras.Variable, np.ndarray]]:
    return [(v, keras.ops.convert_to_numpy(v).copy()) for v in model.weights]


def changed(snap: list[tuple[keras.Variable, np.ndarray]]) -> set[str]:
    return {v.path for v, old in snap if not np.array_equal(old, keras.ops.convert_to_numpy(v))}


def config_text(model: keras.Model) -> str:
    return json.dumps(keras.saving.serialize_keras_object(model))


def randomize_adapters(model: keras.Model, seed: int = 1) -> None:
    """Non-zero B factors (and magnitudes off their start), as after training."""
    rng = np.random.default_rng(seed)
    for layer in [node.layer for node in _walk.walk(model)]:
        for name in ("lora_kernel_b", "lora_embeddings_b"):
            if getattr(layer, name, None) is not None:
                v = getattr(layer, name)
                v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))
        for name in ("magnitude", "dora_magnitude"):  # DoRA wrapper / DoRA in place
            magnitude = getattr(layer, name, None)
            if magnitude is not None:
                magnitude.assign(magnitude * rng.uniform(0.8, 1.2, magnitude.shape))


# --- LoRA on the shipped MNIST CNN -----------------------------------------------------


def test_lora_cnn_trains_only_adapters_and_head(digits10):
    model = load_mnist_cnn()
    result = peft.apply_lora(model, rank=8)
    assert result.model is model  # Keras's enable_lora works in place
    assert result.targets == ("fc",)  # Dense below the head; no 1x1 convs in this CNN
    assert result.trained == ("predictions",)
    report = result.report
    assert report.adapter_params == 3136 * 8 + 8 * 128
    assert report.trainable_params == report.adapter_params + 128 * 10 + 10
    assert report.total_params == model.count_params()
    assert 0.05 < report.trainable_share < 0.07

    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    before = snapshot(model)
    loss0 = model.evaluate(digits10.x_train, digits10.y_train, verbose=0)
    model.fit(digits10.x_train, digits10.y_train, epochs=3, batch_size=32, verbose=0)
    loss1 = model.evaluate(digits10.x_train, digits10.y_train, verbose=0)
    assert loss1 < 0.8 * loss0
    assert changed(before) == {
        "fc/lora_kernel_a",
        "fc/lora_kernel_b",
        "predictions/kernel",
        "predictions/bias",
    }


def test_merge_equals_adapted_and_config_has_no_adapter(digits10, tmp_path):
    model = load_mnist_cnn()
    adapted = peft.apply_lora(model, rank=4, targets=[keras.layers.Conv2D, "fc"]).model
    randomize_adapters(adapted)
    x = digits10.x_test[:64]
    expected = adapted.predict(x, verbose=0)
    assert not np.allclose(expected, load_mnist_cnn().predict(x, verbose=0), atol=1e-3)
    merged = peft.merge(adapted)
    assert merged is not adapted
    np.testing.assert_allclose(merged.predict(x, verbose=0), expected, atol=1e-5)
    text = config_text(merged)
    assert "lora" not in text and "kerasft" not in text
    assert len(merged.weights) == len(load_mnist_cnn().weights)
    # A plain model: it saves and loads without kerasft's layers.
    merged.save(tmp_path / "merged.keras")
    reloaded = keras.models.load_model(tmp_path / "merged.keras", compile=False)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-5)


def test_adapter_file_roundtrip_onto_freshly_loaded_base(digits10, tmp_path):
    model = load_mnist_cnn()
    adapted = peft.apply_lora(model, rank=8, train=("head", "norm")).model
    adapted.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    adapted.fit(digits10.x_train, digits10.y_train, epochs=1, batch_size=32, verbose=0)
    path = peft.save_adapters(adapted, tmp_path / "digits.npz")
    adapted.save(tmp_path / "full.keras")
    # The adapter file holds the factors, the head and the BN layers, far less than the model.
    assert os.path.getsize(path) < 0.2 * os.path.getsize(tmp_path / "full.keras")
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]

    fresh = load_mnist_cnn()
    x = digits10.x_test[:64]
    fresh.predict(x, verbose=0)  # a traced predict function must not survive the adapters
    result = peft.load_adapters(fresh, path)
    assert result.targets == ("fc",)
    assert set(result.trained) == {
        "block1_bn1",
        "block1_bn2",
        "block2_bn1",
        "block2_bn2",
        "predictions",
    }
    np.testing.assert_array_equal(result.model.predict(x, verbose=0), adapted.predict(x, verbose=0))
    # Loading onto a model that already has the same adapters replaces their values.
    randomize_adapters(result.model, seed=5)
    peft.load_adapters(result.model, path)
    np.testing.assert_array_equal(result.model.predict(x, verbose=0), adapted.predict(x, verbose=0))


def test_wrong_base_model_is_refused(tmp_path):
    adapted = peft.apply_lora(load_mnist_cnn(), rank=2).model
    path = peft.save_adapters(adapted, tmp_path / "a.npz")

    other_weights = load_mnist_cnn()
    kernel = other_weights.get_layer("block2_conv1").kernel
    kernel.assign(kernel * 1.01)
    snap = snapshot(other_weights)
    with pytest.raises(
        ValueError, match=r"frozen weights .* differ.* 1 of 10 layers: \['block2_conv1'\]"
    ):
        peft.load_adapters(other_weights, path)
    assert not changed(snap)
    assert not other_weights.get_layer("fc").lora_enabled  # refused before any change

    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, 3, name="block1_conv1")(inputs)
    x = keras.layers.Flatten()(x)
    other_arch = keras.Model(inputs, keras.layers.Dense(10, name="predictions")(x))
    with pytest.raises(
        ValueError,
        match=r"different architecture: layer #1 is 'block1_bn1' "
        r"\(BatchNormalization\) in the file but 'predictions'",
    ):
        peft.load_adapters(other_arch, path)


def test_rank_larger_than_the_layer_is_refused():
    # rank=1000 on the CNN's 3136x128 "fc" was accepted: 99.8% of the model trainable.
    model = load_mnist_cnn()
    for rank in (129, 1000):
        with pytest.raises(
            ValueError,
            match=rf"`rank={rank}` is larger than layer 'fc' allows: .*"
            r"min\(fan_in=3136, fan_out=128\) = 128.*rank <= 128",
        ):
            peft.apply_lora(model, rank=rank)
    assert not model.get_layer("fc").lora_enabled
    assert peft.apply_lora(model, rank=64).report.adapter_params == 64 * (3136 + 128)


def test_damaged_adapter_file_is_refused_before_the_model_changes(tmp_path):
    # A wrong array used to fail after LoRA was enabled and the layers frozen.
    path = peft.save_adapters(peft.apply_lora(load_mnist_cnn(), rank=2).model, tmp_path / "a.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    a_name = meta["adapters"][0]["arrays"][0]
    damaged = {
        "wrong shape": {**arrays, a_name: arrays[a_name][:, :1]},
        "missing array": {k: v for k, v in arrays.items() if k != a_name},
        "not finite": {**arrays, a_name: np.full_like(arrays[a_name], np.nan)},
    }
    for what, content in damaged.items():
        np.savez(tmp_path / "bad.npz", **content)
        model = load_mnist_cnn()
        snap, flags = snapshot(model), [layer.trainable for layer in model.layers]
        with pytest.raises(ValueError, match=r"bad.npz' is damaged \("):
            peft.load_adapters(model, tmp_path / "bad.npz")
        assert not changed(snap) and not model.get_layer("fc").lora_enabled, what
        assert [layer.trainable for layer in model.layers] == flags, what
    # Truncated, or holding Python objects: named, and no advice to allow pickles.
    (tmp_path / "cut.npz").write_bytes(open(path, "rb").read()[:500])
    np.savez(tmp_path / "objects.npz", __meta__=np.array([{"format": 1}], dtype=object))
    for name in ("cut.npz", "objects.npz"):
        with pytest.raises(
            ValueError, match=rf"{name}' is damaged or not a kerasft adapter file"
        ) as info:
            peft.load_adapters(load_mnist_cnn(), tmp_path / name)
        assert "allow_pickle" not in str(info.value)


# --- DoRA and adapter dropout (wrapper layers) ------------------------------------------


def test_dora_reproduces_base_at_init_and_survives_save_load(digits10, tmp_path):
    base = load_mnist_cnn()
    x = digits10.x_test[:64]
    expected = base.predict(x, verbose=0)
    result = peft.apply_lora(base, rank=4, method="dora", targets=[keras.layers.Conv2D, "fc"])
    dora = result.model
    assert dora is not base
    assert [type(dora.get_layer(p)).__name__ for p in result.targets] == ["DoRA"] * 5
    np.testing.assert_array_equal(dora.predict(x, verbose=0), expected)

    dora.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    before = snapshot(dora)
    loss0 = dora.evaluate(digits10.x_train, digits10.y_train, verbose=0)
    dora.fit(digits10.x_train, digits10.y_train, epochs=3, batch_size=32, verbose=0)
    assert dora.evaluate(digits10.x_train, digits10.y_train, verbose=0) < 0.8 * loss0
    moved = changed(before)
    assert moved and all(re.search(r"lora_kernel_[ab]|magnitude|predictions/", p) for p in moved)
    assert any("magnitude" in p for p in moved)

    trained = dora.predict(x, verbose=0)
    dora.save(tmp_path / "dora.keras")
    reloaded = keras.models.load_model(tmp_path / "dora.keras", compile=False)
    assert isinstance(reloaded.get_layer("fc"), peft.DoRA)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), trained)
    np.testing.assert_allclose(peft.merge(dora).predict(x, verbose=0), trained, atol=1e-5)

    path = peft.save_adapters(dora, tmp_path / "dora.npz")
    again = peft.load_adapters(load_mnist_cnn(), path)
    np.testing.assert_array_equal(again.model.predict(x, verbose=0), trained)


def test_dora_matches_the_papers_formula_on_einsum_and_dense():
    rng = np.random.default_rng(0)
    inputs = keras.Input((5, 6))
    h = keras.layers.EinsumDense("abc,cde->abde", (5, 3, 4), bias_axes="de", name="proj")(inputs)
    h = keras.layers.Reshape((5, 12))(h)
    out = keras.layers.Dense(7, activation="tanh", name="fc")(h)
    model = keras.Model(inputs, out)
    result = peft.apply_lora(
        model, rank=2, alpha=3, method="dora", targets=["proj", "fc"], train=()
    )
    adapted = result.model
    randomize_adapters(adapted)
    fc = adapted.get_layer("fc")
    w0 = keras.ops.convert_to_numpy(fc.layer.kernel)
    v = w0 + 1.5 * keras.ops.convert_to_numpy(fc.lora_kernel_a) @ keras.ops.convert_to_numpy(
        fc.lora_kernel_b
    )
    w = keras.ops.convert_to_numpy(fc.magnitude) * v / np.linalg.norm(v, axis=0, keepdims=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fc.adapted_kernel()), w, rtol=1e-5)
    proj = adapted.get_layer("proj")
    assert tuple(proj.magnitude.shape) == (1, 3, 4)  # one magnitude per output unit
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    np.testing.assert_allclose(
        peft.merge(adapted).predict(x, verbose=0), adapted.predict(x, verbose=0), atol=1e-5
    )


def test_lora_dropout_wrapper_drops_only_the_adapter_input_in_training(digits10):
    result = peft.apply_lora(load_mnist_cnn(), rank=4, dropout=0.5, use_rslora=True)
    model = result.model
    fc = model.get_layer("fc")
    assert isinstance(fc, peft.LoRA) and not isinstance(fc, peft.DoRA)
    assert fc.scale == pytest.approx(4 / 2)  # rsLoRA: alpha / sqrt(rank)
    h = np.random.default_rng(0).uniform(0, 1, (8, 3136)).astype("float32")
    # With B = 0 the adapter adds nothing, so dropout cannot touch the base path.
    np.testing.assert_array_equal(fc(h, training=True), fc.layer(h))
    randomize_adapters(model)
    inference = fc(h, training=False)
    assert not np.allclose(fc(h, training=True), inference, atol=1e-4)
    x = digits10.x_test[:16]
    np.testing.assert_allclose(peft.merge(model)(x), model(x, training=False), atol=1e-5)


# --- int8 -------------------------------------------------------------------------------


def test_int8_base_with_lora_trains_and_reloads(digits10, tmp_path):
    result = peft.apply_lora(load_mnist_cnn(), rank=4, quantize="int8")
    model = result.model
    assert model.get_layer("fc").quantization_mode == "int8"
    assert model.get_layer("predictions").quantization_mode is None  # the head trains in float
    # fc's kernel is 3136 x 128: 1.6 MB in float32, 0.4 MB in int8.
    saved = result.base_bytes_before - result.base_bytes_after
    assert saved == 3136 * 128 * 3 - 128 * 4
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    loss0 = model.evaluate(digits10.x_train, digits10.y_train, verbose=0)
    model.fit(digits10.x_train, digits10.y_train, epochs=3, batch_size=32, verbose=0)
    assert model.evaluate(digits10.x_train, digits10.y_train, verbose=0) < 0.8 * loss0
    assert "MiB after quantization" in str(result)

    path = peft.save_adapters(model, tmp_path / "q.npz")
    again = peft.load_adapters(load_mnist_cnn(), path)
    assert again.model.get_layer("fc").quantization_mode == "int8"
    x = digits10.x_test[:64]
    np.testing.assert_array_equal(again.model.predict(x, verbose=0), model.predict(x, verbose=0))
    # Merging re-quantizes fc to int8: predictions move by the int8 rounding only.
    np.testing.assert_allclose(
        peft.merge(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05
    )


# --- KerasHub BERT ----------------------------------------------------------------------


def bert_classifier(with_preprocessor: bool):
    import keras_hub

    texts = [s for s, _ in SENTENCES]
    words = sorted({w for s in texts for w in s.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=32,
        name="bert_backbone",
    )
    classifier = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor if with_preprocessor else None
    )
    features = {k: keras.ops.convert_to_numpy(v) for k, v in preprocessor(texts).items()}
    return classifier, texts, features, np.array([label for _, label in SENTENCES])


def test_lora_on_kerashub_bert_trains_attention_adapters():
    classifier, _, features, labels = bert_classifier(with_preprocessor=False)
    result = peft.apply_lora(classifier, rank=4)
    assert result.model is classifier
    # By default every projection of the top half of the blocks (here the second of two).
    projections = [
        f"self_attention_layer/{p}" for p in ("query", "key", "value", "attention_output")
    ]
    projections += ["feedforward_intermediate_dense", "feedforward_output_dense"]
    assert result.targets == tuple(f"bert_backbone/transformer_layer_1/{p}" for p in projections)
    assert result.trained == ("logits",)
    # q/k/v: 32 -> (2 heads x 16), A 32x2x4 and B 4x16; the output (2x16) -> 32, A 2x16x4 and
    # B 4x32; the feed-forward 32 -> 64 -> 32, A in x 4 and B 4 x out.
    assert result.report.adapter_params == 3 * (256 + 64) + (128 + 128) + 2 * (32 * 4 + 4 * 64)
    classifier.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = snapshot(classifier)
    loss0 = classifier.evaluate(features, labels, verbose=0, return_dict=True)["loss"]
    classifier.fit(features, labels, epochs=30, batch_size=8, shuffle=False, verbose=0)
    loss1 = classifier.evaluate(features, labels, verbose=0, return_dict=True)["loss"]
    assert loss1 < 0.5 * loss0
    moved = changed(before)
    assert {p for p in moved if "lora" in p} == {
        f"transformer_layer_1/{p}/lora_kernel_{ab}" for p in projections for ab in "ab"
    }
    assert moved - {p for p in moved if "lora" in p} == {"logits/kernel", "logits/bias"}


def test_kerashub_task_adapters_roundtrip_and_merge_keep_the_task(tmp_path):
    classifier, texts, _, _ = bert_classifier(with_preprocessor=True)
    classifier.save(tmp_path / "base.keras")
    adapted = peft.apply_lora(classifier, rank=4, alpha=8).model
    randomize_adapters(adapted)
    expected = adapted.predict(texts, verbose=0)
    path = peft.save_adapters(adapted, tmp_path / "bert.npz")
    print(
        "BERT adapter file", os.path.getsize(path), "base", os.path.getsize(tmp_path / "base.keras")
    )

    fresh = keras.models.load_model(tmp_path / "base.keras", compile=False)
    again = peft.load_adapters(fresh, path)
    np.testing.assert_array_equal(again.model.predict(texts, verbose=0), expected)

    merged = peft.merge(adapted)
    assert type(merged) is type(classifier) and merged.preprocessor is classifier.preprocessor
    assert not any(_walk.is_adapted(node.layer) for node in _walk.walk(merged))
    np.testing.assert_allclose(merged.predict(texts, verbose=0), expected, atol=1e-5)


def test_dora_inside_kerashub_blocks_goes_in_place(tmp_path):
    # KerasHub's attention layers rebuild their projections from their own arguments on
    # load, so no wrapper can stand there: DoRA is enabled in place, like Keras's LoRA.
    classifier, texts, _, labels = bert_classifier(with_preprocessor=True)
    classifier.save(tmp_path / "base.keras")
    expected = classifier.predict(texts, verbose=0)
    result = peft.apply_lora(classifier, rank=4, alpha=8, method="dora", targets=["query", "value"])
    assert result.model is classifier
    query = classifier.get_layer("bert_backbone").get_layer("transformer_layer_0")
    query = query._self_attention_layer._query_dense
    assert peft.layers.is_in_place_dora(query) and type(query).__name__ == "EinsumDense"
    np.testing.assert_array_equal(classifier.predict(texts, verbose=0), expected)
    # Adapters (A, B, magnitude per projection) and the head train; nothing else.
    assert result.report.adapter_params == 4 * (32 * 2 * 4 + 4 * 16 + 2 * 16)

    classifier.compile(
        optimizer=keras.optimizers.Adam(3e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = snapshot(classifier)
    classifier.fit(texts, labels, epochs=8, batch_size=8, shuffle=False, verbose=0)
    moved = changed(before)
    assert moved - {p for p in moved if "lora_kernel" in p or "dora_magnitude" in p} == {
        "logits/kernel",
        "logits/bias",
    }
    assert sum("dora_magnitude" in p for p in moved) == 4
    trained = classifier.predict(texts, verbose=0)
    assert not np.allclose(trained, expected, atol=1e-3)

    path = peft.save_adapters(classifier, tmp_path / "dora.npz")
    fresh = keras.models.load_model(tmp_path / "base.keras", compile=False)
    again = peft.load_adapters(fresh, path)
    assert again.targets == result.targets
    np.testing.assert_array_equal(again.model.predict(texts, verbose=0), trained)

    merged = peft.merge(classifier)
    assert not any(_walk.is_adapted(node.layer) for node in _walk.walk(merged))
    np.testing.assert_allclose(merged.predict(texts, verbose=0), trained, atol=1e-5)
    # Saving writes merged kernels, as Keras's own LoRA does; the reloaded task is plain.
    classifier.save(tmp_path / "adapted.keras")
    reloaded = keras.models.load_model(tmp_path / "adapted.keras", compile=False)
    np.testing.assert_allclose(reloaded.predict(texts, verbose=0), trained, atol=1e-5)


def test_adapter_dropout_inside_kerashub_blocks_is_refused_with_a_hint():
    classifier, _, _, _ = bert_classifier(with_preprocessor=False)
    with pytest.raises(
        ValueError,
        match=r"DoRA with dropout needs a wrapper layer around "
        r"'bert_backbone/transformer_layer_0/self_attention_layer/query'.*"
        r"inside 'self_attention_layer'.*HINT: use dropout=0.0 there",
    ):
        peft.apply_lora(classifier, method="dora", dropout=0.1, targets=["query", "value"])
    with pytest.raises(
        ValueError, match="LoRA with dropout needs a wrapper.*HINT: use method='lora'"
    ):
        peft.apply_lora(classifier, dropout=0.1, targets=["query", "value"])
    assert not any(_walk.is_adapted(node.layer) for node in _walk.walk(classifier))


# --- report, errors, docs ---------------------------------------------------------------


def test_trainable_report_table():
    result = peft.apply_lora(
        load_mnist_cnn(), rank=2, targets=[keras.layers.Conv2D], train=("head",)
    )
    text = str(peft.trainable_report(result.model))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "adapter", "rank", "trainable"]
    assert re.search(r"^block1_conv1\s+lora\s+2\s+82$", text, re.M)  # A 3x3x1x2 + B 2x32
    assert re.search(r"^predictions\s+full\s+1,290$", text, re.M)
    assert re.search(
        r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}$", lines[-1]
    )


def test_bad_inputs_are_refused_with_clear_messages(tmp_path):
    model = load_mnist_cnn()
    with pytest.raises(
        ValueError, match=re.escape("Argument `rank` must be a positive integer. Received: rank=0")
    ):
        peft.apply_lora(model, rank=0)
    with pytest.raises(ValueError, match=re.escape("Received: rank=True")):
        peft.apply_lora(model, rank=True)
    with pytest.raises(ValueError, match=re.escape("Received: alpha=-1")):
        peft.apply_lora(model, alpha=-1)
    with pytest.raises(
        ValueError, match=re.escape("Argument `dropout` must be in [0, 1). Received: dropout=1.0")
    ):
        peft.apply_lora(model, dropout=1.0)
    with pytest.raises(
        ValueError, match=re.escape("one of ('lora', 'dora'). Received: method='ia3'")
    ):
        peft.apply_lora(model, method="ia3")
    with pytest.raises(ValueError, match=re.escape("Received: quantize='int4'")):
        peft.apply_lora(model, quantize="int4")
    with pytest.raises(ValueError, match=re.escape("Received: method='dora', dropout=0.0")):
        peft.apply_lora(model, quantize="int8", method="dora")
    with pytest.raises(
        ValueError,
        match=r"No layer of model 'mnist_cnn' matches 'attention' in argument `targets`\. "
        r"Existing layers are: .*'block1_conv1'.*'fc'",
    ):
        peft.apply_lora(model, targets=["attention"])
    with pytest.raises(
        ValueError, match=r"matches only layers that cannot take adapters: \['block1_bn1'\]"
    ):
        peft.apply_lora(model, targets="block1_bn1")
    with pytest.raises(ValueError, match="invalid regular expression"):
        peft.apply_lora(model, targets=["fc("])
    with pytest.raises(TypeError, match="layer-path regexes"):
        peft.apply_lora(model, targets=[3])
    with pytest.raises(
        ValueError, match=r"\['predictions'\] are both adapter targets and in `train`"
    ):
        peft.apply_lora(model, targets=["fc", "predictions"])
    with pytest.raises(
        ValueError, match=r"No layer of model .* matches 'nothing' in argument `train`"
    ):
        peft.apply_lora(model, train=["nothing"])
    with pytest.raises(ValueError, match="has no adapters to merge"):
        peft.merge(model)
    with pytest.raises(ValueError, match="has no adapters to save"):
        peft.save_adapters(model, tmp_path / "a.npz")
    with pytest.raises(TypeError, match="subclassed model of type Subclassed"):
        sub = Subclassed()
        sub(np.ones((1, 2), "float32"))
        peft.apply_lora(sub)
    with pytest.raises(TypeError, match="must be a Keras model"):
        peft.trainable_report("model.keras")
    assert peft.trainable_report(model).adapter_params == 0  # nothing above changed it
    constrained = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, kernel_constraint="max_norm", name="c"),
            keras.layers.Dense(2, name="d"),
        ]
    )
    with pytest.raises(ValueError, match="LoRA cannot go on 'c': it has a weight constraint"):
        peft.apply_lora(constrained, targets=["d", "c"], train=(), rank=1)
    assert not constrained.get_layer("d").lora_enabled  # refused before changing anything

    peft.apply_lora(model, rank=2)
    with pytest.raises(
        ValueError, match=r"already has adapters on \['fc'\]\. Adapters cannot be stacked"
    ):
        peft.apply_lora(model, rank=2)
    with pytest.raises(
        ValueError, match=re.escape("must be a file path ending in '.npz'. Received: path='a.h5'")
    ):
        peft.save_adapters(model, "a.h5")
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        peft.load_adapters(load_mnist_cnn(), tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="is not a kerasft adapter file"):
        peft.load_adapters(load_mnist_cnn(), tmp_path / "other.npz")
    with pytest.raises(TypeError, match="cannot wrap layer 'bn'"):
        peft.DoRA(keras.layers.BatchNormalization(name="bn"), rank=2)


@pytest.mark.parametrize("module", ["layers", "lora", "merge", "adapters", "report"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"kerasft.peft.{module}"))
    assert result.attempted > 0 and result.failed == 0
