"""The pooling layer of kerasft's text classifiers, apart from what builds them.

:mod:`kerasft.pooling` (no KerasHub import) and :mod:`kerasft._hub_tasks` (the KerasHub
task class) both use it, so imports between those two go one way: ``pooling`` imports
``_hub_tasks``, when it first builds a KerasHub task.
"""

from __future__ import annotations

import keras

__all__ = ["MaskedMeanPooling", "POOLINGS"]

POOLINGS = ("cls", "mean")


@keras.saving.register_keras_serializable(package="kerasft")
class MaskedMeanPooling(keras.layers.Layer):
    """The mean of a sequence's vectors over its unpadded positions.

    Example:

    >>> import numpy as np
    >>> x = np.array([[[1.0], [3.0], [100.0]]]); mask = np.array([[1, 1, 0]])
    >>> float(MaskedMeanPooling()(x, mask)[0, 0])
    2.0
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.expand_dims(keras.ops.cast(padding_mask, sequence.dtype), -1)
        total = keras.ops.sum(sequence * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, padding_mask_shape=None):
        return (sequence_shape[0], sequence_shape[-1])
