"""The tabular case of the benchmark matrix: ggplot2's diamonds, a pretrained MLP.

53,940 diamonds (plotnine's copy of the data set, read from its wheel, fetched with
``pip download --no-deps``, not installed). An MLP is pretrained here to tell a
diamond's clarity (8 grades) from its carat, cut, proportions and price, on colours
D-G only; the matrix fine-tunes it on colours H-J, where the same price and carat mean
a different clarity (a worse colour costs less): the pretrained model scores 0.24 on
them as it is, 0.50 on held-out D-G diamonds.

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
SOURCE_COLOURS = tuple("DEFG")
TARGET_COLOURS = tuple("HIJ")
# Parts of the data a model is pretrained on or fine-tuned on: (column, values).
PARTS = {
    "D-G": ("colour", SOURCE_COLOURS),
    "H-J": ("colour", TARGET_COLOURS),
    "Premium/Ideal cut": ("cut", ("Premium", "Ideal")),
    "Fair/Good/Very Good cut": ("cut", ("Fair", "Good", "Very Good")),
}
# The pretrained MLPs: name -> the part it learns from.
PRETRAINED = {
    "diamonds_dg_mlp": "D-G",
    "diamonds_hj_mlp": "H-J",
    "diamonds_fine_cut_mlp": "Premium/Ideal cut",
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


def pretrained_mlp(name: str = "diamonds_dg_mlp", epochs: int = 30) -> str:
    """Path of an MLP pretrained once on its part of the data (cached under ``md.cache_dir()``).

    ``name`` is a key of :data:`PRETRAINED` (``diamonds_dg_mlp``: colours D-G).
    Normalization (adapted on those diamonds) -> Dense(64) -> Dense(64) -> Dense(8);
    Adam 1e-3, batch 256, seed 0. Its accuracy on 20% of its part held out, and on the
    rest of the data as it is, are written beside it in ``<name>.json``.
    """
    path = os.path.join(md.cache_dir(), f"{name}.keras")
    if os.path.isfile(path):
        return path
    import keras

    x, y, _ = load_diamonds()
    source = in_part(PRETRAINED[name])
    order = np.random.default_rng(md.FIXED_SEED).permutation(source)
    held, train = order[: len(order) // 5], order[len(order) // 5 :]
    start = time.perf_counter()
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(name="standardize")
    norm.adapt(x[train])
    inputs = keras.Input((x.shape[1],), name="diamond")
    h = keras.layers.Dense(64, activation="relu", name="dense_1")(norm(inputs))
    h = keras.layers.Dense(64, activation="relu", name="dense_2")(h)
    outputs = keras.layers.Dense(len(CLARITIES), activation="softmax", name="clarity")(h)
    model = keras.Model(inputs, outputs, name="diamond_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x[train], y[train], batch_size=256, epochs=epochs, verbose=0)
    _, acc = model.evaluate(x[held], y[held], batch_size=1024, verbose=0)
    target = np.setdiff1d(np.arange(len(y)), source)
    _, zero_shot = model.evaluate(x[target], y[target], batch_size=1024, verbose=0)
    facts = {
        "held_out_accuracy": float(acc),
        "target_accuracy_as_is": float(zero_shot),
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
