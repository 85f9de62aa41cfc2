"""What a ``kerasft.search`` of 8 trials costs, as a multiple of one ``kerasft.finetune`` call.

The target (issue "search gets compiled-function reuse"): 8 trials within 3x the time of
one call. In one process, for each data set and seed, this times one
``kerasft.finetune(model, data)`` call and two searches of 8 trials on the same model
and data:

- ``features only``: the trials share a :class:`kerasft.speed.FeatureStore` that keeps
  features only (``FeatureStore()``, what ``search`` did before compiled models were kept);
- ``search``: ``kerasft.search`` as it ships (its store also keeps the compiled training
  models, ``compiled_models=8``).

The model is the shipped MNIST CNN (``saved_models/mnist_cnn.keras``), loaded once. The
data: scikit-learn's digits with 10 labels per class (100 images), and Fashion-MNIST
(the Debian package ``dataset-fashion-mnist``) with 20 labels per class (200 images),
drawn with each seed. Every run uses ``recipe="lp-ft"`` with its default epochs (5 head
epochs on cached features, 10 fine-tuning epochs of the whole network, 20% held out for
validation): the default recipe, ``"auto"``, holds nothing out below 200 examples and
trains again on all labels below 5,000, so a search has no ``val_loss`` to compare its
trials on. The space is the rates (``lr`` x ``finetune_lr``, 9 configurations, the same
network in every trial; ``--space layers`` adds ``unfreeze``, whose values are different
networks to train); the search's seed is the data's.

The one-call time is the mean of a call before and a call after the searches (the
machine is shared and its load drifts); the figures that matter are the ratios. Where the
time goes, from a callback that times the first batch of every ``fit`` and of every
validation pass (tracing the step functions, building their graphs, and one step), the
rest of the ``fit`` calls (training and validation), and the rest of each trial (copying
the model, preparing data and features, planning).

Run: ``python benchmarks/search_cost.py`` (about 10 minutes on 2 shared cores), or
``--data digits --seeds 0`` for one row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import kerasft  # noqa: F401  (before TensorFlow: oneDNN off)

# isort: split
import keras
import numpy as np

from kerasft import datasets
from kerasft.search import search
from kerasft.speed import FeatureStore

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(os.path.dirname(HERE), "saved_models", "mnist_cnn.keras")
FIXED = {"recipe": "lp-ft"}
SPACES = {
    "rates": {"lr": [3e-3, 1e-2, 3e-2], "finetune_lr": [1e-4, 3e-4, 1e-3]},
    "layers": {
        "lr": [3e-3, 1e-2, 3e-2],
        "finetune_lr": [1e-4, 3e-4, 1e-3],
        "unfreeze": [1, 2, "all"],
    },
}
TRIALS = 8


class FirstSteps(keras.callbacks.Callback):
    """Seconds of each ``fit``'s first training and validation batch, and of the ``fit`` calls."""

    def __init__(self):
        super().__init__()
        self.first = 0.0
        self.fit = 0.0

    def on_train_begin(self, logs=None):
        self._begin = time.perf_counter()
        self._first_train = self._first_test = True

    def on_train_batch_begin(self, batch, logs=None):
        self._batch = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._first_train:
            self.first += time.perf_counter() - self._batch
            self._first_train = False

    def on_test_batch_begin(self, batch, logs=None):
        self._batch = time.perf_counter()

    def on_test_batch_end(self, batch, logs=None):
        if self._first_test:
            self.first += time.perf_counter() - self._batch
            self._first_test = False

    def on_train_end(self, logs=None):
        self.fit += time.perf_counter() - self._begin


def load_data(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        split = datasets.digits_few_shot(shots=10, seed=seed)
    else:
        sys.path.insert(0, HERE)
        from matrix_data import load_fashion_mnist

        (x, y), _ = load_fashion_mnist()
        split = datasets.few_shot_split(x, y, shots=20, seed=seed)
    return split.x_train, split.y_train


def timed(fn):
    timer = FirstSteps()
    start = time.perf_counter()
    out = fn(timer)
    return out, time.perf_counter() - start, timer


def run_case(model, data, seed: int, space: dict, trials: int) -> dict:
    def one(timer):
        return kerasft.finetune(model, data, verbose=0, seed=seed, callbacks=[timer], **FIXED)

    def searched(store):
        def run(timer):
            keywords = dict(FIXED, callbacks=[timer])
            if store is not None:
                keywords["feature_store"] = store
            return search(model, data, space, max_trials=trials, seed=seed, verbose=0, **keywords)

        return run

    _, before, _ = timed(one)
    plain, plain_s, plain_t = timed(searched(FeatureStore()))
    shipped, shipped_s, shipped_t = timed(searched(None))
    _, after, one_t = timed(one)
    return {
        "one": (before + after) / 2,
        "one_first": one_t.first,
        "one_fit": one_t.fit,
        "plain": (plain, plain_s, plain_t),
        "search": (shipped, shipped_s, shipped_t),
    }


def describe(label: str, found, seconds: float, timer: FirstSteps) -> str:
    rows = found.trials
    per_trial = " ".join(f"{r.seconds:.1f}" for r in rows)
    outside = sum(r.seconds for r in rows) - timer.fit
    return (
        f"  {label}: {seconds:.1f} s; trials {per_trial} s; first batches (tracing) "
        f"{timer.first:.1f} s, rest of fit {timer.fit - timer.first:.1f} s, outside fit "
        f"{outside:.1f} s; {found.store}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", nargs="+", choices=["digits", "fashion"], default=["digits", "fashion"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--space", choices=sorted(SPACES), default="rates")
    parser.add_argument("--trials", type=int, default=TRIALS)
    args = parser.parse_args(argv)

    model = keras.models.load_model(MODEL)
    space = SPACES[args.space]
    warm = datasets.digits_few_shot(shots=10)
    kerasft.finetune(model, (warm.x_train, warm.y_train), verbose=0, **FIXED)  # untimed
    print(
        f"{datetime.date.today()} {platform.node()} ({os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}); TensorFlow/Keras {keras.version()}; {FIXED}, space {space}, "
        f"{args.trials} trials",
        flush=True,
    )
    rows = []
    for name in args.data:
        for seed in args.seeds:
            data = load_data(name, seed)
            case = run_case(model, data, seed, space, args.trials)
            rows.append((name, seed, case))
            print(
                f"\n{name} seed {seed}: one call {case['one']:.1f} s (first batches "
                f"{case['one_first']:.1f} s, fit {case['one_fit']:.1f} s)",
                flush=True,
            )
            print(describe("features only", *case["plain"]), flush=True)
            print(describe("search", *case["search"]), flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print(
        "| data | seed | one call s | features only: 8 trials s | ratio | search: 8 trials s | "
        "ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    ratios = {"plain": [], "search": []}
    for name, seed, case in rows:
        one = case["one"]
        cells = []
        for key in ("plain", "search"):
            seconds = case[key][1]
            ratios[key].append(seconds / one)
            cells += [f"{seconds:.1f}", f"{seconds / one:.2f}x"]
        print(f"| {name} | {seed} | {one:.1f} | " + " | ".join(cells) + " |")
    print(
        f"| median | | | | {statistics.median(ratios['plain']):.2f}x | | "
        f"{statistics.median(ratios['search']):.2f}x |"
    )


if __name__ == "__main__":
    main()
