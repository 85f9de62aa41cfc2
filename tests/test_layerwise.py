"""Layer groups and discriminative rates on Keras's MultiOptimizer, with real training steps."""

from __future__ import annotations

import doctest

import keras
import numpy as np
import pytest
from helpers import nested_model

import kerasft
from kerasft import layerwise


def test_docstring_examples_run():
    result = doctest.testmod(layerwise)
    assert result.attempted >= 5 and result.failed == 0


def test_groups_of_the_shipped_model(shipped_model):
    groups = kerasft.layer_groups(shipped_model)
    assert [name for name, _ in groups] == ["block1", "block2", "fc", "predictions"]
    assert [lyr.name for lyr in groups[0][1]] == [
        "block1_conv1",
        "block1_bn1",
        "block1_conv2",
        "block1_bn2",
    ]
    custom = kerasft.layer_groups(shipped_model, {"convs": r"block\d_.*", "top": ".*"})
    assert [name for name, _ in custom] == ["convs", "top"]
    assert [lyr.name for lyr in custom[1][1]] == ["fc", "predictions"]


def test_groups_inside_a_nested_backbone():
    groups = kerasft.layer_groups(nested_model())
    assert [name for name, _ in groups] == [
        "backbone/conv1",
        "backbone/bn1",
        "backbone/conv2",
        "head",
    ]
    by_path = kerasft.layer_groups(nested_model(), [r"backbone/.*", "head"])
    assert [len(layers) for _, layers in by_path] == [3, 1]


def test_group_multipliers_formulas():
    np.testing.assert_allclose(kerasft.group_multipliers(4, lr_mult=1000), [1e-3, 1e-2, 1e-1, 1.0])
    np.testing.assert_allclose(
        kerasft.group_multipliers(4, layer_decay=0.8), [0.8**3, 0.8**2, 0.8, 1.0]
    )
    assert kerasft.group_multipliers(3, lr_mult=[0.0, 0.5, 1.0]) == [0.0, 0.5, 1.0]
    assert kerasft.group_multipliers(2) == [1.0, 1.0]


def _one_step(model, optimizer, batch):
    model.compile(optimizer, "sparse_categorical_crossentropy")
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    model.train_on_batch(*batch)
    return {
        v.path: keras.ops.convert_to_numpy(v) - before[v.path] for v in model.trainable_variables
    }


def test_low_rate_groups_move_less(shipped_model_path, digits_small):
    x, y = digits_small
    batch = (x[:32], y[:32])
    keras.utils.set_random_seed(3)  # same dropout mask in both runs
    uniform = _one_step(
        keras.models.load_model(shipped_model_path), keras.optimizers.SGD(0.01), batch
    )
    keras.utils.set_random_seed(3)
    model = keras.models.load_model(shipped_model_path)
    opt = kerasft.discriminative_optimizer(model, keras.optimizers.SGD(0.01), lr_mult=1000)
    spread = _one_step(model, opt, batch)
    # Plain SGD, one step from the same weights on the same batch: a group's update is its
    # rate times the same gradient, so the ratio to the uniform step is the multiplier.
    expected = {"block1_conv1": 1e-3, "block2_conv2": 1e-2, "fc": 1e-1, "predictions": 1.0}
    for layer, mult in expected.items():
        path = f"{layer}/kernel"
        ratio = np.linalg.norm(spread[path]) / np.linalg.norm(uniform[path])
        assert ratio == pytest.approx(mult, rel=1e-3), layer
    assert np.abs(spread["block1_conv1/kernel"]).max() < np.abs(spread["predictions/kernel"]).max()


def test_weight_decay_skips_biases_and_normalization(shipped_model):
    opt = kerasft.discriminative_optimizer(shipped_model, 1e-3, layer_decay=0.5, weight_decay=0.05)
    skip = {v.path for v in kerasft.no_decay_variables(shipped_model)}
    assert "fc/bias" in skip and "block1_bn1/gamma" in skip and "block1_bn1/beta" in skip
    assert "fc/kernel" not in skip and not any("moving" in p for p in skip)
    for v in shipped_model.trainable_variables:
        sub = opt._optimizer_map(v)
        assert isinstance(sub, keras.optimizers.AdamW)
        assert (sub.weight_decay == 0.0) == (v.path in skip), v.path
        assert sub.name.endswith("_no_decay") == (v.path in skip)
    rates = {o.name: float(o.learning_rate) for o in opt.optimizers}
    assert rates["block1"] == pytest.approx(1e-3 * 0.5**3) and rates[
        "predictions"
    ] == pytest.approx(1e-3)


def test_finetune_adamw_does_not_decay_biases_or_normalization(shipped_model, digits_small):
    result = kerasft.finetune(
        shipped_model,
        digits_small,
        recipe="full",
        epochs=1,
        optimizer="adamw",
        weight_decay=1e-2,
        verbose=0,
    )
    opt = result.model.optimizer
    decayed = {v.path for v in result.model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed == {
        "block1_conv1/kernel",
        "block1_conv2/kernel",
        "block2_conv1/kernel",
        "block2_conv2/kernel",
        "fc/kernel",
        "predictions/kernel",
    }


def test_discriminative_optimizer_saves_and_loads(tmp_path, shipped_model, digits_small):
    x, y = digits_small
    sched = kerasft.WarmupCosineDecay(1e-3, total_steps=30, warmup_steps=3)
    opt = kerasft.discriminative_optimizer(shipped_model, sched, lr_mult=10)
    shipped_model.compile(opt, "sparse_categorical_crossentropy")
    shipped_model.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "multi.keras")
    shipped_model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, keras.optimizers.MultiOptimizer)
    got = {o.name: (int(o.iterations), float(o.learning_rate)) for o in loaded.optimizer.optimizers}
    assert got == {o.name: (int(o.iterations), float(o.learning_rate)) for o in opt.optimizers}
    assert got["block1"][0] == 4
    for a, b in zip(opt.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    loaded.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert int(loaded.optimizer.optimizers[0].iterations) == 6


def test_finetune_lr_mult_builds_group_rates(shipped_model, digits_small):
    result = kerasft.finetune(
        shipped_model,
        digits_small,
        recipe="full",
        epochs=1,
        lr=2e-3,
        lr_mult=100,
        warmup=0.0,
        verbose=0,
    )
    opt = result.model.optimizer
    assert isinstance(opt, keras.optimizers.MultiOptimizer)
    peaks = {
        o.name: o._learning_rate.peak_learning_rate * o._learning_rate.multiplier
        for o in opt.optimizers
    }
    assert peaks["block1"] == pytest.approx(2e-5) and peaks["block2"] == pytest.approx(
        2e-5 * 100 ** (1 / 3)
    )
    assert peaks["predictions"] == pytest.approx(2e-3)


def test_errors(shipped_model):
    with pytest.raises(ValueError, match=r"pass one. Received: lr_mult=10, layer_decay=0.5"):
        kerasft.discriminative_optimizer(shipped_model, lr_mult=10, layer_decay=0.5)
    with pytest.raises(ValueError, match=r"Argument `lr_mult` must be >= 1.*Received: lr_mult=0.5"):
        kerasft.group_multipliers(3, lr_mult=0.5)
    with pytest.raises(
        ValueError, match=r"Argument `layer_decay` must be in \(0, 1\]. Received: layer_decay=1.5"
    ):
        kerasft.group_multipliers(3, layer_decay=1.5)
    with pytest.raises(
        ValueError, match=r"hold 4 non-negative multipliers.*Received: lr_mult=\[1.0, 2.0\]"
    ):
        kerasft.discriminative_optimizer(shipped_model, lr_mult=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"match no pattern: \['fc', 'predictions'\].*HINT"):
        kerasft.layer_groups(shipped_model, [r"block1_.*", r"block2_.*"])
    with pytest.raises(ValueError, match=r"Invalid regex '\('"):
        kerasft.layer_groups(shipped_model, ["("])
    with pytest.raises(TypeError, match=r"Argument `optimizer` must be a learning rate"):
        kerasft.discriminative_optimizer(shipped_model, "adam")
    with pytest.raises(ValueError, match=r"recipe='head' trains only the head"):
        kerasft.finetune(
            shipped_model,
            (np.zeros((4, 28, 28, 1)), np.arange(4)),
            recipe="head",
            lr_mult=10,
            verbose=0,
        )
