"""The fine-tuning engine: options, plans, one runner, and hooks.

A ``finetune`` call flows through these modules in order:

- :mod:`~kerasft.engine.options`: the keywords, grouped by concern and validated in one
  place (values, then one table of option conflicts);
- :mod:`~kerasft.engine.task`: the head, loss and metrics read off the model and labels;
- :mod:`~kerasft.engine.plan`: a recipe turned into phases, built without training
  (:mod:`~kerasft.engine.registry`: the recipe names);
- :mod:`~kerasft.engine.optim`: each phase's optimizer, schedule and layer-wise rates;
- :mod:`~kerasft.engine.runner`: executes any plan, phase by phase;
- :mod:`~kerasft.engine.hooks` and :mod:`~kerasft.engine.checkpoint`: what a run does
  besides training (best weights, NaN guard, early stopping, checkpoints and resume,
  pruning, EMA, TensorBoard, L2-SP, the LR finder), one class each;
  :mod:`~kerasft.engine.defaults` chooses them from the options;
- :mod:`~kerasft.engine.result`: the typed result.
"""

from kerasft.engine.defaults import default_hooks
from kerasft.engine.hooks import Hook
from kerasft.engine.options import Options
from kerasft.engine.plan import RECIPES, Phase, Plan, Rate, Stage, build_plan, register_recipe
from kerasft.engine.result import FinetuneResult, NaNEvent, PhaseResult, RegularizationRecord
from kerasft.engine.runner import Run, Runner, prepare_run
from kerasft.engine.task import Task, setup_task

__all__ = [
    "FinetuneResult",
    "Hook",
    "NaNEvent",
    "Options",
    "Phase",
    "PhaseResult",
    "Plan",
    "RECIPES",
    "Rate",
    "RegularizationRecord",
    "Run",
    "Runner",
    "Stage",
    "Task",
    "build_plan",
    "default_hooks",
    "prepare_run",
    "register_recipe",
    "setup_task",
]
