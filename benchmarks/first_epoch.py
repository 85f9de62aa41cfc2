"""The first epoch of a fine-tune: the optimizer built before ``fit``, against Keras's default.

Keras 3 on TensorFlow builds the optimizer inside the first trace of the training step
when no distribution strategy is set, so its slot variables are created in that trace
and ``tf.function`` traces the whole step a second time. kerasft builds the optimizer
after ``compile`` (as Keras does under a strategy), so the step is traced once. On a
large graph the trace, not the arithmetic, is most of a small fine-tune's first epoch.

For each network (random weights, ``weights=None``: nothing downloads; 32x32 inputs,
the families' minimum; 64 real digits, batch 16, so four steps), one process fits one
epoch with ``Adam(1e-4)`` two ways, in alternating order, ``--rounds`` times:

- keras: ``compile`` then ``fit``, as a user writes it;
- built: ``compile``, ``optimizer.build(model.trainable_variables)``, then ``fit``.

Each repetition rebuilds the network with the same seed. Printed: seconds per epoch
(median over rounds), the ratio built/keras, and the number of traces of the training
step each way.

Run: ``python benchmarks/first_epoch.py`` (about 10 minutes on 2 shared CPU cores).
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

from kerasft import datasets

A = keras.applications
NETWORKS = {
    "MobileNetV2": lambda: A.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35
    ),
    "ResNet50": lambda: A.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
    "EfficientNetB0": lambda: A.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10),
    "NASNetMobile": lambda: A.NASNetMobile(weights=None, input_shape=(32, 32, 3), classes=10),
}


def digits(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    split = datasets.digits_few_shot(shots=10)
    x = tf.image.resize(split.x_train[:n].astype("float32"), (32, 32)).numpy()
    return np.repeat(x, 3, axis=-1), split.y_train[:n]


def one_epoch(name: str, x: np.ndarray, y: np.ndarray, built: bool) -> tuple[float, int]:
    keras.utils.set_random_seed(0)
    model = NETWORKS[name]()
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    traces = []
    step = model.train_step

    def counted(data):
        traces.append(1)
        return step(data)

    model.train_step = counted
    start = time.perf_counter()
    if built:
        model.optimizer.build(model.trainable_variables)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return time.perf_counter() - start, len(traces)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of each comparison")
    args = parser.parse_args(argv)
    x, y = digits()
    print(f"{'network':<16}{'keras s':>9}{'built s':>9}{'built/keras':>13}{'traces':>10}")
    for name in args.networks:
        seconds = {False: [], True: []}
        traces = {}
        for r in range(args.rounds):
            for built in (False, True) if r % 2 == 0 else (True, False):
                s, n = one_epoch(name, x, y, built)
                seconds[built].append(s)
                traces[built] = n
        keras_s, built_s = (statistics.median(seconds[b]) for b in (False, True))
        print(
            f"{name:<16}{keras_s:>9.1f}{built_s:>9.1f}{built_s / keras_s:>13.2f}"
            f"{f'{traces[False]} -> {traces[True]}':>10}",
            flush=True,
        )


if __name__ == "__main__":
    main()
