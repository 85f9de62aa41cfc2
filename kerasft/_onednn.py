"""Keep TensorFlow's oneDNN kernels off, because one of them crashes the process.

On x86 CPUs, TensorFlow 2.21 with oneDNN on (its default) dies with SIGSEGV in the
backward pass of a 1x1, stride-2 ``Conv2D`` on a 56-64 px feature map: the shortcut of
every ResNet/Xception block. ``TF_ENABLE_ONEDNN_OPTS=0`` avoids it and was not slower in
our measurements. The variable is read when TensorFlow loads, so kerasft sets it on import
when TensorFlow is not loaded yet, and otherwise checks models before training.
"""

from __future__ import annotations

import os
import sys

__all__ = ["configure", "onednn_enabled", "check_model"]

_ENV = "TF_ENABLE_ONEDNN_OPTS"
_state = {"tf_loaded_first": False}


def configure() -> None:
    """Set ``TF_ENABLE_ONEDNN_OPTS=0`` unless TensorFlow is loaded or the user chose."""
    if "tensorflow" in sys.modules:
        _state["tf_loaded_first"] = True
        return
    os.environ.setdefault(_ENV, "0")


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels are (or will be) on in this process."""
    return os.environ.get(_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


# Measured with TF 2.21 on x86: inputs of 56 px and more crash, 48 px and less do not;
# 48 is included to leave a margin.
_MIN_CRASH_SIZE = 48


def risky_layers(model) -> list[str]:
    """Names of 1x1, stride >= 2 Conv2D layers on feature maps of 48 px or more."""
    import keras

    from kerasft import surgery

    found = []
    for path, layer in surgery.iter_layers(model):
        if not isinstance(layer, keras.layers.Conv2D) or isinstance(
            layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
        ):
            continue
        if tuple(layer.kernel_size) != (1, 1) or max(layer.strides) < 2:
            continue
        try:
            shape = layer.input.shape
        except (AttributeError, ValueError):
            shape = (None, None, None, None)
        spatial = shape[1:3] if layer.data_format == "channels_last" else shape[2:4]
        if any(s is None or s >= _MIN_CRASH_SIZE for s in spatial):
            found.append(path)
    return found


def check_model(model, *, trains_body: bool = True) -> None:
    """Refuse, before training, a run that would crash oneDNN; never a segfault.

    Raises:
        RuntimeError: with the fix, when oneDNN is on and a risky layer would be trained
            through (its backward pass is the one that crashes).
    """
    if not trains_body or not onednn_enabled():
        return
    layers = risky_layers(model)
    if not layers:
        return
    how = (
        "TensorFlow was imported before kerasft"
        if _state["tf_loaded_first"]
        else f"{_ENV} is set to {os.environ.get(_ENV)!r}"
    )
    raise RuntimeError(
        "This run would crash the Python process: TensorFlow's oneDNN kernels segfault in "
        "the backward pass of 1x1, stride-2 Conv2D layers on large feature maps, and this "
        f"model has {len(layers)} such layers ({', '.join(layers[:5])}"
        f"{', ...' if len(layers) > 5 else ''}). oneDNN is on because {how}. Fix: set "
        f"{_ENV}=0 in the environment before Python starts (e.g. `export {_ENV}=0`), or "
        "import kerasft before tensorflow/keras, and restart the process."
    )
