"""Data augmentation for fine-tuning, in the input pipeline, from Keras's own layers.

``finetune(regularization=RegularizationConfig(augment=...))`` takes a preset or a list
of Keras preprocessing layers and applies them to training batches in the ``tf.data``
pipeline, never inside the model (the exported model does not augment). Presets:

- ``"light"``: small random zooms and translations, a small rotation (and horizontal
  flips with ``"light+flip"``: digits and text in images are not flip-invariant);
- ``"randaugment"``: ``keras.layers.RandAugment``;
- ``"mixup"`` / ``"cutmix"``: ``keras.layers.MixUp`` / ``CutMix`` on images and one-hot labels;
- ``"feature_mixup"``: MixUp of whatever the trainable part of the network takes: the
  cached features of the frozen bottom when they are cached, the inputs otherwise. It
  keeps feature caching possible, which input augmentation does not (the frozen bottom
  would see new inputs every epoch).

Input augmentation applies to images only (inputs of shape ``(height, width,
channels)``); anything else is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

__all__ = ["PRESETS", "Augmentation", "build_augmentation", "check_augment", "mixup_batch"]

PRESETS = ("light", "light+flip", "randaugment", "mixup", "cutmix", "feature_mixup")
_MIXUP_ALPHA = 0.2


@dataclass
class Augmentation:
    """What happens to a training batch.

    Attributes:
        name: the preset, or ``"layers"`` for the user's list.
        layers: Keras preprocessing layers applied to image batches.
        mix: ``"mixup"``, ``"cutmix"``, ``"feature_mixup"`` or ``None``.
        one_hot: whether labels must be one-hot (mixing blends labels).
        seed: the seed of the random layers.
    """

    name: str
    layers: list[keras.layers.Layer] = field(default_factory=list)
    mix: str | None = None
    one_hot: bool = False
    seed: int = 0

    @property
    def on_inputs(self) -> bool:
        """Whether the inputs change every epoch (so features below the cut cannot be cached)."""
        return bool(self.layers) or self.mix in ("mixup", "cutmix")

    def inputs(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Augment one batch of (images, labels); a ``tf.data`` map function."""
        for layer in self.layers:
            x = layer(x, training=True)
        if self.mix in ("mixup", "cutmix"):
            out = self.layers_mix({"images": x, "labels": tf.cast(y, tf.float32)}, training=True)
            return out["images"], out["labels"]
        if self.mix == "feature_mixup":
            return mixup_batch(x, y, _MIXUP_ALPHA, self.seed)
        return x, y

    def features(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Augment one batch of cached features: only feature-space MixUp applies there."""
        if self.mix == "feature_mixup":
            return mixup_batch(x, y, _MIXUP_ALPHA, self.seed)
        return x, y

    def __post_init__(self):
        if self.mix == "mixup":
            self.layers_mix = keras.layers.MixUp(alpha=_MIXUP_ALPHA, seed=self.seed)
        elif self.mix == "cutmix":
            self.layers_mix = keras.layers.CutMix(seed=self.seed)


def mixup_batch(x: Any, y: Any, alpha: float, seed: int) -> tuple[Any, Any]:
    """MixUp inside a batch: each example blended with a shuffled partner, labels too.

    Works on any structure of float tensors (images, cached features of several tensors).
    """
    y = tf.cast(y, tf.float32)
    n = tf.shape(y)[0]
    gamma = tf.random.gamma([n], alpha, seed=seed)
    weight = gamma / (gamma + tf.random.gamma([n], alpha, seed=seed + 1))
    order = tf.random.shuffle(tf.range(n), seed=seed + 2)

    def blend(t):
        if not t.dtype.is_floating:
            return t
        w = tf.reshape(tf.cast(weight, t.dtype), [-1] + [1] * (len(t.shape) - 1))
        return w * t + (1 - w) * tf.gather(t, order)

    return tf.nest.map_structure(blend, x), blend(y)


def _check_images(signature: Any, name: str) -> None:
    if signature is None:
        return
    if (
        signature.structure != "single"
        or len(signature.shapes[0]) != 3
        or signature.dtypes[0] == "string"
    ):
        raise ValueError(
            f"Argument `augment={name!r}` augments images, but the model takes "
            f"[{signature.describe()}] (images are inputs of shape (height, width, channels)). "
            "HINT: pass augment=None, or augment='feature_mixup', which mixes whatever the "
            "trainable layers take."
        )


def build_augmentation(
    augment: Any, *, signature: Any, value_range: tuple[float, float], seed: int, task: str
) -> Augmentation | None:
    """The :class:`Augmentation` for ``RegularizationConfig(augment=...)``, or ``None``.

    Raises:
        ValueError: an unknown preset, a non-layer in a list, input augmentation for a
            model whose input is not an image, mixing for a regression task.
    """
    check_augment(augment)
    if augment is None:
        return None
    if isinstance(augment, str):
        mix = augment if augment in ("mixup", "cutmix", "feature_mixup") else None
        if mix is not None and task == "regression":
            raise ValueError(
                f"Argument `augment={augment!r}` mixes labels, which regression targets are not. "
                "HINT: pass augment='light' or None."
            )
        if augment != "feature_mixup":
            _check_images(signature, augment)
        layers = _preset_layers(augment, value_range, seed)
        return Augmentation(
            augment, layers, mix, one_hot=mix is not None and task == "classification", seed=seed
        )
    _check_images(signature, "[...]")
    return Augmentation("layers", list(augment), seed=seed)


def check_augment(augment: Any) -> None:
    """Check the value of ``finetune``'s ``augment`` alone (the model and task are checked later).

    Raises:
        ValueError: neither ``None``, a preset nor a non-empty list of Keras layers.
    """
    if augment is None or (isinstance(augment, str) and augment in PRESETS):
        return
    if (
        not isinstance(augment, str)
        and isinstance(augment, Sequence)
        and augment
        and all(isinstance(a, keras.layers.Layer) for a in augment)
    ):
        return
    raise ValueError(
        f"Argument `augment` must be None, one of {list(PRESETS)} or a non-empty list of Keras "
        f"preprocessing layers. Received: augment={augment!r}"
    )


def _preset_layers(
    name: str, value_range: tuple[float, float], seed: int
) -> list[keras.layers.Layer]:
    if name in ("light", "light+flip"):
        layers = [
            keras.layers.RandomZoom(0.1, seed=seed),
            keras.layers.RandomTranslation(0.08, 0.08, seed=seed + 1),
            keras.layers.RandomRotation(0.04, seed=seed + 2),
        ]
        if name == "light+flip":
            layers.insert(0, keras.layers.RandomFlip("horizontal", seed=seed + 3))
        return layers
    if name == "randaugment":
        return [keras.layers.RandAugment(value_range=value_range, seed=seed)]
    return []
