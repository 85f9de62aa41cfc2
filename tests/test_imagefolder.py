"""Tests for kerasft.imagefolder: real digit images written as PNG folders, read back offline."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import kerasft
from kerasft.imagefolder import image_folder_to_tfds, load_image_folder, load_tfds_folder

NAMES = ["zero", "one", "two"]


def _write(root, x, y, names=NAMES, mode="L"):
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image[..., 0].astype("uint8")
        if mode == "RGB":  # the digit in red on black: a real colour image
            pixels = np.stack([pixels, pixels // 4, np.zeros_like(pixels)], axis=-1)
        Image.fromarray(pixels, mode).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def three_digits(digits):
    """Digits 0, 1, 2: 60 for training, 60 for testing (real sklearn digits)."""
    x, y = digits
    keep = np.flatnonzero(y < 3)
    train, test = keep[:60], keep[60:120]
    return (x[train], y[train]), (x[test], y[test])


@pytest.fixture(scope="module")
def split_folder(three_digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("folders") / "digits"
    (xt, yt), (xv, yv) = three_digits
    _write(root / "train", xt, yt)
    _write(root / "test", xv, yv)
    return root


# --- load_image_folder -------------------------------------------------------------------


def test_load_image_folder_reads_pixels_back_exactly(split_folder, three_digits):
    (x, y), _ = three_digits
    images, labels, names = load_image_folder(split_folder / "train")
    assert names == sorted(NAMES)  # ["one", "two", "zero"]: sorted folder names
    assert images.shape == (60, 28, 28, 1) and images.dtype == np.float32
    assert labels.dtype == np.int64
    # Files are read class by class in sorted order; compare as sets of (label, image).
    by_name = {
        NAMES[c]: np.sort(x[y == c].astype("uint8").reshape(-1, 784), axis=0) for c in range(3)
    }
    for i, name in enumerate(names):
        got = np.sort(images[labels == i].astype("uint8").reshape(-1, 784), axis=0)
        np.testing.assert_array_equal(got, by_name[name])


def test_load_image_folder_class_names_fix_the_ids(split_folder):
    _, labels, names = load_image_folder(split_folder / "test", class_names=NAMES + ["three"])
    assert names == NAMES + ["three"]
    assert set(labels.tolist()) == {0, 1, 2}  # 'three' has no folder, hence no images


def test_load_image_folder_resizes_and_converts(three_digits, tmp_path):
    (x, y), _ = three_digits
    _write(tmp_path / "rgb", x[:12], y[:12], mode="RGB")
    rgb, _, _ = load_image_folder(tmp_path / "rgb")
    assert rgb.shape == (12, 28, 28, 3)  # "auto": colour images stay colour
    np.testing.assert_array_equal(
        rgb[..., 0],
        x[:12, ..., 0].astype("uint8")[np.argsort([NAMES[c] for c in y[:12]], kind="stable")],
    )
    gray, _, _ = load_image_folder(tmp_path / "rgb", color_mode="grayscale", image_size=(14, 16))
    assert gray.shape == (12, 14, 16, 1)
    assert 0 <= gray.min() and gray.max() <= 255


def test_load_image_folder_errors(three_digits, tmp_path):
    (x, y), _ = three_digits
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(x[0, ..., 0].astype("uint8")).save(loose / "a.png")
    with pytest.raises(ValueError, match="No class sub-folders .* It holds 1 images directly"):
        load_image_folder(loose)

    _write(tmp_path / "mixed", x[:6], y[:6])
    Image.fromarray(np.zeros((20, 30), "uint8")).save(tmp_path / "mixed" / "one" / "big.png")
    with pytest.raises(ValueError, match=r"differ in size: .* is 28x28 but .*big.png' is 20x30"):
        load_image_folder(tmp_path / "mixed")
    assert load_image_folder(tmp_path / "mixed", image_size=(28, 28))[0].shape[0] == 7

    (tmp_path / "mixed" / "one" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="Cannot read image file .*broken.png"):
        load_image_folder(tmp_path / "mixed", image_size=(28, 28))

    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"Class folder '.*/empty/a' holds no image"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(
        ValueError,
        match=r"`image_size` must be None or \(height, width\).*"
        r"Received: image_size=\(28,\)",
    ):
        load_image_folder(tmp_path / "mixed", image_size=(28,))
    with pytest.raises(
        ValueError,
        match=r"`color_mode` must be one of \['auto', 'grayscale', "
        r"'rgb'\]. Received: color_mode='RGB'",
    ):
        load_image_folder(tmp_path / "mixed", color_mode="RGB")
    with pytest.raises(
        ValueError, match=r"Sub-folders \['two', 'zero'\] .* are not in `class_names`"
    ):
        load_image_folder(tmp_path / "mixed", class_names=["one"], image_size=(28, 28))


# --- tensorflow-datasets ------------------------------------------------------------------


def test_class_names_and_links_cannot_leave_the_folder(split_folder, tmp_path):
    # class_names=["../x", "/abs"] read folders outside the root, and links were followed.
    outside = tmp_path / "private"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8), "uint8")).save(outside / "secret.png")
    root = split_folder / "train"
    for names in (["zero", "../private"], ["zero", str(outside)], ["zero", ".."], ["zero", ""]):
        with pytest.raises(
            ValueError, match=r"`class_names` must hold plain folder names inside `path`"
        ):
            load_image_folder(root, class_names=names)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "zero").symlink_to(root / "zero")  # a link inside... to another tree
    (linked / "other").symlink_to(outside)
    with pytest.raises(
        ValueError, match=r"is a symbolic link to .*private', outside .*follow_symlinks=True"
    ):
        load_image_folder(linked)
    x, y, names = load_image_folder(linked, follow_symlinks=True, image_size=(8, 8))
    assert names == ["other", "zero"] and (y == 0).sum() == 1
    inside = tmp_path / "inside"
    (inside / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), "uint8")).save(inside / "a" / "1.png")
    (inside / "b").symlink_to(inside / "a")  # a link that stays under the root is fine
    assert load_image_folder(inside)[2] == ["a", "b"]


def test_load_tfds_folder_with_image_folder(split_folder, three_digits):
    ds, names = load_tfds_folder(split_folder, "test")
    assert names == sorted(NAMES)
    assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[0].shape[-1] == 1
    images = np.stack([image.numpy() for image, _ in ds])
    assert images.shape == (60, 28, 28, 1)

    as_dicts, _ = load_tfds_folder(split_folder, "test", as_supervised=False)
    assert {"image", "label", "image/filename"} <= set(as_dicts.element_spec)

    with pytest.raises(
        ValueError,
        match=r"No split 'validation' .*Existing splits are: "
        r"\['test', 'train'\]",
    ):
        load_tfds_folder(split_folder, "validation")
    with pytest.raises(ValueError, match="looks like a class folder, not a split folder"):
        load_tfds_folder(split_folder / "train")


def test_image_folder_to_tfds_prepares_an_offline_dataset(split_folder, tmp_path):
    data_dir = tmp_path / "tfds"
    builder = image_folder_to_tfds(split_folder, data_dir, name="digits_folder")
    assert builder.info.supervised_keys is not None
    assert builder.info.splits["train"].num_examples == 60
    assert builder.info.features["label"].names == sorted(NAMES)
    version_dir = data_dir / "digits_folder" / "1.0.0"
    assert os.path.isfile(version_dir / "dataset_info.json")
    for name in os.listdir(version_dir):
        assert stat.S_IMODE(os.stat(version_dir / name).st_mode) == 0o644
    assert sorted(os.listdir(data_dir / "digits_folder")) == ["1.0.0"]  # nothing left over

    # Plain TFDS reads it back, offline, by name and by directory.
    ds = tfds.load("digits_folder", data_dir=str(data_dir), split="test", as_supervised=True)
    direct, _ = load_tfds_folder(split_folder, "test")
    prepared = sorted(image.numpy().tobytes() for image, _ in ds)
    assert prepared == sorted(image.numpy().tobytes() for image, _ in direct)
    half, names = load_tfds_folder(version_dir, "train[:50%]")
    assert sum(1 for _ in half) == 30 and names == sorted(NAMES)
    with pytest.raises(
        ValueError, match=r"No split 'dev' .*Existing splits are: \['test', 'train'\]"
    ):
        load_tfds_folder(version_dir, "dev")

    with pytest.raises(FileExistsError, match="already exists. Pass overwrite=True"):
        image_folder_to_tfds(split_folder, data_dir, name="digits_folder")
    resized = image_folder_to_tfds(
        split_folder, data_dir, name="digits_folder", image_size=(14, 14), overwrite=True
    )
    assert resized.info.features["image"].shape == (14, 14, 1)


def test_image_folder_to_tfds_errors(split_folder, tmp_path):
    with pytest.raises(ValueError, match="snake_case dataset name.*Received: name='Digits'"):
        image_folder_to_tfds(split_folder, tmp_path, name="Digits")
    with pytest.raises(
        ValueError, match=r"`version` must look like '1.0.0'. Received: version='1'"
    ):
        image_folder_to_tfds(split_folder, tmp_path, version="1")
    with pytest.raises(ValueError, match="looks like a class folder"):
        image_folder_to_tfds(split_folder / "train", tmp_path)
    assert os.listdir(tmp_path) == []


def test_finetune_takes_tfds_builders_and_splits(split_folder, tmp_path, shipped_model_path):
    """The shipped MNIST CNN fine-tunes on a TFDS dataset read from local PNGs only."""
    builder = tfds.ImageFolder(str(split_folder), shape=(None, None, 1))
    result = kerasft.finetune(
        shipped_model_path, builder, head_epochs=5, epochs=5, lr=3e-3, batch_size=16, verbose=0
    )
    test = builder.as_dataset(split="test", as_supervised=True)
    accuracy = result.evaluate(test)["accuracy"]
    assert accuracy > 0.9  # measured 0.98-1.0 on these 60 test digits (seeds 0-2)

    # The same data as a split, with and without as_supervised, prepares identically.
    supervised = builder.as_dataset(split="train", as_supervised=True)
    dicts = builder.as_dataset(split="train")
    a = kerasft.prepare_data(supervised, validation_split=0.0, shuffle=False)
    b = kerasft.prepare_data(dicts, validation_split=0.0, shuffle=False)
    assert a.spec.num_classes == b.spec.num_classes == 3
    xa = np.concatenate([x.numpy() for x, _ in a.train])
    xb = np.concatenate([x.numpy() for x, _ in b.train])
    np.testing.assert_array_equal(xa, xb)
