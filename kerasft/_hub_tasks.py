"""KerasHub task classes of kerasft's own (this module imports KerasHub).

See :mod:`kerasft.pooling` for why a text classifier that reads the mean of its
backbone's token outputs is needed, and how it loads without importing this module.
"""

from __future__ import annotations

from typing import Any

import keras
import keras_hub

from kerasft._token_pooling import POOLINGS, MaskedMeanPooling

__all__ = ["PooledTextClassifier"]


@keras.saving.register_keras_serializable(package="kerasft", name="PooledTextClassifier")
class PooledTextClassifier(keras_hub.models.TextClassifier):
    """A text classifier on any KerasHub backbone with a padding mask, reading a chosen pooling.

    ``pooling="mean"`` classifies the masked mean of the token outputs (how
    sentence-embedding models such as all-MiniLM-L6-v2 were trained to be read);
    ``"cls"`` the backbone's ``pooled_output`` (or its first token's output).

    Example:

    ```python
    task = kerasft.pooling.pooled_text_classifier(bert_text_classifier, "mean")
    task.predict(["a fine film"])
    ```

    Args:
        backbone: a KerasHub backbone whose inputs include ``padding_mask``.
        num_classes: outputs of the head.
        preprocessor: a ``TextClassifierPreprocessor``. Defaults to `None`.
        pooling: ``"mean"`` or ``"cls"``. Defaults to `"mean"`.
        activation: activation of the head. Defaults to `None` (logits).
        dropout: dropout before the head. Defaults to `0.1`.
    """

    def __init__(
        self,
        backbone: Any,
        num_classes: int,
        preprocessor: Any = None,
        pooling: str = "mean",
        activation: Any = None,
        dropout: float = 0.1,
        **kwargs: Any,
    ):
        if pooling not in POOLINGS:
            raise ValueError(
                f"Argument `pooling` must be one of {list(POOLINGS)}. Received: pooling={pooling!r}"
            )
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="classifier_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=backbone.dtype_policy, name="logits"
        )
        inputs = backbone.input
        outputs = backbone(inputs)
        sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
        if pooling == "mean":
            pooled = MaskedMeanPooling(dtype=backbone.dtype_policy, name="mean_pooling")(
                sequence, inputs["padding_mask"]
            )
        elif isinstance(outputs, dict) and "pooled_output" in outputs:
            pooled = outputs["pooled_output"]
        else:
            pooled = sequence[:, 0, :]
        logits = self.output_dense(self.output_dropout(pooled))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.num_classes = num_classes
        self.pooling = pooling
        self.activation = keras.activations.get(activation)
        self.dropout = dropout

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "pooling": self.pooling,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
            }
        )
        return config
