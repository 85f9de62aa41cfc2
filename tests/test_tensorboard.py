"""Tests for TensorBoard logging: event files read back with TensorFlow's own reader."""

from __future__ import annotations

import glob
import os
from collections import defaultdict

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasft
from kerasft.tensorboard import TensorBoardLogger


def _read(log_dir: str) -> dict[str, dict[str, list[tuple[int, object]]]]:
    """{split: {tag: [(step, value), ...]}} from every event file under `log_dir`."""
    events: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for file in sorted(glob.glob(os.path.join(log_dir, "*", "events.out.tfevents.*"))):
        split = os.path.basename(os.path.dirname(file))
        for event in tf.compat.v1.train.summary_iterator(file):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                item = array.item()
                events[split][value.tag].append(
                    (event.step, item.decode() if isinstance(item, bytes) else item)
                )
    return events


@pytest.fixture(scope="module")
def run(digits_small, shipped_model_path, tmp_path_factory):
    x, y = digits_small
    log_dir = str(tmp_path_factory.mktemp("tb") / "run")
    old_umask = os.umask(0o000)  # what kerasft writes must not depend on the umask
    try:
        result = kerasft.finetune(
            shipped_model_path,
            (x[:160], y[:160]),
            head_epochs=2,
            epochs=3,
            lr=1e-3,
            patience=None,
            verbose=0,
            tensorboard=log_dir,
        )
    finally:
        os.umask(old_umask)
    return result, log_dir


def test_finetune_logs_metrics_across_phases(run):
    result, log_dir = run
    events = _read(log_dir)
    assert set(events) == {"train", "validation"}
    head, finetune = result.phases
    for split, prefix in (("train", ""), ("validation", "val_")):
        for name in ("loss", "accuracy"):
            steps, values = zip(*events[split][f"epoch_{name}"])
            # One continuous axis: 5 epochs numbered 0..4, not 0..1 then 0..2.
            assert steps == (0, 1, 2, 3, 4)
            expected = head.history[prefix + name] + finetune.history[prefix + name]
            np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_event_files_are_not_group_or_world_writable(run):
    _, log_dir = run
    for root, _, files in os.walk(log_dir):
        for name in [root] + [os.path.join(root, f) for f in files]:
            assert os.stat(name).st_mode & 0o022 == 0, name


def test_finetune_logs_learning_rate_and_phase_boundaries(run):
    result, log_dir = run
    train = _read(log_dir)["train"]
    steps, rates = zip(*train["epoch_learning_rate"])
    assert steps == (0, 1, 2, 3, 4)
    assert rates[:2] == pytest.approx([1e-3, 1e-3])  # head phase: constant lr
    # Fine-tuning phase: warmup to 1e-4 then cosine decay, read at each epoch's end.
    assert 0 < rates[2] <= 1e-4 and rates[2] > rates[3] > rates[4]
    assert rates[4] == pytest.approx(0.0, abs=1e-9)  # the cosine ends at 0

    assert [v for _, v in train["phase"]] == [1, 1, 2, 2, 2]
    (s1, text1), (s2, text2) = train["phases"]
    assert (s1, s2) == (0, 2)
    assert text1.startswith("phase 1 'head' begins at epoch 0, optimizer step 0: epochs=2")
    steps_per_epoch = result.phases[0].steps_per_epoch
    assert text2.startswith(
        f"phase 2 'finetune' begins at epoch 2, optimizer step {2 * steps_per_epoch}: epochs=3"
    )
    assert f"trainable_params={result.phases[1].trainable_params}" in text2


def test_logger_on_its_own_around_two_fits(digits_small, tmp_path):
    x, y = digits_small
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(True))
    logger = TensorBoardLogger(tmp_path / "logs")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[logger])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[logger])  # no begin_phase: "fit_2"
    logger.close()
    train = _read(str(tmp_path / "logs"))["train"]
    assert [s for s, _ in train["epoch_loss"]] == [0, 1, 2]
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx([0.05] * 3)
    assert [t.split(":")[0] for _, t in train["phases"]] == [
        "phase 1 'fit_1' begins at epoch 0, optimizer step 0",
        "phase 2 'fit_2' begins at epoch 2, optimizer step 20",  # 300 examples / 32 = 10 steps
    ]
    assert logger.phase_epochs == {"fit_1": 0, "fit_2": 2}
    assert logger.phase_steps == {"fit_1": 0, "fit_2": 20}


def test_tensorboard_reads_the_logs(run):
    """TensorBoard's own reader, when the `tensorboard` package is installed."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.plugin_event_accumulator"
    )
    _, log_dir = run
    train = accumulator.EventAccumulator(os.path.join(log_dir, "train"))
    train.Reload()
    plugins = {
        tag: train.SummaryMetadata(tag).plugin_data.plugin_name for tag in train.Tags()["tensors"]
    }
    assert plugins == {
        "epoch_loss": "scalars",
        "epoch_accuracy": "scalars",
        "epoch_learning_rate": "scalars",
        "phase": "scalars",
        "phases": "text",
    }
    loss = train.Tensors("epoch_loss")
    assert [e.step for e in loss] == [0, 1, 2, 3, 4]
    assert tf.make_ndarray(loss[0].tensor_proto).shape == ()


def test_errors(tmp_path, shipped_model_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(
        ValueError,
        match=r"`log_dir` \(`tensorboard=` of kerasft.finetune\) must "
        r"be a directory path, but .*file' is an existing file",
    ):
        TensorBoardLogger(a_file)
    with pytest.raises(ValueError, match=r"must be a directory path. Received: log_dir=3"):
        TensorBoardLogger(3)
    x = np.zeros((20, 28, 28, 1), "float32")
    with pytest.raises(ValueError, match="is an existing file"):
        kerasft.finetune(shipped_model_path, (x, np.arange(20) % 10), tensorboard=a_file, verbose=0)
