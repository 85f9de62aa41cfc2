"""Resumable checkpoints of a fine-tuning run, and the hook that writes and reads them.

``RunCheckpoint`` keeps, in one directory, which phases of a :func:`kerasft.finetune`
call are finished (with their weights and history), the best weights seen so far, and a
Keras ``BackupAndRestore`` backup of the phase in progress (weights, optimizer state,
epoch, and the logs of its epochs). Started again with the same call, the run skips
finished phases and continues the interrupted one where it stopped, with the phase's
own trainable set. Every file is written beside its final name and renamed into place,
so a kill at any moment leaves either the previous state or the new one. A run holds a
lock on the directory (a second process on it is refused), and a directory written by a
call with other data or other training options is refused (:func:`run_fingerprint`).
:class:`Checkpoint` is the engine hook.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
import weakref
import zipfile
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from kerasft import _keras_compat as compat
from kerasft._fileio import atomic_file, drop_group_other_write
from kerasft.engine.hooks import Hook
from kerasft.engine.result import PhaseResult

if TYPE_CHECKING:
    from kerasft.engine.runner import Run

__all__ = ["RunCheckpoint", "Checkpoint", "run_fingerprint", "CheckpointInUseError"]

_STATE = "run.json"
_BEST = "best_weights.npz"
_LOCK = ".lock"
_EPOCH_LOGS = "epoch_logs.json"
# Keywords of finetune that do not change what is trained: where it is logged, how fast
# it runs, whether the model is copied first.
# Callbacks are left out: a resumed run may watch itself differently (a progress bar, a
# logger, TensorBoard) and is still the same run.
_NOT_TRAINING = frozenset(
    {
        "callbacks",
        "verbose",
        "checkpoint_dir",
        "tensorboard",
        "copy",
        "safe_mode",
        "feature_store",
        "cache_features",
        "cache_budget",
        "jit_compile",
        "steps_per_execution",
        "distribute",
    }
)
_DIGEST_SAMPLE = 1 << 16


class CheckpointInUseError(RuntimeError):
    """Another process is running on the same ``checkpoint_dir``."""


def _save_arrays(path: str, arrays: list[np.ndarray]) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, *arrays)


def _damaged(path: str, error: Exception, directory: str) -> ValueError:
    return ValueError(
        f"Argument `checkpoint_dir={directory!r}`: {path!r} is damaged or was not written by "
        f"kerasft ({type(error).__name__}: {str(error).strip()[:200]}). HINT: delete the "
        "directory to start the run over, or use a new one."
    )


def _load_arrays(path: str, directory: str = "") -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as blob:
            return [blob[f"arr_{i}"] for i in range(len(blob.files))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise _damaged(path, e, directory or os.path.dirname(path)) from None


def _read_json(path: str, directory: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise _damaged(path, e, directory) from None


# -------------------------------------------------------------------------- fingerprint


def run_fingerprint(run: Run) -> dict[str, Any]:
    """What makes a run the same run: a JSON-able dict, compared before resuming.

    The model (name, parameter count and a digest of its weights), the data (a digest of
    the training and validation examples and labels when they are in memory; their
    counts for a streamed pipeline), the resolved rates and phases, and every ``finetune``
    keyword that changes training (``loss``, ``label_smoothing``, ``class_weight``,
    ``augment``...; not ``callbacks``, ``verbose``, ``checkpoint_dir`` or speed options). Each is a
    top-level key, so a refusal can name what changed.
    """
    data = run.data
    fingerprint = {
        "model": run.model.name,
        "params": int(run.model.count_params()),
        "weights": _digest(keras.ops.convert_to_numpy(v) for v in run.model.weights),
        "data": _data_digest(data),
        "n_train": int(data.n_train),
        "n_validation": int(data.n_validation),
        "phases": [[p.name, p.epochs] for p in run.plan.phases],
        "lr": _rates(run)[0],
        "finetune_lr": _rates(run)[1],
        "num_classes": run.task.num_classes,
    }
    for key, value in sorted(run.options.keywords().items()):
        if key not in _NOT_TRAINING and key not in fingerprint:
            fingerprint[key] = _describe(value)
    return json.loads(json.dumps(fingerprint, default=str))


def _digest(arrays: Any) -> str:
    h = hashlib.blake2b(digest_size=12)
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        if a.dtype.kind in "USO":
            h.update("\x00".join(map(str, a.ravel().tolist())).encode("utf-8", "surrogatepass"))
            continue
        flat = np.ascontiguousarray(a).reshape(-1)
        if flat.size > _DIGEST_SAMPLE:  # large weights: a strided sample and the sum
            h.update(np.float64(flat.sum(dtype=np.float64)).tobytes())
            flat = flat[:: flat.size // _DIGEST_SAMPLE][:_DIGEST_SAMPLE]
        h.update(flat.tobytes())
    return h.hexdigest()


def _data_digest(data: Any) -> str | None:
    if not data.in_memory or data.arrays is None:
        return None  # a streamed pipeline: only its counts are compared
    x, y = data.arrays
    parts = list(keras.tree.flatten(x)) + [y]
    if data.validation is not None:
        for batch in data.validation:
            parts += [np.asarray(t) for t in keras.tree.flatten(batch)]
    # Every value counts (a corrected label is one changed number): hash all of it.
    h = hashlib.blake2b(digest_size=12)
    for a in parts:
        a = np.asarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(
            "\x00".join(map(str, a.ravel().tolist())).encode()
            if a.dtype.kind in "USO"
            else np.ascontiguousarray(a).tobytes()
        )
    return h.hexdigest()


def _describe(value: Any) -> Any:
    """A JSON value that changes when an option's meaning changes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if (
        isinstance(value, (np.ndarray, keras.Variable))
        or hasattr(value, "shape")
        and hasattr(value, "dtype")
    ):
        return {"array": _digest([keras.ops.convert_to_numpy(value)])}
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    get_config = getattr(value, "get_config", None)
    if callable(get_config):  # losses, layers, schedules, callbacks
        try:
            return {
                "class": type(value).__qualname__,
                "config": json.loads(json.dumps(get_config(), default=str)),
            }
        except Exception:  # a config that cannot be read: the class says enough
            return {"class": type(value).__qualname__}
    if callable(value):
        return (
            f"{getattr(value, '__module__', '')}."
            f"{getattr(value, '__qualname__', type(value).__qualname__)}"
        )
    return type(value).__qualname__


# --------------------------------------------------------------------------------- lock


class _DirectoryLock:
    """An exclusive ``flock`` on ``directory/.lock``, released when the process ends.

    A second process is refused. Within one process a new run takes the lock over: the
    earlier run ended (maybe with an exception, before it could release it).
    """

    _held: dict[str, _DirectoryLock] = {}

    def __init__(self, directory: str):
        self.path = os.path.join(directory, _LOCK)
        earlier = self._held.pop(self.path, None)
        if earlier is not None:
            earlier.finalizer.detach()
            self.fd = earlier.fd
        else:
            self.fd = self._acquire()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        self._held[self.path] = self
        self.finalizer = weakref.finalize(self, os.close, self.fd)

    def _acquire(self) -> int:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise CheckpointInUseError(
                f"Argument `checkpoint_dir={os.path.dirname(self.path)!r}` is in use by another "
                f"run (process {holder}). Two runs on one directory would overwrite each other's "
                "state. HINT: wait for that run to finish, or give this one its own directory."
            ) from None
        return fd

    def release(self) -> None:
        if self._held.get(self.path) is self:
            del self._held[self.path]
        self.finalizer()  # closing the descriptor releases the flock


# --------------------------------------------------------------------------- directory


class RunCheckpoint:
    """The checkpoint directory of one ``finetune`` call (see the module docstring).

    Args:
        directory: where the state lives; created when missing.
        fingerprint: JSON-able description of the call (:func:`run_fingerprint`). A
            directory written by a different call (other data, recipe, options,
            model...) is refused rather than resumed into the wrong run.

    Raises:
        CheckpointInUseError: another process runs on ``directory``.
        ValueError: ``directory`` is a file, holds another run, or holds damaged files.
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
        self.lock = _DirectoryLock(self.directory)
        self.state: dict[str, Any] = {"fingerprint": self.fingerprint, "phases": {}, "best": None}
        try:
            self._read_state()
        except BaseException:
            self.lock.release()
            raise

    def _read_state(self) -> None:
        path = os.path.join(self.directory, _STATE)
        if not os.path.exists(path):
            return
        state = _read_json(path, self.directory)
        saved = state.get("fingerprint") if isinstance(state, dict) else None
        if not isinstance(saved, dict) or not isinstance(state.get("phases"), dict):
            raise _damaged(path, ValueError("no fingerprint or phases"), self.directory)
        if saved != self.fingerprint:
            differ = sorted(
                k
                for k in set(self.fingerprint) | set(saved)
                if self.fingerprint.get(k) != saved.get(k)
            )
            raise ValueError(
                f"Argument `checkpoint_dir={self.directory!r}` holds the state of a different run "
                f"(it differs in {differ}). Use a new directory, or delete this one to start over."
            )
        self.state = state

    def close(self) -> None:
        """Release the directory for other runs."""
        self.lock.release()

    def backup_dir(self, index: int) -> str:
        return os.path.join(self.directory, f"phase-{index}")

    def completed(self, index: int) -> tuple[dict[str, Any], list[np.ndarray], str] | None:
        """Phase ``index``'s saved result, end-of-phase weights and their file, if it finished."""
        entry = self.state["phases"].get(str(index))
        if entry is None:
            return None
        path = os.path.join(self.directory, entry["weights"])
        return entry, _load_arrays(path, self.directory), path

    def in_progress(self, index: int) -> int | None:
        """Epochs already done of an interrupted phase ``index`` (``None``: no backup)."""
        meta = os.path.join(self.backup_dir(index), "training_metadata.json")
        if not os.path.exists(meta):
            return None
        record = _read_json(meta, self.directory)
        try:
            return int(record.get("epoch", 0))
        except (AttributeError, TypeError, ValueError) as e:
            raise _damaged(meta, e, self.directory) from None

    def epoch_logs(self, index: int) -> dict[int, dict[str, float]]:
        """The logs of each finished epoch of phase ``index``, kept across a resume."""
        path = os.path.join(self.backup_dir(index), _EPOCH_LOGS)
        if not os.path.exists(path):
            return {}
        return {int(k): v for k, v in _read_json(path, self.directory).items()}

    def callbacks(self, index: int, best: Any) -> list[keras.callbacks.Callback]:
        """Callbacks that back up phase ``index`` every epoch and persist ``best``."""
        return [
            _Backup(self.backup_dir(index), self.directory),
            _UnmergedAdapters(self.backup_dir(index)),
            _EpochLogs(self, index),
            _PersistBest(self, best),
        ]

    def restore_best(self, best: Any) -> None:
        """Load the best weights and score saved by an earlier, interrupted run into ``best``."""
        saved = self.state.get("best")
        if saved and os.path.exists(os.path.join(self.directory, _BEST)):
            best.best = saved["score"]
            best.best_phase = saved["phase"]
            best.best_logged = saved.get("logged", best.sign * saved["score"])
            best.best_weights = _load_arrays(os.path.join(self.directory, _BEST), self.directory)

    def save_best(self, best: Any) -> None:
        _save_arrays(os.path.join(self.directory, _BEST), best.best_weights)
        self.state["best"] = {
            "score": best.best,
            "phase": best.best_phase,
            "logged": best.best_logged,
        }
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


class _Backup(compat.BackupAndRestore):
    """Keras's backup of the phase in progress; a backup it cannot load names its directory."""

    def __init__(self, backup_dir: str, directory: str):
        super().__init__(
            backup_dir, save_freq="epoch", double_checkpoint=True, delete_checkpoint=False
        )
        self.checkpoint_dir = directory
        self.location = backup_dir

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            raise _damaged(self.location, e, self.checkpoint_dir) from None


class _EpochLogs(keras.callbacks.Callback):
    """Keep each epoch's logs of the phase in progress beside its backup.

    Keras's history after a resume starts at the resumed epoch; with these the phase's
    result counts all its epochs.
    """

    def __init__(self, checkpoint: RunCheckpoint, index: int):
        super().__init__()
        self.checkpoint, self.index = checkpoint, index

    def on_epoch_end(self, epoch, logs=None):
        saved = self.checkpoint.epoch_logs(self.index)
        saved[int(epoch)] = {
            k: float(v)
            for k, v in (logs or {}).items()
            if np.ndim(v) == 0 and not isinstance(v, str)
        }
        path = os.path.join(self.checkpoint.backup_dir(self.index), _EPOCH_LOGS)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in sorted(saved.items())}, f)


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
        return [
            v
            for layer in compat.flatten_layers(self.model)
            if getattr(layer, "lora_enabled", False)
            for v in layer.weights
        ]

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
            arrays = _load_arrays(path, self.directory)
            if int(arrays[0]) == epoch and len(arrays) == len(variables) + 1:
                for v, value in zip(variables, arrays[1:]):
                    v.assign(value)
                return
        warnings.warn(
            f"No unmerged adapter backup for epoch {epoch} in {self.directory!r}: "
            "the resumed phase starts from the merged kernels with zero adapters.",
            RuntimeWarning,
            stacklevel=2,
        )

    def on_epoch_end(self, epoch, logs=None):
        variables = self._variables()
        if not variables:
            return
        if os.path.exists(self.paths[0]):
            os.replace(self.paths[0], self.paths[1])
        _save_arrays(
            self.paths[0],
            [np.array(epoch + 1)] + [keras.ops.convert_to_numpy(v) for v in variables],
        )


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

    A directory written by a different call is refused (its fingerprint differs), and so
    is one another process is running on.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = directory
        self.checkpoint: RunCheckpoint | None = None
        self._resumed_at: int | None = None

    def run_start(self, run: Run) -> None:
        self.checkpoint = RunCheckpoint(self.directory, run_fingerprint(run))
        self.checkpoint.restore_best(run.best)

    def resume(self, run: Run) -> PhaseResult | None:
        done = self.checkpoint.completed(run.phase_index)
        if done is None:
            return None
        saved, weights, path = done
        try:
            run.model.set_weights(weights)
        except ValueError as e:  # a foreign file of the right name
            raise _damaged(path, e, self.checkpoint.directory) from None
        run.log(
            f"kerasft phase {run.phase_index + 1}/{len(run.plan.phases)} '{run.phase.name}': "
            f"finished in an earlier run (checkpoint {self.checkpoint.directory})"
        )
        return PhaseResult(**saved["result"])

    def callbacks(self, run: Run) -> list[keras.callbacks.Callback]:
        self._resumed_at = self.checkpoint.in_progress(run.phase_index)
        if self._resumed_at is not None:
            run.log(
                f"kerasft: resuming phase '{run.phase.name}' after epoch {self._resumed_at} "
                f"from {self.checkpoint.backup_dir(run.phase_index)}"
            )
        return self.checkpoint.callbacks(run.phase_index, run.best)

    def phase_end(self, run: Run, result: PhaseResult) -> None:
        if self._resumed_at:
            # Keras's history starts at the resumed epoch: count the phase's earlier epochs too.
            logs = self.checkpoint.epoch_logs(run.phase_index)
            if sorted(logs) == list(range(len(logs))) and len(logs) >= result.epochs:
                result.history = {
                    k: [logs[e].get(k) for e in range(len(logs))] for k in result.history
                }
                result.epochs = len(logs)
        self._resumed_at = None
        if run.stop_reason is None:
            self.checkpoint.finish_phase(
                run.phase_index, {"result": dataclasses.asdict(result)}, run.model.get_weights()
            )

    def run_end(self, run: Run) -> None:
        self.checkpoint.close()


def _rates(run: Run) -> tuple[float, float]:
    """The run's head and body rates, the LR finder's suggestion resolved."""
    options = run.options.recipe
    lr = float(run.lr_find.suggestions["valley"]) if options.finds_lr else float(options.lr)
    return lr, float(options.finetune_lr) if options.finetune_lr is not None else lr / 10
