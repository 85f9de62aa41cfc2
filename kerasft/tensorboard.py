"""TensorBoard logging of a multi-phase fine-tuning run, on one continuous time axis.

`keras.callbacks.TensorBoard` numbers epochs from 0 in every `fit` call, so the phases
of a fine-tuning run would be drawn on top of each other. `TensorBoardLogger` counts
epochs and optimizer steps across phases instead, and marks where each phase begins.
`kerasft.finetune(..., run=kerasft.RunConfig(tensorboard=DIR))` uses it; it also works
on its own around several `fit` calls.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft._fileio import drop_group_other_write
from kerasft._summaries import write_scalar, write_text
from kerasft.pruning.report import sparsity_report
from kerasft.pruning.wrapper import PruneLowMagnitude

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(keras.callbacks.Callback):
    """Log losses, metrics, learning rate and phase boundaries across training phases.

    Written in the layout `keras.callbacks.TensorBoard` uses, so TensorBoard overlays
    training and validation curves:

    - `log_dir/train`: `epoch_<name>` for every training loss and metric, and
      `epoch_learning_rate` (one `epoch_learning_rate_<optimizer>` per optimizer of a
      multi-optimizer), stepped by the epoch number counted across phases (from 0);
      `phase` (1 for the first phase, 2 for the second...) at every epoch.
    - `log_dir/train`, while a `kerasft.pruning` wrapper is in the model:
      `sparsity/<layer>` and `sparsity/total` (fraction of zeros in the prunable
      weights, from `kerasft.pruning.sparsity_report`) at every epoch.
    - `log_dir/validation`: `epoch_<name>` for every `val_<name>` in the logs.
    - `log_dir/train`, text `phases`: one line per phase, written at the epoch where it
      begins: name, first epoch, first optimizer step, and what `begin_phase` was told.

    `phase_steps` (a dict phase name -> first global optimizer step) and `phase_epochs`
    (phase name -> first global epoch) are kept as attributes. Other summaries, such as
    per-step pruning thresholds from `kerasft.pruning.PruningSummaries`, belong in
    sibling directories (`log_dir/pruning`) so that the scalars here keep one value per
    epoch.

    Example:

    ```python
    logger = TensorBoardLogger("logs/run1")
    logger.begin_phase("head")
    model.fit(x, y, epochs=2, callbacks=[logger])
    logger.begin_phase("finetune")
    model.fit(x, y, epochs=3, callbacks=[logger])  # epochs 2, 3, 4 in TensorBoard
    logger.close()
    ```

    Args:
        log_dir: directory for the event files; created when missing.

    Raises:
        ValueError: if `log_dir` is not a path, or is an existing file.
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(
                "Argument `log_dir` (`tensorboard=` of kerasft.finetune) must be a directory "
                f"path. Received: log_dir={log_dir!r}"
            )
        log_dir = os.path.abspath(os.fspath(log_dir))
        if os.path.isfile(log_dir):
            raise ValueError(
                "Argument `log_dir` (`tensorboard=` of kerasft.finetune) must be a directory "
                f"path, but {log_dir!r} is an existing file."
            )
        self.log_dir = log_dir
        self.phase: str | None = None
        self.phase_epochs: dict[str, int] = {}
        self.phase_steps: dict[str, int] = {}
        self.epoch = 0  # epochs completed, over all phases
        self._step_offset = 0  # optimizer steps of the finished phases
        self._pending: str | None = None  # description of a phase not yet begun in fit
        self._writers: dict[str, Any] = {}

    def begin_phase(self, name: str, **details: Any) -> None:
        """Start a new phase; the next `fit` call's epochs belong to it.

        Args:
            name: phase name, shown in TensorBoard.
            **details: written next to the phase name, e.g. `epochs=10, lr=1e-4`.
        """
        self.phase = self._unique(str(name))
        text = ", ".join(f"{k}={v}" for k, v in details.items())
        self._pending = text

    def on_train_begin(self, logs=None):
        if self._pending is None:
            # Used without begin_phase: every fit call is a phase of its own.
            self.phase = self._unique(f"fit_{len(self.phase_epochs) + 1}")
            self._pending = ""
        index = len(self.phase_epochs) + 1
        self.phase_epochs[self.phase] = self.epoch
        self.phase_steps[self.phase] = self._step_offset
        line = (
            f"phase {index} '{self.phase}' begins at epoch {self.epoch}, "
            f"optimizer step {self._step_offset}"
        )
        if self._pending:
            line += f": {self._pending}"
        with self._writer("train").as_default():
            write_text("phases", line, step=self.epoch)
        self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        validation = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if "learning_rate" not in train:
            train.update(self._learning_rates())
        train["phase"] = len(self.phase_epochs)
        train.update(self._sparsity())
        for split, values in (("train", train), ("validation", validation)):
            if not values:
                continue
            with self._writer(split).as_default():
                for key, value in values.items():
                    value = _scalar(value)
                    if value is not None:
                        name = (
                            key if key == "phase" or key.startswith("sparsity/") else f"epoch_{key}"
                        )
                        write_scalar(name, value, step=self.epoch)
            self._writers[split].flush()
        self.epoch += 1

    def on_train_end(self, logs=None):
        self._step_offset += self._iterations()
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close the event files. Logging again reopens them."""
        for split, writer in self._writers.items():
            writer.close()
            drop_group_other_write(os.path.join(self.log_dir, split))
        drop_group_other_write(self.log_dir, recursive=False)
        self._writers = {}

    # -----------------------------------------------------------------------------------

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self.phase_epochs:
            n += 1
            candidate = f"{name}_{n}"
        return candidate

    def _writer(self, split: str):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.log_dir, split))
        return self._writers[split]

    def _optimizer(self):
        # A LossScaleOptimizer wraps the one that has the learning rate.
        return compat.inner_optimizer(getattr(self.model, "optimizer", None))

    def _iterations(self) -> int:
        optimizer = self._optimizer()
        if optimizer is None or not hasattr(optimizer, "iterations"):
            return 0
        return int(keras.ops.convert_to_numpy(optimizer.iterations))

    def _sparsity(self) -> dict[str, float]:
        """`sparsity/<layer>` and `sparsity/total` while the model is being pruned."""
        if not any(
            isinstance(layer, PruneLowMagnitude) for layer in compat.flatten_layers(self.model)
        ):
            return {}
        report = sparsity_report(self.model)
        values = {f"sparsity/{name}": value for name, value in report.layers.items()}
        values["sparsity/total"] = report.total
        return values

    def _learning_rates(self) -> dict[str, float]:
        optimizer = self._optimizer()
        if optimizer is None:
            return {}
        if hasattr(optimizer, "optimizers"):  # several optimizers, one per layer group
            rates = {}
            for opt in optimizer.optimizers:
                value = _scalar(getattr(opt, "learning_rate", None))
                if value is not None:
                    rates[f"learning_rate_{opt.name}"] = value
            return rates
        value = _scalar(getattr(optimizer, "learning_rate", None))
        return {} if value is None else {"learning_rate": value}


def _scalar(value: Any) -> float | None:
    """`value` as a float, or `None` when it is not one number."""
    if value is None:
        return None
    try:
        array = np.asarray(keras.ops.convert_to_numpy(value), dtype="float64")
    except (TypeError, ValueError):
        return None
    return float(array.reshape(-1)[0]) if array.size == 1 else None
