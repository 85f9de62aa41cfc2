"""Bad input gets a clear error before any training starts.

Each row: what the user passes, the call, the exception type, and a pattern the message
must contain (the argument, the value received, what would be valid). docs/reliability.md's
"Bad input" table is this table.
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import Subclassed
from PIL import Image

import kerasft
from kerasft import cli, datasets, export, imagefolder, pruning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "mnist_cnn.keras")


@pytest.fixture(scope="module")
def xy():
    x, y = datasets.load_digits()
    return x[:200], y[:200]


@pytest.fixture(scope="module")
def model():
    return keras.models.load_model(SHIPPED)


def _headless():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(10, 3),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="headless",
    )


def _no_prunable():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="no_weights",
    )


def _image_folder(root, sizes: dict[str, list[int]]) -> str:
    """A class-per-folder tree of real digit images, ``sizes[class] = [side, ...]``."""
    x, _ = datasets.load_digits()
    for i, (name, sides) in enumerate(sizes.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for j, side in enumerate(sides):
            img = Image.fromarray(x[i * 7 + j, :, :, 0].astype("uint8")).resize((side, side))
            img.save(os.path.join(root, name, f"{j}.png"))
    return str(root)


def _flip(x, y):
    return tf.image.random_flip_left_right(x), y


def _ft(model, data, **kw):
    return kerasft.finetune(model, data, verbose=0, **kw)


# (id, call(model, (x, y), tmp_path), exception, message pattern)
CASES = [
    (
        "label >= num_classes",
        lambda m, d, t: _ft(m, (d[0], np.where(d[1] == 9, 10, d[1])), num_classes=10),
        ValueError,
        r"label 10 is out of range for num_classes=10.*\[0, 10\)",
    ),
    (
        "negative label",
        lambda m, d, t: _ft(m, (d[0], d[1] - 1)),
        ValueError,
        r"Argument `data`.*labels must be in \[0, num_classes\).*-1",
    ),
    (
        "float targets with task='classification'",
        lambda m, d, t: _ft(m, (d[0], d[1] + 0.5), task="classification"),
        ValueError,
        r"Argument `data`.*floats that are not class indices.*\[0.5.*HINT: for float targets pass "
        r"task='regression'",
    ),
    (
        "one-hot width != num_classes",
        lambda m, d, t: _ft(m, (d[0], keras.utils.to_categorical(d[1], 12)), num_classes=10),
        ValueError,
        r"`num_classes=10` does not match the one-hot label width 12",
    ),
    (
        "input shape != model input",
        lambda m, d, t: _ft(m, (d[0][:, :20, :20], d[1])),
        ValueError,
        r"Argument `data`.*shape \(20, 20, 1\).*expects \(28, 28, 1\)",
    ),
    (
        "string inputs",
        lambda m, d, t: _ft(m, (d[0].astype(str), d[1])),
        ValueError,
        r"Argument `data`: inputs must be numeric.*<U",
    ),
    (
        "empty dataset",
        lambda m, d, t: _ft(m, (d[0][:0], d[1][:0])),
        ValueError,
        r"Argument `data` is empty",
    ),
    (
        "dataset of x only",
        lambda m, d, t: _ft(m, tf.data.Dataset.from_tensor_slices(d[0])),
        ValueError,
        r"Argument `data` must yield \(x, y\) pairs.*TensorSpec",
    ),
    (
        "dataset of 3-tuples",
        lambda m, d, t: _ft(m, tf.data.Dataset.from_tensor_slices((d[0], d[1], d[1]))),
        ValueError,
        r"Argument `data` must yield \(x, y\) pairs, but it yields 3-tuples",
    ),
    (
        "NaN in inputs",
        lambda m, d, t: _ft(m, (np.where(d[0] > 250, np.nan, d[0]), d[1])),
        ValueError,
        r"Argument `data`: \d+ of 200 inputs contain NaN or inf",
    ),
    (
        "inf in inputs",
        lambda m, d, t: _ft(m, (np.where(d[0] > 250, np.inf, d[0]), d[1])),
        ValueError,
        r"Argument `data`: \d+ of 200 inputs contain NaN or inf",
    ),
    (
        "a single class",
        lambda m, d, t: _ft(m, (d[0], np.zeros_like(d[1]))),
        ValueError,
        r"all labels are 0; a classifier needs at least 2 classes",
    ),
    (
        "data of an unknown type",
        lambda m, d, t: _ft(m, "digits"),
        TypeError,
        r"Argument `data` must be a tf.data.Dataset.*Received: str",
    ),
    (
        "unknown layer name",
        lambda m, d, t: kerasft.freeze(m, names=["dense_9"]),
        ValueError,
        r"No layer named 'dense_9'.*Existing layers are: \['rescale'",
    ),
    (
        "regex matching nothing",
        lambda m, d, t: kerasft.freeze(m, pattern="^zzz"),
        ValueError,
        r"matches '\^zzz' in argument `pattern`.*Existing layers are",
    ),
    (
        "unfreeze= matching nothing",
        lambda m, d, t: _ft(m, d, unfreeze="^zzz"),
        ValueError,
        r"`unfreeze='\^zzz'` selects nothing to train",
    ),
    (
        "softmax head with 1 class",
        lambda m, d, t: kerasft.replace_head(m, 1, activation="softmax"),
        ValueError,
        r"`num_classes=1` with activation='softmax'.*num_classes=2",
    ),
    (
        "model without a Dense head",
        lambda m, d, t: _ft(_headless(), d),
        ValueError,
        r"no Dense output layer.*GlobalAveragePooling2D",
    ),
    (
        "subclassed model, surgery",
        lambda m, d, t: kerasft.freeze(Subclassed()),
        TypeError,
        r"Argument `model` must be a Sequential or Functional.*Subclassed.*HINT",
    ),
    (
        "subclassed model, finetune",
        lambda m, d, t: _ft(Subclassed(), d),
        TypeError,
        r"Argument `model` must be a Sequential or Functional",
    ),
    (
        "missing model file",
        lambda m, d, t: _ft(str(t / "nope.keras"), d),
        ValueError,
        r"Argument `model`: no file or directory at .*nope.keras",
    ),
    (
        "corrupt model file",
        lambda m, d, t: (
            t.joinpath("bad.keras").write_bytes(b"\0" * 64),
            _ft(str(t / "bad.keras"), d),
        ),
        ValueError,
        r"Argument `model`: .*bad.keras.* is not a valid .keras file",
    ),
    (
        "unsupported model file type",
        lambda m, d, t: (t.joinpath("m.pt").write_bytes(b"x"), _ft(str(t / "m.pt"), d)),
        ValueError,
        r"extension '.pt'.*'.keras' and '.h5'",
    ),
    (
        "new_head=False with other classes",
        lambda m, d, t: _ft(m, (d[0], np.minimum(d[1], 2)), new_head=False),
        ValueError,
        r"`new_head=False`.*10 units.*3 classes",
    ),
    (
        "unknown recipe",
        lambda m, d, t: _ft(m, d, recipe="fast"),
        ValueError,
        r"Argument `recipe` must be one of \['auto', 'lp-ft'.*Received: recipe='fast'",
    ),
    (
        "negative learning rate",
        lambda m, d, t: _ft(m, d, lr=-1),
        ValueError,
        r"Argument `lr` must be a number in \(0, 10\). Received: lr=-1",
    ),
    (
        "validation_split >= 1",
        lambda m, d, t: _ft(m, d, validation_split=1.5),
        ValueError,
        r"`validation_split` must be in \[0, 1\). Received: validation_split=1.5",
    ),
    (
        "batch_size 0",
        lambda m, d, t: _ft(m, d, batch_size=0),
        ValueError,
        r"`batch_size` must be a positive integer. Received: batch_size=0",
    ),
    (
        "val_ monitor without validation",
        lambda m, d, t: _ft(m, d, validation_split=0, monitor="val_accuracy"),
        ValueError,
        r"`monitor='val_accuracy'` needs validation data",
    ),
    (
        "unknown optimizer",
        lambda m, d, t: _ft(m, d, optimizer="adamax"),
        ValueError,
        r"Argument `optimizer` must be one of \['adam'.*Received: optimizer='adamax'",
    ),
    (
        "checkpoint_dir of another run",
        lambda m, d, t: (
            _ft(m, d, recipe="head", epochs=1, checkpoint_dir=str(t / "c")),
            _ft(m, d, recipe="full", epochs=1, checkpoint_dir=str(t / "c")),
        ),
        ValueError,
        r"`checkpoint_dir=.*` holds the state of a different run.*'recipe'",
    ),
    (
        "plateau reduction + schedule",
        lambda m, d, t: _ft(m, d, callbacks=[keras.callbacks.ReduceLROnPlateau()]),
        ValueError,
        r"Argument `callbacks` holds a keras.callbacks.ReduceLROnPlateau.*HINT: pass "
        r"reduce_on_plateau=True",
    ),
    (
        "caching forced + augmentation",
        lambda m, d, t: _ft(
            m, tf.data.Dataset.from_tensor_slices(d).map(_flip), cache_features=True
        ),
        ValueError,
        r"Argument `cache_features=True`, but the input pipeline draws random numbers",
    ),
    (
        "prune + checkpoint_dir",
        lambda m, d, t: _ft(m, d, prune=0.8, checkpoint_dir=str(t / "c")),
        ValueError,
        r"Argument `prune` cannot be combined with \['checkpoint_dir'\]",
    ),
    (
        "prune to 150%",
        lambda m, d, t: _ft(m, d, prune=1.5),
        ValueError,
        r"`target_sparsity` must be None or a float in \[0, 1\). Received: target_sparsity=1.5",
    ),
    (
        "phase regex matching nothing",
        lambda m, d, t: _ft(m, d, recipe=[{"layers": "^zzz", "lr": 1e-3}]),
        ValueError,
        r"No layer of model 'mnist_cnn' matches '\^zzz' in argument `phases\[0\]\['layers'\]`",
    ),
    (
        "lr_find on an uncompiled model",
        lambda m, d, t: kerasft.lr_find(m, d),
        ValueError,
        r"not compiled with a loss.*HINT: pass loss=",
    ),
    (
        "lr_mult < 1",
        lambda m, d, t: _ft(m, d, lr_mult=0.5),
        ValueError,
        r"Argument `lr_mult` must be >= 1.*Received: lr_mult=0.5",
    ),
    (
        "unknown distribute",
        lambda m, d, t: _ft(m, d, distribute="tpu"),
        ValueError,
        r"Argument `distribute` must be None, 'auto' or a tf.distribute.Strategy.*Received: "
        r"distribute='tpu'",
    ),
    (
        "lr='find' under a strategy",
        lambda m, d, t: _ft(m, d, lr="find", distribute=tf.distribute.OneDeviceStrategy("/cpu:0")),
        ValueError,
        r"Argument `lr='find'` cannot run under `distribute` \(OneDeviceStrategy\)",
    ),
    (
        "export path is a file",
        lambda m, d, t: (t.joinpath("f").write_text("x"), export.export_model(m, str(t / "f"))),
        ValueError,
        r"Argument `path`.*is an existing file",
    ),
    (
        "export over an existing directory",
        lambda m, d, t: (t.joinpath("e").mkdir(), export.export_model(m, str(t / "e"))),
        FileExistsError,
        r"already exists. Pass overwrite=True",
    ),
    (
        "unknown export format",
        lambda m, d, t: export.export_model(m, str(t / "x"), format="onnx"),
        ValueError,
        r"Argument `format`.*'onnx'",
    ),
    (
        "prune a model with nothing prunable",
        lambda m, d, t: pruning.prune_low_magnitude(_no_prunable()),
        ValueError,
        r"no prunable layer|nothing to prune",
    ),
    (
        "images of mixed sizes",
        lambda m, d, t: imagefolder.load_image_folder(
            _image_folder(t / "mixed", {"a": [8, 8], "b": [8, 12]})
        ),
        ValueError,
        r"(?s)sizes?.*image_size",
    ),
    (
        "an empty class folder",
        lambda m, d, t: imagefolder.load_image_folder(
            _image_folder(t / "empty", {"a": [8, 8], "b": []})
        ),
        ValueError,
        r"Class folder '.*/b' holds no image",
    ),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_message(call, exc, pattern, model, xy, tmp_path):
    with pytest.raises(exc, match=pattern):
        call(model, xy, tmp_path)


CLI_CASES = [
    (
        ["finetune", "--data", "/no/such/folder", "--no-scratch", "--no-export"],
        r"--data.*/no/such/folder",
    ),
    (["finetune", "--epochs", "-1"], r"--epochs.*-1"),
    (["finetune", "--recipe", "fast", "--no-export"], r"recipe.*'fast'"),
    (["finetune", "/no/model.keras", "--no-export"], r"no file or directory at '/no/model.keras'"),
    (["export", "/no/model.keras", "/tmp/x"], r"no file or directory at '/no/model.keras'"),
]


def _exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        return e.code


@pytest.mark.parametrize("argv, pattern", CLI_CASES, ids=[" ".join(a[:3]) for a, _ in CLI_CASES])
def test_cli_prints_the_error_without_traceback(argv, pattern, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(pattern, err), err
