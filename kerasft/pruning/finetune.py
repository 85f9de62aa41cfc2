"""What `kerasft.finetune(prune=...)` needs: parse the option, prune a phase, record it.

`parse_prune_option` validates ``prune=`` before any work; `start` wraps the largest
layers that the last phase trains (or those named) and says from which epoch the model
has its target sparsity; `finish` strips the wrappers and returns a `PruningRecord`.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any

import keras
import numpy as np

from kerasft.pruning.plan import SCHEDULE_DEFAULTS, PruningPlan, fit_schedule, pruning_plan
from kerasft.pruning.prune import leaf_layers, strip_model
from kerasft.pruning.report import sparsity_report
from kerasft.pruning.wrapper import (
    PRUNABLE_LAYER_TYPES,
    find_wrappers,
    is_prunable,
    prunable_weights,
)

__all__ = [
    "FINETUNE_PRUNE_OPTIONS",
    "PruningRecord",
    "parse_prune_option",
    "start",
    "finish",
]

# The options `finetune(prune=...)` passes on to `pruning_plan` (the run sets total_steps).
FINETUNE_PRUNE_OPTIONS = (*SCHEDULE_DEFAULTS, "layers", "log_dir")
# Without `layers=`, the largest trained layers holding this share of their weights are pruned.
_FINETUNE_WEIGHT_SHARE = 0.95


@dataclasses.dataclass
class PruningRecord:
    """What pruning during `finetune` did.

    Attributes:
        target_sparsity: the schedule's final sparsity.
        sparsity: fraction of zeros reached in the pruned layers' prunable weights.
        model_sparsity: fraction of zeros in all prunable weights of the model.
        layers: name -> sparsity of each pruned layer.
        schedule: the schedule's config, with its ``class_name``.
    """

    target_sparsity: float
    sparsity: float
    model_sparsity: float
    layers: dict[str, float]
    schedule: dict

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_sparsity": self.target_sparsity,
            "sparsity": self.sparsity,
            "model_sparsity": self.model_sparsity,
            "layers": dict(self.layers),
            "schedule": dict(self.schedule),
        }


def parse_prune_option(prune, recipe: str) -> dict | None:
    """Validate `finetune`'s ``prune=`` (None, a target sparsity, or `pruning_plan` options).

    Example:

    >>> parse_prune_option(0.8, "lp-ft")
    {'target_sparsity': 0.8}
    >>> parse_prune_option(None, "gradual") is None
    True

    Args:
        prune: `None` or `False` (no pruning), a target sparsity in ``[0, 1)``, or a dict
            of `pruning_plan` options other than `total_steps`.
        recipe: the `finetune` recipe, which must be one whose last phase can prune
            (`kerasft.engine.plan.prunable_recipes()`); `None` checks the value alone.

    Returns:
        The `pruning_plan` keyword arguments, or `None` for no pruning.

    Raises:
        ValueError: for an invalid `prune`, or a recipe that cannot prune.
    """
    if prune is None or prune is False:
        return None
    if recipe is not None:
        from kerasft.engine.plan import prunable_recipes

        names = [repr(name) for name in prunable_recipes()]
        if recipe not in prunable_recipes():
            raise ValueError(
                f"Argument `prune` works with recipe {', '.join(names[:-1])} or {names[-1]} (it "
                f"prunes during the last phase). Received: recipe={recipe!r} with prune={prune!r}"
            )
    if isinstance(prune, numbers.Real) and not isinstance(prune, bool):
        options = {"target_sparsity": prune}
    elif isinstance(prune, dict):
        options = dict(prune)
    else:
        raise ValueError(
            "Argument `prune` must be None, a target sparsity in [0, 1) or a dict of "
            f"`kerasft.pruning.pruning_plan` options. Received: prune={prune!r}"
        )
    unknown = sorted(set(options) - set(FINETUNE_PRUNE_OPTIONS))
    if unknown:
        raise ValueError(
            f"Argument `prune` has unknown option(s) {unknown}. Valid options are: "
            f"{list(FINETUNE_PRUNE_OPTIONS)} (the fine-tuning run sets `total_steps`). "
            f"Received: prune={prune!r}"
        )
    schedule_options = {k: v for k, v in options.items() if k not in ("layers", "log_dir")}
    try:
        fit_schedule(total_steps=100, **{**SCHEDULE_DEFAULTS, **schedule_options})
    except ValueError as e:
        raise ValueError(f"Argument `prune`: {e}") from None
    return options


def start(
    model: keras.Model,
    options: dict,
    total_steps: int,
    steps_per_epoch: int,
    head: keras.layers.Layer | None = None,
) -> tuple[PruningPlan, int]:
    """Prune `model` for a fine-tuning phase; return the plan and the first full epoch.

    Without `layers` in `options`, the largest prunable layers that the phase trains,
    together holding 95% of their weights, are pruned; the head and the small layers
    (often the first convolutions) stay dense: pruning them saves little and costs the
    most accuracy. The returned epoch index is the first whose end is at or after the
    schedule's end_step: from there on the model has its target sparsity, so the best
    weights and early stopping only look at those epochs.

    Args:
        model: the model, with the phase's layers set trainable.
        options: what `parse_prune_option` returned.
        total_steps: optimizer steps of the phase.
        steps_per_epoch: optimizer steps per epoch.
        head: the classification layer, which stays dense. Defaults to `None`.

    Returns:
        The `PruningPlan` (train ``plan.model`` with ``plan.callbacks``) and the 0-based
        index of the first epoch at full sparsity.

    Raises:
        ValueError: if the phase trains no prunable layer besides the head.
    """
    options = dict(options)
    if options.get("layers") is None:
        trained = [
            layer
            for layer in leaf_layers(model, graph_only=True)
            if is_prunable(layer) and layer.trainable and layer is not head
        ]
        if not trained:
            raise ValueError(
                f"Argument `prune`: the fine-tuning phase trains no prunable layer of model "
                f"'{model.name}' besides its head, so there is nothing to prune. Prunable "
                f"types are: {list(PRUNABLE_LAYER_TYPES)}. HINT: unfreeze more layers "
                "(`unfreeze=`) or name the layers to prune with prune=dict(layers=[...])."
            )
        options["layers"] = _largest_layers(trained, share=_FINETUNE_WEIGHT_SHARE)
    plan = pruning_plan(model, total_steps=total_steps, **options)
    end_step = plan.schedule.get_config()["end_step"]
    first_full_epoch = max(0, -(-end_step // steps_per_epoch) - 1)
    return plan, first_full_epoch


def _largest_layers(layers: list, share: float) -> list[str]:
    """Names of the largest `layers` that together hold `share` of their prunable weights."""
    sizes = [
        (sum(int(np.prod(w.shape)) for w in prunable_weights(lyr)), lyr.name) for lyr in layers
    ]
    sizes.sort(key=lambda pair: -pair[0])
    total, kept, names = sum(size for size, _ in sizes), 0, []
    for size, name in sizes:
        if kept >= share * total:
            break
        names.append(name)
        kept += size
    return names


def finish(plan: PruningPlan, model: keras.Model) -> tuple[keras.Model, PruningRecord]:
    """Strip the model pruned during `finetune`; return it (uncompiled) and its record.

    Warns (`RuntimeWarning`) when the pruned layers fell short of the target sparsity,
    which happens when training stopped before the schedule's end_step.
    """
    stripped = strip_model(model)
    report = sparsity_report(stripped)
    schedule = plan.schedule.get_config()
    target = schedule.get("final_sparsity", schedule.get("target_sparsity"))
    wrapped = {layer.layer.name for layer in find_wrappers(model)}
    layers = {name: value for name, value in report.layers.items() if name in wrapped}
    pruned_sizes = [report.sizes[name] for name in layers]
    pruned_sparsity = (
        sum(report.layers[n] * report.sizes[n] for n in layers) / sum(pruned_sizes)
        if pruned_sizes
        else 0.0
    )
    if pruned_sparsity < target - 0.01:
        warnings.warn(
            f"kerasft: the pruned layers reached {pruned_sparsity:.1%} sparsity, short of the "
            f"target {target:.1%}: training stopped before the schedule's end_step "
            f"({schedule['end_step']}).",
            RuntimeWarning,
            stacklevel=3,
        )
    return stripped, PruningRecord(
        target_sparsity=float(target),
        sparsity=float(pruned_sparsity),
        model_sparsity=float(report.total),
        layers=layers,
        schedule={"class_name": type(plan.schedule).__name__, **schedule},
    )
