"""Keras layers for the adapters that Keras's own ``layer.enable_lora`` cannot express.

Keras folds LoRA into the kernel (``kernel + alpha / rank * A @ B``) before the matmul,
so the adapter never sees an input of its own: there is nowhere to put LoRA's dropout,
and DoRA's per-output-unit renormalisation of the whole kernel is not additive. These
two wrappers hold the pretrained layer unchanged, add the low-rank factors (with the
shapes and initialisers Keras uses), and run the wrapped layer's own operation
(``matmul``, ``einsum`` or ``convolution_op``) with the adapted kernel. They are
registered Keras layers: a model that contains them saves with ``model.save`` and loads
with ``keras.models.load_model`` after ``import kerasft``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = ["LoRA", "DoRA", "supports_wrapping"]

_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_WRAPPABLE = (keras.layers.Dense, keras.layers.EinsumDense) + _CONV_TYPES


def supports_wrapping(layer: keras.layers.Layer) -> str | None:
    """Return ``None`` when :class:`LoRA`/:class:`DoRA` can wrap ``layer``, else the reason."""
    if not isinstance(layer, _WRAPPABLE):
        names = ", ".join(t.__name__ for t in _WRAPPABLE)
        return f"it is a {type(layer).__name__}; these adapters wrap {names}"
    if getattr(layer, "lora_enabled", False):
        return "it already has Keras LoRA enabled"
    if layer.quantization_mode is not None:
        return f"it is quantized ({layer.quantization_mode}); only method='lora' runs on quantized layers"
    if layer.kernel_constraint is not None:
        return "it has a kernel_constraint, which a low-rank update would bypass"
    if isinstance(layer, keras.layers.Conv1D) and layer.padding == "causal":
        return "it is a causal Conv1D"
    if (
        isinstance(layer, keras.layers.EinsumDense)
        and "." in layer.equation.split("->")[0].split(",")[1]
    ):
        return "its einsum kernel spec has an ellipsis"
    return None


def _input_axes(layer: keras.layers.Layer) -> tuple[int, ...]:
    """Kernel axes that are summed over in the forward pass (DoRA's norm runs over them)."""
    if isinstance(layer, keras.layers.EinsumDense):
        lhs, out = layer.equation.replace(" ", "").split("->")
        kernel_spec = lhs.split(",")[1]
        return tuple(i for i, c in enumerate(kernel_spec) if c not in out)
    return tuple(range(len(layer.kernel.shape) - 1))


@keras.saving.register_keras_serializable(package="kerasft")
class LoRA(keras.layers.Wrapper):
    """LoRA with dropout on the adapter input, around a Dense/EinsumDense/Conv layer.

    Computes ``y = f(x @ W0 + scale * dropout(x) @ (A @ B) + b)`` where ``W0`` (and ``b``)
    are the wrapped layer's frozen weights and ``A``, ``B`` have the shapes and
    initialisers of Keras's ``enable_lora`` (``he_uniform`` and zeros), so the wrapper
    starts as the identity. ``scale`` is ``alpha / rank``, or ``alpha / sqrt(rank)`` with
    rsLoRA (Kalajdzievski 2023). Without dropout, use Keras's ``layer.enable_lora``
    (``kerasft.peft.apply_lora`` does): this class exists because Keras adds ``A @ B`` to
    the kernel before the matmul, which leaves no adapter input to drop.

    Example:

    >>> import keras
    >>> from kerasft.peft import LoRA
    >>> layer = LoRA(keras.layers.Dense(4), rank=2, dropout=0.1)
    >>> tuple(layer(keras.ops.ones((1, 3))).shape)
    (1, 4)

    Args:
        layer: the pretrained layer: ``Dense``, ``EinsumDense``, ``Conv1D/2D/3D``, not
            quantized, without a kernel constraint.
        rank: rank of the update, a positive integer.
        alpha: scaling numerator; `None` means ``rank``. Defaults to `None`.
        dropout: dropout rate on the adapter input during training, in ``[0, 1)``.
            Defaults to `0.0`.
        use_rslora: scale by ``alpha / sqrt(rank)`` instead of ``alpha / rank``.
            Defaults to `False`.
        **kwargs: base layer arguments (``name``...); the name defaults to the wrapped
            layer's, so layer paths stay the same.

    Raises:
        TypeError: when ``layer`` is not a supported layer.
        ValueError: for a bad ``rank``, ``alpha`` or ``dropout``.
    """

    kind = "lora"

    def __init__(
        self,
        layer: keras.layers.Layer,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
        **kwargs: Any,
    ) -> None:
        reason = (
            supports_wrapping(layer) if isinstance(layer, keras.layers.Layer) else "not a layer"
        )
        if reason is not None:
            raise TypeError(
                f"{type(self).__name__} cannot wrap layer {getattr(layer, 'name', layer)!r}: "
                f"{reason}."
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"Argument `rank` must be a positive integer. Received: rank={rank!r}")
        if alpha is not None and (isinstance(alpha, bool) or not alpha > 0):
            raise ValueError(
                f"Argument `alpha` must be a positive number or None. Received: alpha={alpha!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout!r}")
        kwargs.setdefault("name", layer.name)
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.rank = rank
        self.alpha = float(alpha) if alpha is not None else float(rank)
        self.dropout = float(dropout)
        self.use_rslora = bool(use_rslora)
        self.supports_masking = layer.supports_masking
        self._dropout_layer = keras.layers.Dropout(self.dropout) if self.dropout else None

    @property
    def scale(self) -> float:
        """Multiplier of ``A @ B``: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def adapter_variables(self) -> list[keras.Variable]:
        """The variables this wrapper adds (what ``save_adapters`` writes)."""
        return [self.lora_kernel_a, self.lora_kernel_b]

    def build(self, input_shape: Any) -> None:
        super().build(input_shape)
        kernel = self.layer.kernel
        shape = tuple(kernel.shape)
        # Same shapes, dtype and initialisers as Keras's enable_lora, so that adapters
        # from either implementation mean the same thing.
        self.lora_kernel_a = self.add_weight(
            name="lora_kernel_a",
            shape=shape[:-1] + (self.rank,),
            initializer="he_uniform",
            dtype="float32",
        )
        self.lora_kernel_b = self.add_weight(
            name="lora_kernel_b",
            shape=(self.rank, shape[-1]),
            initializer="zeros",
            dtype="float32",
        )
        kernel.trainable = False
        self._build_extra(kernel)
        self.built = True

    def _build_extra(self, kernel: keras.Variable) -> None:
        """Hook for DoRA's magnitude vector."""

    def _column_scale(self, w0: Any, delta: Any) -> Any:
        """Per-output-unit factor applied to the kernel; ``None`` for plain LoRA."""
        return None

    def _delta(self, dtype: str) -> Any:
        delta = ops.matmul(self.lora_kernel_a, self.lora_kernel_b) * self.scale
        return ops.cast(delta, dtype)

    def _linear(self, x: Any, kernel: Any) -> Any:
        layer = self.layer
        if isinstance(layer, keras.layers.EinsumDense):
            return ops.einsum(layer.equation, x, kernel)
        if isinstance(layer, _CONV_TYPES):
            return layer.convolution_op(x, kernel)
        return ops.matmul(x, kernel)

    def _finish(self, x: Any) -> Any:
        """Bias and activation, exactly as the wrapped layer's ``call`` applies them."""
        layer = self.layer
        if layer.bias is not None:
            bias = layer.bias
            if isinstance(layer, _CONV_TYPES):
                ones = (1,) * layer.rank
                shape = (
                    ones + (1, layer.filters)
                    if layer.data_format == "channels_last"
                    else (1, layer.filters) + ones
                )
                bias = ops.reshape(bias, shape)
            x = ops.add(x, bias)
        if layer.activation is not None:
            x = layer.activation(x)
        return x

    def adapted_kernel(self) -> Any:
        """The kernel the wrapper computes with (what ``merge`` writes into the base layer)."""
        w0 = ops.convert_to_tensor(self.layer.kernel)
        delta = self._delta(w0.dtype)
        col = self._column_scale(w0, delta)
        kernel = w0 + delta
        return kernel if col is None else kernel * col

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        inputs = ops.cast(inputs, self.layer.compute_dtype)
        w0 = ops.cast(self.layer.kernel, self.layer.compute_dtype)
        delta = self._delta(w0.dtype)
        col = self._column_scale(w0, delta)
        if col is not None:
            w0, delta = w0 * col, delta * col
        if self._dropout_layer is not None and training:
            dropped = self._dropout_layer(inputs, training=training)
            x = self._linear(inputs, w0) + self._linear(dropped, delta)
        else:
            x = self._linear(inputs, w0 + delta)
        return self._finish(x)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            rank=self.rank, alpha=self.alpha, dropout=self.dropout, use_rslora=self.use_rslora
        )
        return config


@keras.saving.register_keras_serializable(package="kerasft")
class DoRA(LoRA):
    """DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024).

    ``W' = m * (W0 + scale * A @ B) / ||W0 + scale * A @ B||``, the norm taken per output
    unit over the kernel's input axes (per column of a Dense kernel, per filter of a
    convolution). The magnitude ``m`` starts as the norms of ``W0`` and ``B`` as zeros, so
    a fresh DoRA layer computes exactly what the wrapped layer computes. As in the paper
    (section 4.3) and HuggingFace PEFT, the norm is treated as a constant in the backward
    pass, which saves memory at no measurable cost in accuracy. Dropout (if any) applies to
    the adapter input as in PEFT: ``f(m / ||V|| * (x @ W0 + scale * drop(x) @ A @ B) + b)``.

    Example:

    >>> import keras, numpy as np
    >>> from kerasft.peft import DoRA
    >>> dense = keras.layers.Dense(4)
    >>> x = np.ones((2, 3), "float32")
    >>> np.array_equal(dense(x), DoRA(dense, rank=2)(x))
    True

    Args:
        layer: as for :class:`LoRA`.
        rank: rank of the update.
        alpha: scaling numerator; `None` means ``rank``. Defaults to `None`.
        dropout: adapter-input dropout rate. Defaults to `0.0`.
        use_rslora: ``alpha / sqrt(rank)`` scaling. Defaults to `False`.
        **kwargs: base layer arguments.

    Raises:
        TypeError, ValueError: as :class:`LoRA`.
    """

    kind = "dora"

    @property
    def adapter_variables(self) -> list[keras.Variable]:
        return [self.lora_kernel_a, self.lora_kernel_b, self.magnitude]

    def _norm(self, kernel: Any) -> Any:
        kernel = ops.cast(kernel, "float32")
        return ops.sqrt(ops.sum(ops.square(kernel), axis=_input_axes(self.layer), keepdims=True))

    def _build_extra(self, kernel: keras.Variable) -> None:
        norm = self._norm(kernel)
        self.magnitude = self.add_weight(
            name="magnitude",
            shape=tuple(norm.shape),
            # Starts at ||W0|| so that the layer reproduces the pretrained one; a loaded
            # model overwrites it with the saved value.
            initializer=lambda shape, dtype=None: ops.cast(norm, dtype or "float32"),
            dtype="float32",
        )

    def _column_scale(self, w0: Any, delta: Any) -> Any:
        norm = ops.stop_gradient(
            self._norm(ops.add(ops.cast(w0, "float32"), ops.cast(delta, "float32")))
        )
        # A dead (all-zero) output unit keeps a zero kernel instead of 0/0.
        scale = ops.where(norm > 0, self.magnitude / ops.maximum(norm, 1e-30), 0.0)
        return ops.cast(scale, w0.dtype)
