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
