"""The `PruneLowMagnitude` layer wrapper and the mask arithmetic behind it.

A port to Keras 3 of tfmot's wrapper (`tensorflow_model_optimization.sparsity.keras`
0.8.1: `pruning_impl.py`, `pruning_utils.py`, `pruning_wrapper.py`), op for op, so that a
Keras 3 model and the same tf_keras model pruned by tfmot get the same masks. Also which
layers and weights are prunable, and how to find the wrappers in a model. The public
entry points live in `kerasft.pruning`.

tfmot itself is never imported here: importing it switches `tf.keras` to Keras 2 for the
whole process (it sets ``TF_USE_LEGACY_KERAS=1``), which a Keras 3 user must not pay for.
"""

from __future__ import annotations

import numbers

import keras
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft.pruning.schedules import ConstantSparsity, check_schedule, from_tfmot_schedule

__all__ = [
    "PruneLowMagnitude",
    "PRUNABLE_LAYER_TYPES",
    "is_prunable",
    "prunable_weights",
    "find_wrappers",
    "check_pruning_args",
    "check_weight_ranks",
    "magnitude_mask",
    "block_mask",
    "m_by_n_mask",
    "rearrange_for_m_by_n",
]

_PACKAGE = "kerasft"  # registered name "kerasft>PruneLowMagnitude": never change it

# Which variable of each built-in layer holds the weights to prune. Like tfmot, a
# separable convolution prunes its pointwise kernel only (the depthwise one is tiny);
# unlike tfmot, DepthwiseConv2D is prunable (tfmot registers it with no weights).
# Quantized and LoRA layers are refused, so these attributes are the variables themselves.
_PRUNABLE_ATTRS: tuple[tuple[type, str], ...] = (
    (keras.layers.Dense, "kernel"),
    (keras.layers.Conv1D, "kernel"),
    (keras.layers.Conv2D, "kernel"),
    (keras.layers.Conv3D, "kernel"),
    (keras.layers.Conv1DTranspose, "kernel"),
    (keras.layers.Conv2DTranspose, "kernel"),
    (keras.layers.Conv3DTranspose, "kernel"),
    (keras.layers.DepthwiseConv1D, "kernel"),
    (keras.layers.DepthwiseConv2D, "kernel"),
    (keras.layers.SeparableConv1D, "pointwise_kernel"),
    (keras.layers.SeparableConv2D, "pointwise_kernel"),
    (keras.layers.Embedding, "embeddings"),
)

PRUNABLE_LAYER_TYPES: tuple[str, ...] = tuple(cls.__name__ for cls, _ in _PRUNABLE_ATTRS) + (
    "any layer with a `get_prunable_weights()` method",
)

_CALLBACK_ERROR = (
    "PruneLowMagnitude needs the `kerasft.pruning.UpdatePruningStep` callback during "
    "training: pass `callbacks=[UpdatePruningStep()]` to `model.fit()`. In a custom "
    "training loop, call `UpdatePruningStep().set_model(model)` then `.on_train_begin()` "
    "once before the first step."
)


def is_prunable(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a built-in prunable type or declares `get_prunable_weights`."""
    if callable(getattr(layer, "get_prunable_weights", None)):
        return True
    return any(isinstance(layer, cls) for cls, _ in _PRUNABLE_ATTRS)


def prunable_weights(layer: keras.layers.Layer) -> list[keras.Variable]:
    """Return the variables of a built `layer` that pruning masks.

    A custom layer declares its own by defining ``get_prunable_weights()`` returning a
    list of its `keras.Variable`s (the same protocol as tfmot's `PrunableLayer`).

    Raises:
        ValueError: if the layer is not prunable, or is quantized or LoRA-enabled
            (their effective kernel is not a variable that a mask can be applied to).
    """
    if callable(getattr(layer, "get_prunable_weights", None)):
        weights = list(layer.get_prunable_weights())
    else:
        attr = next((a for cls, a in _PRUNABLE_ATTRS if isinstance(layer, cls)), None)
        if attr is None:
            raise ValueError(
                f"Layer '{layer.name}' of type {type(layer).__name__} cannot be pruned. "
                f"Prunable types are: {list(PRUNABLE_LAYER_TYPES)}."
            )
        if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"Layer '{layer.name}' is quantized or LoRA-enabled and cannot be pruned. "
                "HINT: prune before calling `quantize()` or `enable_lora()`."
            )
        value = getattr(layer, attr, None)  # None before the layer is built
        weights = [value] if isinstance(value, keras.Variable) else []
    for weight in weights:
        if not isinstance(weight, keras.Variable):
            raise ValueError(
                f"`{type(layer).__name__}.get_prunable_weights()` must return "
                f"`keras.Variable`s. Received: {weight!r}"
            )
    return weights


def find_wrappers(model) -> list[PruneLowMagnitude]:
    """The `PruneLowMagnitude` layers anywhere in `model`, custom layers' attributes included."""
    layers = compat.flatten_layers(model, include_self=False)
    return [layer for layer in layers if isinstance(layer, PruneLowMagnitude)]


# ----------------------------------------------------------------------- mask arithmetic


def magnitude_mask(weights, sparsity):
    """Keep the ``round(size * (1 - sparsity))`` largest weights, as tfmot's `_update_mask`.

    tfmot sorts all magnitudes (``top_k`` with ``k=size``), takes the k-th largest as
    the threshold and keeps ``|w| >= threshold`` plus, through a one-hot term, the
    threshold element itself, which that comparison already keeps. The same threshold
    comes here from a radix select in four linear passes, several times faster than
    the sort on large kernels; the masks are identical.
    """
    abs_weights = tf.math.abs(weights)
    size = tf.size(abs_weights)
    k = tf.dtypes.cast(
        tf.math.maximum(tf.math.round(tf.dtypes.cast(size, tf.float32) * (1 - sparsity)), 1),
        tf.int32,
    )
    flat = tf.reshape(abs_weights, [-1])
    if weights.dtype in (tf.float16, tf.bfloat16, tf.float32):
        # float16 and bfloat16 values are exact in float32, so the threshold is too.
        threshold_value = tf.dtypes.cast(
            _kth_largest(tf.dtypes.cast(flat, tf.float32), k), flat.dtype
        )
    else:
        threshold_value = tf.gather(tf.math.top_k(flat, k=size).values, k - 1)
    new_mask = tf.math.greater_equal(abs_weights, threshold_value)
    return tf.dtypes.cast(threshold_value, weights.dtype), tf.dtypes.cast(new_mask, weights.dtype)


def _kth_largest(values, k):
    """The k-th largest of non-negative float32 `values` (1-based `k`), exactly.

    Non-negative floats order like their bit patterns read as int32, so the answer is
    built one byte at a time, most significant first: count the candidates' next byte
    (one histogram of 256 bins per pass), keep the byte value in which the k-th largest
    falls, and carry on among the values that share it.
    """
    bits = tf.bitcast(values, tf.int32)
    digits = tf.range(256, dtype=tf.int32)
    prefix = tf.constant(0, tf.int32)
    remaining = k
    for shift in (24, 16, 8, 0):
        digit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, shift), 255)
        if shift != 24:  # values outside the prefix chosen so far go to an extra bin
            high = tf.bitwise.right_shift(bits, shift + 8)
            same = tf.equal(high, tf.bitwise.right_shift(prefix, shift + 8))
            digit = tf.where(same, digit, 256)
        # bincount, not unsorted_segment_sum: about 50x faster on CPU here.
        counts = tf.math.bincount(digit, minlength=257, maxlength=257)[:256]
        at_least = tf.math.cumsum(counts, reverse=True)  # candidates with byte >= d
        chosen = tf.reduce_max(tf.where(at_least >= remaining, digits, -1))
        remaining -= tf.gather(at_least, chosen) - tf.gather(counts, chosen)
        prefix = tf.bitwise.bitwise_or(prefix, tf.bitwise.left_shift(chosen, shift))
    return tf.bitcast(prefix, tf.float32)


def _factorized_pool(abs_weights, block_size, pooling_type):
    """tfmot `pruning_utils.factorized_pool` with SAME padding, stride = window."""
    height, width = abs_weights.shape
    aligned = tf.reshape(abs_weights, [1, 1, height, width])
    pooled = tf.nn.pool(
        aligned,
        window_shape=[1, block_size[0]],
        pooling_type=pooling_type,
        strides=[1, block_size[0]],
        padding="SAME",
    )
    pooled = tf.nn.pool(
        tf.transpose(pooled, perm=[0, 1, 3, 2]),
        window_shape=[1, block_size[1]],
        pooling_type=pooling_type,
        strides=[1, block_size[1]],
        padding="SAME",
    )
    # tfmot squeezes here, which breaks when a pooled side is 1; a reshape does not.
    pooled = tf.transpose(pooled, perm=[0, 1, 3, 2])
    return tf.reshape(pooled, pooled.shape[2:])


def block_mask(weights, sparsity, block_size, pooling_type):
    """tfmot `_maybe_update_block_mask` for a rank-2 weight and a non-trivial block."""
    abs_weights = tf.math.abs(weights)
    pooled = _factorized_pool(abs_weights, block_size, pooling_type)
    threshold, mask = magnitude_mask(pooled, sparsity)
    expanded = tf.repeat(tf.repeat(mask, block_size[0], axis=0), block_size[1], axis=1)
    return threshold, tf.slice(expanded, [0, 0], weights.shape)


def rearrange_for_m_by_n(weights):
    """tfmot `weights_rearrange`: put input channels last, one row per output position.

    tfmot handles rank 2 (Dense) and rank 4 (Conv2D); the same rule extends to the
    rank-3 and rank-5 kernels of Conv1D and Conv3D.
    """
    rank = weights.shape.rank
    if rank == 2:
        return tf.transpose(weights)
    perm = [rank - 1] + list(range(rank - 1))
    return tf.reshape(tf.transpose(weights, perm=perm), [-1, weights.shape[-2]])


def _unrearrange_m_by_n(mask, weights_shape):
    """tfmot `m_by_n_sparsity_mask_prepare`: the inverse of `rearrange_for_m_by_n`."""
    rank = len(weights_shape)
    if rank == 2:
        return tf.transpose(mask)
    mask = tf.reshape(mask, [weights_shape[-1]] + list(weights_shape[:-1]))
    return tf.transpose(mask, perm=list(range(1, rank)) + [0])


def m_by_n_mask(weights, m_by_n):
    """tfmot `generate_m_by_n_mask` on the rearranged weights: m zeros in every n."""
    prepared = tf.abs(rearrange_for_m_by_n(weights))
    num_zeros, block = m_by_n
    num_non_zeros = block - num_zeros
    # Like tfmot, pad a whole extra group when the width is already a multiple of n.
    pad_after = block - prepared.shape[-1] % block
    padded = tf.pad(prepared, [[0, 0], [0, pad_after]], "CONSTANT")
    num_blocks = tf.size(padded) // block
    groups = tf.reshape(padded, [num_blocks, block])
    _, top_k_indices = tf.math.top_k(groups, k=num_non_zeros, sorted=False)
    ind_i, _ = tf.meshgrid(tf.range(num_blocks), tf.range(num_non_zeros), indexing="ij")
    ind_ij = tf.stack([ind_i, top_k_indices], axis=-1)
    mask_padded = tf.scatter_nd(ind_ij, tf.ones([num_blocks, num_non_zeros]), [num_blocks, block])
    mask = tf.slice(tf.reshape(mask_padded, tf.shape(padded)), [0, 0], prepared.shape)
    return tf.dtypes.cast(_unrearrange_m_by_n(mask, weights.shape), weights.dtype)


# ------------------------------------------------------------------------------ wrapper


def check_pruning_args(block_size, block_pooling_type, sparsity_m_by_n):
    """Validate and normalise the structure arguments shared by every entry point."""
    if (
        not isinstance(block_size, (tuple, list))
        or len(block_size) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in block_size)
        or min(block_size) < 1
    ):
        raise ValueError(
            "Argument `block_size` must be a tuple of 2 positive ints. "
            f"Received: block_size={block_size!r}"
        )
    if block_pooling_type not in ("AVG", "MAX"):
        raise ValueError(
            "Argument `block_pooling_type` must be 'AVG' or 'MAX'. "
            f"Received: block_pooling_type={block_pooling_type!r}"
        )
    block_size = (int(block_size[0]), int(block_size[1]))
    if sparsity_m_by_n is not None:
        if (
            not isinstance(sparsity_m_by_n, (tuple, list))
            or len(sparsity_m_by_n) != 2
            or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sparsity_m_by_n
            )
            or not 0 < sparsity_m_by_n[0] < sparsity_m_by_n[1]
        ):
            raise ValueError(
                "Argument `sparsity_m_by_n` must be None or a tuple (m, n) of ints with "
                f"0 < m < n, meaning m zeros in every n weights. "
                f"Received: sparsity_m_by_n={sparsity_m_by_n!r}"
            )
        if block_size != (1, 1):
            raise ValueError(
                "Arguments `block_size` and `sparsity_m_by_n` cannot be combined: m-by-n "
                f"sparsity sets its own structure. Received: block_size={block_size}, "
                f"sparsity_m_by_n={tuple(sparsity_m_by_n)}"
            )
        sparsity_m_by_n = (int(sparsity_m_by_n[0]), int(sparsity_m_by_n[1]))
    return block_size, sparsity_m_by_n


def check_weight_ranks(layer, weights, block_size, sparsity_m_by_n) -> None:
    """Raise a ValueError if block or m-by-n sparsity cannot apply to `weights`."""
    for weight in weights:
        rank = len(weight.shape)
        if block_size != (1, 1) and rank != 2:
            raise ValueError(
                f"Argument `block_size` other than (1, 1) needs rank-2 weights (Dense, "
                f"Embedding), but layer '{layer.name}' has '{weight.name}' of shape "
                f"{tuple(weight.shape)}. Received: block_size={block_size}. HINT: restrict "
                "`layers=` to Dense/Embedding layers, or use block_size=(1, 1)."
            )
        if sparsity_m_by_n is not None and not 2 <= rank <= 5:
            raise ValueError(
                "Argument `sparsity_m_by_n` needs weights of rank 2 to 5 (Dense, Embedding, "
                f"Conv1D/2D/3D kernels), but layer '{layer.name}' has '{weight.name}' of "
                f"shape {tuple(weight.shape)}. Received: sparsity_m_by_n={sparsity_m_by_n}. "
                "HINT: leave that layer out with `layers=`."
            )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PruneLowMagnitude(keras.layers.Wrapper):
    """Prune the weights of a Keras 3 layer by magnitude while it trains.

    Keras 3 port of tfmot's wrapper of the same name. For each prunable weight the
    wrapper keeps a non-trainable ``mask`` of the same shape and a ``threshold``; a
    shared int64 ``pruning_step`` counts training steps. In every training step, inside
    the compiled train function and in tfmot's order, it: increments the step; if the
    schedule fires (or, for m-by-n sparsity, at step 1) recomputes the masks from the
    weights' magnitudes; assigns ``weight * mask`` to the weight; then calls the layer.
    Outside training the layer runs on ``weight * mask`` without changing any variable,
    so evaluation and export see the pruned weights. In a replica of a `tf.distribute`
    strategy the updates are made once, from the cross-replica context, for all
    replicas' copies of the variables.

    Use `kerasft.pruning.prune_low_magnitude()` rather than this class directly, and
    train with the `kerasft.pruning.UpdatePruningStep` callback.

    Args:
        layer: the layer to prune: a prunable built-in layer or one defining
            ``get_prunable_weights()``.
        pruning_schedule: a schedule (kerasft's or tfmot's `ConstantSparsity` /
            `PolynomialDecay`, or any callable ``schedule(step) -> (should_prune,
            sparsity)``). tfmot's built-ins are replaced by the identical kerasft ones.
            Defaults to `ConstantSparsity(0.5, 0)`.
        block_size: ``(height, width)`` of the blocks pruned together in rank-2
            weights. Defaults to `(1, 1)`.
        block_pooling_type: ``"AVG"`` or ``"MAX"``, how a block's magnitude is pooled.
            Defaults to `"AVG"`.
        sparsity_m_by_n: ``(m, n)`` to zero m of every n consecutive input-channel
            weights (for example ``(2, 4)``), fixed at the first training step.
            Defaults to `None`.
        **kwargs: base layer arguments. The name defaults to
            ``"prune_low_magnitude_" + layer.name``.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule=None,
        block_size=(1, 1),
        block_pooling_type: str = "AVG",
        sparsity_m_by_n=None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer) or not is_prunable(layer):
            raise ValueError(
                "Argument `layer` must be a prunable Keras 3 layer "
                f"({list(PRUNABLE_LAYER_TYPES)}). Received: layer={layer!r}"
            )
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, 0)
        check_schedule(pruning_schedule)
        block_size, sparsity_m_by_n = check_pruning_args(
            block_size, block_pooling_type, sparsity_m_by_n
        )
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        # Reading the weights for `weight * mask` must not be autocast to float16;
        # the wrapped layer still autocasts its own inputs and variables.
        kwargs.setdefault("autocast", False)
        super().__init__(layer, **kwargs)
        self.pruning_schedule = from_tfmot_schedule(pruning_schedule)
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = sparsity_m_by_n
        self.pruning_vars: list[tuple[keras.Variable, keras.Variable, keras.Variable]] = []

    def build(self, input_shape=None):
        super().build(input_shape)
        weights = prunable_weights(self.layer)
        check_weight_ranks(self.layer, weights, self.block_size, self.sparsity_m_by_n)
        self.pruning_vars = []
        for weight in weights:
            mask = self.add_weight(
                name=f"{weight.name}_mask",
                shape=weight.shape,
                initializer="ones",
                dtype=weight.dtype,
                trainable=False,
                aggregation="mean",
            )
            threshold = self.add_weight(
                name=f"{weight.name}_threshold",
                shape=(),
                initializer="zeros",
                dtype=weight.dtype,
                trainable=False,
                aggregation="mean",
            )
            self.pruning_vars.append((weight, mask, threshold))
        # -1 until UpdatePruningStep starts a run, so that a missing callback is caught.
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            initializer=keras.initializers.Constant(-1),
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.built = True

    # The mask arithmetic runs on tf tensors: tfmot's schedules are TensorFlow
    # callables, and the same ops give the same masks as tfmot.
    def _new_masks(self, sparsity):
        updates = []
        for weight, mask, threshold in self.pruning_vars:
            value = tf.convert_to_tensor(weight.value)
            if self.sparsity_m_by_n is not None:
                new_threshold = tf.constant(999.0, value.dtype)  # tfmot's placeholder
                new_mask = m_by_n_mask(value, self.sparsity_m_by_n)
            elif self.block_size == (1, 1):
                new_threshold, new_mask = magnitude_mask(value, sparsity)
            else:
                new_threshold, new_mask = block_mask(
                    value, sparsity, self.block_size, self.block_pooling_type
                )
            updates.append((mask, new_mask))
            updates.append((threshold, new_threshold))
        return updates

    def update_masks(self, step=None):
        """Recompute the masks now, at `step` (the current step by default)."""
        step = self.pruning_step.value if step is None else step
        step = tf.cast(tf.convert_to_tensor(step), tf.int64)
        for variable, value in self._new_masks(self.pruning_schedule(step)[1]):
            variable.assign(value)

    def apply_masks(self) -> None:
        """Assign ``weight * mask`` to each pruned weight (tfmot's `weight_mask_op`)."""
        for weight, mask, _ in self.pruning_vars:
            weight.assign(tf.math.multiply(weight.value, mask.value))

    def _training_updates(self):
        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context is not None:
            # In a replica of a tf.distribute strategy, mirrored variables are assigned
            # from the cross-replica context, once for all replicas (as tfmot does).
            def cross_replica(strategy):
                def assign(variable, value):
                    strategy.extended.update(
                        variable.value, lambda v, x: v.assign(x), args=(value,), group=False
                    )

                self._step_updates(assign)

            context.merge_call(cross_replica)
        else:
            self._step_updates(lambda variable, value: variable.assign(value))

    def _step_updates(self, assign):
        """tfmot's order: count the step, maybe update the masks, zero the masked weights."""
        step = tf.convert_to_tensor(self.pruning_step.value) + 1
        assign(self.pruning_step, step)
        check = tf.debugging.assert_greater_equal(
            step, tf.constant(1, tf.int64), message=_CALLBACK_ERROR
        )
        with tf.control_dependencies([check] if check is not None else []):
            should_prune, sparsity = self.pruning_schedule(step)
            if self.sparsity_m_by_n is not None:
                should_prune = tf.math.equal(step, 1)  # m-by-n masks are set once

            def update():
                for variable, value in self._new_masks(sparsity):
                    assign(variable, value)
                return tf.no_op()

            tf.cond(should_prune, update, tf.no_op)
        for weight, mask, _ in self.pruning_vars:
            assign(weight, tf.math.multiply(weight.value, mask.value))

    def call(self, inputs, training=None, **kwargs):
        if training:
            self._training_updates()
            return self.layer(inputs, **kwargs)
        # Substitute weight * mask for the weights without assigning them. Every
        # variable of the wrapped layer is mapped, so that an enclosing StatelessScope
        # (if any) still provides the values of the unpruned ones.
        masked = {id(w): tf.math.multiply(w.value, m.value) for w, m, _ in self.pruning_vars}
        mapping = [(v, masked.get(id(v), v.value)) for v in self.layer.variables]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            before = [scope.get_current_value(v) for v, _ in mapping]
            outputs = self.layer(inputs, **kwargs)
        # Pass on state updates the wrapped layer made (none for built-in layers).
        for (variable, _), old in zip(mapping, before):
            new = scope.get_current_value(variable)
            if new is not old and id(variable) not in masked:
                variable.assign(new)
        return outputs

    def compute_output_spec(self, inputs, training=None, **kwargs):
        return self.layer.compute_output_spec(inputs, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        try:
            schedule = keras.saving.serialize_keras_object(self.pruning_schedule)
        except Exception as e:
            raise TypeError(
                f"Layer '{self.name}' cannot be saved: its pruning schedule "
                f"{self.pruning_schedule!r} does not serialize ({e}). HINT: give the "
                "schedule a `get_config()` method and register its class with "
                "`keras.saving.register_keras_serializable()`, or use kerasft's "
                "`ConstantSparsity` / `PolynomialDecay`."
            ) from None
        config.update(
            {
                "pruning_schedule": schedule,
                "block_size": list(self.block_size),
                "block_pooling_type": self.block_pooling_type,
                "sparsity_m_by_n": (
                    None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n)
                ),
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"], custom_objects=custom_objects
        )
        config["block_size"] = tuple(config["block_size"])
        if config.get("sparsity_m_by_n") is not None:
            config["sparsity_m_by_n"] = tuple(config["sparsity_m_by_n"])
        return super().from_config(config, custom_objects=custom_objects)
