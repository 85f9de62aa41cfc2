"""The oneDNN segfault: fine-tuning through kerasft never crashes the process.

Each case runs in a fresh interpreter, because the crash kills the process and the
oneDNN setting is read when TensorFlow loads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import pytest

from kerasft import _onednn

SCRIPT = """
import os, sys
order = sys.argv[1]
if order == "tf-first":
    import tensorflow
import kerasft, keras, numpy as np
inputs = keras.Input((64, 64, 8))
x = keras.layers.Conv2D(16, 1, strides=2, name="shortcut")(inputs)
x = keras.layers.GlobalAveragePooling2D()(x)
model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 64, 64, 8)).astype("float32")
y = rng.integers(0, 2, 64)
try:
    r = kerasft.finetune(model, (x, y), head_epochs=1, epochs=2, verbose=0)
except RuntimeError as e:
    print("REFUSED:", e)
    sys.exit(3)
print("TRAINED", r.phases[-1].name)
"""


def _run(order: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, order], env=env, capture_output=True, text=True, timeout=300
    )


def test_reproducer_trains_when_kerasft_is_imported_first():
    proc = _run("kerasft-first", None)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "TRAINED finetune" in proc.stdout


def test_reproducer_is_refused_not_crashed_when_tensorflow_came_first():
    proc = _run("tf-first", None)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "would crash the Python process" in proc.stdout
    assert "TensorFlow was imported before kerasft" in proc.stdout
    assert "TF_ENABLE_ONEDNN_OPTS=0" in proc.stdout and "shortcut" in proc.stdout


def test_risky_layer_detection():
    def model(size, kernel, strides):
        inputs = keras.Input((size, size, 4))
        x = keras.layers.Conv2D(4, kernel, strides=strides, name="c")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))

    assert _onednn.risky_layers(model(64, 1, 2)) == ["c"]
    assert _onednn.risky_layers(model(56, 1, 2)) == ["c"]
    assert _onednn.risky_layers(model(28, 1, 2)) == []
    assert _onednn.risky_layers(model(64, 3, 2)) == []
    assert _onednn.risky_layers(model(64, 1, 1)) == []


def test_kerasft_set_the_variable_in_this_process():
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") not in (None, "0"):
        pytest.skip("the variable was set by the caller")
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert not _onednn.onednn_enabled()
