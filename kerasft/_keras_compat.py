"""Every use of private Keras and TensorFlow API in kerasft, in one place.

kerasft reads a model's layer graph, rebuilds optimizers mid-``fit`` and wraps some Keras
classes in ways the public API does not cover. Each function below says why no public
API serves. All of them were checked on Keras 3.15.1 with TensorFlow 2.21.0; the range
of Keras versions kerasft is tested with is ``TESTED_KERAS`` (also the bound in
``setup.cfg``), and :func:`check_keras_version` refuses others loudly at import time
instead of failing deep inside a training step. ``KERASFT_ALLOW_UNTESTED_KERAS=1``
turns the refusal into a warning, for people who want to try.

No other kerasft module touches a leading-underscore attribute of a Keras or TensorFlow
object, nor imports from ``keras.src``; ``tests/test_keras_compat.py`` checks that.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras

__all__ = [
    "TESTED_KERAS",
    "check_keras_version",
    "is_functional",
    "is_plain_functional",
    "direct_sublayers",
    "flatten_layers",
    "draws_random_numbers",
    "call_takes_training",
    "run_through_graph",
    "producer",
    "call_inputs",
    "parent_layers",
    "node_count",
    "has_mask",
    "trainable_kind_weights",
    "has_ema_averages",
    "created_trainable",
    "set_trainable_flag",
    "learning_rate_object",
    "inner_optimizer",
    "routed_optimizer",
    "rebuild_optimizer",
    "mark_trainable_state_synced",
    "metric_direction",
    "BackupAndRestore",
    "add_weight_after_build",
    "SwapEMAWeights",
    "symbolic_build",
    "forget_distribute_strategy",
    "dataset_op_names",
    "reloaded_object",
    "TrainableTFSMLayer",
]

# Keras versions kerasft is tested with: [lowest, first untested).
TESTED_KERAS = ("3.15", "3.16")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def check_keras_version(version: str | None = None) -> None:
    """Refuse a Keras version outside ``TESTED_KERAS``, before any model is touched.

    Raises:
        ImportError: with the installed and the tested versions and the fix, unless
            ``KERASFT_ALLOW_UNTESTED_KERAS=1`` is set (then a ``RuntimeWarning``).
    """
    version = keras.__version__ if version is None else version
    low, high = (_version_tuple(v) for v in TESTED_KERAS)
    if low <= _version_tuple(version) < high:
        return
    message = (
        f"kerasft is tested with Keras >={TESTED_KERAS[0]},<{TESTED_KERAS[1]}, but Keras "
        f"{version} is installed. kerasft uses a few Keras internals (see "
        "kerasft/_keras_compat.py) that change between releases. HINT: "
        f"pip install 'keras>={TESTED_KERAS[0]},<{TESTED_KERAS[1]}', or set "
        "KERASFT_ALLOW_UNTESTED_KERAS=1 to try anyway."
    )
    if os.environ.get("KERASFT_ALLOW_UNTESTED_KERAS") == "1":
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return
    raise ImportError(message)


# ----------------------------------------------------------------------- the layer graph


def _functional_class() -> type:
    # Functional models have no public class: `keras.Model(inputs, outputs)` returns an
    # instance of keras.src.models.functional.Functional, the only way to tell a graph
    # model from a subclassed one.
    from keras.src.models.functional import Functional

    return Functional


def is_functional(obj: Any) -> bool:
    """Whether ``obj`` is a Functional (graph) Keras model, subclasses (KerasHub tasks) included."""
    return isinstance(obj, _functional_class())


def is_plain_functional(obj: Any) -> bool:
    """Whether ``obj`` was built with ``keras.Model(inputs, outputs)``, not a subclass of it.

    ``keras.models.clone_model`` rebuilds a Functional subclass with a custom
    ``get_config`` (KerasHub tasks) as a plain Functional model and drops what the
    subclass adds (the preprocessor), so callers must tell the two apart.
    """
    return type(obj) is _functional_class()


def flatten_layers(layer: Any, *, include_self: bool = True, recursive: bool = True) -> list:
    """Every layer tracked inside ``layer`` (attributes of custom layers included).

    ``Model.layers`` lists only the top level of a graph, and custom layers keep their
    sublayers as attributes; Keras's tracker (``_flatten_layers``) is the only complete
    walk.
    """
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:  # a tf_keras object, or not a layer
        return [layer] if include_self else []
    return list(flatten(include_self=include_self, recursive=recursive))


def direct_sublayers(layer: Any) -> list:
    """The layers tracked directly by ``layer`` (one level).

    Keras lists sublayers publicly only for Functional/Sequential models (``layers``);
    the attention projections of a KerasHub transformer block live in attributes of
    subclassed layers, and only ``_flatten_layers`` reaches them (KerasHub's own
    ``Backbone.enable_lora`` uses it too).
    """
    return flatten_layers(layer, include_self=False, recursive=False)


def draws_random_numbers(layer: Any) -> bool:
    """Whether ``layer`` (or a layer inside it) owns a ``SeedGenerator`` (dropout, noise...).

    Keras records seed generators in ``_seed_generators``; no public attribute says
    whether a layer is random in training. A ``Dropout`` at rate 0 draws nothing (its
    ``call`` skips the draw), whatever generator it was built with.
    """
    return any(
        getattr(part, "_seed_generators", None)
        and not (isinstance(part, keras.layers.Dropout) and part.rate == 0)
        for part in flatten_layers(layer)
    )


def call_takes_training(layer: Any) -> bool:
    """Whether ``layer.call`` accepts ``training`` (Keras inspects it once, privately)."""
    return bool(getattr(layer, "_call_has_training_arg", False))


def run_through_graph(container: Any, inputs: Any, call_fn: Callable[..., Any]) -> Any:
    """Replay a Functional/Sequential graph on ``inputs``, calling ``call_fn(op, *args)``.

    Keras has no public way to walk a graph node by node with the real call arguments
    (raw operations such as ``x + y`` included); ``Function._run_through_graph`` is what
    ``Functional.call`` itself uses. A Sequential model keeps its graph in ``_functional``.
    """
    inner = (
        getattr(container, "_functional", None)
        if isinstance(container, keras.Sequential)
        else container
    )
    if inner is None:  # an unbuilt Sequential model has no graph yet
        raise ValueError(f"Model {container.name!r} is not built. HINT: call it on an input first.")
    return inner._run_through_graph(inputs, operation_fn=lambda op: op, call_fn=call_fn)


def producer(tensor: Any) -> Any:
    """The operation (layer or raw op) that produced a symbolic ``KerasTensor``.

    ``KerasTensor._keras_history`` is the only link from a tensor to its producer.
    """
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def call_inputs(tensor: Any) -> list:
    """The input tensors of the call that produced the symbolic ``tensor``.

    A layer called more than once (a shared layer, or a graph replayed by
    ``run_through_graph``, as each feature-cache split does) has several nodes, and
    ``layer.input`` is only the first one's; only ``_keras_history.node_index`` says
    which call made ``tensor``. No public API walks a graph back from a tensor.
    Checked on Keras 3.15.1.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return []
    nodes = getattr(history.operation, "_inbound_nodes", [])
    if history.node_index >= len(nodes):
        return []
    return list(nodes[history.node_index].input_tensors)


def node_count(layer: Any) -> int:
    """How many times ``layer`` is called in graphs (``_inbound_nodes``; no public count)."""
    return len(getattr(layer, "_inbound_nodes", []))


def parent_layers(layer: Any) -> list | None:
    """The operations feeding ``layer``'s only call, or ``None`` if it is called more often."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        return None
    return [producer(t) for t in nodes[0].input_tensors]


def has_mask(tensor: Any) -> bool:
    """Whether a symbolic tensor carries a Keras mask (``_keras_mask``; no public accessor)."""
    return getattr(tensor, "_keras_mask", None) is not None


# -------------------------------------------------------------- trainable flags and weights


def created_trainable(layer: Any, variable: Any) -> bool:
    """Whether ``variable`` was created as a trainable weight of ``layer`` (or a sublayer).

    A frozen layer reports all its weights as non-trainable, so ``trainable_weights``
    cannot tell a kernel from a moving statistic; the creation lists
    (``_trainable_variables``) can.
    """
    return any(
        any(v is variable for v in getattr(sub, "_trainable_variables", []))
        for sub in flatten_layers(layer)
    )


def trainable_kind_weights(layer: Any) -> list:
    """The weights ``layer`` created as trainable, whatever its current flag."""
    found = getattr(layer, "_trainable_variables", None)
    return list(layer.trainable_weights if found is None else found)


def set_trainable_flag(layer: Any, value: bool) -> None:
    """Set a container's own ``trainable`` flag without cascading it to its sublayers.

    The public setter propagates the flag down; kerasft sets every leaf itself and only
    wants the container to read as frozen when nothing below it trains.
    """
    layer._trainable = bool(value)


def mark_trainable_state_synced(model: Any) -> None:
    """Tell Keras that trainable flags changed since ``compile`` were handled.

    Keras compares ``_compiled_trainable_state`` at each ``fit`` and warns; after
    :func:`rebuild_optimizer` and a retrace the change is handled.
    """
    model._compiled_trainable_state = {layer: layer.trainable for layer in flatten_layers(model)}


# ------------------------------------------------------------------------------ optimizers


def inner_optimizer(optimizer: Any) -> Any:
    """The optimizer that holds the rate: unwraps ``LossScaleOptimizer`` (public attribute)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def learning_rate_object(optimizer: Any) -> Any:
    """The rate as given to the optimizer: a ``Variable`` or a ``LearningRateSchedule``.

    ``optimizer.learning_rate`` evaluates a schedule at the current step; only
    ``_learning_rate`` holds the schedule object itself.
    """
    return getattr(inner_optimizer(optimizer), "_learning_rate", None)


def routed_optimizer(multi: Any, variable: Any) -> Any:
    """The sub-optimizer of a ``MultiOptimizer`` that updates ``variable`` (``_optimizer_map``)."""
    return multi._optimizer_map(variable)


def _rebuild_single(optimizer: Any, variables: list) -> None:
    # Keras optimizers refuse variables they were not built with, and rebuilding from
    # scratch would wipe the moments of weights that were already training. Slot
    # variables are named after the model variable they shadow, so state is carried over
    # by name. No public API un-builds an optimizer.
    key = optimizer._var_key
    if optimizer.built and [key(v) for v in optimizer._trainable_variables] == [
        key(v) for v in variables
    ]:
        return
    keep = {id(optimizer._iterations)}
    if isinstance(optimizer._learning_rate, keras.Variable):
        keep.add(id(optimizer._learning_rate))
    saved = {}
    for v in optimizer.variables:
        if id(v) not in keep:
            saved[v.path] = keras.ops.convert_to_numpy(v)
            optimizer._untrack_variable(v)
    optimizer._trainable_variables_indices = {}
    optimizer._trainable_variables = []
    optimizer.built = False
    optimizer.build(variables)
    for v in optimizer.variables:
        old = saved.get(v.path)
        if id(v) not in keep and old is not None and tuple(old.shape) == tuple(v.shape):
            v.assign(old)
    if getattr(optimizer, "use_ema", False):
        # A new average starts at zero; Keras seeds it with the weight only on the
        # optimizer's first step, long past for weights unfrozen mid-run.
        for v, average in zip(variables, optimizer._model_variables_moving_average):
            if average is not None and average.path not in saved:
                average.assign(v)


def rebuild_optimizer(optimizer: Any, variables: list) -> None:
    """Rebuild a built optimizer in place on ``variables``, keeping the state of known ones."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        rebuild_optimizer(optimizer.inner_optimizer, variables)
        optimizer._trainable_variables = variables[:]
        optimizer._trainable_variables_indices = {
            optimizer._var_key(v): i for i, v in enumerate(variables)
        }
        return
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        routed: dict[int, list] = {id(o): [] for o in optimizer.optimizers}
        for v in variables:
            routed.setdefault(id(routed_optimizer(optimizer, v)), []).append(v)
        for sub in optimizer.optimizers:
            if sub.built:
                _rebuild_single(sub, routed[id(sub)])
        # MultiOptimizer.build re-routes and builds only the sub-optimizers not built yet.
        optimizer.built = False
        optimizer.build(variables)
        return
    _rebuild_single(optimizer, variables)


def has_ema_averages(optimizer: Any) -> bool:
    """Whether an EMA optimizer has built its averages (``_model_variables_moving_average``)."""
    return bool(getattr(optimizer, "use_ema", False)) and hasattr(
        optimizer, "_model_variables_moving_average"
    )


def add_weight_after_build(layer: Any, **kwargs: Any) -> Any:
    """``layer.add_weight(...)`` on a layer that is already built.

    Keras locks a layer's variable tracker once it is built; ``enable_lora`` unlocks it
    (``_tracker``) to add its factors, and kerasft's in-place DoRA adds its magnitude
    vector the same way. There is no public API to add state to a built layer.
    """
    layer._tracker.unlock()
    try:
        return layer.add_weight(**kwargs)
    finally:
        layer._tracker.lock()


# ----------------------------------------------------------------------------- callbacks


def metric_direction(metric: Any) -> str | None:
    """``"up"``, ``"down"`` or ``None``: which way a Keras metric improves (``_direction``)."""
    return getattr(metric, "_direction", None)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's backup, also for a model that only speaks for another one.

    The model trained on cached features is never built itself (its layers belong to the
    full model, which is); Keras's ``_load_model`` checks ``built`` and would refuse it.
    The override is of a private hook, and the resumed epoch goes to ``_initial_epoch``,
    which is where Keras's own implementation puts it.
    """

    def _load_model(self):
        if os.path.exists(self._weights_path):
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self._weights_path)
        if os.path.exists(self._training_metadata_path):
            with open(self._training_metadata_path) as f:
                self.model._initial_epoch = json.load(f)["epoch"]


class SwapEMAWeights(keras.callbacks.SwapEMAWeights):
    """Keras's ``SwapEMAWeights`` that skips sub-optimizers not built yet.

    A ``MultiOptimizer`` builds only the sub-optimizers that have weights, so with
    groups still frozen (gradual unfreezing) Keras's callback fails on the others. The
    override is of the private ``_apply_to_ema_optimizers``.
    """

    def _apply_to_ema_optimizers(self, tf_fn, backend_fn):
        optimizer = inner_optimizer(self.model.optimizer)
        swap = tf_fn if keras.backend.backend() == "tensorflow" else backend_fn
        for opt in getattr(optimizer, "optimizers", [optimizer]):
            if has_ema_averages(opt):
                swap(opt)


# ---------------------------------------------------------------------------- tf.distribute


def symbolic_build(model: Any, batch: Any) -> None:
    """Build a compiled model (metrics, optimizer) from one local batch.

    Keras 3 builds a compiled model under a strategy from a batch that it averages across
    replicas, which fails for the (x, y) batches of ``MultiWorkerMirroredStrategy``;
    ``_symbolic_build(data_batch=...)`` is the builder ``fit`` calls.
    """
    model._symbolic_build(data_batch=batch)


def forget_distribute_strategy(model: Any) -> None:
    """Make ``fit`` take the strategy from the enclosing scope (``_distribute_strategy``)."""
    model._distribute_strategy = None


# --------------------------------------------------------------------------------- tf.data


def dataset_op_names(dataset: Any) -> Iterator[str]:
    """Names of every op in a ``tf.data`` pipeline's graph, functions included.

    ``Dataset._as_serialized_graph`` is the only way to see what a pipeline computes.
    """
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(dataset._as_serialized_graph().numpy())
    for node in graph.node:
        yield node.op
    for fn in graph.library.function:
        for node in fn.node_def:
            yield node.op


# ---------------------------------------------------------------------------- SavedModels


def reloaded_object(layer: Any) -> Any:
    """The ``tf.saved_model.load`` object behind a ``TFSMLayer`` (``_reloaded_obj``)."""
    return layer._reloaded_obj


class TrainableTFSMLayer(keras.layers.TFSMLayer):
    """``TFSMLayer`` whose weights have names a Keras optimizer accepts.

    ``TFSMLayer`` names its weights after the SavedModel's variables, such as
    ``"dense/kernel:0"``; optimizers derive slot-variable names from them, and the ``":"``
    makes ``fit`` fail with "... is not a valid scope name". The override is of the
    private ``_add_existing_weight`` hook, through which ``TFSMLayer`` adopts each
    variable, and tracks with ``_track_variable`` as Keras does there.
    """

    def _add_existing_weight(self, weight):
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", weight.name.split(":")[0])
        variable = keras.Variable(
            initializer=weight,  # a tf.Variable: wrapped, not copied
            trainable=weight.trainable,
            dtype=weight.dtype,
            shape=weight.shape,
            name=name,
        )
        self._track_variable(variable)


# ---------------------------------------------------------------------------- KerasHub internals


def llama_block_parts(layer: Any) -> dict[str, Any]:
    """The sublayers of a KerasHub ``LlamaTransformerDecoder`` by role.

    KerasHub keeps them as private attributes and offers no public accessor; a GGUF file
    names each weight by its role, so reading and writing one needs them.
    """
    attention = layer._self_attention_layer
    return {
        "attention": attention,
        "attention_norm": layer._self_attention_layernorm,
        "query": attention._query_dense,
        "key": attention._key_dense,
        "value": attention._value_dense,
        "output": attention._output_dense,
        "ffn_norm": layer._feedforward_layernorm,
        "gate": layer._feedforward_gate_dense,
        "up": layer._feedforward_intermediate_dense,
        "down": layer._feedforward_output_dense,
    }


def parent_hook(cls: type, obj: Any, name: str) -> Callable[..., Any]:
    """The parent class's private hook ``name`` bound to ``obj`` (``super(cls, obj).name``).

    For subclasses that extend a KerasHub tokenizer's private set-up hooks
    (``_update_special_token_ids``, ``_set_vocabulary_and_merges_tokenizers``), which are
    the only places its vocabulary is installed.
    """
    return getattr(super(cls, obj), name)
