"""Test-time augmentation: a model's outputs averaged over each image and its flip."""

from __future__ import annotations

import keras

__all__ = ["flip_averaged"]


def flip_averaged(model: keras.Model) -> keras.Model:
    """``model`` whose output is the mean of its outputs on each image and its horizontal flip.

    Raises:
        ValueError: a model whose input is not one image tensor ``(height, width, channels)``.
    """
    inputs = getattr(model, "inputs", None) or []
    if (
        len(inputs) != 1
        or len(inputs[0].shape) != 4
        or getattr(model, "preprocessor", None) is not None
    ):
        raise ValueError(
            "Argument `tta=True` averages over horizontal flips of images, but model "
            f"{model.name!r} does not take one image tensor (batch, height, width, channels). "
            "HINT: pass tta=False."
        )
    image = keras.Input(batch_shape=inputs[0].shape, dtype=inputs[0].dtype, name="image")
    flipped = keras.ops.flip(image, axis=2)  # width, channels last
    return keras.Model(
        image,
        keras.layers.Average(name="tta_mean")([model(image), model(flipped)]),
        name=f"{model.name}_tta",
    )
