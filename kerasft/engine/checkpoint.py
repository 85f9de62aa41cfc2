"""Resumable checkpoints of a fine-tuning run, and the hook that writes and reads them.

``RunCheckpoint`` keeps, in one directory, which phases of a :func:`kerasft.finetune`
call are finished (with their weights and history), the best weights seen so far, and a
Keras ``BackupAndRestore`` backup of the phase in progress (weights, optimizer state,
epoch). Started again with the same call, the run skips finished phases and continues
the interrupted one where it stopped, with the phase's own trainable set. Every file
is written beside its final name and renamed into place, so a kill at any moment leaves
either the previous state or the new one. :class:`Checkpoint` is the engine hook.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kerasft import _keras_compat as compat
from kerasft._fileio import atomic_file, drop_group_other_write
from kerasft.engine.hooks import Hook
from kerasft.engine.result import PhaseResult

if TYPE_CHECKING:
    from kerasft.engine.runner import Run

__all__ = ["RunCheckpoint", "Checkpoint"]

_STATE = "run.json"
_BEST = "best_weights.npz"


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
            compat.BackupAndRestore(self.backup_dir(index), save_freq="epoch",
                                    double_checkpoint=True, delete_checkpoint=False),
            _UnmergedAdapters(self.backup_dir(index)),
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


class _UnmergedAdapters(keras.callbacks.Callback):
    """Back up the layers that carry Keras's in-place LoRA as they are, not merged.

    Keras saves such a layer as its merged kernel and, loading it, sets both LoRA factors
    to zero; with ``A = B = 0`` no gradient reaches either again, so an adapter phase
    resumed from Keras's backup alone would train nothing. This callback writes those
    layers' variables (kernel, factors, DoRA magnitude) with the epoch they belong to
    beside the backup, and puts them back after Keras has restored it (it runs after
    ``BackupAndRestore`` in the callback list). The previous file is kept too, as Keras
    keeps its previous backup, and the one whose epoch matches the restored backup wins.
    """

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.paths = [os.path.join(directory, n) for n in ("adapters.npz", "adapters-prev.npz")]

    def _variables(self) -> list[Any]:
        return [v for layer in compat.flatten_layers(self.model)
                if getattr(layer, "lora_enabled", False) for v in layer.weights]

    def on_train_begin(self, logs=None):
        variables = self._variables()
        meta = os.path.join(self.directory, "training_metadata.json")
        if not variables or not os.path.exists(meta):
            return
        with open(meta) as f:
            epoch = int(json.load(f)["epoch"])
        for path in self.paths:
            if not os.path.exists(path):
                continue
            arrays = _load_arrays(path)
            if int(arrays[0]) == epoch and len(arrays) == len(variables) + 1:
                for v, value in zip(variables, arrays[1:]):
                    v.assign(value)
                return
        warnings.warn(f"No unmerged adapter backup for epoch {epoch} in {self.directory!r}: "
                      "the resumed phase starts from the merged kernels with zero adapters.",
                      RuntimeWarning, stacklevel=2)

    def on_epoch_end(self, epoch, logs=None):
        variables = self._variables()
        if not variables:
            return
        if os.path.exists(self.paths[0]):
            os.replace(self.paths[0], self.paths[1])
        _save_arrays(self.paths[0], [np.array(epoch + 1)] + [keras.ops.convert_to_numpy(v)
                                                             for v in variables])


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


class Checkpoint(Hook):
    """Write the run's state every epoch; resume an interrupted run where it stopped.

    A directory written by a different call is refused (its fingerprint differs).
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = directory
        self.checkpoint: RunCheckpoint | None = None

    def run_start(self, run: Run) -> None:
        o = run.options
        self.checkpoint = RunCheckpoint(self.directory, {
            "model": run.model.name, "params": int(run.model.count_params()), "recipe": str(o.recipe.recipe),
            "phases": [[p.name, p.epochs] for p in run.plan.phases],
            "lr": _rates(run)[0], "finetune_lr": _rates(run)[1],
            "batch_size": o.data.batch_size, "seed": o.data.seed, "n_train": run.data.n_train,
            "num_classes": run.task.num_classes, "unfreeze": str(o.recipe.unfreeze),
            "optimizer": str(o.optimizer.optimizer),
        })
        self.checkpoint.restore_best(run.best)

    def resume(self, run: Run) -> PhaseResult | None:
        done = self.checkpoint.completed(run.phase_index)
        if done is None:
            return None
        saved, weights = done
        run.model.set_weights(weights)
        run.log(f"kerasft phase {run.phase_index + 1}/{len(run.plan.phases)} '{run.phase.name}': finished "
                f"in an earlier run (checkpoint {self.checkpoint.directory})")
        return PhaseResult(**saved["result"])

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        resumed_at = self.checkpoint.in_progress(run.phase_index)
        if resumed_at is not None:
            run.log(f"kerasft: resuming phase '{run.phase.name}' after epoch {resumed_at} "
                    f"from {self.checkpoint.backup_dir(run.phase_index)}")
        return self.checkpoint.callbacks(run.phase_index, run.best)

    def phase_end(self, run: Run, result: PhaseResult) -> None:
        if run.stop_reason is None:
            self.checkpoint.finish_phase(run.phase_index, {"result": dataclasses.asdict(result)},
                                         run.model.get_weights())


def _rates(run: Run) -> tuple[float, float]:
    """The run's head and body rates, the LR finder's suggestion resolved."""
    options = run.options.recipe
    lr = float(run.lr_find.suggestions["valley"]) if options.finds_lr else float(options.lr)
    return lr, float(options.finetune_lr) if options.finetune_lr is not None else lr / 10
