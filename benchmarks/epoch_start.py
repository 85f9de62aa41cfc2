"""Epochs over data in memory: kerasft's pipeline (tf.data autotuning off) against autotuning on.

Every epoch, and every evaluation, makes a new iterator over the training pipeline, and
tf.data's autotuning starts again with each one. Over arrays already in memory it has
nothing to tune, and on a 2-core machine it stalled the first step of about a third of
the epochs by 200-300 ms; a small fine-tune runs many short epochs (300 optimizer steps
of 10-25 per epoch), so that stall was a sixth of its time.

For each model (the shipped MNIST CNN at batch 8 and 32, and a small dense network at
batch 8) and 200 real digits, one process fits ``--epochs`` epochs two ways, in
alternating order, ``--rounds`` times, each from the same weights and with the same
shuffles:

- tuned: the same pipeline built with tf.data's default options (autotuning on, as
  ``make_pipeline`` built it before);
- kerasft: the pipeline as ``make_pipeline`` returns it (autotuning off).

Printed: seconds per fit (median over rounds), the ratio kerasft/tuned, the slowest
epoch start (the time from an epoch's start to the end of its first step), and the
largest difference between the weights the two ways end with (the same batches in the
same order; the CNN's convolutions on CPU are not bit for bit reproducible between two
fits either way).

Run: ``python benchmarks/epoch_start.py`` (under 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import kerasft  # noqa: F401  (before TensorFlow: oneDNN off)

# isort: split
import keras
import numpy as np
import tensorflow as tf

from kerasft import data as data_lib
from kerasft import datasets
from kerasft.cli import default_model_path


def shipped() -> keras.Model:
    return keras.models.load_model(default_model_path())


def dense() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


CASES = {"cnn, batch 8": (shipped, 8), "cnn, batch 32": (shipped, 32), "dense, batch 8": (dense, 8)}


class _EpochStarts(keras.callbacks.Callback):
    """Seconds from each epoch's start to the end of its first step."""

    def on_train_begin(self, logs=None):
        self.starts, self._t = [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.starts.append(time.perf_counter() - self._t)


def one_fit(make, x, y, batch: int, epochs: int, tuned: bool) -> tuple[float, float, list]:
    model = make()
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    if tuned:
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=0).batch(batch)
        ds = ds.prefetch(tf.data.AUTOTUNE)
    else:
        ds = data_lib.make_pipeline(x, y, batch, seed=0, shuffle=True)
    model.fit(ds.take(1), epochs=1, verbose=0)  # trace outside the timing
    starts = _EpochStarts()
    t = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0, callbacks=[starts])
    seconds = time.perf_counter() - t
    return seconds, max(starts.starts[1:]), model.get_weights()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    split = datasets.digits_few_shot(shots=20)
    x, y = split.x_train, split.y_train
    print(f"{len(y)} digits, {args.epochs} epochs a fit, {args.rounds} rounds, alternating order")
    print(
        f"{'case':16s} {'tuned s':>8s} {'kerasft s':>10s} {'ratio':>6s} "
        f"{'worst start tuned':>18s} {'kerasft':>8s}  weights differ by"
    )
    for name, (make, batch) in CASES.items():
        times = {True: [], False: []}
        worst = {True: 0.0, False: 0.0}
        gap = 0.0
        for r in range(args.rounds):
            ends = {}
            for tuned in (r % 2 == 0, r % 2 == 1):
                seconds, start, weights = one_fit(make, x, y, batch, args.epochs, tuned)
                times[tuned].append(seconds)
                worst[tuned] = max(worst[tuned], start)
                ends[tuned] = weights
            gap = max(
                [gap] + [float(np.max(np.abs(a - b))) for a, b in zip(ends[True], ends[False])]
            )
        on, off = statistics.median(times[True]), statistics.median(times[False])
        print(
            f"{name:16s} {on:8.2f} {off:10.2f} {off / on:6.2f} "
            f"{1000 * worst[True]:15.0f} ms {1000 * worst[False]:5.0f} ms  {gap:.1e}"
        )


if __name__ == "__main__":
    main()
