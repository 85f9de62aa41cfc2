"""Benchmark kerasft pruning: training overhead against tfmot, export size and accuracy at 80%.

Run: ``python benchmarks/pruning.py`` (about 2.5 minutes on 2 cores). It measures, in one run:

1. Per-step training time, pruned vs dense, of the shipped MNIST CNN
   (``saved_models/mnist_cnn.keras``, 468k weights) with kerasft on Keras 3, and of the
   same architecture and weights in tf_keras with tfmot. Both prune the four
   convolutions and the two dense layers (tfmot also as its default does, with every
   layer of the model wrapped) with the same `PolynomialDecay` (0 -> 80%,
   masks updated every 10 steps, so the timed steps include mask updates), Adam,
   batch 32, digits images. Each round times steps 6..N of one epoch (after warm-up
   steps, without `fit`'s start-up), in wall time and in CPU time of the process;
   rounds are interleaved so that load from other processes hits every variant
   alike. The best round's wall time and the median round's CPU time are reported.
2. ``kerasft.finetune`` of that model on scikit-learn digits (100 labels per class,
   797 held out), dense vs ``prune=0.8``, the held-out accuracy of each, and the gzip
   size of the SavedModel that ``kerasft.export.export_model`` writes from each.

Output on the development machine (2-core CPU shared with other jobs, TF 2.21,
Keras 3.15, tfmot 0.8.1, oneDNN off; lines over 100 characters wrapped here):

Per-step training time, batch 32, 8 rounds of 35 timed steps: wall (best round), CPU (median round)
  keras3 dense       wall   27.0 ms   CPU   52.8 ms
  keras3 kerasft     wall   28.1 ms   CPU   56.5 ms
  tf_keras dense     wall   29.2 ms   CPU   54.5 ms
  tf_keras tfmot     wall   32.5 ms   CPU   57.4 ms
  tf_keras tfmot-all wall   34.6 ms   CPU   61.2 ms
  overhead of pruning (wall): kerasft x1.04 (target <= x1.3), tfmot x1.11 (same layers),
    x1.18 (whole model wrapped)
  overhead of pruning (CPU): kerasft x1.07 (target <= x1.3), tfmot x1.05 (same layers),
    x1.12 (whole model wrapped)
kerasft.finetune on digits (1000 train, 797 held out): held-out accuracy dense 0.9962,
  pruned 0.9950 (-0.13 points); pruned layers ['block2_conv1', 'block2_conv2', 'fc'] at
  80.0%, 78.2% of all prunable weights
SavedModel .tar.gz: dense 3492 kB, stripped pruned 1100 kB: x0.32 (target <= x0.35)
Total time 137 s

With other jobs on the two cores, per-step times move by 10-30% from run to run, and
the overheads by about +-0.1 (over five runs: kerasft x0.83-x1.11, tfmot x0.92-x1.18).
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time

import kerasft  # first: turns oneDNN off before TensorFlow loads  # isort: skip
import keras
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

from kerasft import datasets
from kerasft import pruning as kp
from kerasft.export import export_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "mnist_cnn.keras")
PRUNED_LAYERS = [
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "fc",
    "predictions",
]
SKIP = 5  # warm-up steps of each round that are not timed


def build_tf_keras_cnn():
    """The shipped CNN's architecture, layer for layer, in tf_keras."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    for block, filters in ((1, 32), (2, 64)):
        for i in (1, 2):
            name = f"block{block}_conv{i}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{i}")(x)
            x = layers.ReLU(name=f"block{block}_relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return tf_keras.Model(inputs, outputs)


def shipped_pair():
    """The shipped Keras 3 model and a tf_keras copy holding the same weights."""
    k3 = keras.models.load_model(SHIPPED)
    k2 = build_tf_keras_cnn()
    for layer in k2.layers:
        weights = k3.get_layer(layer.name).get_weights()
        if weights:
            layer.set_weights(weights)
    return k3, k2


def step_timer(base):
    """A callback (subclass of `base`) timing the steps after the first SKIP of an epoch.

    It keeps wall time and the CPU time of this process (all threads): with other jobs
    on the machine, wall time includes waiting for a core, CPU time does not.
    """

    class StepTimer(base):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == SKIP:
                self.start = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, batch, logs=None):
            self.end, self.steps = (time.perf_counter(), time.process_time()), batch + 1 - SKIP

        @property
        def seconds_per_step(self) -> tuple[float, float]:
            return tuple((b - a) / self.steps for a, b in zip(self.start, self.end))

    return StepTimer()


def wrap_supported(schedule):
    """clone_function wrapping every layer that tfmot's registry supports."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry,
    )

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if PruneRegistry.supports(layer):
            return tfmot.sparsity.keras.prune_low_magnitude(
                copy, tfmot.sparsity.keras.PolynomialDecay(**schedule)
            )
        return copy

    return clone


def bench_speed(x, y, batch_size: int, rounds: int, steps: int):
    """Per variant: (best wall seconds per step, median CPU seconds per step) over rounds."""
    x, y = x[: steps * batch_size], y[: steps * batch_size]
    # Same schedule for both libraries; it keeps updating masks over all the timed steps.
    total = (rounds + 1) * steps
    schedule = dict(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=total, frequency=10
    )
    k3, k2 = shipped_pair()
    runs = {
        "keras3 dense": (keras.models.clone_model(k3), []),
        "keras3 kerasft": (
            kp.prune_low_magnitude(k3, kp.PolynomialDecay(**schedule), layers=PRUNED_LAYERS),
            [kp.UpdatePruningStep()],
        ),
        "tf_keras dense": (tf_keras.models.clone_model(k2), []),
        "tf_keras tfmot": (
            # tfmot's own wrappers on the same layers (tf_keras.models.clone_model).
            kp.prune_low_magnitude(
                k2, tfmot.sparsity.keras.PolynomialDecay(**schedule), layers=PRUNED_LAYERS
            ),
            [tfmot.sparsity.keras.UpdatePruningStep()],
        ),
        # What tfmot does to a whole model: every layer its registry supports gets a
        # wrapper, also those without weights to prune (BatchNormalization, ReLU,
        # pooling...). tfmot refuses the whole model itself, for its Rescaling layer.
        # Fresh weights: only its speed is measured.
        "tf_keras tfmot-all": (
            tf_keras.models.clone_model(k2, clone_function=wrap_supported(schedule)),
            [tfmot.sparsity.keras.UpdatePruningStep()],
        ),
    }
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for round_ in range(rounds + 1):  # round 0 traces and warms up
        for name, (model, callbacks) in runs.items():
            lib = keras if name.startswith("keras3") else tf_keras
            if round_ == 0:
                model.compile(lib.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
            timer = step_timer(lib.callbacks.Callback)
            model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                      callbacks=[*callbacks, timer])  # fmt: skip
            if round_:
                wall[name].append(timer.seconds_per_step[0])
                cpu[name].append(timer.seconds_per_step[1])
    return {name: (min(wall[name]), float(np.median(cpu[name]))) for name in runs}


def gzip_size(path: str) -> int:
    """Bytes of a SavedModel directory as a .tar.gz (what one would ship)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname="model")
    return buffer.tell()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="timing rounds")
    parser.add_argument("--steps", type=int, default=40, help="steps per timing round")
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    batch_size = 32
    split = datasets.few_shot_split(*datasets.load_digits(), shots=100, seed=0)

    times = bench_speed(split.x_train, split.y_train, batch_size, args.rounds, args.steps)
    print(
        f"Per-step training time, batch {batch_size}, {args.rounds} rounds of "
        f"{args.steps - SKIP} timed steps: wall (best round), CPU (median round)"
    )
    for name, (wall, cpu) in times.items():
        print(f"  {name:<18} wall {wall * 1e3:6.1f} ms   CPU {cpu * 1e3:6.1f} ms")
    for i, kind in enumerate(("wall", "CPU")):
        ours = times["keras3 kerasft"][i] / times["keras3 dense"][i]
        theirs = times["tf_keras tfmot"][i] / times["tf_keras dense"][i]
        all_layers = times["tf_keras tfmot-all"][i] / times["tf_keras dense"][i]
        print(
            f"  overhead of pruning ({kind}): kerasft x{ours:.2f} (target <= x1.3), "
            f"tfmot x{theirs:.2f} (same layers), x{all_layers:.2f} (whole model wrapped)"
        )

    results = {}
    for name, prune in (("dense", None), ("pruned", args.sparsity)):
        results[name] = kerasft.finetune(
            SHIPPED, (split.x_train, split.y_train), prune=prune, seed=0, verbose=0
        )
    accuracy = {
        name: r.evaluate((split.x_test, split.y_test))["accuracy"] for name, r in results.items()
    }
    record = results["pruned"].pruning.to_dict()
    print(
        f"kerasft.finetune on digits ({len(split.x_train)} train, {len(split.x_test)} held "
        f"out): held-out accuracy dense {accuracy['dense']:.4f}, pruned "
        f"{accuracy['pruned']:.4f} ({(accuracy['pruned'] - accuracy['dense']) * 100:+.2f} "
        f"points); pruned layers {sorted(record['layers'])} at {record['sparsity']:.1%}, "
        f"{record['model_sparsity']:.1%} of all prunable weights"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for name, result in results.items():
            path = export_model(result.model, os.path.join(tmp, name), format="saved_model")
            sizes[name] = gzip_size(path)
    print(
        f"SavedModel .tar.gz: dense {sizes['dense'] / 1e3:.0f} kB, stripped pruned "
        f"{sizes['pruned'] / 1e3:.0f} kB: x{sizes['pruned'] / sizes['dense']:.2f} "
        "(target <= x0.35)"
    )
    print(f"Total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
