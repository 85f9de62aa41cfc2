"""Tests for kerasft.export: SavedModel and TFLite exports checked with TensorFlow's own tools."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft import cli, datasets
from kerasft.export import (
    SavedModelLayer,
    export_model,
    load_for_finetuning,
    load_saved_model,
    read_export_metadata,
)

BIN = os.path.dirname(sys.executable)
DIGIT_NAMES = [f"digit_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def model(shipped_model_path):
    return keras.models.load_model(shipped_model_path)


@pytest.fixture(scope="module")
def x_test(digits):
    return digits[0][:64]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "mnist_cnn"
    return export_model(model, path, class_names=DIGIT_NAMES)


def _load(path):
    # Keep the loaded object referenced: calling .serve on a temporary fails, because
    # the restored function references variables that the object owns.
    _LOADED.append(tf.saved_model.load(path))
    return _LOADED[-1]


_LOADED: list = []


def _cli(*args: str) -> str:
    result = subprocess.run(
        [os.path.join(BIN, "saved_model_cli"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


# --- SavedModel --------------------------------------------------------------------------


def test_saved_model_serves_raw_pixels_like_keras(model, exported, x_test):
    expected = model.predict(x_test, verbose=0)
    served = _load(exported).serve(x_test)  # raw 0..255, no preprocessing

    assert set(served) == {"probabilities", "class_id", "class_name"}
    assert served["probabilities"].dtype == tf.float32
    assert served["class_id"].dtype == tf.int64
    assert served["class_name"].dtype == tf.string
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(served["class_id"].numpy(), expected.argmax(-1))
    names = [n.decode() for n in served["class_name"].numpy()]
    assert names == [DIGIT_NAMES[i] for i in expected.argmax(-1)]


def test_saved_model_ships_class_names_and_metadata(exported):
    with open(os.path.join(exported, "assets", "class_names.txt")) as f:
        assert f.read().splitlines() == DIGIT_NAMES
    meta = read_export_metadata(exported)
    assert meta["input"] == {"name": "image", "shape": [None, 28, 28, 1], "dtype": "float32"}
    assert meta["output_kind"] == "softmax"
    assert meta["num_classes"] == 10
    assert meta["class_names"] == DIGIT_NAMES
    assert meta["features_endpoint"] == "features"
    assert meta["features_dim"] == 128
    assert meta["head"] == "predictions"
    with open(os.path.join(exported, "kerasft.json")) as f:
        assert json.load(f) == meta
    assert meta["size_bytes"] > 1_000_000
    # The model card lives inside the SavedModel, beside kerasft.json.
    assert {"MODEL_CARD.md", "model_card.json"} <= set(os.listdir(exported))
    assert exported.card.model["class_names"] == DIGIT_NAMES
    # Readable by everyone, writable by the owner only.
    for root, _, files in os.walk(exported):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o644
    # Nothing left beside the export.
    assert os.listdir(os.path.dirname(exported)) == [os.path.basename(exported)]


def test_saved_model_cli_show_and_run_match_keras(model, exported, x_test, tmp_path):
    shown = _cli("show", "--all", "--dir", exported)
    serve = shown.split("signature_def['serve']:")[1].split("signature_def[")[0]
    assert "inputs['image'] tensor_info:" in serve
    assert "shape: (-1, 28, 28, 1)" in serve
    for output in ("probabilities", "class_id", "class_name"):
        assert f"outputs['{output}'] tensor_info:" in serve
    assert "signature_def['serving_default']:" in shown
    assert "signature_def['features']:" in shown

    np.save(tmp_path / "x.npy", x_test)
    _cli(
        "run",
        "--dir",
        exported,
        "--tag_set",
        "serve",
        "--signature_def",
        "serve",
        "--inputs",
        f"image={tmp_path / 'x.npy'}",
        "--outdir",
        str(tmp_path / "out"),
    )
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    class_id = np.load(tmp_path / "out" / "class_id.npy")
    class_name = np.load(tmp_path / "out" / "class_name.npy", allow_pickle=True)
    expected = model.predict(x_test, verbose=0)
    # Measured: max abs difference ~5e-7.
    assert np.abs(probabilities - expected).max() < 1e-5
    np.testing.assert_array_equal(class_id, expected.argmax(-1))
    assert [n.decode() for n in class_name] == [DIGIT_NAMES[i] for i in expected.argmax(-1)]


def test_tfsm_layer_reloads_the_export(model, exported, x_test):
    layer = keras.layers.TFSMLayer(exported, call_endpoint="serve")
    out = layer(x_test)
    np.testing.assert_allclose(
        np.asarray(out["probabilities"]), model.predict(x_test, verbose=0), atol=1e-5
    )
    # Every weight of the model is reachable, so it can train.
    assert len(layer.trainable_weights) == len(model.trainable_weights)
    features = keras.layers.TFSMLayer(exported, call_endpoint="features")(x_test)["features"]
    assert tuple(features.shape) == (64, 128)


def test_logits_head_gets_a_softmax(model, x_test, tmp_path):
    # Same weights as the shipped head, without its softmax: served probabilities must
    # equal the shipped model's.
    head = model.get_layer("predictions")
    logits = keras.layers.Dense(10, name="logits")(head.input)
    logits_model = keras.Model(model.inputs, logits)
    logits_model.get_layer("logits").set_weights(head.get_weights())

    path = export_model(logits_model, tmp_path / "logits")
    served = _load(path).serve(x_test)
    assert set(served) == {"probabilities", "class_id"}  # no class names given
    np.testing.assert_allclose(
        served["probabilities"].numpy(), model.predict(x_test, verbose=0), atol=1e-5
    )
    assert read_export_metadata(path)["output_kind"] == "logits"
    assert not os.path.exists(os.path.join(path, "assets", "class_names.txt"))
    # Reloaded for fine-tuning, the head outputs logits again, as the model did.
    again = load_for_finetuning(path)
    assert again.layers[-1].activation is keras.activations.linear
    np.testing.assert_allclose(
        again.predict(x_test, verbose=0), logits_model.predict(x_test, verbose=0), atol=1e-4
    )


@pytest.mark.parametrize("activation, kind", [("sigmoid", "sigmoid"), (None, "binary_logits")])
def test_binary_head_serves_two_columns(digits_small, tmp_path, activation, kind):
    x, y = digits_small
    inputs = keras.Input((28, 28, 1), name="pixels")
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(1, activation=activation)(h)
    binary = keras.Model(inputs, out)
    binary.compile("adam", keras.losses.BinaryCrossentropy(from_logits=activation is None))
    binary.fit(x, (y == 0).astype("float32"), epochs=2, verbose=0)

    path = export_model(binary, tmp_path / "binary", class_names=["other", "zero"])
    served = _load(path).serve(x[:50])
    p = binary.predict(x[:50], verbose=0)[:, 0]
    if activation is None:
        p = 1 / (1 + np.exp(-p))
    probabilities = served["probabilities"].numpy()
    assert probabilities.shape == (50, 2)
    np.testing.assert_allclose(probabilities[:, 1], p, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(served["class_id"].numpy(), (p > 0.5).astype(int))
    assert read_export_metadata(path)["output_kind"] == kind
    # Reloaded for fine-tuning: the 1-unit head comes back as it was.
    again = load_for_finetuning(path)
    assert again.output.shape == (None, 1)
    np.testing.assert_allclose(
        again.predict(x[:50], verbose=0), binary.predict(x[:50], verbose=0), atol=1e-5
    )


# --- Fine-tuning from a SavedModel -------------------------------------------------------


def test_load_for_finetuning_continues_on_same_classes(model, exported, x_test):
    reloaded = load_for_finetuning(exported)
    assert isinstance(reloaded.get_layer("saved_model"), SavedModelLayer)
    # The exported classification layer comes back as a Dense head with its weights.
    head = reloaded.layers[-1]
    assert isinstance(head, keras.layers.Dense) and head.name == "predictions"
    assert head.activation is keras.activations.softmax
    for restored, original in zip(head.get_weights(), model.get_layer("predictions").get_weights()):
        np.testing.assert_array_equal(restored, original)
    np.testing.assert_allclose(
        reloaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-5
    )
    assert len(reloaded.trainable_weights) == len(model.trainable_weights)


def test_load_for_finetuning_new_head_trains_saved_weights(exported, digits, tmp_path):
    x, y = digits
    keep = y >= 5  # a new 5-class task: digits 5..9
    x_new, y_new = x[keep], y[keep] - 5
    new = load_for_finetuning(exported, num_classes=5)
    assert new.output.shape == (None, 5)
    body = new.get_layer("saved_model")
    before = [w.numpy().copy() for w in body.trainable_weights]

    new.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    history = new.fit(x_new[:150], y_new[:150], epochs=3, batch_size=32, verbose=0)
    accuracy = new.evaluate(x_new[150:450], y_new[150:450], verbose=0)[1]
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert accuracy > 0.8  # measured 0.93-0.97
    changed = [not np.allclose(a, b.numpy()) for a, b in zip(before, body.trainable_weights)]
    assert all(changed), "the SavedModel's own variables should train"

    # Save -> load: the .keras file holds the fine-tuned weights.
    new.save(tmp_path / "new.keras")
    again = keras.models.load_model(tmp_path / "new.keras", safe_mode=False)
    np.testing.assert_allclose(
        again.predict(x_new[:32], verbose=0), new.predict(x_new[:32], verbose=0), atol=1e-6
    )
    # ... and the fine-tuned model exports again, features endpoint included.
    path = export_model(new, tmp_path / "again", class_names=list("56789"))
    served = _load(path).serve(x_new[:32])
    np.testing.assert_allclose(
        served["probabilities"].numpy(), new.predict(x_new[:32], verbose=0), atol=1e-5
    )
    assert read_export_metadata(path)["features_endpoint"] == "features"


def test_finetune_from_a_saved_model_path(model, exported, x_test):
    """`finetune("dir", data)`: the SavedModel's own variables train, the head is kept."""
    split = datasets.digits_few_shot(shots=10, seed=0)
    before = model.predict(split.x_test, verbose=0).argmax(-1)
    result = kerasft.finetune(
        exported, (split.x_train, split.y_train), head_epochs=2, epochs=4, verbose=0
    )
    assert not result.head_rebuilt  # 10 classes, as exported: the pretrained head is kept
    assert isinstance(result.model.get_layer("saved_model"), SavedModelLayer)
    after = result.model.predict(split.x_test, verbose=0).argmax(-1)
    assert np.mean(before == split.y_test) < 0.7  # measured 0.660
    assert np.mean(after == split.y_test) > 0.9  # measured 0.952-0.955 (seeds 0-2)
    assert result.phases[1].trainable_params > 400_000  # the body trained too

    # The export on disk is untouched, and the fine-tuned model exports again.
    np.testing.assert_allclose(
        _load(exported).serve(x_test)["probabilities"].numpy(),
        model.predict(x_test, verbose=0),
        atol=1e-5,
    )
    path = result.export(
        os.path.join(os.path.dirname(exported), "refined"), class_names=DIGIT_NAMES
    )
    served = _load(path).serve(split.x_test[:64])
    np.testing.assert_allclose(
        served["probabilities"].numpy(),
        result.model.predict(split.x_test[:64], verbose=0),
        atol=1e-5,
    )


def test_finetune_explains_why_a_plain_saved_model_cannot_be_fine_tuned(model, digits, tmp_path):
    path = str(tmp_path / "plain")
    model.export(path, format="tf_saved_model", verbose=False)
    x, y = digits
    with pytest.raises(
        ValueError,
        match=r"Argument `model`: kerasft cannot fine-tune the "
        r"SavedModel at .*plain': it has no 'features' endpoint "
        r"\(it was not written by kerasft.export_model\).*"
        r"HINT: fine-tune the original .keras model",
    ):
        kerasft.finetune(path, (x[:50], y[:50]), verbose=0)
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        load_saved_model(tmp_path)


def test_saved_model_graph_with_file_ops_is_refused_and_every_load_warns(exported, tmp_path):
    marker = tmp_path / "written"

    class Writes(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones((4, 3)))

        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "ran")  # what a hostile graph could do when called
            return {"probabilities": tf.nn.softmax(x @ self.w)}

    module = Writes()
    tf.saved_model.save(module, str(tmp_path / "writes"), signatures={"serve": module.serve})
    with pytest.raises(
        ValueError, match=r"holds ops that reach outside the model: WriteFile \(in "
    ):
        load_for_finetuning(tmp_path / "writes", endpoint="serve")
    assert not marker.exists()
    with pytest.warns(
        kerasft.export.loading.SavedModelWarning, match="runs its TensorFlow graph as saved"
    ):
        trusted = load_for_finetuning(tmp_path / "writes", endpoint="serve", safe_mode=False)
    trusted.predict(np.ones((1, 4), "float32"), verbose=0)
    assert marker.exists()  # safe_mode=False: the user said they trust it
    with pytest.warns(
        kerasft.export.loading.SavedModelWarning
    ):  # a kerasft export loads, with the warning
        load_saved_model(exported)


def test_load_for_finetuning_plain_keras_export(model, x_test, tmp_path):
    # A SavedModel written by Keras itself (model.export): no kerasft.json, no features.
    path = str(tmp_path / "plain")
    model.export(path, format="tf_saved_model", verbose=False)
    same = load_for_finetuning(path)
    np.testing.assert_allclose(
        same.predict(x_test, verbose=0), model.predict(x_test, verbose=0), atol=1e-5
    )
    with pytest.raises(ValueError, match="has no 'features' endpoint .*not written by kerasft"):
        load_for_finetuning(path, num_classes=3)
    stacked = load_for_finetuning(path, num_classes=3, endpoint="serve")
    assert stacked.output.shape == (None, 3)


def test_load_for_finetuning_errors(exported, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_for_finetuning(tmp_path / "missing")
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SavedModel directory.*TFLite"):
        load_for_finetuning(tflite)
    with pytest.raises(
        ValueError,
        match=r"No endpoint named 'serv' .*Existing endpoints are: "
        r"\['features', 'serve', 'serving_default'\]",
    ):
        load_for_finetuning(exported, endpoint="serv")
    with pytest.raises(ValueError, match="num_classes"):
        load_for_finetuning(exported, num_classes=0)

    # A graph whose weights are constants (as after freezing): nothing to train.
    class Frozen(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="x")])
        def serve(self, x):
            return tf.matmul(x, tf.ones((4, 2)))

    frozen = str(tmp_path / "frozen")
    tf.saved_model.save(Frozen(), frozen)
    with pytest.raises(ValueError, match="uses no variables at all.*constants"):
        load_for_finetuning(frozen)
    as_features = load_for_finetuning(frozen, trainable=False)  # fine as a fixed extractor
    assert as_features.output.shape == (None, 2)


def test_cli_export(shipped_model_path, model, x_test, tmp_path):
    path = str(tmp_path / "cli_export")
    assert (
        cli.main(["export", shipped_model_path, path, "--class-names", ",".join(DIGIT_NAMES)]) == 0
    )
    assert read_export_metadata(path)["class_names"] == DIGIT_NAMES
    assert cli.main(["export", shipped_model_path, path]) == 2  # exists: refused
    assert cli.main(["export", shipped_model_path, path, "--overwrite"]) == 0
    assert read_export_metadata(path)["class_names"] is None

    tflite = str(tmp_path / "m.tflite")
    assert (
        cli.main(
            ["export", shipped_model_path, tflite, "--format", "tflite", "--quantize", "dynamic"]
        )
        == 0
    )
    assert 0 < os.path.getsize(tflite) < 0.3 * os.path.getsize(shipped_model_path)


# --- TFLite ------------------------------------------------------------------------------


def test_tflite_float_and_dynamic_match_keras(model, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    x = digits[0][:300]
    expected = model.predict(x, verbose=0)
    outputs, sizes = {}, {}
    for quantize in (None, "dynamic"):
        path = export_model(
            model,
            tmp_path / f"m_{quantize}.tflite",
            format="tflite",
            class_names=DIGIT_NAMES,
            quantize=quantize,
            verify_data=x,
        )
        sizes[quantize] = os.path.getsize(path)
        runner = Interpreter(model_path=path).get_signature_runner("serve")
        outputs[quantize] = runner(image=x)
        # The export's own LiteRT check saw the same.
        agreement = np.mean(outputs[quantize]["class_id"] == expected.argmax(-1))
        assert path.check.agreement == pytest.approx(agreement)
        assert read_export_metadata(path)["tflite_check"]["examples"] == 300

    exact = outputs[None]
    assert np.abs(exact["probabilities"] - expected).max() < 1e-5  # measured ~1.4e-6
    np.testing.assert_array_equal(exact["class_id"], expected.argmax(-1))
    assert [n.decode() for n in exact["class_name"]] == [DIGIT_NAMES[i] for i in exact["class_id"]]

    quantized = outputs["dynamic"]
    assert sizes["dynamic"] < 0.3 * sizes[None]  # measured 480 KB vs 1.88 MB
    assert np.mean(quantized["class_id"] == expected.argmax(-1)) >= 0.97  # measured 0.98-0.99
    assert np.abs(quantized["probabilities"] - expected).max() < 0.15


# --- Atomic writes and argument checks ---------------------------------------------------


def test_no_overwrite_without_permission(model, tmp_path):
    path = export_model(model, tmp_path / "m", class_names=DIGIT_NAMES)
    with pytest.raises(FileExistsError, match="already exists. Pass overwrite=True"):
        export_model(model, path, class_names=list("abcdefghij"))
    assert read_export_metadata(path)["class_names"] == DIGIT_NAMES

    export_model(model, path, class_names=list("abcdefghij"), overwrite=True)
    assert read_export_metadata(path)["class_names"] == list("abcdefghij")
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary or old copies left

    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match="is an existing file"):
        export_model(model, a_file, overwrite=True)
    assert a_file.read_text() == "keep me"
    (tmp_path / "x.tflite").mkdir()
    with pytest.raises(ValueError, match="is an existing directory"):
        export_model(model, tmp_path / "x.tflite", format="tflite", overwrite=True)


_INTERRUPTED_EXPORT = textwrap.dedent(
    """
    import os, sys, threading, time
    import kerasft, keras
    from kerasft.export import export_model

    path = sys.argv[2]
    parent, base = os.path.dirname(path), os.path.basename(path)

    def kill_mid_write():
        # SIGKILL this process as soon as the variables are being written.
        while True:
            for name in os.listdir(parent):
                partial = os.path.join(parent, name)
                if name.startswith("." + base) and name.endswith(".partial"):
                    if os.path.isdir(os.path.join(partial, "variables")):
                        os.kill(os.getpid(), 9)
            time.sleep(0.001)

    model = keras.models.load_model(sys.argv[1])
    threading.Thread(target=kill_mid_write, daemon=True).start()
    export_model(model, path, class_names=list("abcdefghij"), overwrite=True)
    print("finished before it could be killed")
    """
)


@pytest.mark.slow
def test_interrupted_export_keeps_the_previous_model(model, shipped_model_path, x_test, tmp_path):
    good = export_model(model, tmp_path / "m", class_names=DIGIT_NAMES)
    script = tmp_path / "interrupt.py"
    script.write_text(_INTERRUPTED_EXPORT)
    result = subprocess.run(
        [sys.executable, str(script), shipped_model_path, good],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr[-2000:]
    # The good export is still there, whole, with its own class names.
    assert read_export_metadata(good)["class_names"] == DIGIT_NAMES
    served = _load(good).serve(x_test)
    np.testing.assert_allclose(
        served["probabilities"].numpy(), model.predict(x_test, verbose=0), atol=1e-5
    )
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.")  # hidden, beside it
    killed = leftovers[0].split(".")[2]  # the writer's process id is in the name
    scratch = [
        n
        for n in os.listdir(tempfile.gettempdir())
        if n.startswith("kerasft-") and f".{killed}." in n
    ]
    assert scratch  # the class-names asset was being staged in $TMPDIR
    # The next export cleans what the killed one left, beside the path and in $TMPDIR.
    export_model(model, good, class_names=DIGIT_NAMES, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["interrupt.py", "m"]
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n in scratch]


def _tiny(num_classes: int = 3) -> keras.Model:
    inputs = keras.Input((4,), name="features")
    return keras.Model(
        inputs, keras.layers.Dense(num_classes, activation="softmax", name="head")(inputs)
    )


def test_overwrite_replaces_only_a_kerasft_export(tmp_path):
    folder = tmp_path / "my_models"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError, match="is not a kerasft export .* never other files or directories"
    ):
        export_model(_tiny(), folder, overwrite=True)
    assert os.listdir(folder) == ["notes.txt"]
    # A SavedModel that kerasft did not write is not replaced either.
    keras_export = tmp_path / "keras_export"
    _tiny().export(str(keras_export), verbose=False)
    with pytest.raises(ValueError, match="is not a kerasft export"):
        export_model(_tiny(), keras_export, overwrite=True)
    assert "kerasft.json" not in os.listdir(keras_export)
    # A kerasft export is.
    first = export_model(_tiny(), tmp_path / "ours")
    export_model(_tiny(), first, overwrite=True)
    assert kerasft.export.is_export(first)


def test_exports_honour_a_private_umask(tmp_path):
    # Exports were widened to 0o755/0o644 whatever the umask.
    old = os.umask(0o077)
    try:
        saved = export_model(_tiny(), tmp_path / "m")
        lite = export_model(_tiny(), tmp_path / "m.tflite", format="tflite")
    finally:
        os.umask(old)
    for root, _, files in os.walk(saved):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o600
    for name in kerasft.export.export_files(lite).values():
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600


def test_directory_appearing_during_export_is_kept(tmp_path, monkeypatch):
    from kerasft.export import savedmodel

    path = tmp_path / "m"
    write = savedmodel._write_saved_model

    def slow_write(*args, **kwargs):
        write(*args, **kwargs)
        path.mkdir()  # another program creates the directory while kerasft exports
        (path / "notes.txt").write_text("mine")

    monkeypatch.setattr(savedmodel, "_write_saved_model", slow_write)
    with pytest.raises(FileExistsError, match="appeared while the new one was being written"):
        export_model(_tiny(), path)
    assert os.listdir(path) == ["notes.txt"]
    assert os.listdir(tmp_path) == ["m"]


def test_export_refuses_to_finish_when_served_predictions_differ(tmp_path, monkeypatch):
    from kerasft.export import savedmodel

    real = savedmodel.served_probabilities
    monkeypatch.setattr(
        savedmodel, "served_probabilities", lambda m, x, **k: real(m, x, **k)[:, ::-1]
    )
    with pytest.raises(
        ValueError, match=r"serves different predictions .* The export was not written"
    ):
        export_model(_tiny(), tmp_path / "m")
    with pytest.raises(ValueError, match="float TFLite export serves different predictions"):
        export_model(_tiny(), tmp_path / "m.tflite", format="tflite")
    assert os.listdir(tmp_path) == []


def _hub_vit_with_preprocessor(size=32):
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(size, size), scale=1 / 127.5, offset=-1
    )
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ViTImageClassifier(backbone, num_classes=10, preprocessor=preprocessor)


def test_keras_hub_image_task_serves_what_predict_gives(digits, tmp_path):
    # The task's preprocessor (scaling to [-1, 1]) runs inside task.predict, so the export
    # must run it too: without it, served probabilities were off by up to 0.47.
    task = _hub_vit_with_preprocessor()
    x = np.repeat(tf.image.resize(digits[0][:32], (32, 32)).numpy(), 3, axis=-1)
    path = export_model(task, tmp_path / "vit", verify_data=(x, digits[1][:32]))
    served = _load(path).serve(tf.constant(x))["probabilities"].numpy()
    np.testing.assert_allclose(served, kerasft.export.served_probabilities(task, x), atol=1e-5)
    assert path.metadata["serving_check"]["max_abs_difference"] < 1e-4
    assert path.metadata["preprocessor"] == "ViTImageClassifierPreprocessor"
    lite = export_model(
        task, tmp_path / "vit.tflite", format="tflite", verify_data=(x, digits[1][:32])
    )
    assert lite.check.agreement == 1.0 and lite.check.max_abs_difference < 1e-4


def test_multi_input_model_exports_as_saved_model_and_tflite(tmp_path):
    image = keras.Input((8, 8, 1), name="image")
    extra = keras.Input((3,), name="extra")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(image), extra])
    model = keras.Model(
        [image, extra], keras.layers.Dense(4, activation="softmax", name="head")(joined)
    )
    rng = np.random.default_rng(0)
    x = [
        rng.uniform(0, 1, (20, 8, 8, 1)).astype("float32"),
        rng.normal(size=(20, 3)).astype("float32"),
    ]
    y = rng.integers(0, 4, 20)
    expected = model.predict(x, verbose=0)

    path = export_model(model, tmp_path / "two", verify_data=(x, y))
    assert [i["name"] for i in path.metadata["inputs"]] == ["image", "extra"]
    loaded = _load(path)
    served = loaded.serve(tf.constant(x[0]), tf.constant(x[1]))  # in the model's input order
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    by_name = loaded.signatures["serving_default"](image=tf.constant(x[0]), extra=tf.constant(x[1]))
    np.testing.assert_allclose(by_name["probabilities"].numpy(), expected, atol=1e-5)
    lite = export_model(
        model,
        tmp_path / "two.tflite",
        format="tflite",
        quantize="int8",
        representative_data={"image": x[0], "extra": x[1]},
        verify_data=(x, y),
    )
    assert lite.check.examples == 20 and lite.check.agreement >= 0.9


def test_argument_errors(model, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"Argument `format` must be one of \['saved_model', 'tflite'\]\. "
        r"Received: format='onnx'",
    ):
        export_model(model, tmp_path / "m", format="onnx")
    with pytest.raises(
        ValueError,
        match=r"must be one of \[None, 'float16', 'dynamic', 'int8'\]. "
        r"Received: quantize='int4'",
    ):
        export_model(model, tmp_path / "m.tflite", format="tflite", quantize="int4")
    with pytest.raises(ValueError, match=r"`representative_data` is required for quantize='int8'"):
        export_model(model, tmp_path / "m.tflite", format="tflite", quantize="int8")
    with pytest.raises(ValueError, match=r"`io_dtype='uint8'` applies to quantize='int8' only"):
        export_model(model, tmp_path / "m.tflite", format="tflite", io_dtype="uint8")
    with pytest.raises(ValueError, match="applies to format='tflite' only"):
        export_model(model, tmp_path / "m", quantize="dynamic")
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        export_model(model, tmp_path / "m", format="tflite")
    with pytest.raises(ValueError, match="ends with '.keras'"):
        export_model(model, tmp_path / "m.keras")
    with pytest.raises(ValueError, match="the model has 10 classes. Received 3 names"):
        export_model(model, tmp_path / "m", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"duplicates: \['a'\]"):
        export_model(model, tmp_path / "m", class_names=["a"] * 10)
    with pytest.raises(ValueError, match="without line breaks"):
        export_model(model, tmp_path / "m", class_names=["a\nb"] + list("bcdefghij"))
    with pytest.raises(TypeError, match="must be a list of strings"):
        export_model(model, tmp_path / "m", class_names="0123456789")
    with pytest.raises(TypeError, match="must be a keras.Model"):
        export_model(model.get_layer("predictions"), tmp_path / "m")

    inputs = keras.Input((4,))
    relu = keras.Model(inputs, keras.layers.Dense(3, activation="relu", name="last")(inputs))
    with pytest.raises(ValueError, match="'last', is Dense with activation 'relu'"):
        export_model(relu, tmp_path / "m")
    multi = keras.Model(inputs, keras.layers.Dense(3, activation="sigmoid")(inputs))
    with pytest.raises(ValueError, match="multi-label head"):
        export_model(multi, tmp_path / "m")
    assert os.listdir(tmp_path) == []  # nothing written by failed calls
