"""``tf.distribute`` support: pick a strategy, and fine-tune under its scope.

``finetune(..., speed=SpeedConfig(distribute=strategy))`` loads or copies the model,
rebuilds the head, compiles and trains inside ``strategy.scope()``, so every variable is
a distributed one.
Supported: ``MirroredStrategy`` (several GPUs, or logical CPU devices),
``MultiWorkerMirroredStrategy`` (several machines or processes, configured by
``TF_CONFIG``) and ``TPUStrategy``. TPUs could not be run where kerasft is developed: the
code path is the same as for the other strategies (Keras distributes the ``tf.data``
pipelines and compiles with XLA on TPU), but it is untested.

``batch_size`` is the global batch: each of N replicas sees ``batch_size / N`` examples
per step. The learning rates are not changed for you; when scaling a recipe tuned on one
device to N replicas at N times the batch, the usual starting point is the linear
scaling rule (multiply ``lr``/``finetune_lr`` by N, with warmup), or the square root of
N for Adam-type optimizers.

TensorFlow wants a ``MultiWorkerMirroredStrategy`` created at program start, before
other TensorFlow work: create it first thing and pass it (``distribute="auto"`` creates
one when ``finetune`` is called, after the data was loaded, which can fail). Every
worker of a multi-worker run must call ``finetune`` with the same arguments (the
same seed gives all of them the same split and shuffles); the data is sharded by
example, so each worker reads the whole dataset and keeps its share of every batch.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tensorflow as tf

from kerasft import _keras_compat as compat
from kerasft.speed.prefix import CachedFeatureModel

__all__ = [
    "resolve_strategy",
    "in_scope",
    "check_model_variables",
    "num_replicas",
    "MultiWorkerModel",
    "prepare_fit",
    "choose_strategy_kind",
    "wrap_for_fit",
]


_AUTO: dict[str, tf.distribute.Strategy] = {}


def _tf_config_workers(tf_config: str | None) -> int:
    if not tf_config:
        return 0
    try:
        cluster = json.loads(tf_config).get("cluster", {})
    except (ValueError, AttributeError):
        raise ValueError(
            f"Environment variable TF_CONFIG is not valid JSON: {tf_config!r}"
        ) from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def choose_strategy_kind(devices: dict[str, int], tf_config: str | None = None) -> str | None:
    """Which strategy ``distribute="auto"`` builds, from device counts and ``TF_CONFIG``.

    Example:

    >>> choose_strategy_kind({"CPU": 1, "GPU": 2})
    'mirrored'
    >>> choose_strategy_kind({"CPU": 1}) is None
    True

    Returns:
        ``"multi_worker"``, ``"tpu"``, ``"mirrored"`` or ``None`` (one device: no strategy).
    """
    if _tf_config_workers(tf_config) > 1:
        return "multi_worker"
    if devices.get("TPU", 0) > 0:
        return "tpu"
    if devices.get("GPU", 0) > 1:
        return "mirrored"
    return None


def resolve_strategy(distribute: Any) -> tf.distribute.Strategy | None:
    """Turn the ``distribute`` argument into a strategy (or ``None`` for one device).

    Args:
        distribute: ``None``, a ``tf.distribute.Strategy``, or ``"auto"``: a
            ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` lists several workers, a
            ``TPUStrategy`` when a TPU is attached, a ``MirroredStrategy`` over several
            GPUs, else ``None``.

    Raises:
        ValueError: any other value.
    """
    if distribute is None or isinstance(distribute, tf.distribute.Strategy):
        return distribute
    if distribute != "auto":
        raise ValueError(
            "Argument `distribute` must be None, 'auto' or a tf.distribute.Strategy (e.g. "
            f"tf.distribute.MirroredStrategy()). Received: distribute={distribute!r}"
        )
    counts: dict[str, int] = {}
    for d in tf.config.list_logical_devices():
        counts[d.device_type] = counts.get(d.device_type, 0) + 1
    kind = choose_strategy_kind(counts, os.environ.get("TF_CONFIG"))
    if kind == "multi_worker":  # one per process: collective ops are set up once
        if "multi_worker" not in _AUTO:
            _AUTO["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _AUTO["multi_worker"]
    if kind == "tpu":  # pragma: no cover - no TPU where the tests run
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return None


def in_scope(strategy: tf.distribute.Strategy) -> bool:
    """Whether the code runs inside ``strategy.scope()``."""
    return tf.distribute.has_strategy() and tf.distribute.get_strategy() is strategy


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 outside any)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def check_model_variables(model: Any, strategy: tf.distribute.Strategy) -> None:
    """Raise unless ``model``'s variables were created under ``strategy``'s scope.

    Raises:
        ValueError: with the fix (``copy=True``, or build the model in the scope).
    """
    outside = [
        v.path
        for v in model.weights
        if not strategy.extended.variable_created_in_scope(getattr(v, "value", v))
    ]
    if outside:
        raise ValueError(
            f"Argument `model`: {len(outside)} variables of model {model.name!r} (e.g. "
            f"{outside[0]!r}) were created outside the scope of `distribute` "
            f"({type(strategy).__name__}), so they cannot be trained by it. HINT: pass "
            "copy=True (kerasft then copies the model inside the scope), a model file path, "
            "or build the model under `with strategy.scope():`."
        )


def _is_multi_worker(strategy: Any) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


class MultiWorkerModel(CachedFeatureModel):
    """Fits ``model`` under a ``MultiWorkerMirroredStrategy``.

    Keras 3 averages the per-replica logs of a multi-worker step along axis 0, which
    fails for the scalar loss and metrics; this wrapper returns them as 1-element
    vectors. Weights, ``save`` and ``get_weights`` are ``model``'s.
    """

    def __init__(self, model: Any, **kwargs: Any):
        super().__init__(model, model, **kwargs)

    def train_step(self, data):
        return {k: tf.reshape(v, [1]) for k, v in super().train_step(data).items()}

    def test_step(self, data):
        return {k: tf.reshape(v, [1]) for k, v in super().test_step(data).items()}


def wrap_for_fit(model: Any) -> Any:
    """The model to compile and fit under the current strategy (``model`` itself or a wrapper)."""
    return MultiWorkerModel(model) if _is_multi_worker(tf.distribute.get_strategy()) else model


def prepare_fit(model: Any, dataset: tf.data.Dataset) -> None:
    """Build a compiled ``model`` for ``fit`` under a ``MultiWorkerMirroredStrategy``.

    Keras 3 builds a compiled model under a strategy from a batch that it averages
    across replicas with ``strategy.reduce``, which fails for the ``(x, y)`` batches of
    ``MultiWorkerMirroredStrategy``. Building from one local batch of ``dataset``
    instead, then letting ``fit`` take the strategy from the enclosing scope, trains the
    same way. Other strategies need nothing.
    """
    if not _is_multi_worker(tf.distribute.get_strategy()):
        return
    batch = next(iter(dataset.take(1)))
    compat.symbolic_build(model, batch)
    compat.forget_distribute_strategy(model)  # fit runs inside strategy.scope() and finds it there
