"""Tests for kerasft.unfreezing: phase schedules, trainable sets, optimizer sync.

Phase ``layers`` are layer specs selected by ``kerasft.select_layers`` (tests/test_select_layers.py
covers the rule itself); the optimizer state kept across a sync is covered in
tests/test_callbacks.py.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from helpers import nested_model

import kerasft
from kerasft import surgery, unfreezing


def test_load_phases_reads_lists_dicts_and_files(tmp_path):
    expected = [
        {"layers": ["predictions", "fc"], "epoch": 0, "lr": 1e-3},
        {"layers": ["block2_.*"], "epoch": 2, "lr": None},
    ]
    listed = [{"layers": ["predictions", "fc"], "lr": 1e-3}, {"layers": "block2_.*", "epoch": 2}]
    assert unfreezing.load_phases(listed) == expected
    assert unfreezing.load_phases({1: listed[1], 0: listed[0]}) == expected
    (tmp_path / "phases.json").write_text(json.dumps({"phases": listed}))
    assert unfreezing.load_phases(tmp_path / "phases.json") == expected
    (tmp_path / "phases.yaml").write_text(
        "phases:\n  - {layers: [predictions, fc], lr: 1.0e-3}\n  - {layers: block2_.*, epoch: 2}\n"
    )
    assert unfreezing.load_phases(str(tmp_path / "phases.yaml")) == expected


def test_load_phases_errors_name_the_value():
    with pytest.raises(
        ValueError, match=r"Phase 0 needs `layers`: a regex or a list of regexes. Received: \[\]"
    ):
        unfreezing.load_phases([{"layers": []}])
    with pytest.raises(
        ValueError, match=r"Phase 1: `epoch` must be an integer >= 0. Received: epoch=-1"
    ):
        unfreezing.load_phases([{"layers": "a"}, {"layers": "b", "epoch": -1}])
    with pytest.raises(
        ValueError, match=r"Phase 0: `lr` must be a number >= 0. Received: lr='fast'"
    ):
        unfreezing.load_phases([{"layers": "a", "lr": "fast"}])
    with pytest.raises(ValueError, match=r"keyed by phase index .*Received keys: \['first'\]"):
        unfreezing.load_phases({"first": {"layers": "a"}})


def test_phase_layers_are_selected_in_full(shipped_model):
    phases = unfreezing.load_phases(
        [{"layers": "block2_conv.*"}, {"layers": ["fc", "predictions"], "epoch": 1}]
    )
    layers = [
        kerasft.select_layers(shipped_model, p["layers"], argument=f"phases[{i}]['layers']")
        for i, p in enumerate(phases)
    ]
    assert [[lyr.name for lyr in group] for group in layers] == [
        ["block2_conv1", "block2_conv2"],
        ["fc", "predictions"],
    ]
    with pytest.raises(
        ValueError,
        match=r"No layer of model 'mnist_cnn' matches 'block2' in argument "
        r"`phases\[0\]\['layers'\]`.*write '\.\*block2\.\*'",
    ):
        kerasft.select_layers(shipped_model, ["block2"], argument="phases[0]['layers']")


def test_resolve_layers_is_a_deprecated_alias(shipped_model):
    with pytest.warns(DeprecationWarning, match="use kerasft.select_layers"):
        layers = unfreezing.resolve_layers(
            shipped_model, ["fc", "block1_conv.*"], "phases[0]['layers']"
        )
    assert layers == kerasft.select_layers(shipped_model, ["fc", "block1_conv.*"])
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=r"matches 'zzz' in argument `phases\[0\]"),
    ):
        unfreezing.resolve_layers(shipped_model, ["zzz"], "phases[0]['layers']")


def test_apply_trainable_keeps_batchnorm_frozen_unless_asked():
    model = nested_model(3)
    kerasft.freeze(model)
    bn, conv2 = (
        model.get_layer("backbone").get_layer("bn1"),
        model.get_layer("backbone").get_layer("conv2"),
    )
    unfreezing.apply_trainable(model, {id(bn): True, id(conv2): True}, train_bn=False)
    state = surgery.trainable_state(model)
    assert state["backbone/conv2"] and not state["backbone/bn1"] and not state["head"]
    unfreezing.apply_trainable(model, {id(bn): True}, train_bn=True)
    assert surgery.trainable_state(model)["backbone/bn1"]


def test_sync_optimizer_trains_what_was_unfrozen(shipped_model, digits_small):
    x, y = digits_small
    m = shipped_model
    kerasft.freeze(m)
    kerasft.unfreeze(m, "predictions")
    m.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy())
    m.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
    kerasft.unfreeze(m, "fc")
    unfreezing.sync_optimizer(m)
    before = m.get_layer("fc").get_weights()[0]
    m.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
    assert not np.array_equal(before, m.get_layer("fc").get_weights()[0])
    with pytest.raises(ValueError, match=r"is not compiled.*HINT: call model.compile"):
        unfreezing.sync_optimizer(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
