"""The training model of supervised fine-tuning: packed rows in, loss on the chosen tokens out.

:class:`SFTModel` runs a KerasHub Llama-family causal LM's own layers (the same weight
variables: training it trains the causal LM) on packed rows. Three things differ from
``CausalLM.fit``:

- attention is block-diagonal: a token sees the earlier tokens of its own example only
  (``segment_ids``), so packing several examples in a row changes none of their losses
  (rotary embeddings depend on relative positions only, so the offset of an example in
  its row changes nothing either);
- the vocabulary projection runs only where the loss is taken (the completion tokens):
  for a 49k vocabulary it is a fifth of the model's work per token and by far the
  largest activation, and KerasHub computes it at every position;
- each transformer block can be rematerialized: its activations are recomputed in the
  backward pass instead of kept (:func:`rematerialized`).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["SFTModel", "rematerialized"]


def rematerialized(function: Any, trainable: Any) -> Any:
    """``function`` (a tensor to a tensor) whose activations are recomputed in the backward pass.

    ``keras.remat`` (``tf.recompute_grad``) differentiates the recomputation with respect
    to every variable the function reads, and Keras leaves frozen weights trainable for
    TensorFlow: under LoRA that is a gradient for every frozen kernel, computed and thrown
    away (three times the time of a plain step here). This version asks only for the
    gradients of the input and of ``trainable``.
    """
    import tensorflow as tf

    wanted = {id(getattr(v, "value", v)) for v in trainable}

    @tf.custom_gradient
    def call(x):
        def grad(dy, variables=None):
            variables = list(variables or [])
            with tf.GradientTape() as tape:
                tape.watch(x)
                again = function(x)
            keep = [v for v in variables if id(v) in wanted]
            grads = tape.gradient(again, [x, *keep], output_gradients=dy)
            by_id = {id(v): g for v, g in zip(keep, grads[1:])}
            return grads[0], [by_id.get(id(v)) for v in variables]

        return function(x), grad

    return call


class SFTModel(keras.Model):
    """Train a KerasHub causal LM on packed rows, with the loss on weighted positions only.

    Inputs are ``{"token_ids", "segment_ids"}`` of shape ``(batch, length)``; targets are
    the next-token ids and the sample weights the loss weights (0 on prompt tokens and
    padding), as :class:`kerasft.llm.sft.PackedData` holds them. The loss is the mean
    cross-entropy over the weighted positions of the batch.

    Args:
        causal_lm: a KerasHub causal LM whose backbone has ``token_embedding`` (a
            ``ReversibleEmbedding``), ``transformer_layers`` taking
            ``decoder_attention_mask`` and a final ``layer_norm`` (Llama, Mistral, Qwen...).
        remat: recompute each block's activations in the backward pass. Defaults to `False`.
    """

    def __init__(self, causal_lm: Any, *, remat: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.causal_lm = causal_lm
        self.remat = bool(remat)

    def call(self, inputs: dict[str, Any], training: bool | None = None) -> Any:
        backbone = self.causal_lm.backbone
        segments = inputs["segment_ids"]
        same = ops.equal(ops.expand_dims(segments, 2), ops.expand_dims(segments, 1))
        mask = ops.cast(
            ops.logical_and(same, ops.expand_dims(ops.greater(segments, 0), 1)), "int32"
        )
        x = backbone.token_embedding(inputs["token_ids"])
        trainable = self.causal_lm.trainable_variables if self.remat else ()
        for block in backbone.transformer_layers:

            def run(h, block=block):
                return block(h, decoder_attention_mask=mask, training=training)

            x = rematerialized(run, trainable)(x) if self.remat else run(x)
        return backbone.layer_norm(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        hidden = ops.shape(y_pred)[-1]
        weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        (where,) = ops.nonzero(weights)
        states = ops.take(ops.reshape(y_pred, (-1, hidden)), where, axis=0)
        targets = ops.take(ops.reshape(y, (-1,)), where, axis=0)
        logits = self.causal_lm.backbone.token_embedding(states, reverse=True)
        losses = keras.losses.sparse_categorical_crossentropy(
            targets, ops.cast(logits, "float32"), from_logits=True
        )
        picked = ops.take(weights, where, axis=0)
        loss = ops.sum(losses * picked) / ops.maximum(ops.sum(picked), 1.0)
        if self.losses:
            loss = loss + ops.sum(ops.stack(self.losses))
        return loss

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            "SFTModel is a training view of a causal LM and is not saved; save the causal LM "
            "(`result.model`) instead."
        )
