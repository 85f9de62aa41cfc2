"""The learning-rate finder: the sweep, the suggestions, and that the model comes back unchanged."""

from __future__ import annotations

import doctest
import json

import keras
import numpy as np
import pytest

import kerasft
from kerasft import cli, lr_finder


def test_docstring_examples_run():
    result = doctest.testmod(lr_finder)
    assert result.attempted >= 3 and result.failed == 0


def _state(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def test_sweep_restores_weights_and_optimizer_bit_for_bit(shipped_model, digits_small, tmp_path):
    x, y = digits_small
    shipped_model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # give Adam some state
    weights = _state(shipped_model.variables)  # kernels, BN statistics, dropout seed
    optimizer = _state(shipped_model.optimizer.variables)
    iterations = int(shipped_model.optimizer.iterations)

    result = kerasft.lr_find(
        shipped_model, (x, y), num_steps=40, end_lr=100.0, plot=tmp_path / "lr.png"
    )

    for before, v in zip(weights, shipped_model.variables):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(v), err_msg=v.path)
    for before, v in zip(optimizer, shipped_model.optimizer.variables):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(v), err_msg=v.path)
    assert int(shipped_model.optimizer.iterations) == iterations

    lrs, losses = result.learning_rates, result.losses
    assert 10 < len(lrs) < 40, "a sweep up to lr=100 must stop on divergence"
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (100.0 / 1e-7) ** (1 / 39), rtol=1e-6)
    assert lrs[0] == pytest.approx(1e-7)
    assert losses[-1] > 4 * np.nanmin(losses) or not np.isfinite(losses[-1])
    assert set(result.suggestions) == {"valley", "steep", "minimum"}
    for value in result.suggestions.values():
        assert lrs[0] <= value <= lrs[-1]
    assert result.suggestions["minimum"] == pytest.approx(
        lrs[np.argmin(losses[len(lrs) // 10 :]) + len(lrs) // 10] / 10
    )
    with open(result.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_suggestions_follow_fastai():
    lrs = np.geomspace(1e-6, 1.0, 100)
    # Flat, then a steady descent between indices 30 and 70, then divergence.
    losses = np.concatenate(
        [np.full(30, 2.3), np.linspace(2.3, 0.3, 40), np.linspace(0.35, 5.0, 30)]
    )
    s = kerasft.suggest_learning_rates(lrs, losses)
    # The first tenth and the last five points are dropped, as fastai does.
    kept_lrs, kept = lrs[10:95], losses[10:95]
    assert s["minimum"] == pytest.approx(kept_lrs[np.argmin(kept)] / 10)
    assert s["steep"] == pytest.approx(
        kept_lrs[np.argmin(np.diff(kept) / np.diff(np.log(kept_lrs)))]
    )
    # The longest decreasing run is indices 29..69 of the kept points; valley sits half
    # way between its first and second thirds.
    assert kept_lrs[20] < s["valley"] < kept_lrs[60]
    assert losses[np.searchsorted(lrs, s["valley"])] < 2.0


def test_finetune_lr_find_uses_the_valley(shipped_model, digits_small):
    result = kerasft.finetune(
        shipped_model, digits_small, recipe="head", epochs=1, lr="find", verbose=0
    )
    found = result.lr_find
    assert result.phases[0].learning_rate == pytest.approx(found.suggestions["valley"])
    assert len(found.learning_rates) >= 10


def test_cli_lr_find(tmp_path, capsys):
    png = tmp_path / "sweep.png"
    status = cli.main(["lr-find", "--json", "--plot", str(png)])
    assert status == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) >= {"valley", "steep", "minimum"} and 1e-7 < report["valley"] < 10
    assert png.stat().st_size > 1000


def test_errors(shipped_model, digits_small):
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    data = (np.zeros((8, 3)), np.zeros(8, "int64"))
    with pytest.raises(ValueError, match=r"not compiled with a loss.*HINT: pass loss="):
        kerasft.lr_find(uncompiled, data)
    with pytest.raises(
        ValueError,
        match=r"Argument `end_lr` must be > `start_lr`. Received: start_lr=0.1, end_lr=0.01",
    ):
        kerasft.lr_find(uncompiled, data, loss="mse", start_lr=0.1, end_lr=0.01)
    with pytest.raises(
        ValueError, match=r"Argument `num_steps` must be an integer >= 10. Received: num_steps=5"
    ):
        kerasft.lr_find(uncompiled, data, loss="mse", num_steps=5)
    with pytest.raises(
        ValueError,
        match=r"Argument `plot` must be a path ending in '.png'. Received: plot='sweep.jpg'",
    ):
        kerasft.lr_find(uncompiled, data, loss="mse", plot="sweep.jpg")
    with pytest.raises(TypeError, match=r"Argument `data` must be a batched tf.data.Dataset"):
        kerasft.lr_find(uncompiled, np.zeros((8, 3)), loss="mse")
    with pytest.raises(
        ValueError, match=r"Too few finite losses \(2\) to suggest a learning rate. HINT"
    ):
        kerasft.suggest_learning_rates([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.5, np.nan, np.nan])
    with pytest.raises(
        ValueError, match=r"Argument `lr` must be a number in \(0, 10\). Received: lr='search'"
    ):
        kerasft.finetune(shipped_model, digits_small, lr="search", verbose=0)
