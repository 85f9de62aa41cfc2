"""A CNN's regression head with 100 labels: three times the family's rate against once.

Below 200 labelled examples ``recipe="auto"`` trains a convolutional network's
classifier at the family's rate (3e-4 for the shipped CNN) and its regression head at
three times it. This script is the evidence, in one process per case and seed, on the
same labelled examples:

- ``kerasft``: ``kerasft.finetune(model, data, seed=seed)``, the defaults (3x for
  regression);
- ``rate1x``: the same call with ``lr=3e-4``, the family's rate, which it was before;
- ``fit30``: plain ``fit``, ``Adam(1e-3)``, 30 epochs, batch 32.

The model is the shipped MNIST CNN with a one-unit linear head (the matrix's
``rotation_model``). Dev cases, drawn to choose the rule: the angle of MNIST and
Fashion-MNIST images rotated by U(-40, 40) degrees, the zoom factor (x100, 60-100) of
MNIST digits, the horizontal shift (-5..5 px) of Fashion-MNIST images; 10 labels per
class from 6,000 transformed training images, 2,000 transformed test images. Held out:
the matrix's rotation200 data (sklearn digits rotated by U(-40, 40)) with 10 labels per
digit, tested on the other 1,697.

Run::

    python benchmarks/regression_small.py               # every case, seeds 0-2
    python benchmarks/regression_small.py --cases digits_rotation --seeds 0 1 2
"""

from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import kerasft  # noqa: E402  (before TensorFlow: oneDNN off)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import matrix  # noqa: E402
import matrix_data as md  # noqa: E402
import side_by_side  # noqa: E402

SHOTS = 10
METHODS = ("kerasft", "rate1x", "fit30")


def _zoom(img: np.ndarray, factor: float) -> np.ndarray:
    from scipy import ndimage

    c = 13.5
    return ndimage.affine_transform(img, np.eye(2) / factor, offset=c - c / factor, order=1)


def _shift(img: np.ndarray, pixels: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.shift(img, (0, pixels), order=1)


@functools.lru_cache(None)
def _made(source: str, kind: str):
    """6,000 training and 2,000 test images of ``source`` transformed, with their targets."""
    (x, y), (xt, _) = (matrix.full_mnist if source == "mnist" else matrix.fashion)()
    rng = np.random.default_rng(321 if kind != "rotation" else 123)
    train = rng.choice(len(y), 6000, replace=False)
    test = rng.choice(len(xt), 2000, replace=False)
    low, high = {"rotation": (-40.0, 40.0), "zoom": (0.6, 1.0), "shift": (-5.0, 5.0)}[kind]
    a, at = rng.uniform(low, high, len(train)), rng.uniform(low, high, len(test))
    if kind == "rotation":
        xs, xts = md.rotate(x[train], a), md.rotate(xt[test], at)
    else:
        fn = _zoom if kind == "zoom" else _shift
        xs, xts = md.transform(x[train], a, fn), md.transform(xt[test], at, fn)
    scale = 100.0 if kind == "zoom" else 1.0
    return xs, (scale * a).astype("float32"), y[train], xts, (scale * at).astype("float32")


def _split(source: str, kind: str, seed: int):
    if source == "digits":
        x, angles, y = matrix.rotated_digits()
        train = md.per_class(y, SHOTS, seed)
        test = np.setdiff1d(np.arange(len(y)), train)
        return x[train], angles[train], x[test], angles[test]
    x, a, y, xt, at = _made(source, kind)
    idx = md.per_class(y, SHOTS, seed)
    return x[idx], a[idx], xt, at


# name -> (group, source images, what the target is)
CASES = {
    "mnist_rotation": ("dev", "mnist", "rotation"),
    "fashion_rotation": ("dev", "fashion", "rotation"),
    "mnist_zoom": ("dev", "mnist", "zoom"),
    "fashion_shift": ("dev", "fashion", "shift"),
    "digits_rotation": ("held-out", "digits", "rotation"),
}


def run_one(method: str, x, y, xt, yt, seed: int) -> float:
    """R2 x 100 of ``method`` trained on ``(x, y)``, scored on ``(xt, yt)``."""
    keras.utils.set_random_seed(seed)
    model = matrix.rotation_model()
    if method == "fit30":
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        model.fit(x, y, batch_size=32, epochs=30, verbose=0)
        report = kerasft.report_from_predictions(
            yt, model.predict(xt, verbose=0), task="regression"
        )
        return 100.0 * report["r2"]
    given = {"lr": 3e-4} if method == "rate1x" else {}
    result = kerasft.finetune(model, (x, y), seed=seed, verbose=0, **given)
    return 100.0 * result.evaluate((xt, yt))["r2"]


def main(argv=None) -> None:
    def scores(name: str, seed: int) -> tuple[str, dict[str, float]]:
        group, source, kind = CASES[name]
        x, y, xt, yt = _split(source, kind, seed)
        got = {}
        for method in METHODS:
            got[method] = run_one(method, x, y, xt, yt, seed)
            keras.backend.clear_session()
        return group, got

    side_by_side.main(__doc__.splitlines()[0], CASES, METHODS, "rate1x", scores, argv)


if __name__ == "__main__":
    main()
