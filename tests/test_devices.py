"""Device-dependent decisions (pure functions of the device list) and their effect on runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import sequential_model

import kerasft
from kerasft.speed import devices


@pytest.mark.parametrize(
    "requested, kinds, expected",
    [
        ("auto", ["CPU"], False),
        ("auto", ["CPU", "GPU"], True),
        ("auto", ["CPU", "TPU"], True),
        (True, ["CPU"], True),
        (False, ["CPU", "GPU"], False),
    ],
)
def test_choose_jit_compile(requested, kinds, expected):
    use, reason = devices.choose_jit_compile(requested, kinds)
    assert use is expected and reason


@pytest.mark.parametrize(
    "requested, kinds, bf16, expected",
    [
        (None, ["CPU", "GPU"], False, "float32"),
        (True, ["CPU", "GPU"], False, "mixed_float16"),
        ("auto", ["CPU", "TPU"], False, "mixed_bfloat16"),
        (True, ["CPU"], True, "mixed_bfloat16"),
        (True, ["CPU"], False, "float32"),
        ("mixed_bfloat16", ["CPU"], False, "mixed_bfloat16"),
    ],
)
def test_choose_mixed_precision(requested, kinds, bf16, expected):
    assert devices.choose_mixed_precision(requested, kinds, cpu_bf16=bf16)[0] == expected


def test_cpu_bfloat16_flags():
    assert devices.cpu_supports_bfloat16(["sse", "avx512_bf16"])
    assert devices.cpu_supports_bfloat16(["amx_bf16"])
    assert not devices.cpu_supports_bfloat16(["avx2", "avx512f"])


def test_choose_steps_per_execution():
    assert devices.choose_steps_per_execution("auto", steps_per_epoch=5, cached=True) == 5
    assert devices.choose_steps_per_execution("auto", steps_per_epoch=500, cached=True) == 32
    assert devices.choose_steps_per_execution("auto", steps_per_epoch=500, cached=False) == 1
    assert devices.choose_steps_per_execution(7, steps_per_epoch=500, cached=False) == 7


class _NoXLA(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, x):
        return x


def test_xla_blockers_fall_back_with_one_line():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(_NoXLA(name="no_xla")(inputs)))
    assert devices.xla_blockers(model) == ["no_xla"]
    with pytest.warns(UserWarning, match=r"not compiling with XLA .*\['no_xla'\]") as record:
        assert devices.resolve_jit_compile(True, model, ["CPU", "GPU"]) is False
    assert "\n" not in str(record[0].message)
    assert devices.resolve_jit_compile("auto", model, ["CPU"]) is False
    assert devices.resolve_jit_compile(True, sequential_model(), ["CPU"]) is True


def test_apply_mixed_precision_keeps_the_output_float32():
    model = sequential_model()
    devices.apply_mixed_precision(model, "mixed_bfloat16")
    assert model.get_layer("fc").compute_dtype == "bfloat16"
    assert model.get_layer("fc").variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    out = model(np.zeros((2, 28, 28, 1), "float32"))
    assert out.dtype == "float32"


def test_finetune_with_mixed_precision_and_xla(shipped_model, digits_small, tmp_path):
    # bfloat16 compute and XLA on CPU are slow here, but they must work when asked for.
    result = kerasft.finetune(
        shipped_model,
        digits_small,
        head_epochs=1,
        epochs=1,
        mixed_precision="mixed_bfloat16",
        jit_compile=True,
        verbose=0,
    )
    speed = result.speed.to_dict()
    assert speed["precision"] == "mixed_bfloat16" and speed["jit_compile"] is True
    assert result.model.output.dtype == "float32"
    assert result.model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    assert result.best_val_accuracy > 0.7
    path = str(tmp_path / "mixed.keras")
    result.model.save(path)
    assert keras.models.load_model(path).get_layer("block1_conv1").compute_dtype == "bfloat16"


def test_device_argument_errors(shipped_model, digits_small):
    cases = [
        (
            dict(jit_compile="yes"),
            r"Argument `jit_compile` must be True, False or 'auto'\. Received: jit_compile='yes'",
        ),
        (
            dict(mixed_precision="fp8"),
            r"Argument `mixed_precision` must be .*Received: mixed_precision='fp8'",
        ),
        (
            dict(steps_per_execution=0),
            r"Argument `steps_per_execution` must be 'auto' or a positive integer\. "
            r"Received: steps_per_execution=0",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            kerasft.finetune(shipped_model, digits_small, verbose=0, **kwargs)
    assert devices.device_types() == ["CPU"]
