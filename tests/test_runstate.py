"""Interrupted and failing runs: resumable checkpoints, kill-and-resume, the NaN guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import kerasft
from kerasft import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One fine-tuning call, run in a child process so that it can be killed for real.
SCRIPT = textwrap.dedent("""
    import json, sys
    import kerasft, keras
    from kerasft import datasets

    class Mark(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            print("BEGIN", len(self.model.trainable_weights), flush=True)
        def on_epoch_end(self, epoch, logs=None):
            print("EPOCH", epoch + 1, flush=True)

    x, y = datasets.load_digits()
    split = datasets.few_shot_split(x, y, shots=30, seed=0)
    result = kerasft.finetune(
        sys.argv[1], (split.x_train, split.y_train), head_epochs=2, epochs=8, lr=1e-3,
        patience=None, checkpoint_dir=sys.argv[2], callbacks=[Mark()], verbose=2,
    )
    print("RESULT", json.dumps({
        "accuracy": result.evaluate((split.x_test, split.y_test))["accuracy"],
        "iterations": int(result.model.optimizer.iterations.numpy()),
        "phases": [p.name for p in result.phases],
    }), flush=True)
""")


def _run(script: str, model: str, ckpt: str, kill_after_epochs: int | None = None):
    """Run the script; with ``kill_after_epochs``, SIGKILL it that many epochs into phase 2."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, model, ckpt],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines, in_phase2, epochs2 = [], False, 0
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "phase 2/2" in line or "phase 1/1" in line:
                in_phase2 = True
            if in_phase2 and "EPOCH " in line:
                epochs2 += 1
                if kill_after_epochs is not None and epochs2 >= kill_after_epochs:
                    proc.send_signal(signal.SIGKILL)
                    break
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, lines


def _result(lines: list[str]) -> dict:
    found = [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("RESULT ")]
    assert found, "\n".join(lines[-30:])
    return found[0]


@pytest.mark.slow
def test_killed_run_resumes_in_phase_two(tmp_path, shipped_model_path):
    ckpt = str(tmp_path / "ckpt")
    code, lines = _run(SCRIPT, shipped_model_path, ckpt, kill_after_epochs=3)
    assert code == -signal.SIGKILL
    assert not any(x.startswith("RESULT") for x in lines)
    state = json.load(open(os.path.join(ckpt, "run.json")))
    assert list(state["phases"]) == ["0"]  # head phase finished, phase 2 not
    meta = json.load(open(os.path.join(ckpt, "phase-1", "training_metadata.json")))
    assert 3 <= meta["epoch"] < 8

    code, resumed = _run(SCRIPT, shipped_model_path, ckpt)
    assert code == 0, "\n".join(resumed[-30:])
    text = "\n".join(resumed)
    assert "'head': finished in an earlier run" in text
    assert f"resuming phase 'finetune' after epoch {meta['epoch']}" in text
    # Only the rest of phase 2 ran, with phase 2's trainable set (the whole model).
    begins = [int(x.split("BEGIN ")[1].split()[0]) for x in resumed if "BEGIN " in x]
    assert len(begins) == 1 and begins[0] > 2
    assert sum("EPOCH " in x for x in resumed) == 8 - meta["epoch"]

    code, straight = _run(SCRIPT, shipped_model_path, str(tmp_path / "other"))
    assert code == 0
    a, b = _result(resumed), _result(straight)
    # The optimizer state came back: its step count continued instead of restarting.
    assert a["iterations"] == b["iterations"]
    assert a["phases"] == b["phases"] == ["head", "finetune"]
    assert b["accuracy"] > 0.85
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.03


def test_finished_checkpoint_is_reused_not_retrained(tmp_path, shipped_model, digits_small):
    x, y = digits_small
    kwargs = dict(head_epochs=1, epochs=1, checkpoint_dir=str(tmp_path / "c"), verbose=0)
    umask = os.umask(0)
    try:
        first = kerasft.finetune(shipped_model, (x, y), **kwargs)
    finally:
        os.umask(umask)
    again = kerasft.finetune(shipped_model, (x, y), **kwargs)
    for u, v in zip(first.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert [p.history for p in again.phases] == [p.history for p in first.phases]
    assert again.best_score == pytest.approx(first.best_score)
    # Nothing written is group- or world-writable, whatever the umask.
    for root, dirs, files in os.walk(tmp_path / "c"):
        for name in [root, *(os.path.join(root, f) for f in dirs + files)]:
            assert not os.stat(name).st_mode & 0o022, name


def test_checkpoint_of_another_run_is_refused(tmp_path, shipped_model, digits_small):
    x, y = digits_small
    ckpt = str(tmp_path / "c")
    kerasft.finetune(shipped_model, (x, y), recipe="head", epochs=1, checkpoint_dir=ckpt, verbose=0)
    with pytest.raises(ValueError, match=r"checkpoint_dir=.*different run.*'recipe'"):
        kerasft.finetune(
            shipped_model, (x, y), recipe="full", epochs=1, checkpoint_dir=ckpt, verbose=0
        )
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`checkpoint_dir` must be a directory"):
        kerasft.finetune(
            shipped_model, (x, y), epochs=1, checkpoint_dir=str(tmp_path / "file"), verbose=0
        )


def _quick(tmp_path, **kwargs):
    return {
        **dict(
            recipe="lp-ft",
            head_epochs=1,
            epochs=1,
            patience=None,
            checkpoint_dir=str(tmp_path / "c"),
            verbose=0,
        ),
        **kwargs,
    }


def test_resume_with_other_data_or_loss_options_is_refused(tmp_path, shipped_model, digits_small):
    # The same checkpoint_dir used to return the old run's weights (0.312 vs 0.904 fresh).
    x, y = digits_small
    kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))
    corrected = y.copy()
    corrected[:3] = (corrected[:3] + 1) % 10  # three labels corrected
    changes = [
        ("data", (x, corrected), {}),
        ("label_smoothing", (x, y), {"label_smoothing": 0.1}),
        ("class_weight", (x, y), {"class_weight": "balanced"}),
        ("loss", (x, y), {"loss": "focal"}),
        ("augment", (x, y), {"augment": "light"}),
    ]
    for name, data, options in changes:
        with pytest.raises(
            ValueError, match=rf"holds the state of a different run \(it differs in .*'{name}'"
        ):
            kerasft.finetune(shipped_model, data, **_quick(tmp_path, **options))


class _FailInPhase2(keras.callbacks.Callback):
    """Raise in the second epoch of phase 2 while ``armed``: the run stops there, as if killed."""

    armed = False

    def on_train_begin(self, logs=None):
        self.fits = getattr(self, "fits", 0) + 1

    def on_epoch_end(self, epoch, logs=None):
        if _FailInPhase2.armed and self.fits == 2 and epoch == 1:
            raise RuntimeError("stopped")


def test_resumed_phase_counts_all_its_epochs(tmp_path, shipped_model, digits_small):
    # result.phases counted only the epochs after the resume.
    x, y = digits_small
    options = _quick(tmp_path, epochs=4)
    _FailInPhase2.armed = True
    try:
        with pytest.raises(RuntimeError, match="stopped"):
            kerasft.finetune(shipped_model, (x, y), callbacks=[_FailInPhase2()], **options)
    finally:
        _FailInPhase2.armed = False
    resumed = kerasft.finetune(shipped_model, (x, y), callbacks=[_FailInPhase2()], **options)
    phase = resumed.phases[1]
    assert phase.epochs == 4 and len(phase.history["loss"]) == 4
    assert all(np.isfinite(phase.history["loss"]))


def test_second_process_on_the_same_checkpoint_is_refused(tmp_path, shipped_model, digits_small):
    # The second run died with a raw h5py error (both wrote the same backup files).
    ckpt = tmp_path / "c"
    ckpt.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True); time.sleep(60)",
            str(ckpt),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        x, y = digits_small
        with pytest.raises(
            RuntimeError, match=rf"is in use by another run \(process {holder.pid}\)"
        ):
            kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))  # free again
    kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))  # and this process released it


def test_damaged_checkpoint_files_name_the_file(tmp_path, shipped_model, digits_small):
    x, y = digits_small
    kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))
    ckpt = tmp_path / "c"
    weights = ckpt / "phase-0.weights.npz"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(
        ValueError, match=r"phase-0.weights.npz' is damaged .*BadZipFile.*delete the directory"
    ):
        kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))
    np.savez(weights, np.zeros(3))  # a foreign file of the right name
    with pytest.raises(
        ValueError, match=r"phase-0.weights.npz' is damaged or was not written by kerasft"
    ):
        kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))
    (ckpt / "run.json").write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=r"run.json' is damaged .*JSONDecodeError"):
        kerasft.finetune(shipped_model, (x, y), **_quick(tmp_path))


def test_nan_loss_stops_and_restores_last_good_weights(shipped_model, digits):
    x, y = digits
    split = datasets.few_shot_split(x, y, shots=30, seed=0)
    # SGD at rate 5 diverges within the first epoch of the body phase.
    with pytest.warns(
        RuntimeWarning,
        match=r"loss became nan at step \d+ of epoch 1 in phase "
        r"'finetune'.*lower learning rate",
    ):
        result = kerasft.finetune(
            shipped_model,
            (split.x_train, split.y_train),
            head_epochs=2,
            epochs=3,
            finetune_lr=5.0,
            optimizer="sgd",
            verbose=0,
        )
    event = result.nan
    assert event.phase == "finetune" and event.epoch == 1 and event.step >= 1
    assert all(np.isfinite(w).all() for w in result.model.get_weights())
    assert result.best_phase == "head"
    assert result.evaluate((split.x_test, split.y_test))["accuracy"] > 0.7


@pytest.mark.slow
def test_killed_gradual_run_resumes_with_the_right_trainable_set(tmp_path, shipped_model_path):
    script = SCRIPT.replace(
        "head_epochs=2, epochs=8,", "recipe='gradual', head_epochs=2, epochs=8,"
    )
    assert script != SCRIPT
    ckpt = str(tmp_path / "ckpt")
    code, _ = _run(script, shipped_model_path, ckpt, kill_after_epochs=5)
    assert code == -signal.SIGKILL
    meta = json.load(open(os.path.join(ckpt, "phase-0", "training_metadata.json")))
    code, resumed = _run(script, shipped_model_path, ckpt)
    assert code == 0, "\n".join(resumed[-30:])
    text = "\n".join(resumed)
    assert f"resuming phase 'gradual' after epoch {meta['epoch']}" in text
    # The unfreezing schedule picks up at the resumed epoch, not at its first phase.
    entered = [x for x in resumed if "GradualUnfreezing entered phase" in x]
    assert entered and "phase 0," not in entered[0]
    code, straight = _run(script, shipped_model_path, str(tmp_path / "other"))
    assert code == 0
    assert abs(_result(resumed)["accuracy"] - _result(straight)["accuracy"]) <= 0.03


LORA_SCRIPT = SCRIPT.replace(
    "head_epochs=2, epochs=8, lr=1e-3,",
    "recipe='lp-lora', lora_rank=4, head_epochs=2, epochs=8, lr=1e-2,",
)


@pytest.mark.slow
def test_killed_lora_run_resumes_in_the_adapter_phase(tmp_path, shipped_model_path):
    ckpt = str(tmp_path / "ckpt")
    code, lines = _run(LORA_SCRIPT, shipped_model_path, ckpt, kill_after_epochs=3)
    assert code == -signal.SIGKILL
    meta = json.load(open(os.path.join(ckpt, "phase-1", "training_metadata.json")))
    assert 3 <= meta["epoch"] < 8
    code, resumed = _run(LORA_SCRIPT, shipped_model_path, ckpt)
    assert code == 0, "\n".join(resumed[-30:])
    assert f"resuming phase 'adapters' after epoch {meta['epoch']}" in "\n".join(resumed)
    # The resumed phase trains the adapters and the head only, as the interrupted one did.
    begins = [int(x.split("BEGIN ")[1].split()[0]) for x in resumed if "BEGIN " in x]
    assert begins == [4]  # lora_kernel_a/b of "fc" + the head's kernel and bias
    code, straight = _run(LORA_SCRIPT, shipped_model_path, str(tmp_path / "other"))
    a, b = _result(resumed), _result(straight)
    assert a["iterations"] == b["iterations"] and a["phases"] == b["phases"] == ["head", "adapters"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.03 and b["accuracy"] > 0.85


class _Interrupt(keras.callbacks.Callback):
    """Stop the run (as a kill would) after ``epochs`` epochs of the adapter phase."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs, self.seen = epochs, 0

    def on_epoch_end(self, epoch, logs=None):
        if any(
            getattr(w, "path", "").endswith("lora_kernel_a") for w in self.model.trainable_weights
        ):
            self.seen += 1
            if self.seen == self.epochs:
                self.adapters = _adapters(self.model)
                raise KeyboardInterrupt("interrupted for the test")


def _adapters(model):
    return {w.path: np.array(w) for w in model.weights if "lora_kernel" in w.path}


def test_resumed_adapter_phase_gets_its_unmerged_adapters_back(
    tmp_path, shipped_model_path, digits_small
):
    # Keras saves an in-place LoRA layer merged and zeroes A and B when loading it; a
    # phase resumed from that alone would have dead adapters (no gradient reaches A or B).
    x, y = digits_small
    kwargs = dict(
        recipe="lp-lora",
        lora_rank=4,
        head_epochs=1,
        epochs=4,
        lr=1e-2,
        patience=None,
        checkpoint_dir=str(tmp_path / "c"),
        verbose=0,
    )
    interrupt = _Interrupt(2)
    with pytest.raises(KeyboardInterrupt):
        kerasft.finetune(shipped_model_path, (x, y), callbacks=[interrupt], **kwargs)
    interrupted = interrupt.adapters  # what the run's backup after epoch 2 holds
    assert len(interrupted) == 2 and all(v.any() for v in interrupted.values())

    restored = {}

    class Peek(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restored.update(_adapters(self.model))

    result = kerasft.finetune(shipped_model_path, (x, y), callbacks=[Peek()], **kwargs)
    assert restored.keys() == interrupted.keys()
    for path, value in interrupted.items():
        np.testing.assert_array_equal(restored[path], value)
    final = _adapters(result.model)
    assert all(v.any() and not np.array_equal(v, interrupted[p]) for p, v in final.items())
