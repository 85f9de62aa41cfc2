"""The tabular case of the benchmark matrix: ggplot2's diamonds, a pretrained MLP.

53,940 diamonds (plotnine's copy of the data set, read from its wheel, fetched with
``pip download --no-deps``, not installed). An MLP is pretrained here to tell a
diamond's clarity (8 grades) from its carat, cut, proportions and price, on colours
D-G only; the matrix fine-tunes it on colours H-J, where the same price and carat mean
a different clarity (a worse colour costs less): the pretrained model scores 0.24 on
them as it is, 0.50 on held-out D-G diamonds. A second task is regression: a diamond's
log price from its carat, cut, proportions and clarity, learnt on colours D-G and
fine-tuned on H-J, where the same diamond costs less.

This module is the benchmark's, not the library's.
"""

from __future__ import annotations

import csv
import os
import time

import matrix_data as md
import numpy as np

from kerasft.datasets import FewShotSplit
from kerasft.jobs import textdata

PLOTNINE_WHEEL = ("plotnine", "0.15.9")
CUTS = ("Fair", "Good", "Very Good", "Premium", "Ideal")
CLARITIES = ("I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF")
FEATURES = ("log carat", "cut", "depth", "table", "x", "y", "z", "log price")
# The price task's inputs: clarity (0 = I1 .. 7 = IF) in place of the price it predicts.
PRICE_FEATURES = (*FEATURES[:-1], "clarity")
SOURCE_COLOURS = tuple("DEFG")
TARGET_COLOURS = tuple("HIJ")
# Parts of the data a model is pretrained on or fine-tuned on: (column, values).
PARTS = {
    "D-G": ("colour", SOURCE_COLOURS),
    "H-J": ("colour", TARGET_COLOURS),
    "Premium/Ideal cut": ("cut", ("Premium", "Ideal")),
    "Fair/Good/Very Good cut": ("cut", ("Fair", "Good", "Very Good")),
}
# The pretrained MLPs: name -> (the part it learns from, "clarity" or "price").
PRETRAINED = {
    "diamonds_dg_mlp": ("D-G", "clarity"),
    "diamonds_hj_mlp": ("H-J", "clarity"),
    "diamonds_fine_cut_mlp": ("Premium/Ideal cut", "clarity"),
    "diamonds_dg_price_mlp": ("D-G", "price"),
}


def load_diamonds() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, clarity, colour)``: :data:`FEATURES` as float32, clarity 0 (I1)..7 (IF), D..J."""
    name, version = PLOTNINE_WHEEL
    [path] = textdata.fetch_wheel_files(name, version, ["plotnine/data/diamonds.csv"])
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cut = {c: i for i, c in enumerate(CUTS)}
    x = np.asarray(
        [
            [
                np.log(float(r["carat"])),
                cut[r["cut"]],
                *(float(r[k]) for k in ("depth", "table", "x", "y", "z")),
                np.log(float(r["price"])),
            ]
            for r in rows
        ],
        dtype="float32",
    )
    clarity = {c: i for i, c in enumerate(CLARITIES)}
    y = np.asarray([clarity[r["clarity"]] for r in rows], dtype="int64")
    return x, y, np.asarray([r["color"] for r in rows])


def load_prices() -> tuple[np.ndarray, np.ndarray]:
    """``(x, log price)``: :data:`PRICE_FEATURES` as float32, the natural log of the price."""
    x, clarity, _ = load_diamonds()
    features = np.concatenate([x[:, :-1], clarity[:, None].astype("float32")], axis=1)
    return features, x[:, -1].copy()


def in_part(part: str) -> np.ndarray:
    """Indices of the diamonds in ``part`` (a key of :data:`PARTS`)."""
    x, _, colour = load_diamonds()
    column, values = PARTS[part]
    if column == "colour":
        return np.flatnonzero(np.isin(colour, values))
    return np.flatnonzero(np.isin(x[:, FEATURES.index("cut")], [CUTS.index(v) for v in values]))


def diamonds_split(shots: int | None = None, labelled: int | None = None, part: str = "H-J"):
    """Labelled diamonds of ``part``; a fixed 2,000 of the rest of it, in their proportions.

    Either ``shots`` per clarity grade (the labelled grades balanced, while the test set
    keeps the part's proportions: for H-J 1.6% I1 to 27% SI1), or ``labelled`` diamonds
    drawn in the part's proportions (stratified by clarity), like the test set.
    """
    if (shots is None) == (labelled is None):
        raise ValueError("Give one of `shots` or `labelled`.")

    def load(seed: int, quick: bool) -> FewShotSplit:
        x, y, _ = load_diamonds()
        pool = in_part(part)
        if shots is not None:
            train = md.per_class(y, shots, seed, pool=pool)
        else:
            train = pool[md.stratified_sample(y[pool], labelled, seed=seed)]
        rest = np.setdiff1d(pool, train)
        test = rest[md.stratified_sample(y[rest], 500 if quick else 2000)]
        return FewShotSplit(x[train], y[train], x[test], y[test])

    return load


def price_split(labelled: int, part: str = "H-J"):
    """``labelled`` diamonds of ``part`` drawn at random, their log prices the labels.

    Tested on a fixed draw of 2,000 of the rest of the part (500 with ``quick``).
    """

    def load(seed: int, quick: bool) -> FewShotSplit:
        x, y = load_prices()
        pool = in_part(part)
        train = np.random.default_rng(seed).choice(pool, labelled, replace=False)
        rest = np.setdiff1d(pool, train)
        test = np.random.default_rng(md.FIXED_SEED).choice(
            rest, 500 if quick else 2000, replace=False
        )
        return FewShotSplit(x[train], y[train], x[test], y[test])

    return load


def pretrained_mlp(name: str = "diamonds_dg_mlp", epochs: int = 30) -> str:
    """Path of an MLP pretrained once on its part of the data (cached under ``md.cache_dir()``).

    ``name`` is a key of :data:`PRETRAINED` (``diamonds_dg_mlp``: clarity on colours
    D-G). Normalization (adapted on those diamonds) -> Dense(64) -> Dense(64) -> a head:
    Dense(8) softmax for clarity, Dense(1) linear for the log price (mean squared error);
    Adam 1e-3, batch 256, seed 0. Its score on 20% of its part held out, and on the rest
    of the data as it is (accuracy, or R2 for the price), are written beside it in
    ``<name>.json``.
    """
    path = os.path.join(md.cache_dir(), f"{name}.keras")
    if os.path.isfile(path):
        return path
    import keras

    part, target = PRETRAINED[name]
    if target == "price":
        x, y = load_prices()
    else:
        x, y, _ = load_diamonds()
    source = in_part(part)
    order = np.random.default_rng(md.FIXED_SEED).permutation(source)
    held, train = order[: len(order) // 5], order[len(order) // 5 :]
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(x[train])
    inputs = keras.Input((x.shape[1],), name="diamond")
    h = keras.layers.Dense(64, activation="relu", name="dense_1")(norm(inputs))
    h = keras.layers.Dense(64, activation="relu", name="dense_2")(h)
    if target == "price":
        outputs = keras.layers.Dense(1, name="log_price")(h)
        model = keras.Model(inputs, outputs, name="diamond_price_mlp")
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    else:
        outputs = keras.layers.Dense(len(CLARITIES), activation="softmax", name="clarity")(h)
        model = keras.Model(inputs, outputs, name="diamond_mlp")
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    model.fit(x[train], y[train], batch_size=256, epochs=epochs, verbose=0)
    rest = np.setdiff1d(np.arange(len(y)), source)

    def score(rows: np.ndarray) -> float:
        predicted = model.predict(x[rows], batch_size=1024, verbose=0)
        if target == "price":
            return float(1.0 - np.mean((predicted[:, 0] - y[rows]) ** 2) / np.var(y[rows]))
        return float(np.mean(predicted.argmax(axis=1) == y[rows]))

    measure = "r2" if target == "price" else "accuracy"
    facts = {
        f"held_out_{measure}": score(held),
        f"target_{measure}_as_is": score(rest),
        "train_examples": len(train),
        "epochs": epochs,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return md.save_pretrained(model, name, facts)


def pretrained_loader(name: str):
    """A model factory for the matrix: the MLP :data:`PRETRAINED` ``name``, loaded fresh."""

    def load(split=None):
        import keras

        return keras.models.load_model(pretrained_mlp(name))

    return load


# The held-out cases' model: pretrained on colours D-G.
diamond_mlp = pretrained_loader("diamonds_dg_mlp")
