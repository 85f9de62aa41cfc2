"""Gradual unfreezing, optimizer sync, plateau reduction on schedules, and their recipes."""

from __future__ import annotations

import doctest
import json

import keras
import numpy as np
import pytest
from helpers import nested_model

import kerasft
from kerasft import callbacks, unfreezing
from kerasft.callbacks import GradualUnfreezing, PhaseLogger, ReduceLROnPlateauScaled

LOSS = "sparse_categorical_crossentropy"


def test_docstring_examples_run():
    for module in (callbacks, unfreezing):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


def _slots(optimizer, layer):
    """Optimizer variables (moments, averages) that shadow ``layer``'s weights, by path."""
    return {
        v.path.split("/")[-1]: keras.ops.convert_to_numpy(v).copy()
        for v in optimizer.variables
        if f"/{layer}_" in v.path
    }


def _params(model, names):
    return sum(
        int(np.prod(w.shape))
        for n in names
        for w in model.get_layer(n).trainable_weights
        if not isinstance(model.get_layer(n), keras.layers.BatchNormalization)
    )


def test_sync_optimizer_keeps_state_of_weights_already_training(shipped_model, digits_small):
    x, y = digits_small
    kerasft.freeze(shipped_model)
    kerasft.unfreeze(shipped_model, names=["predictions"])
    shipped_model.compile(keras.optimizers.Adam(1e-3, use_ema=True), LOSS)
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    opt = shipped_model.optimizer
    head_state = _slots(opt, "predictions")
    assert len(head_state) == 6 and all(np.any(v) for v in head_state.values())

    kerasft.unfreeze(shipped_model, names=["fc"])
    unfreezing.sync_optimizer(shipped_model)

    for path, value in _slots(opt, "predictions").items():
        np.testing.assert_array_equal(value, head_state[path], err_msg=path)
    fc = _slots(opt, "fc")
    assert not np.any(fc["fc_kernel_momentum"]) and not np.any(fc["fc_kernel_velocity"])
    # A new moving average starts at the weight, not at zero.
    np.testing.assert_array_equal(
        fc["fc_kernel_average"], shipped_model.get_layer("fc").get_weights()[0]
    )
    assert int(opt.iterations) == 2
    before = shipped_model.get_layer("fc").get_weights()[0]
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert not np.array_equal(before, shipped_model.get_layer("fc").get_weights()[0])
    assert int(opt.iterations) == 4


class _Probe(keras.callbacks.Callback):
    """Head optimizer state seen at the end of each epoch and at the start of the next."""

    def __init__(self):
        super().__init__()
        self.at_end, self.at_begin = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.at_begin[epoch] = _slots(self.model.optimizer, "predictions")

    def on_epoch_end(self, epoch, logs=None):
        self.at_end[epoch] = _slots(self.model.optimizer, "predictions")


def test_gradual_unfreezing_at_declared_epochs_keeps_optimizer_state(shipped_model, digits_small):
    x, y = digits_small
    bn_stats = shipped_model.get_layer("block2_bn1").get_weights()[2:]
    cb = GradualUnfreezing(
        [
            {"layers": "predictions"},
            {"layers": "fc", "epoch": 2},
            {"layers": r"block2_.*", "epoch": 3},
        ]
    )
    probe, logger = _Probe(), PhaseLogger()
    kerasft.freeze(shipped_model)
    shipped_model.compile(keras.optimizers.Adam(1e-3), LOSS)
    shipped_model.fit(
        x[:96], y[:96], batch_size=32, epochs=4, verbose=0, callbacks=[cb, probe, logger]
    )

    assert cb.transitions == [(0, 0), (2, 1), (3, 2)]
    head = _params(shipped_model, ["predictions"])
    fc = _params(shipped_model, ["fc"])
    block2 = _params(shipped_model, ["block2_conv1", "block2_conv2"])
    assert [r["trainable_params"] for r in logger.records] == [
        head,
        head,
        head + fc,
        head + fc + block2,
    ]
    assert [r["unfreeze_phase"] for r in logger.records] == [0, 0, 1, 2]
    # The phase change at epoch 2 rebuilt the optimizer; the head's moments survived it.
    for path, value in probe.at_end[1].items():
        np.testing.assert_array_equal(probe.at_begin[2][path], value, err_msg=path)
    # BatchNormalization stays frozen, in inference mode: statistics untouched.
    assert not shipped_model.get_layer("block2_bn1").trainable
    for a, b in zip(bn_stats, shipped_model.get_layer("block2_bn1").get_weights()[2:]):
        np.testing.assert_array_equal(a, b)
    assert not shipped_model.get_layer("block1_conv1").trainable


def test_phase_rates_with_one_sub_optimizer_per_phase(shipped_model, digits_small):
    x, y = digits_small
    cb = GradualUnfreezing(
        [{"layers": "predictions", "lr": 1e-3}, {"layers": "fc", "epoch": 1, "lr": 1e-5}],
        train_bn=True,
    )
    groups = cb.phase_groups(shipped_model)
    assert [name for name, _ in groups] == ["phase1", "phase0", "others"]
    kerasft.freeze(shipped_model)
    opt = kerasft.discriminative_optimizer(shipped_model, 5e-4, groups=groups)
    shipped_model.compile(opt, LOSS)
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    subs = {o.name: o for o in opt.optimizers}
    assert float(subs["phase0"].learning_rate) == pytest.approx(1e-3)
    assert float(subs["phase1"].learning_rate) == pytest.approx(1e-5)
    assert int(subs["phase0"].iterations) == 4 and int(subs["phase1"].iterations) == 2


def test_plateau_starts_next_phase_and_train_bn(shipped_model, digits_small):
    x, y = digits_small
    cb = GradualUnfreezing(
        unfreeze_every=None, monitor="loss", patience=1, min_delta=1e6, train_bn=True
    )
    kerasft.freeze(shipped_model)
    shipped_model.compile(keras.optimizers.Adam(1e-4), LOSS)
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    # Epoch 0 sets the best loss, epoch 1 fails to beat it by 1e6: phase 1 from epoch 2.
    assert cb.transitions[:2] == [(0, 0), (2, 1)]
    assert shipped_model.get_layer("fc").trainable
    assert shipped_model.get_layer("block2_bn2").trainable, "train_bn=True unfreezes BatchNorm"


def test_phases_from_yaml_and_json_files(tmp_path):
    yaml_text = (
        "phases:\n"
        "  - {layers: [predictions, fc], lr: 1.0e-3}\n"
        "  - {layers: 'block2_.*', epoch: 2, lr: 1.0e-4}\n"
    )
    (tmp_path / "phases.yaml").write_text(yaml_text)
    (tmp_path / "phases.json").write_text(
        json.dumps(
            [
                {"layers": ["predictions", "fc"], "lr": 1e-3},
                {"layers": "block2_.*", "epoch": 2, "lr": 1e-4},
            ]
        )
    )
    expected = [
        {"layers": ["predictions", "fc"], "epoch": 0, "lr": 1e-3},
        {"layers": ["block2_.*"], "epoch": 2, "lr": 1e-4},
    ]
    assert kerasft.load_phases(tmp_path / "phases.yaml") == expected
    assert kerasft.load_phases(str(tmp_path / "phases.json")) == expected


def test_reduce_on_plateau_scales_schedules(shipped_model, digits_small):
    x, y = digits_small
    sched = kerasft.WarmupCosineDecay(1e-3, total_steps=100, warmup_steps=2)
    opt = kerasft.discriminative_optimizer(shipped_model, sched, lr_mult=10)
    start = {o.name: o._learning_rate.multiplier for o in opt.optimizers}
    shipped_model.compile(opt, LOSS)
    cb = ReduceLROnPlateauScaled(monitor="loss", factor=0.5, patience=0, min_delta=1e6)
    shipped_model.fit(x[:64], y[:64], batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    # Epoch 0 sets the reference; epochs 1 and 2 do not improve by 1e6: two halvings of
    # every group, the unused "rest" group (rate 0 at its step 0) included.
    assert start["block1"] == pytest.approx(0.1)
    for sub in opt.optimizers:
        assert sub._learning_rate.multiplier == pytest.approx(0.25 * start[sub.name]), sub.name
    block1 = next(o for o in opt.optimizers if o.name == "block1")
    expected = 0.25 * 0.1 * float(sched(int(block1.iterations)))
    assert float(block1.learning_rate) == pytest.approx(expected, rel=1e-5)


def test_reduce_on_plateau_refuses_unscalable_schedule_before_training(shipped_model, digits_small):
    x, y = digits_small
    shipped_model.compile(
        keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, 100)), LOSS
    )
    with pytest.raises(
        ValueError,
        match=r"cannot lower the rate of optimizer 'adam\w*': it follows a CosineDecay.*HINT",
    ):
        shipped_model.fit(
            x[:32], y[:32], epochs=1, verbose=0, callbacks=[ReduceLROnPlateauScaled()]
        )
    assert int(shipped_model.optimizer.iterations) == 0


def test_finetune_gradual_recipe(shipped_model, digits_small):
    logger = PhaseLogger()
    result = kerasft.finetune(
        shipped_model,
        digits_small,
        recipe="gradual",
        head_epochs=1,
        epochs=3,
        lr=1e-3,
        patience=None,
        callbacks=[logger],
        verbose=0,
    )
    stages = result.stages
    assert [s.epoch for s in stages] == [0, 1, 2, 3]
    assert stages[0].layers == ["predictions"] and stages[1].layers == ["fc"]
    assert [s.lr for s in stages] == pytest.approx([1e-3, 1e-4, 1e-4, 1e-4])
    counts = [r["trainable_params"] for r in logger.records]
    assert len(counts) == 4 and counts[0] < counts[1] < counts[2] < counts[3]
    assert counts[1] - counts[0] == _params(result.model, ["fc"])
    assert result.phases[0].name == "gradual" and result.phases[0].trainable_params == counts[-1]
    assert isinstance(result.model.optimizer, keras.optimizers.MultiOptimizer)
    assert not any(
        lyr.trainable
        for lyr in result.model.layers
        if isinstance(lyr, keras.layers.BatchNormalization)
    )


def test_finetune_gradual_on_a_nested_backbone(digits_small):
    result = kerasft.finetune(
        nested_model(),
        digits_small,
        recipe="gradual",
        head_epochs=1,
        epochs=2,
        patience=None,
        verbose=0,
    )
    # The lone BatchNormalization group joins the convolution below it.
    assert [s.layers for s in result.stages] == [
        ["head"],
        ["backbone/conv2"],
        ["backbone/bn1", "backbone/conv1"],
    ]
    assert result.model.get_layer("backbone").get_layer("conv1").trainable
    assert not result.model.get_layer("backbone").get_layer("bn1").trainable


def test_finetune_phase_file_with_ema_and_plateau(shipped_model, digits_small, tmp_path):
    path = tmp_path / "phases.json"
    path.write_text(
        json.dumps(
            {
                "phases": [
                    {"layers": ["predictions", "fc"], "lr": 2e-3},
                    {"layers": r"block2_conv\d", "epoch": 1},
                ]
            }
        )
    )
    logger = PhaseLogger()
    result = kerasft.finetune(
        shipped_model,
        digits_small,
        recipe=str(path),
        epochs=2,
        lr=1e-3,
        use_ema=True,
        reduce_on_plateau=True,
        layer_decay=0.5,
        callbacks=[logger],
        verbose=0,
    )
    assert [r["unfreeze_phase"] for r in logger.records] == [0, 1]
    assert logger.records[1]["trainable_params"] - logger.records[0]["trainable_params"] == _params(
        result.model, ["block2_conv1", "block2_conv2"]
    )
    assert all(o.use_ema for o in result.model.optimizer.optimizers)
    assert [s.lr for s in result.stages] == pytest.approx([2e-3, 1e-4])
    assert result.best_val_accuracy is not None


def test_errors(shipped_model, digits_small):
    with pytest.raises(
        ValueError,
        match=r"Argument `unfreeze_every` must be an integer >= 1 or None. Received: "
        r"unfreeze_every=0",
    ):
        GradualUnfreezing(unfreeze_every=0)
    with pytest.raises(ValueError, match=r"Phase 1 has unknown keys \['lrate'\]. Valid keys are"):
        kerasft.load_phases([{"layers": "a"}, {"layers": "b", "epoch": 1, "lrate": 0.1}])
    with pytest.raises(ValueError, match=r"Phase epochs must increase. Received: \[0, 3, 2\]"):
        kerasft.load_phases(
            [{"layers": "a"}, {"layers": "b", "epoch": 3}, {"layers": "c", "epoch": 2}]
        )
    with pytest.raises(ValueError, match=r"Argument `phases`: no file at 'missing.yaml'"):
        kerasft.load_phases("missing.yaml")
    with pytest.raises(
        ValueError, match=r"Argument `factor` must be in \(0, 1\). Received: factor=1.5"
    ):
        ReduceLROnPlateauScaled(factor=1.5)
    with pytest.raises(ValueError, match=r"is not compiled.*HINT"):
        unfreezing.sync_optimizer(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    x, y = digits_small
    shipped_model.compile(keras.optimizers.Adam(), LOSS)
    with pytest.raises(
        ValueError,
        match=r"No layer of model .* matches 'head' in argument `phases\[0\]\['layers'\]`",
    ):
        shipped_model.fit(
            x[:32], y[:32], verbose=0, callbacks=[GradualUnfreezing([{"layers": "head"}])]
        )
    with pytest.raises(
        ValueError, match=r"keras.callbacks.ReduceLROnPlateau.*HINT: pass reduce_on_plateau=True"
    ):
        kerasft.finetune(
            shipped_model, digits_small, callbacks=[keras.callbacks.ReduceLROnPlateau()], verbose=0
        )
    with pytest.raises(
        ValueError,
        match=r"Argument `recipe` must be one of \['auto', 'lp-ft', 'full', 'head', 'gradual', "
        r"'lora', 'dora', 'lp-lora', 'lp-dora'\]",
    ):
        kerasft.finetune(shipped_model, digits_small, recipe="slow", verbose=0)
    with pytest.raises(ValueError, match=r"Argument `recipe`: phases \[1\] have no `epoch`.*HINT"):
        kerasft.finetune(
            shipped_model,
            digits_small,
            recipe=[{"layers": "fc"}, {"layers": "block2_.*"}],
            verbose=0,
        )
    with pytest.raises(ValueError, match=r"the run lasts 2 epochs.*HINT: raise `epochs`"):
        kerasft.finetune(
            shipped_model,
            digits_small,
            recipe=[{"layers": "fc"}, {"layers": "block2_.*", "epoch": 2}],
            epochs=2,
            verbose=0,
        )
    with pytest.raises(
        ValueError, match=r"Argument `reduce_on_plateau` must be True, False, None or a dict"
    ):
        kerasft.finetune(shipped_model, digits_small, reduce_on_plateau=0.5, verbose=0)
    with pytest.raises(
        ValueError, match=r"Argument `use_ema` must be True or False. Received: use_ema='yes'"
    ):
        kerasft.finetune(shipped_model, digits_small, use_ema="yes", verbose=0)
    with pytest.raises(
        ValueError,
        match=r"Argument `unfreeze` applies to the 'lp-ft' and 'full' recipes.*"
        r"Received: unfreeze=2",
    ):
        kerasft.finetune(shipped_model, digits_small, recipe="gradual", unfreeze=2, verbose=0)
