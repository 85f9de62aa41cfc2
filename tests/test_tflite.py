"""TFLite exports: float16, dynamic-range and full-integer int8, each run by the LiteRT interpreter.

The model is the shipped MNIST CNN fine-tuned on 10 scikit-learn digits per class; every
file is compared with it on the 1,697 held-out digits, in LiteRT, in the test itself.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import kerasft
from kerasft import cli, datasets
from kerasft.export import (
    ExportSample,
    ModelCard,
    TFLiteCheck,
    export_files,
    export_model,
    read_export_metadata,
    verify_tflite,
)

NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def split():
    return datasets.digits_few_shot(shots=10)


@pytest.fixture(scope="module")
def result(split, shipped_model_path):
    # The default recipe, as the main job runs it: the fine-tuned digits model.
    return kerasft.finetune(shipped_model_path, (split.x_train, split.y_train), verbose=0)


@pytest.fixture(scope="module")
def keras_classes(result, split):
    return result.model.predict(split.x_test, verbose=0).argmax(-1)


@pytest.fixture(scope="module")
def exports(result, split, tmp_path_factory):
    """One file per quantization, all checked on the 1,697 held-out digits."""
    folder = tmp_path_factory.mktemp("tflite")
    out = {}
    for quantize in (None, "float16", "dynamic", "int8"):
        out[quantize] = export_model(
            result.model,
            folder / f"digits_{quantize}.tflite",
            format="tflite",
            quantize=quantize,
            class_names=NAMES,
            representative_data=split.x_train,
            verify_data=(split.x_test, split.y_test),
        )
    return out


def _run_litert(path, x):
    """Classes and dequantized probabilities from LiteRT, quantizing the input as the file says."""
    runner = Interpreter(model_path=path).get_signature_runner("serve")
    inp = runner.get_input_details()["image"]
    out = runner.get_output_details()["probabilities"]
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.rint(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    served = runner(image=x)
    probabilities = served["probabilities"]
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        probabilities = (probabilities.astype(np.float32) - zero) * scale
    return served, probabilities


def _float_tensors(path, *, inner_only):
    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serve")
    io = {
        d["index"]
        for d in [*runner.get_input_details().values(), *runner.get_output_details().values()]
    }
    return [
        t["name"]
        for t in interpreter.get_tensor_details()
        if np.dtype(t["dtype"]).kind == "f" and not (inner_only and t["index"] in io)
    ]


# --- int8 full-integer --------------------------------------------------------------------


def test_int8_is_small_and_as_accurate_on_held_out_digits(exports, result, split, keras_classes):
    sizes = {q: os.path.getsize(p) for q, p in exports.items()}
    assert sizes["int8"] <= 0.3 * sizes[None]  # measured 0.26 (473 KiB vs 1.83 MiB)
    assert 0.45 <= sizes["float16"] / sizes[None] <= 0.55  # measured 0.50

    served, probabilities = _run_litert(exports["int8"], split.x_test)
    keras_accuracy = np.mean(keras_classes == split.y_test)
    accuracy = np.mean(served["class_id"] == split.y_test)
    assert len(split.y_test) == 1697
    assert abs(accuracy - keras_accuracy) <= 0.01  # measured +0.1 point
    assert np.mean(served["class_id"] == keras_classes) >= 0.98  # measured 0.992
    np.testing.assert_array_equal(served["class_id"], probabilities.argmax(-1))
    assert [n.decode() for n in served["class_name"][:20]] == [
        NAMES[i] for i in served["class_id"][:20]
    ]

    # The recorded check is what LiteRT gives here.
    check = exports["int8"].check
    assert isinstance(check, TFLiteCheck)
    assert check.examples == 1697 and check.quantize == "int8"
    assert check.accuracy == pytest.approx(accuracy)
    assert check.keras_accuracy == pytest.approx(keras_accuracy)
    assert check.agreement == pytest.approx(np.mean(served["class_id"] == keras_classes))
    assert check.size_bytes == sizes["int8"]
    assert check.runtime.startswith("ai-edge-litert ")


def test_int8_model_computes_in_integers(exports):
    # Float input and output are quantized on the way in and out; every tensor in between
    # is an integer (int8 activations and weights, int32 biases).
    assert _float_tensors(exports["int8"], inner_only=True) == []
    assert _float_tensors(exports["dynamic"], inner_only=True) != []  # float activations
    assert read_export_metadata(exports["int8"])["io_dtype"] == "float32"


@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_int8_and_uint8_model_io(result, split, keras_classes, tmp_path, io_dtype):
    path = export_model(
        result.model,
        tmp_path / "m.tflite",
        format="tflite",
        quantize="int8",
        io_dtype=io_dtype,
        representative_data=split.x_train,
        verify_data=(split.x_test, split.y_test),
    )
    runner = Interpreter(model_path=path).get_signature_runner("serve")
    inp = runner.get_input_details()["image"]
    out = runner.get_output_details()["probabilities"]
    assert np.dtype(inp["dtype"]).name == io_dtype
    assert np.dtype(out["dtype"]).name == io_dtype
    assert _float_tensors(path, inner_only=False) == []  # no float tensor anywhere
    # Raw 0..255 pixels: uint8 takes them as they are, int8 shifted by -128; softmax
    # probabilities in steps of 1/256.
    zero = 0 if io_dtype == "uint8" else -128
    assert inp["quantization"] == pytest.approx((1.0, zero))
    assert out["quantization"] == pytest.approx((1 / 256, zero))
    meta = read_export_metadata(path)
    assert meta["input_quantization"] == pytest.approx([1.0, zero])
    assert meta["output_quantization"] == pytest.approx([1 / 256, zero])

    served, probabilities = _run_litert(path, split.x_test)
    assert (
        abs(np.mean(served["class_id"] == split.y_test) - np.mean(keras_classes == split.y_test))
        <= 0.01
    )
    assert np.abs(probabilities.sum(-1) - 1).max() < 0.05
    assert path.check.accuracy == pytest.approx(np.mean(served["class_id"] == split.y_test))


def test_representative_data_as_a_tf_data_pipeline(result, split, exports, tmp_path):
    # Batched (x, y) and unbatched x calibrate as the array does.
    x = split.x_train
    for name, data in [
        ("batched", tf.data.Dataset.from_tensor_slices((x, split.y_train)).batch(16)),
        ("unbatched", tf.data.Dataset.from_tensor_slices(x)),
    ]:
        path = export_model(
            result.model,
            tmp_path / f"{name}.tflite",
            format="tflite",
            quantize="int8",
            representative_data=data,
            verify_data=(split.x_test, split.y_test),
        )
        assert path.check.agreement >= 0.98
        assert abs(path.check.accuracy - exports["int8"].check.accuracy) <= 0.005


# --- float, float16, dynamic ---------------------------------------------------------------


def test_float_float16_and_dynamic_agree_with_keras(exports, split, keras_classes):
    checks = {q: p.check for q, p in exports.items()}
    assert checks[None].agreement == 1.0 and checks[None].max_abs_difference < 1e-5
    assert checks["float16"].agreement >= 0.995 and checks["float16"].max_abs_difference < 0.01
    assert checks["dynamic"].agreement >= 0.97  # measured 0.998
    for quantize, check in checks.items():
        assert check.quantize == quantize
        assert check.input_dtype == check.output_dtype == "float32"
        assert check.examples == 1697
    served, _ = _run_litert(exports["float16"], split.x_test)
    assert np.mean(served["class_id"] == keras_classes) == checks["float16"].agreement


def test_check_is_recorded_in_metadata_and_card(exports):
    # Each file has its own metadata and card beside it, and nothing else is left behind.
    written = {os.path.basename(f) for p in exports.values() for f in export_files(p).values()}
    assert set(os.listdir(os.path.dirname(exports[None]))) == written
    assert "digits_int8.MODEL_CARD.md" in written and "digits_int8.kerasft.json" in written
    for path in exports.values():
        files = export_files(path)
        meta = read_export_metadata(path)
        assert meta["tflite_check"] == path.check.to_dict()
        assert meta["size_bytes"] == os.path.getsize(path)
        card = ModelCard.from_json(files["card_json"])
        (export,) = card.exports
        assert export["check"] == path.check.to_dict()
        assert export["quantize"] == path.check.quantize
        with open(files["card"], encoding="utf-8") as f:
            markdown = f.read()
        assert f"| top-1 agreement with Keras | {path.check.agreement:.4f} |" in markdown


def test_verify_tflite_on_its_own(exports, result, split):
    again = verify_tflite(exports["int8"], result.model, split.x_test, split.y_test)
    recorded = exports["int8"].check
    assert (again.agreement, again.accuracy, again.size_bytes) == (
        recorded.agreement,
        recorded.accuracy,
        recorded.size_bytes,
    )
    smoke = verify_tflite(exports[None], result.model, None)
    assert smoke.examples == 0 and smoke.agreement is None
    assert "no data to compare" in str(smoke)
    assert TFLiteCheck.from_dict(recorded.to_dict()) == recorded


def test_plain_export_without_data_is_checked_on_a_probe_batch(result, tmp_path):
    # No data given: the file still runs beside Keras, on raw pixels of the model's input form.
    path = export_model(
        result.model, tmp_path / "plain.tflite", format="tflite", quantize="dynamic"
    )
    assert path.check.examples == 8 and path.check.quantize == "dynamic"
    assert path.check.data == "a random probe batch of the model's input form"
    assert read_export_metadata(path)["tflite_check"]["examples"] == 8


# --- the run's own sample ------------------------------------------------------------------


def test_finetune_result_keeps_a_sample_for_exports(result, split, shipped_model_path, tmp_path):
    """Needs `Run.result()` to fill `representative` (kerasft/engine/runner.py)."""
    sample = result.representative
    assert isinstance(sample, ExportSample)
    # 100 examples: recipe='auto' holds none out, so the sample is all of them and unlabelled
    assert sample.inputs.shape == (100, 28, 28, 1) and sample.held_out is None
    path = result.export(
        str(tmp_path / "auto.tflite"), format="tflite", quantize="int8", class_names=NAMES
    )
    assert path.check.data == "training inputs of the fine-tuning run (no held-out data)"
    assert path.check.accuracy is None
    # with validation data (never trained on: no refit), the held-out examples check the export
    x, y = split.x_train, split.y_train
    held = kerasft.finetune(
        shipped_model_path, (x[:80], y[:80]), validation_data=(x[80:], y[80:]), epochs=1, verbose=0
    )
    x_held, y_held = held.representative.held_out
    assert held.representative.inputs.shape == (80, 28, 28, 1)
    assert x_held.shape == (20, 28, 28, 1) and y_held.shape == (20,)
    path = held.export(
        str(tmp_path / "held.tflite"), format="tflite", quantize="int8", class_names=NAMES
    )
    assert path.check.examples == 20
    assert path.check.data == "held-out validation examples of the fine-tuning run"
    assert path.check.accuracy is not None
    assert path.card.evaluation["num_examples"] == 20


# --- bad inputs ---------------------------------------------------------------------------


def test_bad_arguments_name_argument_value_and_choices(result, split, tmp_path):
    model = result.model
    m = tmp_path / "m.tflite"
    with pytest.raises(
        ValueError,
        match=r"Argument `representative_data` is required for "
        r"quantize='int8'.*Received: representative_data=None",
    ):
        export_model(model, m, format="tflite", quantize="int8")
    with pytest.raises(
        ValueError,
        match=r"Argument `quantize` must be one of \[None, 'float16', "
        r"'dynamic', 'int8'\]\. Received: quantize='int4'",
    ):
        export_model(model, m, format="tflite", quantize="int4")
    with pytest.raises(
        ValueError,
        match=r"Argument `io_dtype='int8'` applies to quantize='int8' "
        r"only.*Received: quantize='dynamic'",
    ):
        export_model(model, m, format="tflite", quantize="dynamic", io_dtype="int8")
    with pytest.raises(
        ValueError,
        match=r"Argument `io_dtype` must be one of \['float32', 'int8', "
        r"'uint8'\]\. Received: io_dtype='int16'",
    ):
        export_model(
            model,
            m,
            format="tflite",
            quantize="int8",
            io_dtype="int16",
            representative_data=split.x_train,
        )
    with pytest.raises(
        ValueError,
        match=r"Argument `representative_data` holds inputs of shape "
        r"\(5, 8, 8\), but the model takes \(None, 28, 28, 1\)",
    ):
        export_model(
            model, m, format="tflite", quantize="int8", representative_data=np.zeros((5, 8, 8))
        )
    with pytest.raises(TypeError, match=r"Argument `verify_data` must be an array.*a dict"):
        export_model(model, m, format="tflite", verify_data={"image": split.x_test})
    with pytest.raises(ValueError, match=r"Argument `verify_data`: 10 inputs but 9 labels"):
        export_model(model, m, format="tflite", verify_data=(split.x_test[:10], split.y_test[:9]))
    # A result without its sample needs representative data for int8, and says so.
    bare = dataclasses.replace(result, representative=None)
    with pytest.raises(ValueError, match=r"representative_data=None.*result.representative"):
        bare.export(str(m), format="tflite", quantize="int8")
    assert os.listdir(tmp_path) == []  # nothing written by failed calls


def test_cli_int8_export(shipped_model_path, tmp_path, capsys):
    path = str(tmp_path / "cli.tflite")
    assert (
        cli.main(
            [
                "export",
                shipped_model_path,
                path,
                "--format",
                "tflite",
                "--quantize",
                "int8",
                "--io-dtype",
                "int8",
            ]
        )
        == 0
    )  # --data digits by default
    meta = read_export_metadata(path)
    assert meta["quantize"] == "int8" and meta["io_dtype"] == "int8"
    assert meta["tflite_check"]["examples"] == 1697  # checked on the held-out digits
    assert "LiteRT on 1697 examples" in capsys.readouterr().out

    assert (
        cli.main(
            [
                "export",
                shipped_model_path,
                str(tmp_path / "x.tflite"),
                "--format",
                "tflite",
                "--quantize",
                "int8",
                "--data",
                "none",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Argument `--quantize int8` needs representative data" in err
    assert "Received: --data none" in err
    assert not os.path.exists(tmp_path / "x.tflite")
