"""TensorBoard summaries written without the ``tensorboard`` package.

``tf.summary.scalar`` and ``tf.summary.text`` live in the ``tensorboard`` package, which
TensorFlow no longer installs; ``tf.summary.write`` with the plugin metadata that
TensorBoard's own summaries carry writes the same records without it. Shared by
:mod:`kerasft.tensorboard` and :mod:`kerasft.pruning.callbacks`; call inside a
``writer.as_default()`` block.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

__all__ = ["write_scalar", "write_text"]

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()
_TEXT_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"),
    data_class=summary_pb2.DATA_CLASS_TENSOR,
).SerializeToString()


def write_scalar(tag: str, value: float, step: int) -> None:
    """Write one float32 scalar under ``tag`` at ``step`` to the default writer."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


def write_text(tag: str, text: str, step: int) -> None:
    """Write one string under ``tag`` at ``step`` to the default writer."""
    tf.summary.write(tag, tf.constant(text), step=step, metadata=_TEXT_METADATA)
