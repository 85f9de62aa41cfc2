"""Benchmark kerasft pruning: training overhead against tfmot, size and accuracy at 80%.

Run: ``python benchmarks/pruning.py`` (about RUNTIME on 2 cores). It measures, in one run:

1. Per-step training time, pruned vs dense, of the shipped MNIST CNN
   (``saved_models/mnist_cnn.keras``) with kerasft on Keras 3, and of the same
   architecture and weights in tf_keras with tfmot. Both prune the convolutions and
   the dense layers with the same `PolynomialDecay` (0 -> 80%, masks updated every 10
   steps), Adam, batch 32; the best of several interleaved rounds is kept.
2. Fine-tuning that model on scikit-learn digits (100 labels per class, 797 held out),
   dense vs pruned to 80% during the same fine-tune (`pruning_plan`), then the
   held-out accuracy and the gzip size of the SavedModel exported from the dense and
   from the stripped pruned model.

Output on the development machine (2-core CPU, TF 2.21, Keras 3.15, tfmot 0.8.1,
oneDNN off):

RESULTS
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time

import keras
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras

import kerasft  # noqa: F401  (first: turns oneDNN off before TensorFlow loads)
from kerasft import datasets
from kerasft import pruning as kp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "mnist_cnn.keras")
PRUNED_LAYERS = ["block1_conv1", "block1_conv2", "block2_conv1", "block2_conv2", "fc", "predictions"]


def build_tf_keras_cnn():
    """The shipped CNN's architecture, layer for layer, in tf_keras."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((28, 28, 1), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    for block, filters in ((1, 32), (2, 64)):
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{i}")(x)
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


def seconds_per_step(model, x, y, callbacks, batch_size: int) -> float:
    steps = len(x) // batch_size
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return (time.perf_counter() - start) / steps


def bench_speed(x, y, batch_size: int, rounds: int, steps: int):
    x, y = x[: steps * batch_size], y[: steps * batch_size]
    # Same schedule for both libraries; it keeps firing over all the timed steps.
    total = (rounds + 1) * steps
    schedule = dict(initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=total, frequency=10)
    k3, k2 = shipped_pair()
    runs = {}
    runs["keras3 dense"] = (keras.models.clone_model(k3), [])
    runs["keras3 kerasft"] = (
        kp.prune_low_magnitude(k3, kp.PolynomialDecay(**schedule), layers=PRUNED_LAYERS),
        [kp.UpdatePruningStep()],
    )
    runs["tf_keras dense"] = (tf_keras.models.clone_model(k2), [])
    runs["tf_keras tfmot"] = (
        kp.prune_low_magnitude(k2, tfmot.sparsity.keras.PolynomialDecay(**schedule), layers=PRUNED_LAYERS),
        [tfmot.sparsity.keras.UpdatePruningStep()],
    )
    for name, (model, callbacks) in runs.items():
        optimizers = keras.optimizers if name.startswith("keras3") else tf_keras.optimizers
        model.compile(optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        seconds_per_step(model, x[: 4 * batch_size], y[: 4 * batch_size], callbacks, batch_size)  # trace
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):  # interleaved, so that load from other jobs hits all alike
        for name, (model, callbacks) in runs.items():
            best[name] = min(best[name], seconds_per_step(model, x, y, callbacks, batch_size))
    return best


def gzip_size(path: str) -> int:
    """Bytes of the SavedModel directory as a .tar.gz (what one would ship)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as tar:
        tar.add(path, arcname="model")
    return buffer.tell()


def inference_copy(model):
    """An uncompiled copy, so that the export holds no optimizer state."""
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def finetune(x_train, y_train, epochs: int, batch_size: int, prune_to: float | None):
    model = keras.models.load_model(SHIPPED)
    callbacks = []
    if prune_to is not None:
        steps = epochs * int(np.ceil(len(x_train) / batch_size))
        plan = kp.pruning_plan(model, total_steps=steps, target_sparsity=prune_to)
        model, callbacks = plan.model, plan.callbacks
    model.compile(keras.optimizers.Adam(5e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)
    return kp.strip_pruning(model) if prune_to is not None else model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs")
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    batch_size = 32
    split = datasets.few_shot_split(*datasets.load_digits(), shots=100, seed=0)

    best = bench_speed(split.x_train, split.y_train, batch_size, args.rounds, args.steps)
    print(f"Per-step training time, batch {batch_size}, best of {args.rounds} x {args.steps} steps:")
    for name, seconds in best.items():
        print(f"  {name:<16} {seconds * 1e3:7.1f} ms")
    ours = best["keras3 kerasft"] / best["keras3 dense"]
    theirs = best["tf_keras tfmot"] / best["tf_keras dense"]
    print(f"  overhead of pruning: kerasft x{ours:.2f} (target <= x1.3), tfmot x{theirs:.2f}")

    keras.utils.set_random_seed(0)
    dense = finetune(split.x_train, split.y_train, args.epochs, batch_size, prune_to=None)
    keras.utils.set_random_seed(0)
    pruned = finetune(split.x_train, split.y_train, args.epochs, batch_size, prune_to=args.sparsity)
    accuracy = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        model.compile(metrics=["accuracy"], loss="sparse_categorical_crossentropy")
        accuracy[name] = model.evaluate(split.x_test, split.y_test, verbose=0)[1]
    report = kp.sparsity_report(pruned)
    print(
        f"Fine-tune on digits ({len(split.x_train)} train, {len(split.x_test)} held out, "
        f"{args.epochs} epochs): held-out accuracy dense {accuracy['dense']:.4f}, pruned "
        f"{accuracy['pruned']:.4f} ({(accuracy['pruned'] - accuracy['dense']) * 100:+.2f} points) "
        f"at {report.total:.1%} sparsity of the prunable weights"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {}
        for name, model in (("dense", dense), ("pruned", pruned)):
            path = os.path.join(tmp, name)
            inference_copy(model).export(path, format="tf_saved_model", verbose=False)
            sizes[name] = gzip_size(path)
    print(
        f"SavedModel .tar.gz: dense {sizes['dense'] / 1e3:.0f} kB, stripped pruned "
        f"{sizes['pruned'] / 1e3:.0f} kB: x{sizes['pruned'] / sizes['dense']:.2f} (target <= x0.35)"
    )
    print(f"Total time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
