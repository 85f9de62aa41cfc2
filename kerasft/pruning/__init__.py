"""Magnitude pruning for Keras 3 models, with tfmot's algorithm and API.

tfmot (`tensorflow_model_optimization.sparsity.keras`) only prunes tf_keras (Keras 2)
models. This package gives Keras 3 models the same thing: `prune_low_magnitude` wraps the
prunable layers so their smallest weights are masked to zero as training proceeds,
`UpdatePruningStep` drives the masks during `fit`, and `strip_pruning` returns a plain
model whose kernels hold the zeros. Masks match tfmot's for the same weights, schedule
and steps. tf_keras models are handed to tfmot unchanged. `pruning_plan` fits a
schedule to a fine-tuning run in one call. Requires the TensorFlow backend.

Modules: `schedules` (when and how much), `wrapper` (the `PruneLowMagnitude` layer and
its masks), `prune` (wrap and strip a model), `callbacks`, `report` (sparsity), `plan`
(a schedule fitted to a run) and `finetune` (what ``kerasft.finetune(prune=...)`` uses).
"""

from __future__ import annotations

from kerasft.pruning.callbacks import PruningSummaries, UpdatePruningStep
from kerasft.pruning.finetune import FINETUNE_PRUNE_OPTIONS, PruningRecord
from kerasft.pruning.plan import PruningPlan, pruning_plan
from kerasft.pruning.prune import LayerSelection, prune_low_magnitude, strip_pruning
from kerasft.pruning.report import SparsityReport, check_m_by_n, sparsity_report
from kerasft.pruning.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
    check_schedule,
    from_tfmot_schedule,
)
from kerasft.pruning.wrapper import (
    PRUNABLE_LAYER_TYPES,
    PruneLowMagnitude,
    is_prunable,
    prunable_weights,
)

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningPlan",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "UpdatePruningStep",
    "check_m_by_n",
    "prune_low_magnitude",
    "pruning_plan",
    "sparsity_report",
    "strip_pruning",
    "FINETUNE_PRUNE_OPTIONS",
    "LayerSelection",
    "PRUNABLE_LAYER_TYPES",
    "PruningRecord",
    "check_schedule",
    "from_tfmot_schedule",
    "is_prunable",
    "prunable_weights",
]
