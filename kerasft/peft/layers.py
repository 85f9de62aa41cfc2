"""Keras layers for the adapters that Keras's own ``layer.enable_lora`` cannot express.

Keras folds LoRA into the kernel (``kernel + alpha / rank * A @ B``) before the matmul,
so the adapter never sees an input of its own: there is nowhere to put LoRA's dropout,
and DoRA's per-output-unit renormalisation of the whole kernel is not additive. These
two wrappers hold the pretrained layer unchanged, add the low-rank factors (with the
shapes and initialisers Keras uses), and run the wrapped layer's own operation
(``matmul``, ``einsum`` or ``convolution_op``) with the adapted kernel. They are
registered Keras layers: a model that contains them saves with ``model.save`` and loads
with ``keras.models.load_model`` after ``import kerasft``.

A wrapper cannot stand inside a layer that creates its sublayers itself (the attention
projections of a KerasHub transformer block are rebuilt from the block's own arguments
when a model loads). There, :func:`enable_dora` turns DoRA on in place, the way Keras's
``enable_lora`` turns on LoRA: the layer keeps its identity and path, gains a magnitude
vector beside Keras's LoRA factors, and saves its merged kernel, as Keras's LoRA does.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from kerasft import _keras_compat as compat

__all__ = ["LoRA", "DoRA", "supports_wrapping", "enable_dora", "is_in_place_dora"]

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
        return (
            f"it is quantized ({layer.quantization_mode}); only method='lora' runs on quantized "
            "layers"
        )
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


def _input_axes(layer: keras.layers.Layer, ndim: int) -> tuple[int, ...]:
    """Axes of ``layer``'s ``ndim``-d kernel summed over in the forward pass (DoRA's norm)."""
    if isinstance(layer, keras.layers.EinsumDense):
        lhs, out = layer.equation.replace(" ", "").split("->")
        kernel_spec = lhs.split(",")[1]
        return tuple(i for i, c in enumerate(kernel_spec) if c not in out)
    return tuple(range(ndim - 1))


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
        return _column_norm(self.layer, kernel)

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


def _column_norm(layer: keras.layers.Layer, kernel: Any) -> Any:
    """Norm of ``kernel`` per output unit (over the axes that ``layer`` sums over)."""
    kernel = ops.cast(kernel, "float32")
    axes = _input_axes(layer, len(kernel.shape))
    return ops.sqrt(ops.sum(ops.square(kernel), axis=axes, keepdims=True))


class _InPlaceDoRA:
    """DoRA on top of Keras's in-place LoRA (mixed into the layer's own class).

    Keras's ``kernel`` property returns ``W0 + lora_alpha / rank * A @ B`` once LoRA is
    enabled, and every ``call`` and ``save_own_variables`` of Dense, EinsumDense and the
    convolutions reads the kernel through it. Rescaling that kernel per output unit by
    ``m / ||W0 + scale * A @ B||`` (the norm constant in the backward pass, as in
    :class:`DoRA`) is all DoRA adds, so the layer computes, trains and saves as DoRA
    without a wrapper. Loading a saved kernel (which has the adapters folded in) resets
    the magnitude to that kernel's norms, so the reloaded layer computes what was saved.
    """

    kind = "dora"

    @property
    def kernel(self) -> Any:
        adapted = super().kernel
        magnitude = getattr(self, "dora_magnitude", None)
        if magnitude is None:  # while enable_dora measures the pretrained norms
            return adapted
        norm = ops.stop_gradient(_column_norm(self, adapted))
        scale = ops.where(norm > 0, magnitude / ops.maximum(norm, 1e-30), 0.0)
        return adapted * ops.cast(scale, adapted.dtype)

    def load_own_variables(self, store: Any) -> None:
        super().load_own_variables(store)
        # Keras zeroes the LoRA factors on load, so the kernel is the loaded one.
        self.dora_magnitude.assign(_column_norm(self, super().kernel))


_IN_PLACE_CLASSES: dict[type, type] = {}


def _in_place_class(cls: type) -> type:
    if cls not in _IN_PLACE_CLASSES:
        _IN_PLACE_CLASSES[cls] = type(
            cls.__name__,
            (_InPlaceDoRA, cls),
            {
                "__module__": __name__,
                "__qualname__": f"DoRA[{cls.__qualname__}]",
                "__doc__": f"{cls.__name__} with DoRA enabled in place (see ``enable_dora``).",
            },
        )
    return _IN_PLACE_CLASSES[cls]


def is_in_place_dora(layer: Any) -> bool:
    """Whether ``layer`` had :func:`enable_dora` called on it."""
    return isinstance(layer, _InPlaceDoRA)


def enable_dora(layer: keras.layers.Layer, rank: int, lora_alpha: float | None = None) -> None:
    """Turn on DoRA in place on a built Dense, EinsumDense or convolution layer.

    Calls Keras's ``layer.enable_lora(rank, lora_alpha)``, adds a float32
    ``dora_magnitude`` weight initialised to the pretrained kernel's norms per output
    unit, and makes the layer an instance of a subclass of its own class whose ``kernel``
    is DoRA's ``m * V / ||V||`` with ``V`` Keras's LoRA kernel. The layer computes exactly
    what it computed before; ``lora_kernel_a``, ``lora_kernel_b`` and ``dora_magnitude``
    are its adapter weights (the bias stays trainable, as with Keras's ``enable_lora``;
    ``apply_lora`` freezes it). Use it where :class:`DoRA` cannot wrap a layer
    (inside KerasHub transformer blocks); like Keras's LoRA, saving the model writes the
    merged kernel, and ``kerasft.peft.save_adapters`` keeps the adapter itself.

    Example:

    >>> import keras, numpy as np
    >>> from kerasft.peft.layers import enable_dora
    >>> dense = keras.layers.Dense(4)
    >>> x = np.ones((2, 3), "float32")
    >>> before = dense(x)
    >>> enable_dora(dense, rank=2)
    >>> np.array_equal(before, dense(x)), [w.name for w in dense.trainable_weights]
    (True, ['bias', 'lora_kernel_a', 'lora_kernel_b', 'dora_magnitude'])

    Args:
        layer: a built ``Dense``, ``EinsumDense`` or ``Conv1D/2D/3D``, not quantized,
            without LoRA already and without a kernel constraint.
        rank: rank of the update.
        lora_alpha: Keras's scaling numerator (scale ``lora_alpha / rank``); `None`
            means ``rank``.

    Raises:
        TypeError: when ``layer`` cannot take DoRA, with the reason.
        ValueError: when ``layer`` is not built.
    """
    reason = supports_wrapping(layer) if isinstance(layer, keras.layers.Layer) else "not a layer"
    if reason is not None:
        raise TypeError(f"DoRA cannot go on layer {getattr(layer, 'name', layer)!r}: {reason}.")
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} must be built before DoRA is enabled on it.")
    layer.enable_lora(rank, lora_alpha=lora_alpha)
    norm = _column_norm(layer, layer.kernel)
    layer.dora_magnitude = compat.add_weight_after_build(
        layer,
        name="dora_magnitude",
        shape=tuple(norm.shape),
        initializer=lambda shape, dtype=None: ops.cast(norm, dtype or "float32"),
        dtype="float32",
    )
    # The layer object stays the same (its owner holds it in an attribute and rebuilds
    # it from its own arguments on load); only its ``kernel`` changes meaning.
    layer.__class__ = _in_place_class(type(layer))
