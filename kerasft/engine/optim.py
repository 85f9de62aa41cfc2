"""The optimizer of each phase: its schedule, its layer-wise rates, and the stages.

A phase trains at one peak rate, constant (head phases) or warmed up linearly and
decayed along a cosine (phases that train the body), or warmed up and then held at its
peak (``recipe="auto"``'s fine-tune of a model with embeddings). With ``lr_mult`` or
``layer_decay`` the rate spreads over layer groups through a Keras ``MultiOptimizer``
(:mod:`kerasft.layerwise`). A staged phase (gradual unfreezing) gets one sub-optimizer
per stage, each with its own warmup from the epoch its layers join, and the
``GradualUnfreezing`` callback that unfreezes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import layerwise, surgery
from kerasft import schedules as _schedules
from kerasft.callbacks import GradualUnfreezing
from kerasft.engine.plan import Phase
from kerasft.unfreezing import apply_trainable

__all__ = [
    "PhaseOptimizer",
    "warmup_cosine",
    "warmup_constant",
    "phase_optimizer",
    "staged_optimizer",
]

MakeOptimizer = Callable[[Any], keras.optimizers.Optimizer]


@dataclass
class PhaseOptimizer:
    """What a phase compiles with, and what else its ``fit`` needs.

    Attributes:
        optimizer: the optimizer to compile with.
        peak: the highest peak rate of the phase (for logs and records).
        callbacks: callbacks that belong to the phase (``GradualUnfreezing``).
        settle_epoch: the epoch from which the trainable set is final; early stopping
            starts counting there.
    """

    optimizer: keras.optimizers.Optimizer
    peak: float
    callbacks: list[keras.callbacks.Callback]
    settle_epoch: int = 0


def warmup_cosine(
    peak: float, total_steps: int, warmup_fraction: float
) -> _schedules.WarmupCosineDecay:
    """Linear warmup over ``warmup_fraction`` of ``total_steps``, then cosine decay to 0.

    kerasft's schedule rather than Keras's ``CosineDecay``: ``ReduceLROnPlateauScaled``
    can scale it.
    """
    return _warmup_then(peak, total_steps, warmup_fraction, final=0.0)


def warmup_constant(
    peak: float, total_steps: int, warmup_fraction: float
) -> _schedules.WarmupCosineDecay:
    """Linear warmup over ``warmup_fraction`` of ``total_steps``, then ``peak`` to the end.

    A :class:`~kerasft.schedules.WarmupCosineDecay` whose final rate is its peak, so
    ``ReduceLROnPlateauScaled`` can scale it as it scales the cosine.
    """
    return _warmup_then(peak, total_steps, warmup_fraction, final=peak)


def _warmup_then(
    peak: float, total_steps: int, warmup_fraction: float, final: float
) -> _schedules.WarmupCosineDecay:
    """Linear warmup over ``warmup_fraction`` of ``total_steps`` (at least 1, the warmup
    shorter), then a cosine from ``peak`` to ``final``."""
    total_steps = max(1, total_steps)
    warmup = min(int(round(warmup_fraction * total_steps)), total_steps - 1)
    return _schedules.WarmupCosineDecay(
        peak, total_steps=total_steps, warmup_steps=warmup, final_learning_rate=final
    )


_SCHEDULES = {"warmup_cosine": warmup_cosine, "warmup_constant": warmup_constant}


def phase_optimizer(
    model: keras.Model,
    phase: Phase,
    make: MakeOptimizer,
    steps_per_epoch: int,
    *,
    lr_mult: Any = None,
    layer_decay: Any = None,
    layer_groups: Any = None,
) -> PhaseOptimizer:
    """The optimizer of a non-staged phase: one rate, or one per layer group."""
    peak = float(phase.rate)
    rate: Any = peak
    if phase.schedule in _SCHEDULES:
        rate = _SCHEDULES[phase.schedule](peak, phase.epochs * steps_per_epoch, phase.warmup)
    template = make(rate)
    if phase.spread and (lr_mult is not None or layer_decay is not None):
        optimizer = layerwise.discriminative_optimizer(
            model,
            template,
            lr_mult=lr_mult,
            layer_decay=layer_decay,
            groups=layer_groups,
            name="finetune",
        )
        return PhaseOptimizer(optimizer, peak, [])
    if template.weight_decay:
        template.exclude_from_weight_decay(var_list=layerwise.no_decay_variables(model))
    return PhaseOptimizer(template, peak, [])


def staged_optimizer(
    model: keras.Model, phase: Phase, make: MakeOptimizer, steps_per_epoch: int, *, verbose: int = 0
) -> PhaseOptimizer:
    """Freeze all but the first stage; one sub-optimizer per stage with its own schedule.

    Stage ``i`` trains at ``phase.stages[i].rate`` with linear warmup and cosine decay
    from the epoch it starts to the end of the phase. Each sub-optimizer counts its own
    steps, so a stage's warmup begins when it is unfrozen.
    """
    callback = GradualUnfreezing(
        [{"layers": s.layers, "epoch": s.epoch} for s in phase.stages],
        train_bn=phase.train_bn,
        verbose=int(verbose > 0),
    )
    groups = callback.phase_groups(model)
    first = callback.resolved_phases(model)[0][0]
    surgery.freeze(model)
    apply_trainable(model, {id(lyr): True for lyr in first}, phase.train_bn)
    by_name = {}
    for i, stage in enumerate(phase.stages):
        steps = max(1, (phase.epochs - stage.epoch) * steps_per_epoch)
        warm = min(int(round(phase.warmup * steps)), steps - 1)
        by_name[f"phase{i}"] = _schedules.WarmupCosineDecay(
            float(stage.rate), total_steps=steps, warmup_steps=warm, name=f"phase{i}"
        )
    base = float(phase.rate)
    template = make(base)
    weight_decay = template.weight_decay
    factory = layerwise.optimizer_factory(template, weight_decay)
    group_rates = [by_name.get(name, base) for name, _ in groups]
    optimizer = layerwise.grouped_optimizer(
        groups, group_rates, factory, weight_decay, base, "gradual"
    )
    peak = max(float(s.rate) for s in phase.stages)
    return PhaseOptimizer(
        optimizer, peak, [callback], settle_epoch=max(s.epoch for s in phase.stages)
    )
