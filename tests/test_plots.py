"""Tests for kerasft.plots: real PNG files from real training histories and predictions."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from PIL import Image

import kerasft
from kerasft import cli
from kerasft.plots import plot_confusion_matrix, plot_history, plot_lr_find


def _png(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def two_phase_history(digits_small):
    """Histories of a real two-phase run: head only, then everything."""
    x, y = digits_small
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Rescaling(1 / 255)(inputs)
    h = keras.layers.Flatten()(h)
    body = keras.layers.Dense(32, activation="relu", name="body")
    h = body(h)
    outputs = keras.layers.Dense(10, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    body.trainable = False
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    head = model.fit(x, y, validation_split=0.2, epochs=3, verbose=0)
    body.trainable = True
    model.compile(keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    full = model.fit(x, y, validation_split=0.2, epochs=2, verbose=0)
    return [("head", head), ("full", full.history)]


def test_plot_history_across_phases(two_phase_history, tmp_path):
    path = plot_history(two_phase_history, tmp_path / "history.png")
    assert path == str(tmp_path / "history.png")
    pixels = _png(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels.std() > 10  # something was drawn

    # The same curves as one phase draw differently: only the phase marks can differ.
    (_, head), (_, full) = two_phase_history
    merged = {k: list(head.history[k]) + list(full[k]) for k in full}
    single = _png(plot_history([("head", merged)], tmp_path / "single.png"))
    assert single.shape == pixels.shape
    assert np.mean(np.any(single != pixels, axis=-1)) > 0.001


def test_plot_history_tolerates_missing_series_and_learning_rate(tmp_path):
    phases = [
        ("head", {"loss": [1.0, 0.8], "accuracy": [0.5, 0.6]}),
        ("full", {"loss": [0.7, 0.6], "val_loss": [0.8, 0.75], "accuracy": [0.7, 0.8],
                  "learning_rate": [1e-4, 5e-5]}),
    ]
    _png(plot_history(phases, tmp_path / "h.png"))
    # Overwriting an existing PNG is fine (plots are cheap to redo).
    _png(plot_history(phases, tmp_path / "h.png"))
    assert os.listdir(tmp_path) == ["h.png"]


def test_plot_history_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_history([], tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"`phases\[0\]` must be a \(name, history\) pair"):
        plot_history([{"loss": [1.0]}], tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"lengths differ: \{'loss': 2, 'val_loss': 1\}"):
        plot_history([("head", {"loss": [1.0, 0.5], "val_loss": [1.0]})], tmp_path / "h.png")
    with pytest.raises(ValueError, match="no epochs"):
        plot_history([("head", {})], tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"must end with '.png'. Received: path=.*h.pdf"):
        plot_history([("head", {"loss": [1.0]})], tmp_path / "h.pdf")
    assert os.listdir(tmp_path) == []


def test_plot_lr_find(tmp_path):
    lrs = np.geomspace(1e-6, 1.0, 80)
    # A typical sweep: flat, falling, then diverging to inf.
    losses = 2.3 - 1.5 / (1 + np.exp(-2 * (np.log10(lrs) + 3.5))) + np.where(lrs > 0.05, lrs * 50, 0)
    losses[-3:] = np.inf
    path = plot_lr_find(lrs, losses, {"valley": 3e-3, "steep": 3e-4, "minimum": None},
                        tmp_path / "lr.png")
    assert _png(path).std() > 10
    _png(plot_lr_find(lrs, losses, None, tmp_path / "lr_plain.png"))


def test_plot_lr_find_errors(tmp_path):
    with pytest.raises(ValueError, match="same length. Received: 3 learning rates and 2 losses"):
        plot_lr_find([1e-3, 1e-2, 1e-1], [1.0, 2.0], {}, tmp_path / "lr.png")
    with pytest.raises(ValueError, match="positive and finite"):
        plot_lr_find([0.0, 1e-2], [1.0, 2.0], {}, tmp_path / "lr.png")
    with pytest.raises(ValueError, match="no finite value"):
        plot_lr_find([1e-3, 1e-2], [np.nan, np.inf], {}, tmp_path / "lr.png")
    with pytest.raises(ValueError, match=r"`suggestions\['valley'\]` must be a positive"):
        plot_lr_find([1e-3, 1e-2], [1.0, 2.0], {"valley": -1.0}, tmp_path / "lr.png")
    assert os.listdir(tmp_path) == []


def test_plot_confusion_matrix_of_real_predictions(shipped_model, digits, tmp_path):
    x, y = digits
    probabilities = shipped_model.predict(x[:400], verbose=0)
    names = [f"digit {i}" for i in range(10)]
    from_ids = plot_confusion_matrix(y[:400], probabilities.argmax(-1), names, tmp_path / "a.png")
    from_probs = plot_confusion_matrix(y[:400], probabilities, names, tmp_path / "b.png")
    np.testing.assert_array_equal(_png(from_ids), _png(from_probs))


def test_plot_confusion_matrix_errors(tmp_path):
    names = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"`y_true` holds class ids outside \[0, 3\).*\[3\]"):
        plot_confusion_matrix([0, 1, 3], [0, 1, 2], names, tmp_path / "c.png")
    with pytest.raises(ValueError, match="same length. Received: 3 and 2 labels"):
        plot_confusion_matrix([0, 1, 2], [0, 1], names, tmp_path / "c.png")
    with pytest.raises(ValueError, match="probabilities for 4 classes"):
        plot_confusion_matrix([0, 1], np.full((2, 4), 0.25), names, tmp_path / "c.png")
    with pytest.raises(ValueError, match="must end with '.png'"):
        plot_confusion_matrix([0], [0], names, tmp_path / "c.jpg")
    assert os.listdir(tmp_path) == []


def test_plot_history_of_a_finetune_result(digits_small, shipped_model_path, tmp_path):
    x, y = digits_small
    result = kerasft.finetune(shipped_model_path, (x[:100], y[:100]), head_epochs=1, epochs=2,
                              verbose=0)
    from_result = _png(plot_history(result, tmp_path / "a.png"))
    from_dict = _png(plot_history(result.history, tmp_path / "b.png"))
    from_pairs = _png(plot_history([(p.name, p.history) for p in result.phases], tmp_path / "c.png"))
    np.testing.assert_array_equal(from_result, from_pairs)
    np.testing.assert_array_equal(from_dict, from_pairs)


def test_cli_plots_end_to_end(tmp_path):
    """`kerasft finetune --plots DIR` writes the curves and the test-set confusion matrix."""
    plots, logs = tmp_path / "plots", tmp_path / "logs"
    assert cli.main(["finetune", "--head-epochs", "1", "--epochs", "2", "--no-scratch",
                     "--no-export", "-q", "--plots", str(plots), "--tensorboard", str(logs)]) == 0
    assert sorted(os.listdir(plots)) == ["confusion.png", "history.png"]
    history, confusion = _png(plots / "history.png"), _png(plots / "confusion.png")
    assert history.shape[1] > 1000  # loss and accuracy side by side
    assert confusion.std() > 10
    assert sorted(os.listdir(logs)) == ["train", "validation"]
