"""Callbacks that drive and log pruning during `fit`.

`UpdatePruningStep` starts the pruning step of every `PruneLowMagnitude` layer and leaves
exact zeros in the pruned weights at the end of each epoch; `PruningSummaries` logs each
pruned weight's sparsity and threshold for TensorBoard, in tfmot's layout.
"""

from __future__ import annotations

import numbers
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from kerasft._summaries import write_scalar
from kerasft.pruning.wrapper import PruneLowMagnitude, find_wrappers

__all__ = ["UpdatePruningStep", "PruningSummaries"]


class UpdatePruningStep(keras.callbacks.Callback):
    """Drive the pruning masks of a Keras 3 model during `fit`.

    Required when training a model from `prune_low_magnitude`: without it the first
    training step fails. At the start of training it sets each layer's pruning step to
    0 if the model is fresh (a model loaded mid-pruning keeps its step and resumes the
    schedule). Steps are then counted and masks updated inside the compiled train
    step, so the callback itself costs nothing per batch. At the end of every epoch
    (and of training) it assigns ``weight * mask`` to the pruned weights, so the model
    saved afterwards holds exact zeros, as tfmot's callback does.

    Example:

    >>> callback = UpdatePruningStep()
    >>> # pruned.fit(x, y, epochs=2, callbacks=[callback])
    """

    def __init__(self):
        super().__init__()
        self.prunable_layers: list[PruneLowMagnitude] = []

    def on_train_begin(self, logs=None):
        self.prunable_layers = find_wrappers(self.model)
        if not self.prunable_layers:
            warnings.warn(
                f"UpdatePruningStep: model '{self.model.name}' has no PruneLowMagnitude "
                "layer, so the callback does nothing. HINT: pass the model returned by "
                "`prune_low_magnitude()` to `fit`.",
                stacklevel=2,
            )
        for layer in self.prunable_layers:
            if int(layer.pruning_step.numpy()) == -1:
                layer.pruning_step.assign(0)

    def on_epoch_end(self, epoch, logs=None):
        for layer in self.prunable_layers:
            layer.apply_masks()

    def on_train_end(self, logs=None):
        self.on_epoch_end(-1)


class PruningSummaries(keras.callbacks.Callback):
    """Log each pruned weight's sparsity and threshold for TensorBoard.

    At the start of training and at the end of every epoch (or every `update_freq`
    batches), writes scalars ``<mask path>/sparsity`` (fraction of zeros in the mask)
    and ``<threshold path>/threshold`` to event files under ``log_dir/metrics``, stepped
    by the optimizer's iterations: tfmot's tags and layout. Unlike tfmot's callback of
    the same name, it logs pruning only, and needs no `tensorboard` package (which
    `keras.callbacks.TensorBoard` does); for losses and metrics add that callback or
    `kerasft.TensorBoardLogger` with the same `log_dir`.

    Example:

    >>> callbacks = [UpdatePruningStep(), PruningSummaries(log_dir="/tmp/logs")]

    Args:
        log_dir: directory for the event files (``metrics/`` is created inside).
        update_freq: ``"epoch"``, or an int to also log every `update_freq` batches.
            Defaults to `"epoch"`.

    Raises:
        ValueError: if `log_dir` is empty or not a path, or `update_freq` is invalid.
    """

    def __init__(self, log_dir: str | os.PathLike, update_freq: str | int = "epoch"):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(
                f"Argument `log_dir` must be a non-empty path. Received: log_dir={log_dir!r}"
            )
        if update_freq != "epoch" and not (
            isinstance(update_freq, numbers.Integral)
            and not isinstance(update_freq, bool)
            and update_freq > 0
        ):
            raise ValueError(
                "Argument `update_freq` must be 'epoch' or a positive int. "
                f"Received: update_freq={update_freq!r}"
            )
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None

    def on_train_begin(self, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        self._log()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            self._log()

    def on_epoch_end(self, epoch, logs=None):
        self._log()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _log(self):
        optimizer = getattr(self.model, "optimizer", None)
        step = int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer else 0
        with self._writer.as_default():
            for layer in find_wrappers(self.model):
                for _, mask, threshold in layer.pruning_vars:
                    sparsity = 1.0 - float(np.mean(mask.numpy()))
                    write_scalar(f"{mask.path}/sparsity", sparsity, step)
                    write_scalar(f"{threshold.path}/threshold", float(threshold.numpy()), step)
        self._writer.flush()
