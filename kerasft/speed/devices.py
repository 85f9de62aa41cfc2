"""Device-dependent speed settings: XLA compilation, mixed precision, steps per execution.

The decisions are pure functions of the device list (``["CPU"]``, ``["CPU", "GPU"]``,
``["CPU", "TPU"]``...) so that they are tested without an accelerator:

- XLA (``jit_compile``) pays on GPU and TPU; on CPU it was 7x slower in our measurements
  (MobileNetV2 at 96 px, TensorFlow 2.21), so ``"auto"`` turns it off there. Models with
  layers that XLA cannot compile fall back to no XLA, with a one-line warning.
- Mixed precision is opt-in: ``"mixed_float16"`` on GPU, ``"mixed_bfloat16"`` on TPU and on
  CPUs with bfloat16 arithmetic (AVX512-BF16 or AMX). The output layer always stays float32
  so that losses and probabilities are computed in full precision.
- ``steps_per_execution`` groups several training steps in one call into TensorFlow; it
  pays when a step is so short that Python's per-step overhead (about a millisecond) is a
  noticeable part of it, which is the case when training a head on cached features.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras

from kerasft import surgery

__all__ = [
    "device_types",
    "choose_jit_compile",
    "xla_blockers",
    "choose_mixed_precision",
    "apply_mixed_precision",
    "choose_steps_per_execution",
    "cpu_supports_bfloat16",
    "resolve_jit_compile",
    "PRECISIONS",
]

PRECISIONS = ("mixed_float16", "mixed_bfloat16", "float32")
_ACCELERATORS = ("GPU", "TPU")


def device_types() -> list[str]:
    """Types of the logical devices TensorFlow sees, e.g. ``["CPU", "GPU"]``."""
    import tensorflow as tf

    return sorted({d.device_type for d in tf.config.list_logical_devices()})


def choose_jit_compile(requested: Any, devices: Sequence[str]) -> tuple[bool, str]:
    """Whether to compile training steps with XLA, and why.

    Example:

    >>> choose_jit_compile("auto", ["CPU"])[0], choose_jit_compile("auto", ["CPU", "GPU"])[0]
    (False, True)

    Args:
        requested: ``True``, ``False`` or ``"auto"`` (XLA on GPU/TPU, not on CPU alone).
        devices: device types, as :func:`device_types` returns them.

    Raises:
        ValueError: ``requested`` is none of ``True``, ``False``, ``"auto"``.
    """
    if requested is True:
        return True, "requested"
    if requested is False:
        return False, "requested"
    if requested != "auto":
        raise ValueError(
            "Argument `jit_compile` must be True, False or 'auto'. Received: "
            f"jit_compile={requested!r}"
        )
    accelerators = [d for d in devices if d in _ACCELERATORS]
    if accelerators:
        return True, f"XLA pays on {accelerators[0]}"
    return False, "CPU only: XLA was 7x slower than TensorFlow's own kernels on CPU"


def xla_blockers(model: keras.Model) -> list[str]:
    """Paths of layers that declare they cannot be XLA-compiled (``supports_jit=False``)."""
    return [
        path
        for path, layer in surgery.iter_layers(model)
        if getattr(layer, "supports_jit", True) is False
    ]


def resolve_jit_compile(
    requested: Any, model: keras.Model, devices: Sequence[str] | None = None
) -> bool:
    """:func:`choose_jit_compile` for ``model``, falling back when a layer cannot be compiled."""
    use, _ = choose_jit_compile(requested, device_types() if devices is None else devices)
    if not use:
        return False
    blockers = xla_blockers(model)
    if blockers:
        warnings.warn(
            f"kerasft: not compiling with XLA (jit_compile={requested!r}): layers "
            f"{blockers[:3]} of model {model.name!r} cannot be XLA-compiled.",
            stacklevel=3,
        )
        return False
    return True


def cpu_supports_bfloat16(flags: Sequence[str] | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16).

    Args:
        flags: CPU flags; read from ``/proc/cpuinfo`` by default. Defaults to `None`.
    """
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read().split()
        except OSError:
            flags = []
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def choose_mixed_precision(
    requested: Any, devices: Sequence[str], *, cpu_bf16: bool = False
) -> tuple[str, str]:
    """The Keras dtype policy to train with, and why.

    Example:

    >>> choose_mixed_precision(True, ["CPU", "GPU"])[0]
    'mixed_float16'
    >>> choose_mixed_precision(True, ["CPU"], cpu_bf16=False)[0]
    'float32'

    Args:
        requested: ``None``/``False`` (float32), ``True`` or ``"auto"`` (the best policy
            the devices support), or a policy name: ``"mixed_float16"``,
            ``"mixed_bfloat16"``, ``"float32"``.
        devices: device types, as :func:`device_types` returns them.
        cpu_bf16: whether the CPU computes in bfloat16 natively. Defaults to `False`.

    Raises:
        ValueError: an unknown policy name.
    """
    if requested in (None, False, "float32"):
        return "float32", "full precision"
    if requested in ("mixed_float16", "mixed_bfloat16"):
        return requested, "requested"
    if requested not in (True, "auto"):
        raise ValueError(
            f"Argument `mixed_precision` must be None, True, 'auto' or one of {list(PRECISIONS)}. "
            f"Received: mixed_precision={requested!r}"
        )
    if "GPU" in devices:
        return "mixed_float16", "GPU: float16 compute with loss scaling"
    if "TPU" in devices:
        return "mixed_bfloat16", "TPU: bfloat16 compute"
    if cpu_bf16:
        return "mixed_bfloat16", "CPU with bfloat16 arithmetic"
    return "float32", "this CPU has no bfloat16 arithmetic; mixed precision would be slower"


def apply_mixed_precision(
    model: keras.Model, policy: str, *, keep_float32: Sequence[keras.layers.Layer] = ()
) -> None:
    """Set ``policy`` on every layer of ``model`` except ``keep_float32`` and the output tail.

    Variables stay float32 (mixed policies keep them so); computations run in the
    policy's compute dtype. The output Dense layer and any Activation/Softmax after it
    stay float32, so the model's outputs are float32.

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in PRECISIONS:
        raise ValueError(
            f"Argument `policy` must be one of {list(PRECISIONS)}. Received: policy={policy!r}"
        )
    head, tail = surgery.output_chain(model)
    keep = {id(layer) for layer in (*keep_float32, head, *tail)}
    for _, layer in surgery.iter_layers(model):
        layer.dtype_policy = "float32" if id(layer) in keep else policy
    model.dtype_policy = policy


def choose_steps_per_execution(requested: Any, *, steps_per_epoch: int, cached: bool) -> int:
    """Training steps per call into TensorFlow.

    ``"auto"`` groups up to 32 steps when the phase trains on cached features (steps of
    a few hundred microseconds, where per-step Python overhead dominates) and runs one
    step per call otherwise (a convolutional network's step costs tens of milliseconds
    and grouping gained nothing measurable).

    Example:

    >>> choose_steps_per_execution("auto", steps_per_epoch=45, cached=True)
    32
    >>> choose_steps_per_execution("auto", steps_per_epoch=45, cached=False)
    1

    Raises:
        ValueError: neither ``"auto"`` nor a positive integer.
    """
    if requested == "auto":
        return max(1, min(32, steps_per_epoch)) if cached else 1
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(
            f"Argument `steps_per_execution` must be 'auto' or a positive integer. "
            f"Received: steps_per_execution={requested!r}"
        )
    return requested
