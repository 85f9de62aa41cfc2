"""Small real Keras models shared by the tests."""

from __future__ import annotations

import keras


def nested_model(num_classes: int = 10) -> keras.Model:
    """The transfer-learning guide's shape: inputs -> backbone model -> pooling -> Dense."""
    inner_in = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inner_in)
    x = keras.layers.Conv2D(8, 3, name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(8, 3, name="conv2")(x)
    backbone = keras.Model(inner_in, x, name="backbone")
    inputs = keras.Input((28, 28, 1))
    y = backbone(inputs)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(y)
    return keras.Model(inputs, outputs, name="outer")


def sequential_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, name="c"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="fc"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="seq",
    )


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)
