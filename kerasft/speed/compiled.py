"""Compiled training models kept across ``finetune`` calls, so that a phase is traced once.

Each ``finetune`` phase compiles its model, and Keras traces its training and validation
steps again at the first batch: on a few hundred examples that is a third or more of a
phase. The trials of ``kerasft.search`` repeat it for networks that differ only in their
weights' values. :class:`CompiledModels` (kept by a :class:`kerasft.speed.FeatureStore`
made with ``compiled_models=``; ``kerasft.search`` makes one) keeps the compiled copy of
each network it has trained, keyed by what the training step depends on: the network
(:func:`kerasft.speed.keys.network_key`: graph, layer settings, trainable flags), the
loss, the metrics, the optimizer's class and settings, XLA and steps per execution.

A phase whose key was seen trains in that copy: its weights (random-number states
included), its optimizer's state and its learning rates are copied in, the same
compiled steps run, and the trained weights and optimizer state are copied back into
the phase's own model and optimizer. The learning rate reaches the copy as a table of
the phase's schedule, step by step, held in a variable, so rates and epochs may differ
from call to call without a new trace. While it trains, the copy speaks for the phase's
model to the callbacks (``get_weights``, ``set_weights``, ``save``), as a
:class:`~kerasft.speed.prefix.CachedFeatureModel` does.

A phase trains its own model, as without a store, when the copy could compute something
else: weights with regularizers or constraints (L2-SP, weight clipping), a model whose
class has its own training step, an optimizer with weight decay (its exclusions are
kept by variable), several optimizers, loss scaling, a loss or metric that cannot be
copied from its config, a callback that changes the model or its optimizer during ``fit``
(pruning, ``LearningRateScheduler``), or a pipeline without a known length.
``PhaseSpeed.compiled`` says which way each phase went and why.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft import schedules
from kerasft.speed.keys import network_key
from kerasft.speed.prefix import CachedFeatureModel

__all__ = [
    "CompiledModels",
    "SharedFitModel",
    "RateTable",
    "rates_of",
    "compile_key",
    "TRACED",
    "REUSED",
    "OWN",
]

# What ``PhaseSpeed.compiled`` says when the phase trained in a kept copy.
TRACED = "compiled a copy kept for reuse (traced)"
REUSED = "reused a compiled copy (not traced again)"
OWN = "own model"

_PLAIN_OPTIMIZERS = tuple(
    getattr(keras.optimizers, name)
    for name in (
        "Adam",
        "AdamW",
        "SGD",
        "RMSprop",
        "Adagrad",
        "Adadelta",
        "Adamax",
        "Nadam",
        "Lion",
        "Ftrl",
    )
    if hasattr(keras.optimizers, name)
)
_TABLES = 64  # rate tables kept by CompiledModels, oldest dropped first
# Keras's own training-step methods: a model class that replaces one trains its own way.
_STEP_METHODS = ("train_step", "test_step", "compute_loss", "compute_metrics")


class _Held:
    """Holds an object out of Keras's attribute tracking."""

    def __init__(self, obj: Any):
        self.obj = obj


class RateTable(schedules.KerasftSchedule):
    """The learning rate of each step, read from a table held in a variable.

    The table is filled before each ``fit`` with the phase's own schedule evaluated step
    by step, so one traced training step follows any schedule and any number of
    epochs. Past the table's end, its last rate. It is a kerasft schedule, so that
    ``ReduceLROnPlateauScaled`` can lower its ``multiplier``.
    """

    def __init__(self):
        super().__init__(name="rate_table")
        self.rates = tf.Variable(
            np.zeros(1, "float32"), shape=tf.TensorShape([None]), trainable=False
        )

    @property
    def peak_learning_rate(self) -> float:
        return float(np.max(self.rates.numpy()))

    def fill(self, rates: np.ndarray) -> None:
        self.rates.assign(np.asarray(rates, "float32"))
        self.multiplier = 1.0

    def _rate(self, step):
        index = tf.clip_by_value(tf.cast(step, "int32"), 0, tf.size(self.rates) - 1)
        return tf.gather(self.rates, index)

    def _own_config(self) -> dict[str, Any]:
        return {}  # never saved: the models that train with it speak for others


def rates_of(rate: Any, count: int, cache: dict | None = None) -> np.ndarray:
    """The learning rate of steps ``0 .. count - 1`` of an optimizer whose rate is ``rate``.

    A schedule is evaluated step by step inside one ``tf.function`` (``map_fn``), which
    gives the same float32 values as the optimizer's own evaluation at each step (a
    vectorised evaluation may differ in the last bit). ``cache`` keeps tables by the
    schedule's class and configuration: trials that share a rate share its table.
    """
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        try:
            kind = f"{type(rate).__module__}.{type(rate).__qualname__}"
            key = (kind, json.dumps(rate.get_config(), sort_keys=True), count)
        except Exception:
            key = None
        if cache is not None and key is not None and key in cache:
            return cache[key]

        @tf.function
        def table(n):
            steps = tf.range(n, dtype=tf.int64)
            return tf.map_fn(
                lambda s: tf.cast(rate(s), tf.float32), steps, fn_output_signature=tf.float32
            )

        rates = table(tf.constant(count, tf.int64)).numpy()
        if cache is not None and key is not None:
            if len(cache) >= _TABLES:
                cache.pop(next(iter(cache)))
            cache[key] = rates
        return rates
    return np.full(count, float(keras.ops.convert_to_numpy(rate)), "float32")


def _serialized(objects: Any, serialize: Any) -> Any:
    return [o if isinstance(o, str) else serialize(o) for o in objects]


def _copy_of(obj: Any, module: Any) -> Any:
    """A new loss or metric object from ``obj``'s config (strings and functions as they are)."""
    if isinstance(obj, str) or not hasattr(obj, "get_config"):
        return obj
    return module.deserialize(module.serialize(obj))


def compile_key(optimizer: Any, loss: Any, metrics: Any, options: dict[str, Any]) -> str | None:
    """What a compiled training step depends on besides the network, or ``None`` if unshareable.

    The optimizer's class and settings but its learning rate, the loss, the metrics and
    the other ``compile`` keywords. ``None`` for an optimizer that is not one of Keras's
    single optimizers (several optimizers, loss scaling), that has weight decay (its
    exclusions are kept by variable, which a copy does not have), or whose rate is
    neither a number nor a schedule.
    """
    if type(optimizer) not in _PLAIN_OPTIMIZERS or optimizer.weight_decay:
        return None
    rate = compat.learning_rate_object(optimizer)
    if not isinstance(rate, (keras.Variable, keras.optimizers.schedules.LearningRateSchedule)):
        return None  # a callable: no table of its rates can be made
    try:
        config = dict(optimizer.get_config())
        config.pop("learning_rate", None)
        config.pop("name", None)  # Keras numbers optimizers' names (adam_1, adam_2...)
        parts = [
            type(optimizer).__name__,
            config,
            _serialized([loss], keras.losses.serialize),
            _serialized(list(metrics or []), keras.metrics.serialize),
            {k: options[k] for k in sorted(options)},
        ]
        return json.dumps(parts, sort_keys=True)
    except Exception:
        return None


def network_problem(source: keras.Model) -> str | None:
    """Why a copy of ``source`` could train differently from it, or ``None``."""
    for name in _STEP_METHODS:
        if getattr(type(source), name) is not getattr(keras.Model, name):
            return f"{type(source).__name__} has its own {name}"
    for variable in source.variables:
        if getattr(variable, "regularizer", None) is not None:
            return f"weight {variable.path} has a regularizer"
        if getattr(variable, "constraint", None) is not None:
            return f"weight {variable.path} has a constraint"
    layers = compat.flatten_layers(source, include_self=False)
    if any(getattr(layer, "activity_regularizer", None) is not None for layer in layers):
        return "a layer has an activity regularizer"
    if source.losses:
        return "the model adds losses of its own"
    return None


def callbacks_problem(callbacks: Any) -> str | None:
    """Why ``callbacks`` could not drive a shared copy, or ``None``."""
    from kerasft.callbacks import GradualUnfreezing

    changing = (
        keras.callbacks.LearningRateScheduler,
        keras.callbacks.ReduceLROnPlateau,
        keras.callbacks.BackupAndRestore,
        GradualUnfreezing,
    )
    for callback in callbacks or ():
        if isinstance(callback, changing) or type(callback).__module__.startswith(
            "kerasft.pruning"
        ):
            return (
                f"callback {type(callback).__name__} changes the model or its optimizer during fit"
            )
    return None


class _Copy(keras.Model):
    """A compiled copy of a network, kept for every phase that trains the same one.

    While it fits for a :class:`SharedFitModel`, it speaks for that phase's model:
    ``get_weights``, ``set_weights``, ``save``, ``save_weights`` and ``load_weights``
    act on it (with the trained weights copied back first), so callbacks that keep best
    weights or write checkpoints see the model being fine-tuned.
    """

    def __init__(self, network: keras.Model, key: tuple[str, str], **kwargs: Any):
        super().__init__(name=f"{network.name}_compiled", **kwargs)
        self.network = network
        self.key = key
        self.rates = RateTable()
        self._phase: _Held | None = None

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    @property
    def phase(self) -> SharedFitModel | None:
        return None if self._phase is None else self._phase.obj

    def train_for(self, phase: SharedFitModel | None) -> None:
        self._phase = None if phase is None else _Held(phase)

    def get_weights(self):
        if self.phase is None:
            return super().get_weights()
        return self.phase.current_weights()

    def set_weights(self, weights):
        if self.phase is None:
            return super().set_weights(weights)
        self.phase.target.set_weights(weights)
        self.phase.copy_weights_in()

    def save(self, *args, **kwargs):
        if self.phase is None:
            return super().save(*args, **kwargs)
        self.phase.copy_weights_out()
        return self.phase.target.save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        if self.phase is None:
            return super().save_weights(*args, **kwargs)
        self.phase.copy_weights_out()
        return self.phase.target.save_weights(*args, **kwargs)

    def load_weights(self, *args, **kwargs):
        if self.phase is None:
            return super().load_weights(*args, **kwargs)
        out = self.phase.target.load_weights(*args, **kwargs)
        self.phase.copy_weights_in()
        return out


class SharedFitModel(keras.Model):
    """The model a phase compiles and fits when its compiled steps may be shared.

    ``compile`` compiles the phase's own model (``target``, returned and evaluated as
    usual) and looks up the kept copy for the phase's network and compile settings
    (made and compiled on a first use); ``fit`` trains in that copy and copies the
    trained weights and the optimizer's state back. ``get_weights``, ``set_weights``,
    ``save``, ``save_weights`` and ``load_weights`` act on ``target``. When the copy
    cannot be used (see :mod:`kerasft.speed.compiled`), ``fit`` fits ``target`` itself.

    Args:
        target: the model the phase would fit (a full model or a
            :class:`~kerasft.speed.prefix.CachedFeatureModel`).
        source: the network that trains: ``target``, or its suffix on cached features.
        key: :func:`~kerasft.speed.keys.network_key` of ``source``.
        models: the :class:`CompiledModels` that keeps the copies.
        record: the phase's :class:`kerasft.speed.PhaseSpeed`, whose ``compiled`` is set.
    """

    def __init__(
        self,
        target: keras.Model,
        source: keras.Model,
        key: str,
        models: CompiledModels,
        record: Any,
        **kwargs: Any,
    ):
        super().__init__(name=f"{target.name}_shared", **kwargs)
        # Out of Keras's tracking: the phase's model, its optimizer and the kept copy.
        self._refs = _Held(
            {"target": target, "source": source, "models": models, "optimizer": None, "copy": None}
        )
        self.network_key = key
        self.record = record
        self._why = "not compiled"

    @property
    def target(self) -> keras.Model:
        return self._refs.obj["target"]

    @property
    def source(self) -> keras.Model:
        return self._refs.obj["source"]

    @property
    def copy(self) -> _Copy | None:
        """The kept copy this phase trains in (after ``compile``), or ``None``."""
        return self._refs.obj["copy"]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        refs = self._refs.obj
        self.target.compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        optimizer = self.target.optimizer
        refs["optimizer"], refs["copy"] = optimizer, None
        key = compile_key(optimizer, loss, metrics, kwargs)
        if key is None:
            self._why = "its optimizer, loss or metrics cannot be shared"
            return
        if not optimizer.built:  # as Keras's fit would build it, before the first step
            optimizer.build(self.source.trainable_variables)
        refs["copy"], self._why = refs["models"].copy_for(
            self, (self.network_key, key), loss, metrics, kwargs
        )

    def fit(self, x=None, y=None, *, epochs=1, initial_epoch=0, callbacks=None, **kwargs):
        copy = self.copy
        why = self._why if copy is None else callbacks_problem(callbacks)
        steps = _steps_per_epoch(x)
        if why is None and steps is None:
            why = "the training pipeline has no known length"
        if why is not None:
            self.record.compiled = f"{OWN}: {why}"
            return self.target.fit(
                x, y, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, **kwargs
            )
        traced = copy.train_function is None
        self._refs.obj["models"].count(traced)
        self.record.compiled = TRACED if traced else REUSED
        self._load(copy, max(0, epochs - initial_epoch) * steps)
        copy.train_for(self)
        try:
            return copy.fit(
                x, y, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, **kwargs
            )
        finally:
            copy.train_for(None)
            self._unload(copy)

    # ------------------------------------------------------------------ copying state

    def _pairs(self) -> list[tuple[Any, Any]]:
        return list(zip(self.source.variables, self.copy.network.variables))

    def copy_weights_in(self) -> None:
        for mine, theirs in self._pairs():
            theirs.assign(mine.value)

    def copy_weights_out(self) -> None:
        for mine, theirs in self._pairs():
            mine.assign(theirs.value)

    def current_weights(self) -> list[np.ndarray]:
        """``target.get_weights()`` as it would be with the copy's weights copied back.

        Read without copying them back: callbacks ask for the weights at every epoch.
        """
        owner = self.target.full_model if isinstance(self.target, CachedFeatureModel) else None
        owner = self.target if owner is None else owner
        trained = {id(mine): theirs for mine, theirs in self._pairs()}
        return [keras.ops.convert_to_numpy(trained.get(id(v), v)) for v in owner.weights]

    def _load(self, copy: _Copy, steps: int) -> None:
        """Weights, optimizer state and this phase's rates into ``copy``."""
        optimizer = self._refs.obj["optimizer"]
        self.copy_weights_in()
        for mine, theirs in zip(_state(optimizer), _state(copy.optimizer)):
            theirs.assign(mine.value)
        # The schedule reads the optimizer's raw count, one per batch (accumulated or not).
        done = int(keras.ops.convert_to_numpy(_state(copy.optimizer)[0]))
        tables = self._refs.obj["models"].tables
        copy.rates.fill(rates_of(compat.learning_rate_object(optimizer), done + steps + 1, tables))

    def _unload(self, copy: _Copy) -> None:
        """Trained weights and optimizer state back into the phase's own model and optimizer."""
        optimizer = self._refs.obj["optimizer"]
        self.copy_weights_out()
        for mine, theirs in zip(_state(optimizer), _state(copy.optimizer)):
            mine.assign(theirs.value)
        factor = copy.rates.multiplier  # lowered by ReduceLROnPlateauScaled
        if factor != 1.0:
            rate = compat.learning_rate_object(optimizer)
            if isinstance(rate, schedules.KerasftSchedule):
                rate.multiplier = rate.multiplier * factor
            elif isinstance(rate, keras.Variable):
                rate.assign(rate.value * factor)

    # ------------------------------------------------------------ speaking for target

    def get_weights(self):
        return self.target.get_weights()

    def set_weights(self, weights):
        self.target.set_weights(weights)

    def save(self, *args, **kwargs):
        return self.target.save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        return self.target.save_weights(*args, **kwargs)

    def load_weights(self, *args, **kwargs):
        return self.target.load_weights(*args, **kwargs)


def _state(optimizer: Any) -> list:
    """An optimizer's variables but a rate held in one: its step count first, then its slots."""
    return [v for v in optimizer.variables if v.name != "learning_rate"]


def _steps_per_epoch(dataset: Any) -> int | None:
    if not isinstance(dataset, tf.data.Dataset):
        return None
    steps = int(dataset.cardinality())
    return steps if steps > 0 else None


class CompiledModels:
    """Compiled copies of the networks trained so far, kept for the phases that train them again.

    At most ``capacity`` copies are kept; the least recently used is dropped first. Each
    holds its own weights and optimizer state, so a copy costs about three times the
    weights of its network (with Adam) in memory.

    Args:
        capacity: copies kept at most, `>= 1`.

    Attributes:
        traced: ``fit`` calls that traced a new copy's steps.
        reused: ``fit`` calls that ran a copy's steps traced before.
        evictions: copies dropped to make room.
        tables: learning-rate tables by schedule (:func:`rates_of`), at most 64.

    Raises:
        ValueError: a ``capacity`` that is not an integer `>= 1`.
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(
                f"Argument `capacity` must be an integer >= 1. Received: capacity={capacity!r}"
            )
        self.capacity = capacity
        self.traced = 0
        self.reused = 0
        self.evictions = 0
        self.tables: dict = {}  # rate tables by schedule, see rates_of
        self._copies: collections.OrderedDict[tuple[str, str], _Copy] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._copies)

    def __repr__(self) -> str:
        return (
            f"CompiledModels({len(self)} of {self.capacity} kept; {self.reused} fits reused one, "
            f"{self.traced} traced)"
        )

    def count(self, traced: bool) -> None:
        if traced:
            self.traced += 1
        else:
            self.reused += 1

    def clear(self) -> None:
        """Drop every copy (the counters are kept)."""
        self._copies.clear()
        self.tables.clear()

    def for_phase(self, target: keras.Model, record: Any) -> keras.Model:
        """The model a phase should compile and fit: a :class:`SharedFitModel`, or ``target``.

        ``record`` (the phase's ``PhaseSpeed``) says why when it is ``target`` itself.
        """
        source = target.suffix if isinstance(target, CachedFeatureModel) else target
        why = network_problem(source)
        key = network_key(source) if why is None else None
        if why is None and key is None:
            why = "a layer's configuration cannot be serialized"
        if why is not None:
            record.compiled = f"{OWN}: {why}"
            return target
        return SharedFitModel(target, source, key, self, record)

    def copy_for(
        self,
        phase: SharedFitModel,
        key: tuple[str, str],
        loss: Any,
        metrics: Any,
        options: dict[str, Any],
    ) -> tuple[_Copy | None, str | None]:
        """The kept copy for ``key``, made and compiled on first use; or ``(None, why not)``."""
        copy = self._copies.get(key)
        if copy is not None:
            self._copies.move_to_end(key)
            return copy, None
        try:
            copy = _make_copy(phase, key, loss, metrics, options)
        except Exception as e:  # the phase trains its own model, exactly as without a store
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return None, f"no copy of the network ({type(e).__name__}: {first[:200]})"
        if copy is None:
            return None, "a copy of the network is configured differently"
        self._copies[key] = copy
        while len(self._copies) > self.capacity:
            self._copies.popitem(last=False)
            self.evictions += 1
        return copy, None


def _make_copy(
    phase: SharedFitModel, key: tuple[str, str], loss: Any, metrics: Any, options: dict
) -> _Copy | None:
    """A compiled copy of ``phase.source``, or ``None`` if the copy is not the same network."""
    from kerasft.engine.task import copy_model

    source = phase.source
    network = copy_model(source)
    for mine, theirs in zip(source.variables, network.variables):
        if theirs.trainable != mine.trainable:
            theirs.trainable = mine.trainable
    if network_key(network) != phase.network_key:
        return None
    copy = _Copy(network, key)
    copy.dtype_policy = phase.target.dtype_policy
    template = phase.target.optimizer
    optimizer = type(template).from_config({**template.get_config(), "learning_rate": copy.rates})
    copy.compile(
        optimizer=optimizer,
        loss=_copy_of(loss, keras.losses),
        metrics=[_copy_of(m, keras.metrics) for m in metrics or []],
        **options,
    )
    optimizer.build(copy.trainable_variables)
    place = {id(v): i for i, v in enumerate(source.variables)}
    place_copy = {id(v): i for i, v in enumerate(network.variables)}
    if [place.get(id(v)) for v in source.trainable_variables] != [
        place_copy.get(id(v)) for v in copy.trainable_variables
    ]:
        return None  # the copy would train other variables
    mine, theirs = _state(template), _state(optimizer)
    if [tuple(v.shape) for v in mine] != [tuple(v.shape) for v in theirs]:
        return None
    return copy
