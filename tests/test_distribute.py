"""tf.distribute: two logical CPU devices (MirroredStrategy), two worker processes
(MultiWorkerMirroredStrategy), and the choices of ``distribute="auto"``.

Logical devices must be configured before TensorFlow initialises its devices, and a
multi-worker strategy must be created at program start, so both run in subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft.speed import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMMON = """
import json, sys
import kerasft  # noqa: F401  (before TensorFlow)
import tensorflow as tf
{setup}
import numpy as np
from kerasft import datasets
x, y = datasets.load_digits()
sp = datasets.few_shot_split(x, y, shots=20, seed=0)

def accuracy(model):
    pred = np.concatenate([model(sp.x_test[i:i + 512], training=False).numpy()
                           for i in range(0, len(sp.x_test), 512)])
    return float(np.mean(pred.argmax(1) == sp.y_test))

def run(distribute):
    r = kerasft.finetune(sys.argv[1], (sp.x_train, sp.y_train), head_epochs=1, epochs=2,
                         distribute=distribute, verbose=0)
    return {{"acc": accuracy(r.model), "cached": [p.cached for p in r.speed.phases],
             "variable": type(r.model.weights[0].value).__name__,
             "replicas": tf.distribute.get_strategy().num_replicas_in_sync if distribute is None
             else distribute.num_replicas_in_sync}}
"""

_MIRRORED = (
    _COMMON.format(
        setup="""
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
    )
    + """
out = {"single": run(None), "mirrored": run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))}
print("RESULT " + json.dumps(out))
"""
)

_WORKER = (
    _COMMON.format(
        setup="""
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # at program start, as TensorFlow requires
"""
    )
    + """
out = run(strategy)
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""
)


def _python(script_path, *args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, script_path, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, shipped_model_path):
    script = tmp_path / "mirrored.py"
    script.write_text(textwrap.dedent(_MIRRORED))
    proc = _python(str(script), shipped_model_path)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    single, mirrored = out["single"], out["mirrored"]
    assert mirrored["replicas"] == 2 and mirrored["variable"] == "MirroredVariable"
    assert single["variable"] == "ResourceVariable"
    assert mirrored["cached"] == [False, False]  # features are not cached under a strategy
    assert single["cached"][0] is True
    assert single["acc"] > 0.85 and abs(mirrored["acc"] - single["acc"]) < 0.05, out


@pytest.mark.slow
def test_multi_worker_matches_one_worker(tmp_path, shipped_model_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    try:
        for i in range(2):
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            )
            procs.append(
                _python(str(script), shipped_model_path, str(tmp_path / f"out{i}.json"), env=env)
            )
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert [r["replicas"] for r in results] == [2, 2]
    assert results[0]["acc"] == pytest.approx(results[1]["acc"], abs=1e-6)  # one model, two workers
    from kerasft import datasets

    x, y = datasets.load_digits()
    sp = datasets.few_shot_split(x, y, shots=20, seed=0)
    one = kerasft.finetune(
        shipped_model_path, (sp.x_train, sp.y_train), head_epochs=1, epochs=2, verbose=0
    )
    acc_one = one.evaluate((sp.x_test, sp.y_test))["accuracy"]
    assert acc_one > 0.85 and abs(results[0]["acc"] - acc_one) < 0.05, (results, acc_one)


def test_choose_strategy_kind():
    tf_config = json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    )
    assert distribute.choose_strategy_kind({"CPU": 1}, tf_config) == "multi_worker"
    assert distribute.choose_strategy_kind({"CPU": 1, "TPU": 8}) == "tpu"
    assert distribute.choose_strategy_kind({"CPU": 1, "GPU": 2}) == "mirrored"
    assert distribute.choose_strategy_kind({"CPU": 1, "GPU": 1}) is None
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.choose_strategy_kind({"CPU": 1}, "{not json")
    assert distribute.resolve_strategy("auto") is None  # one CPU here: no strategy
    assert distribute.num_replicas() == 1


def test_distribute_errors(shipped_model, digits_small):
    with pytest.raises(
        ValueError,
        match=r"Argument `distribute` must be None, 'auto' or a "
        r"tf.distribute.Strategy.*Received: distribute='mirrored'",
    ):
        kerasft.finetune(shipped_model, digits_small, distribute="mirrored", verbose=0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(
        ValueError, match=r"created outside the scope of `distribute`.*HINT: pass copy=True"
    ):
        kerasft.finetune(shipped_model, digits_small, distribute=strategy, copy=False, verbose=0)


def test_one_device_strategy_trains_and_saves(shipped_model, digits_small, tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    result = kerasft.finetune(
        shipped_model, digits_small, recipe="head", epochs=1, distribute=strategy, verbose=0
    )
    assert result.speed.phases[0].cached is False
    path = str(tmp_path / "m.keras")
    result.model.save(path)
    loaded = keras.models.load_model(path)
    x = digits_small[0][:8]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
