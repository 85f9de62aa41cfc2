"""How ``finetune`` runs each phase fast: feature caching, XLA, precision, step grouping.

The glue between ``finetune``'s phase loop and :mod:`kerasft.speed.caching`,
:mod:`kerasft.speed.devices` and :mod:`kerasft.speed.distribute`: one :class:`SpeedPlan`
per run gives, for each phase, the model to fit, its pipelines and its compile keywords,
and records what it decided as a :class:`SpeedRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras

from kerasft import data as data_lib
from kerasft.speed import caching, compiled, devices, distribute

if TYPE_CHECKING:  # kerasft.configs validates with this module's check_options
    from kerasft.configs import SpeedConfig

__all__ = ["SpeedPlan", "SpeedRecord", "PhaseSpeed", "check_options"]


def check_options(
    *,
    cache_features: Any,
    cache_budget: Any,
    jit_compile: Any,
    mixed_precision: Any,
    steps_per_execution: Any,
) -> None:
    """Validate the speed keywords of ``finetune`` before any work is done."""
    caching.check_cache_features(cache_features)
    if (
        isinstance(cache_budget, bool)
        or not isinstance(cache_budget, (int, float))
        or cache_budget < 0
    ):
        raise ValueError(
            "Argument `cache_budget` must be a number of bytes >= 0. Received: "
            f"cache_budget={cache_budget!r}"
        )
    devices.choose_jit_compile(jit_compile, ["CPU"])
    devices.choose_mixed_precision(mixed_precision, ["CPU"])
    devices.choose_steps_per_execution(steps_per_execution, steps_per_epoch=1, cached=False)


@dataclass
class PhaseSpeed:
    """How one phase was run.

    Attributes:
        cached: whether the phase trained on cached features.
        reason: why it did or did not.
        feature_seconds: seconds spent computing the features.
        feature_bytes: size of the features.
        feature_source: where the features came from (computed, kept, derived, or
            reused from a :class:`kerasft.speed.FeatureStore`).
        steps_per_execution: training steps per call into TensorFlow.
        compiled: with a store that keeps compiled models
            (:mod:`kerasft.speed.compiled`): whether the phase traced a compiled copy
            kept for reuse, reused one traced before, or trained its own model (and
            why); empty without such a store.
    """

    cached: bool
    reason: str
    feature_seconds: float
    feature_bytes: int
    feature_source: str
    steps_per_execution: int
    compiled: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cached": self.cached,
            "reason": self.reason,
            "feature_seconds": self.feature_seconds,
            "feature_bytes": self.feature_bytes,
            "feature_source": self.feature_source,
            "steps_per_execution": self.steps_per_execution,
            "compiled": self.compiled,
        }


@dataclass
class SpeedRecord:
    """What a :class:`SpeedPlan` decided for a run, and for each of its phases.

    Attributes:
        devices: device types TensorFlow saw, e.g. ``["CPU", "GPU"]``.
        precision: the Keras dtype policy trained with.
        precision_reason: why that policy.
        jit_compile: whether training steps were compiled with XLA.
        phases: one :class:`PhaseSpeed` per phase, in order.
    """

    devices: list[str]
    precision: str
    precision_reason: str
    jit_compile: bool
    phases: list[PhaseSpeed] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "jit_compile": self.jit_compile,
            "phases": [phase.to_dict() for phase in self.phases],
        }


class SpeedPlan:
    """Per-phase models, pipelines and compile keywords of one ``finetune`` run.

    Creating it applies the mixed-precision policy to ``model`` (the output layer stays
    float32). ``feature_store``, a :class:`kerasft.speed.FeatureStore`, shares cached
    features with other runs, and compiled models when it keeps them: a phase then
    compiles and fits a :class:`kerasft.speed.compiled.SharedFitModel`.
    """

    def __init__(
        self,
        model: keras.Model,
        prepared: data_lib.PreparedData,
        speed: SpeedConfig,
        *,
        seed: int = 0,
        distributed: bool = False,
        verbose: int = 0,
    ):
        """Decide the run's precision and XLA, and open its feature cache.

        Args:
            model: the model the run trains (mixed precision is applied to it here).
            prepared: the run's :class:`kerasft.data.PreparedData`.
            speed: the run's :class:`kerasft.SpeedConfig`, validated when it was built
                (``distribute`` is the runner's).
            seed: seed of the feature cache's shuffles. Defaults to `0`.
            distributed: whether the run trains under a ``tf.distribute`` strategy.
                Defaults to `False`.
            verbose: print what the cache does. Defaults to `0`.
        """
        kinds = devices.device_types()
        self.precision, precision_reason = devices.choose_mixed_precision(
            speed.mixed_precision, kinds, cpu_bf16=devices.cpu_supports_bfloat16()
        )
        if self.precision != "float32":
            devices.apply_mixed_precision(model, self.precision)
        self.jit_compile = devices.resolve_jit_compile(speed.jit_compile, model, kinds)
        self.steps_per_execution = speed.steps_per_execution
        self.prepared = prepared
        self.cache = caching.FeatureCache(
            prepared,
            mode=speed.cache_features,
            seed=seed,
            budget=speed.cache_budget,
            distributed=distributed,
            verbose=verbose,
            store=speed.feature_store,
        )
        self.verbose = verbose
        self.distributed = distributed
        self.compiled_models = None if speed.feature_store is None else speed.feature_store.compiled
        self.record = SpeedRecord(
            devices=kinds,
            precision=self.precision,
            precision_reason=precision_reason,
            jit_compile=self.jit_compile,
        )

    def setup_phase(
        self,
        model: keras.Model,
        index: int,
        *,
        cacheable: bool = True,
        later_trainable: Sequence[keras.layers.Layer] | None = None,
    ) -> caching.PhaseSetup:
        """Model, pipelines and ``compile_kwargs`` for phase ``index`` (0-based).

        ``cacheable=False`` for phases whose trainable layers change during ``fit``
        (gradual unfreezing), where stored features would go stale, and where a kept
        compiled model would train a fixed set. ``later_trainable``: the layers the
        next phase will train, if known; their features are then computed once for
        both phases (see :class:`kerasft.speed.caching.FeatureCache`).
        """
        if cacheable:
            setup = self.cache.setup_phase(model, index, later_trainable=later_trainable)
        else:
            setup = self.cache.plain_setup(model, index)
            setup.reason = "layers are unfrozen during the phase"
        if self.distributed:
            setup.model = distribute.wrap_for_fit(setup.model)
        spe = devices.choose_steps_per_execution(
            self.steps_per_execution,
            steps_per_epoch=self.prepared.steps_per_epoch,
            cached=setup.cached,
        )
        setup.compile_kwargs = {"jit_compile": self.jit_compile, "steps_per_execution": spe}
        record = PhaseSpeed(
            cached=setup.cached,
            reason=setup.reason,
            feature_seconds=setup.feature_seconds,
            feature_bytes=setup.feature_bytes,
            feature_source=setup.feature_source,
            steps_per_execution=spe,
        )
        self.record.phases.append(record)
        if self.compiled_models is not None:
            if cacheable and not self.distributed:
                setup.model = self.compiled_models.for_phase(setup.model, record)
            else:
                record.compiled = f"{compiled.OWN}: " + (
                    "training runs under a tf.distribute strategy"
                    if self.distributed
                    else "layers are unfrozen during the phase"
                )
        return setup

    def before_fit(self, setup: caching.PhaseSetup) -> None:
        """Last step between ``compile`` and ``fit`` (a build under multi-worker training)."""
        if self.distributed:
            distribute.prepare_fit(setup.model, setup.train)

    def report(self) -> SpeedRecord:
        """What was decided so far: the run's settings and one :class:`PhaseSpeed` per phase."""
        return SpeedRecord(
            devices=list(self.record.devices),
            precision=self.record.precision,
            precision_reason=self.record.precision_reason,
            jit_compile=self.record.jit_compile,
            phases=list(self.record.phases),
        )

    def close(self) -> None:
        self.cache.close()
