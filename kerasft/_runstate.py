"""State that lets a fine-tuning run survive trouble: resumable checkpoints and a NaN guard.

``RunCheckpoint`` keeps, in one directory, which phases of a :func:`kerasft.finetune`
call are finished (with their weights and history), the best weights seen so far, and a
Keras ``BackupAndRestore`` backup of the phase in progress (weights, optimizer state,
epoch). Started again with the same call, the run skips finished phases and continues
the interrupted one where it stopped, with the phase's own trainable set. Every file
is written beside its final name and renamed into place, so a kill at any moment leaves
either the previous state or the new one.

``NaNGuard`` stops a phase on the first non-finite loss and puts back the weights of the
last epoch that ended with a finite loss.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import keras
import numpy as np

from kerasft._fileio import atomic_file, drop_group_other_write

__all__ = ["NaNGuard", "RunCheckpoint"]

_STATE = "run.json"
_BEST = "best_weights.npz"


class NaNGuard(keras.callbacks.Callback):
    """Stop at the first NaN/inf loss and restore the last weights that gave a finite one.

    Attributes after a run: ``event`` is ``None``, or a dict with the ``phase``, ``epoch``
    (1-based) and ``step`` (1-based within the epoch) where the loss stopped being finite.
    """

    def __init__(self, phase: str = ""):
        super().__init__()
        self.phase = phase
        self.event: dict[str, Any] | None = None
        self._good: list[np.ndarray] | None = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.event = None
        self._good = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.event is None and loss is not None and not math.isfinite(float(loss)):
            self.event = {"phase": self.phase, "epoch": self._epoch + 1, "step": batch + 1,
                          "loss": float(loss)}
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.event is None:
            weights = self.model.get_weights()
            if _finite(weights):
                self._good = weights

    def on_train_end(self, logs=None):
        if self.event is not None and self._good is not None:
            self.model.set_weights(self._good)


def _finite(weights: list[np.ndarray]) -> bool:
    return all(np.all(np.isfinite(w)) for w in weights if np.issubdtype(w.dtype, np.floating))


def _save_arrays(path: str, arrays: list[np.ndarray]) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, *arrays)


def _load_arrays(path: str) -> list[np.ndarray]:
    with np.load(path) as blob:
        return [blob[f"arr_{i}"] for i in range(len(blob.files))]


class RunCheckpoint:
    """The checkpoint directory of one ``finetune`` call (see the module docstring).

    Args:
        directory: where the state lives; created when missing.
        fingerprint: JSON-able description of the call. A directory written by a
            different call (other recipe, epochs, data size, model...) is refused rather
            than resumed into the wrong run.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: dict[str, Any]):
        directory = os.fspath(directory)
        if os.path.isfile(directory):
            raise ValueError(
                f"Argument `checkpoint_dir` must be a directory, but {directory!r} is a file."
            )
        self.directory = os.path.abspath(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        os.makedirs(self.directory, exist_ok=True)
        drop_group_other_write(self.directory, recursive=False)
        self.state: dict[str, Any] = {"fingerprint": self.fingerprint, "phases": {}, "best": None}
        path = os.path.join(self.directory, _STATE)
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            if state.get("fingerprint") != self.fingerprint:
                differ = sorted(k for k in set(self.fingerprint) | set(state.get("fingerprint", {}))
                                if self.fingerprint.get(k) != state.get("fingerprint", {}).get(k))
                raise ValueError(
                    f"Argument `checkpoint_dir={directory!r}` holds the state of a different run "
                    f"(it differs in {differ}). Use a new directory, or delete this one to "
                    "start over."
                )
            self.state = state

    def backup_dir(self, index: int) -> str:
        return os.path.join(self.directory, f"phase-{index}")

    def completed(self, index: int) -> tuple[dict[str, Any], list[np.ndarray]] | None:
        """The saved result and end-of-phase weights of phase ``index``, if it finished."""
        entry = self.state["phases"].get(str(index))
        if entry is None:
            return None
        return entry, _load_arrays(os.path.join(self.directory, entry["weights"]))

    def in_progress(self, index: int) -> int | None:
        """Epochs already done of an interrupted phase ``index`` (``None``: no backup)."""
        meta = os.path.join(self.backup_dir(index), "training_metadata.json")
        if not os.path.exists(meta):
            return None
        with open(meta) as f:
            return int(json.load(f).get("epoch", 0))

    def callbacks(self, index: int, best: Any) -> list[keras.callbacks.Callback]:
        """Callbacks that back up phase ``index`` every epoch and persist ``best``."""
        return [
            _BackupAndRestore(self.backup_dir(index), save_freq="epoch",
                              double_checkpoint=True, delete_checkpoint=False),
            _PersistBest(self, best),
        ]

    def restore_best(self, best: Any) -> None:
        """Load the best weights and score saved by an earlier, interrupted run into ``best``."""
        saved = self.state.get("best")
        if saved and os.path.exists(os.path.join(self.directory, _BEST)):
            best.best = saved["score"]
            best.best_phase = saved["phase"]
            best.best_weights = _load_arrays(os.path.join(self.directory, _BEST))

    def save_best(self, best: Any) -> None:
        _save_arrays(os.path.join(self.directory, _BEST), best.best_weights)
        self.state["best"] = {"score": best.best, "phase": best.best_phase}
        self._write_state()

    def finish_phase(self, index: int, result: dict[str, Any], weights: list[np.ndarray]) -> None:
        name = f"phase-{index}.weights.npz"
        _save_arrays(os.path.join(self.directory, name), weights)
        self.state["phases"][str(index)] = {**result, "weights": name}
        self._write_state()
        shutil.rmtree(self.backup_dir(index), ignore_errors=True)

    def _write_state(self) -> None:
        with atomic_file(os.path.join(self.directory, _STATE)) as tmp:
            with open(tmp, "w") as f:
                json.dump(self.state, f, indent=1)


class _BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's backup, also for a model that only speaks for another one.

    The model trained on cached features is never built itself (its layers belong to the
    full model, which is); Keras's check for ``built`` would refuse it.
    """

    def _load_model(self):
        if os.path.exists(self._weights_path):
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self._weights_path)
        if os.path.exists(self._training_metadata_path):
            with open(self._training_metadata_path) as f:
                self.model._initial_epoch = json.load(f)["epoch"]


class _PersistBest(keras.callbacks.Callback):
    """Write the run's best weights to the checkpoint whenever they improve."""

    def __init__(self, checkpoint: RunCheckpoint, best: Any):
        super().__init__()
        self.checkpoint = checkpoint
        self.best = best
        self._saved = None

    def on_epoch_end(self, epoch, logs=None):
        if self.best.best_weights is not None and self.best.best_weights is not self._saved:
            self.checkpoint.save_best(self.best)
            self._saved = self.best.best_weights
        # Keras's backup honours the umask; keep it writable by its owner only.
        drop_group_other_write(self.checkpoint.directory)
