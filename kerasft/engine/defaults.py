"""The hooks a ``finetune`` call runs, chosen from its options.

Apart from :mod:`kerasft.engine.hooks` (the protocol and one class per concern) and
:mod:`kerasft.engine.checkpoint` (whose hook builds on that protocol), so that neither
has to import the other back.
"""

from __future__ import annotations

from typing import Any

from kerasft.engine.checkpoint import Checkpoint
from kerasft.engine.hooks import (
    EMA,
    BestWeights,
    EarlyStopping,
    FrozenBackboneDropout,
    Hook,
    LRFinder,
    NaNGuard,
    Pruning,
    ReduceOnPlateau,
    Regularization,
    Stages,
    TargetScale,
    TensorBoard,
    Thresholds,
    UserCallbacks,
)

__all__ = ["default_hooks"]


def default_hooks(options: Any, monitor: str, spec: Any = None) -> list[Hook]:
    """The hooks of a ``finetune`` call with ``options``, in the order their callbacks run.

    ``spec`` is the data's :class:`kerasft.data.DataSpec`: multi-label tasks get their
    decision thresholds, standardised regression targets are folded back into the head.
    These come first, so that their ``run_end`` runs last, on the final weights.
    """
    run, reg, recipe = options.run, options.regularization, options.recipe
    hooks: list[Hook] = []
    if spec is not None and spec.task == "multilabel":
        hooks.append(Thresholds(options.task.thresholds))
    if spec is not None and spec.target_std is not None:
        hooks.append(TargetScale())
    if reg.l2sp or reg.clip is not None:
        hooks.append(Regularization(reg.l2sp, reg.clip))
    if recipe.finds_lr:
        hooks.append(LRFinder())
    if options.optimizer.use_ema:  # first: validation and the best weights see the average
        hooks.append(EMA())
    if reg.prune is not None:
        from kerasft.pruning import finetune as pruning_finetune

        hooks.append(Pruning(pruning_finetune.parse_prune_option(reg.prune, recipe.kind)))
    hooks += [FrozenBackboneDropout(), BestWeights(), NaNGuard()]
    if run.checkpoint_dir is not None:
        hooks.append(Checkpoint(run.checkpoint_dir))
    hooks.append(Stages())
    if options.monitor.patience is not None:
        hooks.append(EarlyStopping(options.monitor.patience))
    plateau = options.monitor.plateau_kwargs(monitor)
    if plateau is not None:
        hooks.append(ReduceOnPlateau(plateau))
    if run.callbacks:
        hooks.append(UserCallbacks(list(run.callbacks)))
    if run.tensorboard is not None:
        hooks.append(TensorBoard(run.tensorboard))
    return hooks
