"""Tests for kerasft.pruning: parity with tfmot, training behaviour, save/load, strip, errors."""

from __future__ import annotations

import doctest
import glob
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft import datasets
from kerasft import pruning as kp
from kerasft.export import export_model
from kerasft.pruning import callbacks as kp_callbacks
from kerasft.pruning import finetune as kp_finetune
from kerasft.pruning import plan as kp_plan
from kerasft.pruning import prune as kp_prune
from kerasft.pruning import report as kp_report
from kerasft.pruning import schedules as kp_schedules
from kerasft.pruning import wrapper as kp_wrapper


@pytest.fixture(scope="module")
def tfmot():
    """tfmot and tf_keras, imported without leaving ``TF_USE_LEGACY_KERAS`` set."""
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization
    import tf_keras

    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before
    return tensorflow_model_optimization, tf_keras


def _mlp(lib, conv: bool):
    layers = lib.layers
    if conv:
        inputs = lib.Input((8, 8, 4), name="x")
        h = layers.Flatten()(layers.Conv2D(8, 3, name="conv")(inputs))
    else:
        inputs = lib.Input((20,), name="x")
        h = inputs
    h = layers.Dense(32, activation="relu", name="d1")(h)
    return lib.Model(inputs, layers.Dense(10, name="d2")(h))


def _small_model():
    inputs = keras.Input((20,), name="x")
    h = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="d2")(h))


def _xy(n: int, shape=(20,), seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, 10, size=(n,))


def _wrappers(model):
    return [layer for layer in model.layers if isinstance(layer, kp.PruneLowMagnitude)]


def _compile(model, lr=0.05, optimizer="sgd"):
    opt = keras.optimizers.SGD(lr) if optimizer == "sgd" else keras.optimizers.Adam(lr)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True))


# ------------------------------------------------------------------------- the API


def test_public_names():
    for name in kp.__all__:
        assert hasattr(kp, name), name
    for name in ("prune_low_magnitude", "strip_pruning", "sparsity_report", "pruning"):
        assert name in kerasft.__all__ and hasattr(kerasft, name)
    assert kerasft.prune_low_magnitude is kp.prune_low_magnitude


@pytest.mark.parametrize(
    "module",
    [kp_prune, kp_callbacks, kp_report, kp_plan, kp_schedules, kp_finetune],
    ids=["prune", "callbacks", "report", "plan", "schedules", "finetune"],
)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried and not failures


# ------------------------------------------------------------------ parity with tfmot


@pytest.mark.parametrize(
    "conv, block_size, m_by_n",
    [
        (False, (1, 1), None),
        (True, (1, 1), None),
        (False, (2, 2), None),
        (True, (4, 1), None),
        (True, (1, 1), (2, 4)),
    ],
    ids=["dense", "conv", "block2x2", "block4x1", "2:4"],
)
def test_same_masks_as_tfmot(tfmot, conv, block_size, m_by_n):
    """Same architecture, weights, schedule and steps: the masks and weights of tfmot."""
    tfmot, tf_keras = tfmot
    steps, batch = 20, 16
    x, y = _xy(steps * batch, (8, 8, 4) if conv else (20,))
    k3, k2 = _mlp(keras, conv), _mlp(tf_keras, conv)
    k2.set_weights(k3.get_weights())
    schedule = dict(
        initial_sparsity=0.0, final_sparsity=0.7, begin_step=0, end_step=steps, frequency=5
    )
    layers = ["d1", "d2"] if block_size != (1, 1) else None
    args = dict(block_size=block_size, sparsity_m_by_n=m_by_n, layers=layers)
    # The tfmot schedule object is accepted on both sides.
    p3 = kp.prune_low_magnitude(k3, tfmot.sparsity.keras.PolynomialDecay(**schedule), **args)
    p2 = kp.prune_low_magnitude(k2, tfmot.sparsity.keras.PolynomialDecay(**schedule), **args)
    assert type(p2.get_layer("prune_low_magnitude_d1")).__module__.startswith(
        "tensorflow_model_optimization"
    )
    _compile(p3)
    p2.compile(
        tf_keras.optimizers.SGD(0.05),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fit = dict(batch_size=batch, epochs=1, shuffle=False, verbose=0)
    p3.fit(x, y, callbacks=[kp.UpdatePruningStep()], **fit)
    p2.fit(x, y, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], **fit)

    wrapped = _wrappers(p3)
    assert len(wrapped) == (2 if layers else 2 + conv)
    for ours in wrapped:
        theirs = p2.get_layer(ours.name)
        assert int(ours.pruning_step.numpy()) == int(theirs.pruning_step.numpy()) == steps
        for (w3, m3, t3), (w2, m2, t2) in zip(ours.pruning_vars, theirs.pruning_vars):
            np.testing.assert_array_equal(m3.numpy(), m2.numpy(), err_msg=ours.name)
            np.testing.assert_array_equal(w3.numpy(), w2.numpy(), err_msg=ours.name)
            assert float(t3.numpy()) == float(t2.numpy())
            sparsity = 1 - m3.numpy().mean()
            assert sparsity == pytest.approx(0.5 if m_by_n else 0.7, abs=0.02)
    if m_by_n:
        assert kp.check_m_by_n(p3, 2, 4) and kp.check_m_by_n(p2, 2, 4)
        assert not kp.check_m_by_n(k3, 2, 4)


def test_magnitude_mask_equals_tfmot_on_large_and_tied_weights(tfmot):
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl

    tfmot, _ = tfmot
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(300, 400)).astype("float32")
    cases = {
        "normal": normal,
        "ties": np.round(normal, 1),
        "half zeros": np.where(rng.random(normal.shape) < 0.5, 0.0, normal).astype("float32"),
        "constant": np.full((50, 8), 0.25, "float32"),
        "one": np.array([[-3.0]], "float32"),
    }
    for sparsity in (0.0, 0.3, 0.8, 0.99):
        schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, 0)
        reference = pruning_impl.Pruning(
            lambda: tf.constant(0, tf.int64), [], schedule, (1, 1), "AVG"
        )
        for name, weights in cases.items():
            threshold, mask = kp_wrapper.magnitude_mask(tf.constant(weights), tf.constant(sparsity))
            want_threshold, want_mask = reference._update_mask(tf.constant(weights))
            np.testing.assert_array_equal(
                mask.numpy(), want_mask.numpy(), err_msg=f"{name} {sparsity}"
            )
            assert float(threshold) == float(want_threshold), (name, sparsity)


def test_report_matches_tfmot_model(tfmot):
    tfmot, tf_keras = tfmot
    k2 = _mlp(tf_keras, conv=False)
    k3 = _mlp(keras, conv=False)
    k3.set_weights(k2.get_weights())
    p2 = kp.prune_low_magnitude(k2, tfmot.sparsity.keras.ConstantSparsity(0.6, 0, frequency=1))
    p3 = kp.prune_low_magnitude(k3, kp.ConstantSparsity(0.6, 0, frequency=1))
    x, y = _xy(32)
    for model, cb, opt in (
        (p2, tfmot.sparsity.keras.UpdatePruningStep(), tf_keras.optimizers.SGD(0.01)),
        (p3, kp.UpdatePruningStep(), keras.optimizers.SGD(0.01)),
    ):
        model.compile(opt, "mse")
        model.fit(x, np.zeros((32, 10)), batch_size=16, verbose=0, callbacks=[cb], shuffle=False)
    assert kp.sparsity_report(p2) == kp.sparsity_report(p3)
    assert kp.sparsity_report(p3).total == pytest.approx(0.6, abs=1e-3)
    assert kp.sparsity_report(tfmot.sparsity.keras.strip_pruning(p2)).total == pytest.approx(
        0.6, abs=1e-3
    )
    assert kp.sparsity_report(kp.strip_pruning(p2)) == kp.sparsity_report(p2)  # delegated to tfmot


# ---------------------------------------------------------------------- training


def test_schedule_reaches_target_at_end_step():
    schedule = kp.PolynomialDecay(0.0, 0.75, begin_step=0, end_step=12, frequency=3)
    model = kp.prune_low_magnitude(_small_model(), schedule)
    _compile(model, 0.01)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            mask = _wrappers(self.model)[0].pruning_vars[0][1].numpy()
            seen.append(1 - mask.mean())

    x, y = _xy(16 * 16)
    model.fit(
        x, y, batch_size=16, shuffle=False, verbose=0, callbacks=[kp.UpdatePruningStep(), Record()]
    )
    expected = {}
    for step in range(1, 17):
        should, sparsity = schedule(tf.constant(step, tf.int64))
        if bool(should):
            expected[step] = float(sparsity)
    assert sorted(expected) == [3, 6, 9, 12]
    assert seen[:2] == [0.0, 0.0]  # no update before step 3
    for step, sparsity in expected.items():
        kept = np.round(np.float32(640) * (np.float32(1) - np.float32(sparsity)))
        assert seen[step - 1] == pytest.approx(1 - kept / 640)
    assert seen[11] == pytest.approx(0.75) and seen[15] == pytest.approx(0.75)
    assert kp.sparsity_report(model).total == pytest.approx(0.75, abs=1e-3)


def test_masked_weights_stay_zero_through_optimizer_updates():
    # Masks are set at step 2 and frozen; Adam then trains 3 epochs on.
    model = kp.prune_low_magnitude(_small_model(), kp.ConstantSparsity(0.6, 2, end_step=2))
    _compile(model, 0.01, optimizer="adam")
    x, y = _xy(64)
    checks = []

    class Check(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for layer in _wrappers(self.model):
                for weight, mask, _ in layer.pruning_vars:
                    checks.append((mask.numpy().copy(), weight.numpy()[mask.numpy() == 0]))

    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[kp.UpdatePruningStep(), Check()])
    masks = [m for m, _ in checks]
    for first, later in zip(masks[:2], masks[2:]):
        np.testing.assert_array_equal(first, later)  # frozen after end_step
    for mask, pruned in checks:
        assert 1 - mask.mean() == pytest.approx(0.6, abs=1e-3)
        assert not pruned.any()  # the masked weights are exact zeros
    # The training forward pass uses weight * mask too: outputs equal the stripped model's.
    stripped = kp.strip_pruning(model)
    np.testing.assert_allclose(model(x, training=False), stripped(x), rtol=1e-6, atol=1e-6)
    trained = [w.numpy() for w in model.trainable_weights]
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[kp.UpdatePruningStep()])
    assert not any(np.array_equal(a, b.numpy()) for a, b in zip(trained, model.trainable_weights))


def test_sequential_and_nested_models():
    from helpers import nested_model, sequential_model

    x, y = datasets.load_digits()
    x, y = x[:32], y[:32]
    for model, layers in (
        (sequential_model(), ["c", "fc", "logits"]),
        (nested_model(), ["conv1", "conv2", "head"]),
    ):
        pruned = kp.prune_low_magnitude(model, kp.ConstantSparsity(0.5, 0, frequency=1))
        pruned.compile("sgd", "mse")
        pruned.fit(x, np.eye(10)[y], batch_size=16, verbose=0, callbacks=[kp.UpdatePruningStep()])
        report = kp.sparsity_report(pruned)
        assert sorted(report.layers) == sorted(layers)
        assert all(v == pytest.approx(0.5, abs=0.02) for v in report.layers.values()), report
        stripped = kp.strip_pruning(pruned)
        assert kp.sparsity_report(stripped) == report
        assert not any(
            isinstance(layer, kp.PruneLowMagnitude) for _, layer in kerasft.iter_layers(stripped)
        )
        np.testing.assert_allclose(
            pruned.predict(x, verbose=0), stripped.predict(x, verbose=0), rtol=1e-5, atol=1e-6
        )
        assert isinstance(model.layers[-1], keras.layers.Dense)  # the input model is untouched


def test_missing_callback_is_reported():
    model = kp.prune_low_magnitude(_small_model())
    _compile(model)
    x, y = _xy(16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="UpdatePruningStep"):
        model.fit(x, y, verbose=0)


def test_custom_schedule_and_custom_layer():
    @keras.saving.register_keras_serializable(package="test_pruning")
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1], 4), initializer="random_normal")

        def call(self, x):
            return x @ self.scale

        def get_prunable_weights(self):
            return [self.scale]

    def every_other_step(step):
        return tf.math.equal(step % 2, 0), tf.constant(0.5)

    inputs = keras.Input((6,), name="x")
    model = keras.Model(inputs, Scale(name="scale")(inputs))
    pruned = kp.prune_low_magnitude(model, every_other_step)
    pruned.compile("sgd", "mse")
    pruned.fit(
        np.ones((8, 6)),
        np.zeros((8, 4)),
        batch_size=4,
        verbose=0,
        callbacks=[kp.UpdatePruningStep()],
    )
    assert kp.sparsity_report(pruned).layers == {"scale": 0.5}
    assert type(kp.strip_pruning(pruned).get_layer("scale")) is Scale


# ----------------------------------------------------------------- save, load, strip


def test_save_load_round_trip_and_resume(tmp_path):
    schedule = kp.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    model = kp.prune_low_magnitude(_small_model(), schedule, block_size=(2, 2))
    _compile(model, 0.01, optimizer="adam")
    x, y = _xy(64)
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[kp.UpdatePruningStep()])
    path = str(tmp_path / "pruned.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the classes are registered
    assert [type(layer).__name__ for layer in loaded.layers] == [
        "InputLayer",
        "PruneLowMagnitude",
        "PruneLowMagnitude",
    ]
    layer = loaded.get_layer("prune_low_magnitude_d1")
    assert layer.block_size == (2, 2) and isinstance(layer.pruning_schedule, kp.PolynomialDecay)
    assert layer.pruning_schedule.get_config() == schedule.get_config()
    assert int(layer.pruning_step.numpy()) == 4
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-6)
    # Training the loaded model resumes the schedule at step 4 and reaches the target.
    loaded.fit(x, y, batch_size=16, verbose=0, callbacks=[kp.UpdatePruningStep()])
    assert int(layer.pruning_step.numpy()) == 8
    assert kp.sparsity_report(loaded).total == pytest.approx(0.8, abs=0.01)


def test_strip_gives_a_plain_model_with_zeros(tmp_path):
    model = kp.prune_low_magnitude(
        _small_model(), kp.ConstantSparsity(0.5, 0, frequency=1), layers=["d1"]
    )
    _compile(model)
    x, y = _xy(32)
    model.fit(x, y, batch_size=16, verbose=0, callbacks=[kp.UpdatePruningStep()])
    stripped = kp.strip_pruning(model)
    assert [layer.name for layer in stripped.layers] == ["x", "d1", "d2"]
    assert [type(layer) for layer in stripped.layers[1:]] == [keras.layers.Dense] * 2
    assert stripped.compiled  # compiled like the pruned model, with a fresh optimizer
    assert len(stripped.weights) == 4
    assert kp.sparsity_report(stripped).layers == {"d1": 0.5, "d2": 0.0}
    np.testing.assert_allclose(
        model.predict(x, verbose=0), stripped.predict(x, verbose=0), rtol=1e-6
    )
    path = str(tmp_path / "stripped.keras")
    stripped.save(path)
    assert kp.sparsity_report(keras.models.load_model(path)).layers["d1"] == 0.5
    assert isinstance(
        kp.strip_pruning(model.get_layer("prune_low_magnitude_d1")), keras.layers.Dense
    )


def _gzip_size(path: str) -> int:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname="model")
    return buffer.tell()


def test_stripped_export_is_smaller(shipped_model, tmp_path):
    pruned = kp.prune_low_magnitude(shipped_model, kp.ConstantSparsity(0.8, 0))
    for layer in _wrappers(pruned):
        layer.update_masks(step=0)
        layer.apply_masks()
    stripped = kp.strip_pruning(pruned)
    assert kp.sparsity_report(stripped).total == pytest.approx(0.8, abs=1e-3)
    dense_dir = export_model(shipped_model, tmp_path / "dense", format="saved_model")
    sparse_dir = export_model(stripped, tmp_path / "sparse", format="saved_model")
    ratio = _gzip_size(sparse_dir) / _gzip_size(dense_dir)
    assert ratio <= 0.35, ratio
    x = datasets.load_digits()[0][:16]
    loaded = tf.saved_model.load(sparse_dir)  # keep a reference while calling it
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(served["probabilities"], stripped.predict(x, verbose=0), atol=1e-5)


_MIRRORED = """
import json, sys
import kerasft
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from kerasft import datasets, pruning as kp

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((20,), name="x")
    model = keras.Model(
        inputs, keras.layers.Dense(10, name="d2")(keras.layers.Dense(32, name="d1")(inputs))
    )
    pruned = kp.prune_low_magnitude(model, kp.PolynomialDecay(0.0, 0.5, 0, 4, frequency=2))
    pruned.compile("adam", "mse")
rng = np.random.default_rng(0)
pruned.fit(rng.random((64, 20)), rng.random((64, 10)), batch_size=16, verbose=0,
           callbacks=[kp.UpdatePruningStep()])
layer = pruned.get_layer("prune_low_magnitude_d1")
weight, mask, _ = layer.pruning_vars[0]
copies = [np.asarray(v) for v in mask.value.values]
x, y = datasets.load_digits()
result = kerasft.finetune(sys.argv[1], (x[:200], y[:200]), head_epochs=1, epochs=2, prune=0.5,
                          distribute=strategy, verbose=0)
print("RESULT " + json.dumps({
    "replicas": len(copies), "steps": int(layer.pruning_step.numpy()),
    "same_masks": all(np.array_equal(copies[0], c) for c in copies),
    "zeros": [bool((np.asarray(w)[copies[0] == 0] == 0).all()) for w in weight.value.values],
    "sparsity": kp.sparsity_report(pruned).total,
    "finetune_sparsity": result.pruning.sparsity,
}))
"""


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, shipped_model_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    proc = subprocess.run(
        [sys.executable, str(script), shipped_model_path],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert out["replicas"] == 2 and out["steps"] == 4 and out["same_masks"], out
    assert out["zeros"] == [True, True], out
    assert out["sparsity"] == pytest.approx(0.5) and out["finetune_sparsity"] == pytest.approx(0.5)


# ---------------------------------------------------------------------- callbacks


def test_pruning_summaries_log_sparsity(tmp_path):
    model = kp.prune_low_magnitude(_small_model(), kp.ConstantSparsity(0.5, 0, frequency=1))
    _compile(model)
    x, y = _xy(32)
    log_dir = str(tmp_path / "logs")
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[kp.UpdatePruningStep(), kp.PruningSummaries(log_dir=log_dir)],
    )
    files = glob.glob(os.path.join(log_dir, "metrics", "events.out.tfevents.*"))
    assert files
    tags = {}
    for event in tf.compat.v1.train.summary_iterator(files[0]):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    sparsity = [v for tag, v in tags.items() if tag.endswith("kernel_mask/sparsity")]
    assert len(sparsity) == 2 and sparsity[0][-1] == pytest.approx(0.5)
    assert any(tag.endswith("threshold") for tag in tags)


def test_update_pruning_step_can_be_reused_and_warns_without_wrappers():
    callback = kp.UpdatePruningStep()
    plain = _small_model()
    plain.compile("sgd", "mse")
    with pytest.warns(UserWarning, match="no PruneLowMagnitude"):
        plain.fit(np.ones((4, 20)), np.zeros((4, 10)), verbose=0, callbacks=[callback])
    model = kp.prune_low_magnitude(_small_model())
    _compile(model)
    x, y = _xy(16)
    model.fit(x, y, verbose=0, callbacks=[callback])
    assert len(callback.prunable_layers) == 2


# ------------------------------------------------------------------------ errors


def test_errors_name_the_argument_and_value():
    model = _small_model()
    with pytest.raises(ValueError, match=r"`pruning_schedule`.*Received: pruning_schedule=0\.5"):
        kp.prune_low_magnitude(model, 0.5)
    with pytest.raises(ValueError, match=r"`pruning_schedule`.*returned 0\.3"):
        kp.prune_low_magnitude(model, lambda step: 0.3)
    with pytest.raises(
        ValueError,
        match=r"`target_sparsity` must be a float in \[0, 1\)\. Received: target_sparsity=1\.5",
    ):
        kp.ConstantSparsity(1.5, 0)
    with pytest.raises(ValueError, match=r"`end_step`.*Received: end_step=3 with begin_step=5"):
        kp.PolynomialDecay(0.0, 0.5, begin_step=5, end_step=3)
    for bad in ((0, 2), (2,), "2x2", (2.0, 2)):
        message = f"`block_size` must be a tuple of 2 positive ints. Received: block_size={bad!r}"
        with pytest.raises(ValueError, match=re.escape(message)):
            kp.prune_low_magnitude(model, block_size=bad)
    with pytest.raises(
        ValueError,
        match=r"`block_pooling_type` must be 'AVG' or 'MAX'\. Received: block_pooling_type='MIN'",
    ):
        kp.prune_low_magnitude(model, block_pooling_type="MIN")
    with pytest.raises(
        ValueError, match=r"`sparsity_m_by_n`.*0 < m < n.*Received: sparsity_m_by_n=\(4, 4\)"
    ):
        kp.prune_low_magnitude(model, sparsity_m_by_n=(4, 4))
    with pytest.raises(
        ValueError,
        match=r"No layer of model .* matches 'dense_9' in argument `layers`\. Existing layers are: "
        r"\['d1', 'd2'\]",
    ):
        kp.prune_low_magnitude(model, layers=["dense_9"])
    with pytest.raises(TypeError, match="`model_or_layers`"):
        kp.prune_low_magnitude("model.keras")


def test_structure_errors_on_wrong_ranks():
    inputs = keras.Input((8, 8, 3), name="x")
    conv = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs))
    with pytest.raises(
        ValueError,
        match=r"`block_size`.*layer 'conv'.*shape \(3, 3, 3, 4\).*Received: block_size=\(2, 2\)",
    ):
        kp.prune_low_magnitude(conv, block_size=(2, 2))

    class Vector(keras.layers.Layer):
        def build(self, input_shape):
            self.v = self.add_weight(shape=(input_shape[-1],), name="v")

        def call(self, x):
            return x * self.v

        def get_prunable_weights(self):
            return [self.v]

    inputs = keras.Input((5,), name="x")
    vector = keras.Model(inputs, Vector(name="vec")(inputs))
    with pytest.raises(
        ValueError,
        match=r"`sparsity_m_by_n`.*rank 2 to 5.*layer 'vec'.*shape \(5,\).*Received: "
        r"sparsity_m_by_n=\(2, 4\)",
    ):
        kp.prune_low_magnitude(vector, sparsity_m_by_n=(2, 4))


def test_no_prunable_layer():
    inputs = keras.Input((4,), name="x")
    model = keras.Model(
        inputs, keras.layers.Activation("relu")(keras.layers.BatchNormalization()(inputs))
    )
    with pytest.raises(
        ValueError,
        match=r"`model_or_layers`: model '.*' has no prunable layer\. "
        r"Prunable types are: \['Dense'",
    ):
        kp.prune_low_magnitude(model)
    with pytest.raises(ValueError, match="has no prunable weights"):
        kp.sparsity_report(model)
    with pytest.raises(ValueError, match=r"`m` and `n`.*Received: m=4, n=4"):
        kp.check_m_by_n(_small_model(), 4, 4)


def test_pruning_plan_fits_the_run_and_validates():
    plan = kp.pruning_plan(_small_model(), total_steps=200, target_sparsity=0.8)
    config = plan.schedule.get_config()
    assert (config["begin_step"], config["end_step"], config["frequency"]) == (0, 140, 7)
    assert isinstance(plan.callbacks[0], kp.UpdatePruningStep)
    plan = kp.pruning_plan(_small_model(), total_steps=100, sparsity_m_by_n=(2, 4))
    assert plan.schedule.get_config()["target_sparsity"] == 0.5
    with pytest.raises(
        ValueError, match=r"`total_steps` must be a positive int\. Received: total_steps=0"
    ):
        kp.pruning_plan(_small_model(), total_steps=0)
    with pytest.raises(ValueError, match=r"Received: begin_fraction=0\.8, end_fraction=0\.5"):
        kp.pruning_plan(_small_model(), total_steps=10, begin_fraction=0.8, end_fraction=0.5)
    with pytest.raises(ValueError, match=r"`target_sparsity`.*Received: target_sparsity='high'"):
        kp.pruning_plan(_small_model(), total_steps=10, target_sparsity="high")


# ----------------------------------------------------------------------- finetune


def test_finetune_prunes_and_returns_a_stripped_model(shipped_model, digits_small):
    result = kerasft.finetune(
        shipped_model, digits_small, head_epochs=1, epochs=3, prune=0.8, patience=None, verbose=0
    )
    model = result.model
    assert not any(isinstance(layer, kp.PruneLowMagnitude) for layer in model.layers)
    record = result.pruning
    # By default the largest trained layers, with 95% of the weights, are pruned.
    assert sorted(record.layers) == ["block2_conv1", "block2_conv2", "fc"]
    assert record.sparsity == pytest.approx(0.8, abs=1e-3)
    report = kp.sparsity_report(model)
    assert report.layers["predictions"] == 0.0 and report.layers["fc"] == pytest.approx(
        0.8, abs=1e-3
    )
    assert record.model_sparsity == pytest.approx(report.total)
    assert record.schedule["end_step"] <= 3 * result.phases[-1].steps_per_epoch
    assert result.pruning.to_dict()["layers"] == record.layers
    # The best weights come from an epoch at full sparsity.
    assert result.best_phase == "finetune"
    assert set(result.evaluate(digits_small)) >= {"loss", "accuracy"}


def test_finetune_prune_errors(shipped_model, digits_small):
    with pytest.raises(
        ValueError, match=r"`prune` has unknown option\(s\) \['sparsity'\].*Valid options are"
    ):
        kerasft.finetune(shipped_model, digits_small, prune={"sparsity": 0.8}, verbose=0)
    with pytest.raises(
        ValueError, match=r"`prune`: Argument `target_sparsity`.*Received: target_sparsity=1\.2"
    ):
        kerasft.finetune(shipped_model, digits_small, prune=1.2, verbose=0)
    with pytest.raises(ValueError, match=r"`prune` must be None, a target sparsity"):
        kerasft.finetune(shipped_model, digits_small, prune="80%", verbose=0)
    with pytest.raises(ValueError, match=r"`prune` works with recipe 'lp-ft', 'full' or 'head'"):
        kerasft.finetune(shipped_model, digits_small, prune=0.8, recipe="gradual", verbose=0)


@pytest.mark.slow
def test_pruned_digits_model_keeps_its_accuracy(shipped_model_path):
    """The shipped MNIST CNN fine-tuned on digits, dense and 80% pruned (1000 train, 797 test)."""
    split = datasets.few_shot_split(*datasets.load_digits(), shots=100, seed=0)
    accuracy = {}
    for name, prune in (("dense", None), ("pruned", 0.8)):
        # the same recipe both ways (pruning runs with LP-FT's phases)
        result = kerasft.finetune(
            shipped_model_path,
            (split.x_train, split.y_train),
            recipe="lp-ft",
            prune=prune,
            verbose=0,
        )
        accuracy[name] = result.evaluate((split.x_test, split.y_test))["accuracy"]
    print(
        f"held-out accuracy: dense {accuracy['dense']:.4f}, pruned to 80% {accuracy['pruned']:.4f}"
    )
    assert result.pruning.sparsity == pytest.approx(0.8, abs=1e-3)
    assert accuracy["pruned"] >= accuracy["dense"] - 0.01


def test_an_adapted_normalization_survives_pruning_and_stripping():
    # Both rebuild the model layer by layer and set each layer's weights; Normalization
    # derives what it divides by from its weights only when adapted or loaded.
    from sklearn.datasets import load_diabetes

    x = load_diabetes().data.astype("float32")
    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(x)
    inputs = keras.Input((x.shape[1],))
    h = keras.layers.Dense(16, activation="relu", name="d1")(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, name="d2")(h))
    expected = model.predict(x, verbose=0)
    pruned = kp.prune_low_magnitude(model)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    stripped = kp.strip_pruning(pruned)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
