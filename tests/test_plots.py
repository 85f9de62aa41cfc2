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


def _pixels_of(pixels: np.ndarray, colour) -> int:
    """How many pixels are drawn in ``colour`` (a matplotlib colour), give or take 2 levels."""
    from matplotlib.colors import to_rgb

    target = np.round(np.array(to_rgb(colour)) * 255)
    return int(np.all(np.abs(pixels.astype(int) - target) <= 2, axis=-1).sum())


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
    model.compile(
        keras.optimizers.Adam(3e-4), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    full = model.fit(x, y, validation_split=0.2, epochs=2, verbose=0)
    return [("head", head), ("full", full.history)]


def _dark_blue_pixels(pixels: np.ndarray) -> int:
    """Pixels in the top fifth of matplotlib's "Blues" map (the confusion matrix's cells)."""
    from matplotlib import colormaps

    ramp = np.array([colormaps["Blues"](v)[:3] for v in np.linspace(0.8, 1.0, 41)])
    distance = np.abs(pixels[:, :, None, :].astype(int) - np.round(ramp * 255)[None, None])
    return int((distance.max(axis=-1).min(axis=-1) <= 3).sum())


def test_plot_history_across_phases(two_phase_history, tmp_path):
    path = plot_history(two_phase_history, tmp_path / "history.png")
    assert path == str(tmp_path / "history.png")
    pixels = _png(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    # the training curves in blue, the validation curves in orange (lines, markers, legends)
    assert _pixels_of(pixels, "tab:blue") > 200 and _pixels_of(pixels, "tab:orange") > 200

    # The same curves as one phase draw differently: only the phase marks can differ.
    (_, head), (_, full) = two_phase_history
    merged = {k: list(head.history[k]) + list(full[k]) for k in full}
    single = _png(plot_history([("head", merged)], tmp_path / "single.png"))
    assert single.shape == pixels.shape
    assert np.mean(np.any(single != pixels, axis=-1)) > 0.001


def test_plot_history_tolerates_missing_series_and_learning_rate(tmp_path):
    phases = [
        ("head", {"loss": [1.0, 0.8], "accuracy": [0.5, 0.6]}),
        (
            "full",
            {
                "loss": [0.7, 0.6],
                "val_loss": [0.8, 0.75],
                "accuracy": [0.7, 0.8],
                "learning_rate": [1e-4, 5e-5],
            },
        ),
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
    losses = (
        2.3 - 1.5 / (1 + np.exp(-2 * (np.log10(lrs) + 3.5))) + np.where(lrs > 0.05, lrs * 50, 0)
    )
    losses[-3:] = np.inf
    path = plot_lr_find(
        lrs, losses, {"valley": 3e-3, "steep": 3e-4, "minimum": None}, tmp_path / "lr.png"
    )
    pixels = _png(path)
    # the curve in blue; the valley and steep markers in red and green; no third marker
    # colour (purple) since the "minimum" suggestion is None
    assert _pixels_of(pixels, "tab:blue") > 200
    assert _pixels_of(pixels, "tab:red") > 30 and _pixels_of(pixels, "tab:green") > 30
    assert _pixels_of(pixels, "tab:purple") == 0
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
    result = kerasft.finetune(
        shipped_model_path, (x[:100], y[:100]), head_epochs=1, epochs=2, verbose=0
    )
    from_result = _png(plot_history(result, tmp_path / "a.png"))
    from_dict = _png(plot_history(result.history, tmp_path / "b.png"))
    from_pairs = _png(
        plot_history([(p.name, p.history) for p in result.phases], tmp_path / "c.png")
    )
    np.testing.assert_array_equal(from_result, from_pairs)
    np.testing.assert_array_equal(from_dict, from_pairs)


def test_cli_plots_end_to_end(tmp_path):
    """`kerasft finetune --plots DIR` writes the curves and the test-set confusion matrix."""
    plots, logs = tmp_path / "plots", tmp_path / "logs"
    assert (
        cli.main(
            [
                "finetune",
                "--head-epochs",
                "1",
                "--epochs",
                "2",
                "--no-scratch",
                "--no-export",
                "-q",
                "--plots",
                str(plots),
                "--tensorboard",
                str(logs),
            ]
        )
        == 0
    )
    assert sorted(os.listdir(plots)) == ["confusion.png", "history.png"]
    history, confusion = _png(plots / "history.png"), _png(plots / "confusion.png")
    assert history.shape[1] > 1000  # loss and accuracy side by side
    # The shipped MNIST model tuned on digits gets most right: the diagonal's cells are
    # dark blue (the top fifth of the "Blues" map). Measured: 40,063 such pixels here;
    # about 4,400 for the colour bar alone (uniform predictions), 4,500 more per dark cell.
    assert _dark_blue_pixels(confusion) > 4_400 + 5 * 4_000
    assert sorted(os.listdir(logs)) == ["train", "validation"]


# ----------------------------------------------------- what the figures show (their artists)


@pytest.fixture()
def drawn(monkeypatch):
    """The matplotlib figures saved during the test, in order (a spy: they are still written)."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figures


def _axes_titled(figure, title):
    return next(ax for ax in figure.axes if ax.get_title() == title)


def _line_labelled(ax, start):
    return next(line for line in ax.get_lines() if line.get_label().startswith(start))


def test_history_loss_axis_is_logarithmic_when_it_spans_decades(tmp_path, drawn):
    spike = [
        (
            "head",
            {"loss": [9.0, 0.4, 0.3], "val_loss": [2.0, 0.5, 0.35], "accuracy": [0.2, 0.8, 0.9]},
        ),
        ("full", {"loss": [0.2, 0.1], "val_loss": [0.3, 0.25], "accuracy": [0.95, 0.97]}),
    ]
    plot_history(spike, tmp_path / "spike.png")
    gentle = [("head", {"loss": [1.0, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.8]})]
    plot_history(gentle, tmp_path / "gentle.png")
    negative = [("head", {"loss": [50.0, 1.0, -0.5]})]  # a loss that can go below 0 stays linear
    plot_history(negative, tmp_path / "negative.png")
    assert _axes_titled(drawn[0], "loss").get_yscale() == "log"  # 9.0 down to 0.1: 90x
    assert _axes_titled(drawn[0], "accuracy").get_yscale() == "linear"
    assert _axes_titled(drawn[1], "loss").get_yscale() == "linear"  # 2.5x
    assert _axes_titled(drawn[2], "loss").get_yscale() == "linear"


def test_history_of_a_real_run_follows_the_rule(two_phase_history, tmp_path, drawn):
    plot_history(two_phase_history, tmp_path / "history.png")
    (_, head), (_, full) = two_phase_history
    losses = [v for key in ("loss", "val_loss") for v in list(head.history[key]) + list(full[key])]
    spans = min(losses) > 0 and max(losses) > 10 * min(losses)
    assert _axes_titled(drawn[0], "loss").get_yscale() == ("log" if spans else "linear")


def test_lr_find_plot_marks_the_lowest_point_and_says_what_each_marker_is(
    shipped_model, digits_small, tmp_path, drawn
):
    from kerasft.lr_finder import lr_find

    x, y = digits_small
    found = lr_find(
        shipped_model,
        (x, y),
        num_steps=40,
        loss="sparse_categorical_crossentropy",
        plot=tmp_path / "lr_find.png",
    )
    assert found.plot_path == str(tmp_path / "lr_find.png")
    ax = drawn[0].axes[0]
    curve = _line_labelled(ax, "loss")
    lrs, losses = curve.get_xdata(), curve.get_ydata()
    np.testing.assert_allclose(
        losses, found.losses[np.isfinite(found.losses)]
    )  # the smoothed curve

    lowest = _line_labelled(ax, "lowest loss")
    assert lowest.get_xdata()[0] == lrs[np.argmin(losses)]
    assert lowest.get_ydata()[0] == losses.min()
    # "minimum" is a tenth of the lowest loss's rate (in the range the suggestions read), so
    # its marker is not at the lowest point, and its legend says so.
    minimum = _line_labelled(ax, "minimum")
    assert (
        minimum.get_label()
        == f"minimum (rate of the lowest loss / 10): {found.suggestions['minimum']:.2e}"
    )
    assert minimum.get_xdata()[0] == found.suggestions["minimum"] < lowest.get_xdata()[0]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(t.startswith("valley (in the longest descent): ") for t in legend)
    assert any(t.startswith("steep (steepest descent): ") for t in legend)
    assert f"lowest loss {losses.min():.4g} at {lrs[np.argmin(losses)]:.2e}" in legend


def test_lr_find_plot_labels_unknown_suggestions_by_name(tmp_path, drawn):
    lrs = np.geomspace(1e-5, 1.0, 30)
    losses = np.concatenate([np.linspace(2.0, 0.5, 24), np.linspace(0.6, 3.0, 6)])
    plot_lr_find(lrs, losses, {"mine": 1e-3}, tmp_path / "lr.png")
    legend = [text.get_text() for text in drawn[0].axes[0].get_legend().get_texts()]
    assert legend == ["loss", "mine: 1.00e-03", f"lowest loss 0.5 at {lrs[23]:.2e}"]


def test_search_plot_numbers_trials_from_one_in_axis_and_legend(tmp_path, drawn):
    from kerasft.search import SearchResult, TrialRow

    trials = [
        TrialRow("0", {"lr": 1e-2}, 0.9, 1.0, "COMPLETED"),
        TrialRow("1", {"lr": 1e-3}, 0.4, 1.0, "COMPLETED"),
        TrialRow("2", {"lr": 1e-4}, None, 1.0, "FAILED", message="diverged"),
        TrialRow("3", {"lr": 3e-4}, 0.6, 1.0, "COMPLETED"),
    ]
    result = SearchResult(
        best=None,
        best_params={"lr": 1e-3},
        best_trial="1",
        trials=trials,
        objective="val_loss",
        direction="min",
        directory=None,
        store=None,
    )
    result.plot(tmp_path / "search.png")
    ax = drawn[0].axes[0]
    assert list(_line_labelled(ax, "val_loss of the trial").get_xdata()) == [1, 2, 4]
    best = _line_labelled(ax, "best:")
    assert best.get_label() == "best: trial 2 (id 1)"
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (2, 0.4)
