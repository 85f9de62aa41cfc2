"""Poolings of a transformer's token outputs, and a text classifier that reads any of them.

KerasHub's ``BertTextClassifier`` classifies the backbone's ``pooled_output``: the
``[CLS]`` token through a tanh ``Dense`` pooler. Sentence-embedding BERTs
(all-MiniLM-L6-v2 among them) never trained that pooler: they were trained to be
mean-pooled, and a linear probe on their ``[CLS]`` pooler output scores far below one on
the masked mean of the token outputs (0.607 against 0.687 on 400 movie reviews here).
:func:`text_features` gives both from one pass of the backbone, the probe chooses on
held-out data, and :func:`pooled_text_classifier` builds the KerasHub task that reads
the chosen pooling: a :class:`PooledTextClassifier` (a ``keras_hub.models.TextClassifier``
with the same backbone and preprocessor), saved and loaded like any KerasHub task.

``PooledTextClassifier`` subclasses a KerasHub class, so its module imports KerasHub;
``import kerasft`` registers a light stand-in under its name, so that a saved task loads
with ``keras.models.load_model`` without importing KerasHub first.
"""

from __future__ import annotations

import sys
from typing import Any

import keras
import numpy as np

from kerasft._token_pooling import POOLINGS, MaskedMeanPooling

__all__ = [
    "MaskedMeanPooling",
    "POOLINGS",
    "text_features",
    "pooled_text_classifier",
    "is_text_task",
    "task_pooling",
]


def is_text_task(model: Any) -> bool:
    """Whether ``model`` is a KerasHub ``TextClassifier`` whose backbone takes a padding mask."""
    hub = sys.modules.get("keras_hub")
    if hub is None or not isinstance(model, hub.models.TextClassifier):
        return False
    inputs = getattr(model.backbone, "input", None)
    return isinstance(inputs, dict) and "padding_mask" in inputs


def task_pooling(model: Any) -> str:
    """The :func:`text_features` pooling ``model``'s head reads, or ``"own"`` for none of them.

    A :class:`PooledTextClassifier` reads its ``pooling``; KerasHub's ``BertTextClassifier``
    reads ``pooled_output`` through dropout (``"cls"``); other classifiers (RoBERTa's, with
    a hidden layer of its own) read something else.
    """
    if getattr(model, "pooling", None) in POOLINGS:
        return model.pooling
    hub = sys.modules.get("keras_hub")
    if hub is not None and type(model) is hub.models.BertTextClassifier:
        return "cls"
    return "own"


def _sequence_output(outputs: Any) -> Any:
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


def text_features(
    task: Any, x: dict[str, np.ndarray], *, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """The features each pooling gives, from one pass of ``task``'s backbone over ``x``.

    ``"cls"`` is what a KerasHub classifier pools (the backbone's ``pooled_output``, or
    the first token's output for backbones without a pooler); ``"mean"`` the masked
    mean of the token outputs.

    Args:
        task: a KerasHub ``TextClassifier`` (see :func:`is_text_task`).
        x: preprocessed inputs (token ids and padding mask, by name).
        batch_size: inference batch. Defaults to `64`.

    Returns:
        ``{"cls": (n, d), "mean": (n, d)}``.
    """
    backbone = task.backbone
    outputs = backbone.output
    sequence = _sequence_output(outputs)
    mask = backbone.input["padding_mask"]
    first = (
        outputs["pooled_output"]
        if isinstance(outputs, dict) and "pooled_output" in outputs
        else sequence[:, 0, :]
    )
    extractor = keras.Model(
        backbone.input, {"cls": first, "mean": MaskedMeanPooling()(sequence, mask)}
    )
    inputs = {k: v for k, v in x.items() if k in backbone.input}
    out = extractor.predict(inputs, batch_size=batch_size, verbose=0)
    return {k: np.asarray(v, dtype="float32") for k, v in out.items()}


def pooled_text_classifier(task: Any, pooling: str) -> Any:
    """A KerasHub text classifier on ``task``'s backbone that reads ``pooling`` (``"mean"``).

    The backbone and its weights are shared; the head is new (the probe sets it); the
    preprocessor is ``task``'s. Raises ValueError for a pooling not in :data:`POOLINGS`.
    """
    if pooling not in POOLINGS:
        raise ValueError(
            f"Argument `pooling` must be one of {list(POOLINGS)}. Received: pooling={pooling!r}"
        )
    from kerasft._hub_tasks import PooledTextClassifier

    head = task.layers[-1] if not hasattr(task, "output_dense") else task.output_dense
    units = int(head.units)
    activation = keras.activations.serialize(head.activation)
    dropout = float(getattr(task, "dropout", 0.1) or 0.0)
    return PooledTextClassifier(
        task.backbone,
        num_classes=units,
        preprocessor=task.preprocessor,
        pooling=pooling,
        activation=None if activation == "linear" else activation,
        dropout=dropout,
    )


class _LoadsPooledTextClassifier:
    """Stands in for ``PooledTextClassifier`` in Keras's registry until KerasHub is imported."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        from kerasft._hub_tasks import PooledTextClassifier

        return PooledTextClassifier.from_config(config)


def register_stand_in() -> None:
    """Register the stand-in unless the real class is registered already."""
    name = "kerasft>PooledTextClassifier"
    if keras.saving.get_registered_object(name) is None:
        keras.saving.get_custom_objects()[name] = _LoadsPooledTextClassifier
