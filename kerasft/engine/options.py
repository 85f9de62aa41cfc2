"""The options of a fine-tuning run, grouped by concern and validated in one place.

``kerasft.finetune`` keeps its flat keywords: users' code and the README call it that
way, and one call with keywords is the point of the library. Inside, the keywords are
sorted into small frozen dataclasses, one per part of the engine that reads them
(recipe, optimizer, task, data, monitoring, regularization, speed, run), so that each
part receives only what concerns it and a plan or a hook can be built and tested from
a few fields instead of 48. :meth:`Options.from_keywords` checks every value, then
:func:`check_conflicts` walks one table of the combinations that do not work together.
Messages name the argument, the value received and what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import data as data_lib
from kerasft import layerwise, regularizers
from kerasft.callbacks import ReduceLROnPlateauScaled
from kerasft.data import TASKS
from kerasft.speed import plan as speed_plan
from kerasft.unfreezing import load_phases

__all__ = [
    "BUILTIN_RECIPES",
    "DataOptions",
    "MonitorOptions",
    "OptimizerOptions",
    "Options",
    "RecipeOptions",
    "RegularizationOptions",
    "RunOptions",
    "SpeedOptions",
    "TaskOptions",
    "check_conflicts",
]

BUILTIN_RECIPES = ("auto", "lp-ft", "full", "head", "gradual", "lora", "dora", "lp-lora", "lp-dora")
# Keywords whose `None` in `finetune` means "the recipe decides": recipe="auto" decides
# them from the model and the data; the other recipes take these fixed defaults.
FIXED_DEFAULTS: dict[str, Any] = {"batch_size": 32, "validation_split": 0.2, "head_epochs": 5, "epochs": 10,
                                  "lr": 1e-2, "optimizer": "adam", "warmup": 0.1, "unfreeze": "all",
                                  "train_bn": False}
# Recipes that train low-rank adapters beside frozen pretrained weights, and their method.
ADAPTER_RECIPES = {"lora": "lora", "dora": "dora", "lp-lora": "lora", "lp-dora": "dora"}
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


@dataclass(frozen=True)
class RecipeOptions:
    """What trains when, and at which rates (see ``finetune``'s docstring for each)."""

    recipe: Any = "lp-ft"  # finetune() without a recipe: default_recipe() (usually "auto")
    head_epochs: int = 5
    epochs: int = 10
    lr: float | str = 1e-2
    finetune_lr: float | None = None
    warmup: float = 0.1
    unfreeze: str | int | float = "all"
    train_bn: bool = False
    lr_mult: float | Sequence[float] | None = None
    layer_decay: float | None = None
    layer_groups: Any = None
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: Any = None
    lora_train: Sequence[str] = ("head",)
    quantize: str | None = None

    @property
    def adapters(self) -> str | None:
        """``"lora"`` or ``"dora"`` when the recipe trains low-rank adapters, else ``None``."""
        return ADAPTER_RECIPES.get(self.kind)

    @property
    def kind(self) -> str:
        """The recipe's name (a built-in or registered one), or ``"phases"`` for a phase list."""
        return self.recipe if isinstance(self.recipe, str) and self.recipe in recipe_names() else "phases"

    @property
    def phase_list(self) -> list[dict[str, Any]] | None:
        """The user's phase list of a ``"phases"`` recipe, normalised; else ``None``."""
        return None if self.kind != "phases" else load_phases(self.recipe)

    @property
    def finds_lr(self) -> bool:
        return isinstance(self.lr, str) and self.lr == "find"


@dataclass(frozen=True)
class OptimizerOptions:
    """The optimizer each phase gets."""

    optimizer: str = "adam"
    weight_decay: float | None = None
    clipnorm: float | None = None
    global_clipnorm: float | None = None
    use_ema: bool = False

    def make(self, learning_rate: Any) -> keras.optimizers.Optimizer:
        """A new optimizer of this kind at ``learning_rate`` (a float or a schedule)."""
        kwargs: dict[str, Any] = {"learning_rate": learning_rate}
        if self.use_ema:
            kwargs["use_ema"] = True
        if self.clipnorm is not None:
            kwargs["clipnorm"] = self.clipnorm
        if self.global_clipnorm is not None:
            kwargs["global_clipnorm"] = self.global_clipnorm
        name = self.optimizer.lower()
        if name == "adamw":
            return keras.optimizers.AdamW(weight_decay=self.weight_decay or 1e-4, **kwargs)
        if name == "sgd":
            return keras.optimizers.SGD(momentum=0.9, nesterov=True, **kwargs)
        if name == "rmsprop":
            return keras.optimizers.RMSprop(**kwargs)
        return keras.optimizers.Adam(**kwargs)


@dataclass(frozen=True)
class TaskOptions:
    """What the model is fine-tuned for: how labels are read and the head is set up."""

    task: str = "auto"
    num_classes: int | None = None
    label_mode: str | None = None
    head: str | None = None
    from_logits: bool | None = None
    new_head: bool | None = None
    head_dropout: float = 0.0
    head_activation: str | None = None
    loss: Any = None
    metrics: Sequence[Any] | None = None
    class_weight: str | Mapping[int, float] | None = None
    standardize_targets: bool = False
    thresholds: str | Sequence[float] | None = "tune"
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class DataOptions:
    """Validation data, batching and the seed of the run."""

    validation_data: Any = None
    validation_split: float = 0.2
    batch_size: int = 32
    seed: int = 0
    label_columns: str | Sequence[str] | None = None
    augment: Any = None


@dataclass(frozen=True)
class MonitorOptions:
    """What is watched, and what happens when it stalls."""

    monitor: str | None = None
    patience: int | None = 5
    reduce_on_plateau: bool | Mapping[str, Any] | None = None

    def plateau_kwargs(self, monitor: str) -> dict[str, Any] | None:
        """Keyword arguments of ``ReduceLROnPlateauScaled``, or ``None`` when not asked for."""
        value = self.reduce_on_plateau
        if value is None or value is False:
            return None
        return {"monitor": monitor, "factor": 0.5, "patience": 2, **(value if isinstance(value, Mapping) else {})}


@dataclass(frozen=True)
class RegularizationOptions:
    """What keeps the fine-tuned weights near the pretrained ones, or sparse."""

    l2sp: float | None = None
    clip_weights: float | tuple[float, Any] | None = None
    prune: float | dict[str, Any] | None = None

    @property
    def clip(self) -> tuple[float, Any] | None:
        """``(c, layers)`` from ``clip_weights=c`` or ``(c, layer regexes)``."""
        value = self.clip_weights
        if value is None:
            return None
        c, layers = (value if isinstance(value, (tuple, list)) and len(value) == 2 else (value, None))
        return float(c), layers


@dataclass(frozen=True)
class SpeedOptions:
    """How fast the run goes: caching, XLA, precision, step grouping, distribution."""

    cache_features: bool | str = "auto"
    cache_budget: float = 1024**3
    jit_compile: bool | str = "auto"
    mixed_precision: bool | str | None = None
    steps_per_execution: int | str = "auto"
    distribute: Any = None
    feature_store: Any = None


@dataclass(frozen=True)
class RunOptions:
    """Where the run writes, what else it calls, how much it says."""

    callbacks: Sequence[keras.callbacks.Callback] | None = None
    tensorboard: str | os.PathLike | None = None
    checkpoint_dir: str | os.PathLike | None = None
    copy: bool = True
    safe_mode: bool = True
    verbose: int = 1


_GROUPS: dict[str, type] = {
    "recipe": RecipeOptions,
    "optimizer": OptimizerOptions,
    "task": TaskOptions,
    "data": DataOptions,
    "monitor": MonitorOptions,
    "regularization": RegularizationOptions,
    "speed": SpeedOptions,
    "run": RunOptions,
}


@dataclass(frozen=True)
class Options:
    """Every option of one ``finetune`` call, grouped."""

    recipe: RecipeOptions = RecipeOptions()
    optimizer: OptimizerOptions = OptimizerOptions()
    task: TaskOptions = TaskOptions()
    data: DataOptions = DataOptions()
    monitor: MonitorOptions = MonitorOptions()
    regularization: RegularizationOptions = RegularizationOptions()
    speed: SpeedOptions = SpeedOptions()
    run: RunOptions = RunOptions()
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @classmethod
    def from_keywords(cls, **keywords: Any) -> Options:
        """Sort ``finetune``'s keywords into groups, then validate them all.

        A keyword of :data:`FIXED_DEFAULTS` that is ``None`` (or absent) is left to the
        recipe: ``"auto"`` decides it from the model and the data, the other recipes take
        its fixed default. :attr:`given` holds the ones the caller set.

        Raises:
            TypeError: an unknown keyword (listing the valid ones).
            ValueError: a bad value, or options that do not work together.
        """
        given = frozenset(k for k in FIXED_DEFAULTS if keywords.get(k) is not None)
        filled = {**keywords, **{k: v for k, v in FIXED_DEFAULTS.items() if keywords.get(k) is None}}
        if keywords.get("recipe") is None:
            filled["recipe"] = default_recipe(keywords)
        options = dataclasses.replace(cls.group(**filled), given=given)
        options.validate()
        return options

    @property
    def auto(self) -> bool:
        """Whether the recipe is ``"auto"``."""
        return self.recipe.kind == "auto"

    @classmethod
    def group(cls, **keywords: Any) -> Options:
        """Sort ``finetune``'s keywords into groups, without validating them.

        Raises:
            TypeError: an unknown keyword (listing the valid ones).
        """
        groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
        owner = {f.name: name for name, group in _GROUPS.items() for f in dataclasses.fields(group)}
        for key, value in keywords.items():
            if key not in owner:
                raise TypeError(
                    f"finetune() got an unexpected keyword argument {key!r}. Valid keywords are: "
                    f"{sorted(owner)}"
                )
            groups[owner[key]][key] = value
        given = frozenset(k for k in FIXED_DEFAULTS if keywords.get(k) is not None)
        return cls(**{name: _GROUPS[name](**values) for name, values in groups.items()}, given=given)

    def keywords(self) -> dict[str, Any]:
        """The flat ``finetune`` keywords these options were built from."""
        return {f.name: getattr(getattr(self, group), f.name)
                for group, cls in _GROUPS.items() for f in dataclasses.fields(cls)}

    def replace(self, **keywords: Any) -> Options:
        """A copy with some flat keywords changed (validated again); :attr:`given` grows by them."""
        return Options.from_keywords(**{**self.user_keywords(), **keywords})

    def user_keywords(self) -> dict[str, Any]:
        """The flat keywords, with those the recipe decides (not :attr:`given`) as ``None``."""
        return {k: (None if k in FIXED_DEFAULTS and k not in self.given else v) for k, v in self.keywords().items()}

    def validate(self) -> None:
        """Check every value, then the combinations (:func:`check_conflicts`)."""
        for check in _VALUE_CHECKS:
            check(self)
        check_conflicts(self)


def default_recipe(keywords: Mapping[str, Any]) -> str:
    """The recipe when none is given: ``"auto"``, or ``"lp-ft"`` for options only its head phase has.

    ``head_epochs=`` and ``lr="find"`` describe a head trained by gradient, which
    ``"auto"`` does not have (it fits the head in closed form), and ``prune=`` prunes
    the last phase of a fixed recipe: code written for the LP-FT recipe with those
    options keeps its meaning.
    """
    if keywords.get("head_epochs") is not None or keywords.get("lr") == "find" or keywords.get("prune") is not None:
        return "lp-ft"
    return "auto"


# ------------------------------------------------------------------------ value checks


def recipe_names() -> list[str]:
    """The recipes a name can select: the built-in ones and any :func:`register_recipe` added."""
    from kerasft.engine.plan import RECIPES

    return [*BUILTIN_RECIPES, *(name for name in RECIPES if name not in BUILTIN_RECIPES and name != "phases")]


def _check_recipe(o: Options) -> None:
    recipe = o.recipe.recipe
    if isinstance(recipe, str) and recipe in recipe_names():
        return
    hint = (
        f"Argument `recipe` must be one of {recipe_names()}, a list of phases "
        "([{'layers': regex(es), 'epoch': int, 'lr': float}, ...]) or the path of a "
        f".yaml/.json file of phases. Received: recipe={recipe!r}"
    )
    if isinstance(recipe, (str, os.PathLike)):
        if not os.fspath(recipe).lower().endswith((".yaml", ".yml", ".json")):
            raise ValueError(hint)
    elif not isinstance(recipe, (Sequence, Mapping)) or isinstance(recipe, bytes):
        raise ValueError(hint)
    try:
        phases = load_phases(recipe)
    except ValueError as e:
        raise ValueError(f"Argument `recipe`: {e}") from None
    missing = [i for i, p in enumerate(phases) if p["epoch"] is None]
    if missing:
        raise ValueError(
            f"Argument `recipe`: phases {missing} have no `epoch`. finetune starts phases at "
            "declared epochs. HINT: for phases that start on a validation plateau, use "
            "kerasft.callbacks.GradualUnfreezing(phases, monitor='val_loss') with model.fit."
        )


def _check_numbers(o: Options) -> None:
    r = o.recipe
    for arg, value in (("head_epochs", r.head_epochs), ("epochs", r.epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"Argument `{arg}` must be an integer >= 0. Received: {arg}={value!r}")
    for arg, value in (("lr", None if r.finds_lr else r.lr), ("finetune_lr", r.finetune_lr)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < 10):
            raise ValueError(f"Argument `{arg}` must be a number in (0, 10). Received: {arg}={value!r}")
    if isinstance(r.warmup, bool) or not isinstance(r.warmup, (int, float)) or not 0.0 <= r.warmup < 1.0:
        raise ValueError(f"Argument `warmup` must be a fraction in [0, 1). Received: warmup={r.warmup!r}")
    patience = o.monitor.patience
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 0):
        raise ValueError(f"Argument `patience` must be a non-negative int or None. Received: patience={patience!r}")
    if o.run.verbose not in (0, 1, 2) or isinstance(o.run.verbose, bool):
        raise ValueError(f"Argument `verbose` must be 0, 1 or 2. Received: verbose={o.run.verbose!r}")
    data_lib.check_batching(o.data.batch_size, o.data.validation_split)


def _check_unfreeze(o: Options) -> None:
    unfreeze = o.recipe.unfreeze
    valid = (
        "Argument `unfreeze` must be 'all', a positive number of weighted layers, a fraction in "
        f"(0, 1], or a regex over layer paths. Received: unfreeze={unfreeze!r}"
    )
    if isinstance(unfreeze, bool) or unfreeze is None:
        raise ValueError(valid)
    if isinstance(unfreeze, int) and unfreeze < 1:
        raise ValueError(valid)
    if isinstance(unfreeze, float) and not 0.0 < unfreeze <= 1.0:
        raise ValueError(valid)
    if not isinstance(unfreeze, (int, float, str)):
        raise ValueError(valid)


def _check_optimizer(o: Options) -> None:
    opt = o.optimizer
    if not isinstance(opt.optimizer, str) or opt.optimizer.lower() not in OPTIMIZERS:
        raise ValueError(
            f"Argument `optimizer` must be one of {list(OPTIMIZERS)}. Received: optimizer={opt.optimizer!r}"
        )
    if not isinstance(opt.use_ema, bool):
        raise ValueError(f"Argument `use_ema` must be True or False. Received: use_ema={opt.use_ema!r}")
    for arg in ("weight_decay", "clipnorm", "global_clipnorm"):
        value = getattr(opt, arg)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"Argument `{arg}` must be a number >= 0 or None. Received: {arg}={value!r}")


def _check_strategy_values(o: Options) -> None:
    r, reg = o.recipe, o.regularization
    sequence = isinstance(r.lr_mult, Sequence) and not isinstance(r.lr_mult, str)
    layerwise.group_multipliers(len(r.lr_mult) if sequence else 2, lr_mult=r.lr_mult, layer_decay=r.layer_decay)
    if reg.l2sp is not None:
        regularizers.check_strength("l2sp", reg.l2sp)
    if reg.clip_weights is not None:
        value = reg.clip_weights
        c = value[0] if isinstance(value, (tuple, list)) and len(value) == 2 else value
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(
                "Argument `clip_weights` must be a bound c > 0, or (c, layer regex or list of "
                f"regexes). Received: clip_weights={value!r}"
            )
    plateau = o.monitor.reduce_on_plateau
    if not (plateau is None or isinstance(plateau, bool) or isinstance(plateau, Mapping)):
        raise ValueError(
            "Argument `reduce_on_plateau` must be True, False, None or a dict of "
            "kerasft.callbacks.ReduceLROnPlateauScaled arguments. "
            f"Received: reduce_on_plateau={plateau!r}"
        )


def _check_speed(o: Options) -> None:
    s = o.speed
    speed_plan.check_options(cache_features=s.cache_features, cache_budget=s.cache_budget,
                             jit_compile=s.jit_compile, mixed_precision=s.mixed_precision,
                             steps_per_execution=s.steps_per_execution)


def _check_prune(o: Options) -> None:
    if o.regularization.prune is not None:
        from kerasft.pruning import finetune as pruning_finetune

        pruning_finetune.parse_prune_option(o.regularization.prune, o.recipe.kind)


def _check_adapters(o: Options) -> None:
    r = o.recipe
    if isinstance(r.lora_rank, bool) or not isinstance(r.lora_rank, int) or r.lora_rank < 1:
        raise ValueError(f"Argument `lora_rank` must be a positive integer. Received: lora_rank={r.lora_rank!r}")
    if r.lora_alpha is not None and (isinstance(r.lora_alpha, bool) or not isinstance(r.lora_alpha, (int, float))
                                     or not r.lora_alpha > 0):
        raise ValueError(f"Argument `lora_alpha` must be a positive number or None. Received: lora_alpha={r.lora_alpha!r}")
    if isinstance(r.lora_dropout, bool) or not isinstance(r.lora_dropout, (int, float)) or not 0 <= r.lora_dropout < 1:
        raise ValueError(f"Argument `lora_dropout` must be in [0, 1). Received: lora_dropout={r.lora_dropout!r}")
    if r.quantize not in (None, "int8"):
        raise ValueError(f"Argument `quantize` must be None or 'int8'. Received: quantize={r.quantize!r}")


def _check_task(o: Options) -> None:
    t = o.task
    if t.task not in ("auto", *TASKS):
        raise ValueError(f"Argument `task` must be 'auto' or one of {list(TASKS)}. Received: task={t.task!r}")
    if t.class_weight is not None and t.class_weight != "balanced" and not isinstance(t.class_weight, Mapping):
        raise ValueError(
            "Argument `class_weight` must be None, 'balanced' or a dict {class id: weight}. "
            f"Received: class_weight={t.class_weight!r}"
        )
    if not isinstance(t.standardize_targets, bool):
        raise ValueError(
            f"Argument `standardize_targets` must be True or False. Received: standardize_targets={t.standardize_targets!r}"
        )
    th = t.thresholds
    ok = th is None or th == "tune" or (isinstance(th, Sequence) and not isinstance(th, str) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in th))
    if not ok:
        raise ValueError(
            "Argument `thresholds` must be 'tune' (per-label thresholds that maximise F1 on the "
            "validation data), None (0.5) or a list of per-label thresholds in (0, 1). "
            f"Received: thresholds={th!r}"
        )
    ls = t.label_smoothing
    if isinstance(ls, bool) or not isinstance(ls, (int, float)) or not 0 <= ls < 1:
        raise ValueError(f"Argument `label_smoothing` must be in [0, 1). Received: label_smoothing={ls!r}")
    if isinstance(t.loss, str) and t.loss == "focal" and t.task == "regression":
        raise ValueError("Argument `loss='focal'` is a classification loss, but task='regression'.")
    if t.head is not None and not isinstance(t.head, str):
        raise ValueError(f"Argument `head` must be the name of a model output, or None. Received: head={t.head!r}")


_VALUE_CHECKS: list[Callable[[Options], None]] = [
    _check_recipe, _check_numbers, _check_unfreeze, _check_optimizer, _check_strategy_values,
    _check_speed, _check_prune, _check_task, _check_adapters,
]


# ---------------------------------------------------------------------- the conflict table


@dataclass(frozen=True)
class Conflict:
    """Options that do not work together: ``when`` says if ``options`` hit it."""

    when: Callable[[Options], bool]
    message: Callable[[Options], str]


def _set(value: Any) -> bool:
    return value is not None and value is not False


def _prune_clashes(o: Options) -> dict[str, Any]:
    values = {"lr_mult": o.recipe.lr_mult, "layer_decay": o.recipe.layer_decay, "l2sp": o.regularization.l2sp,
              "clip_weights": o.regularization.clip_weights, "checkpoint_dir": o.run.checkpoint_dir}
    return {k: v for k, v in values.items() if _set(v)}


def _plain_plateau_callback(o: Options) -> bool:
    return any(isinstance(cb, keras.callbacks.ReduceLROnPlateau) and not isinstance(cb, ReduceLROnPlateauScaled)
               for cb in o.run.callbacks or [])


CONFLICTS: list[Conflict] = [
    Conflict(
        lambda o: o.auto and "head_epochs" in o.given,
        lambda o: (f"Argument `head_epochs={o.recipe.head_epochs!r}` sets the epochs of a head trained by "
                   "gradient, but recipe='auto' fits the head in closed form (a converged linear probe) "
                   "before it fine-tunes. HINT: leave head_epochs out, or pass recipe='lp-ft'."),
    ),
    Conflict(
        lambda o: o.auto and o.recipe.finds_lr,
        lambda o: ("Argument `lr='find'` sweeps the rate of a head trained by gradient, but recipe='auto' "
                   "fits the head in closed form and picks the fine-tuning rate by model family. HINT: pass "
                   "lr=<rate> to set the fine-tuning rate, or recipe='lp-ft' with lr='find'."),
    ),
    Conflict(
        lambda o: o.recipe.quantize is not None and o.recipe.adapters is None,
        lambda o: (f"Argument `quantize={o.recipe.quantize!r}` quantizes the frozen base under low-rank "
                   f"adapters, but recipe={o.recipe.recipe!r} trains no adapters. HINT: pass recipe='lora' "
                   "or 'lp-lora' (or export with quantization instead)."),
    ),
    Conflict(
        lambda o: o.task.standardize_targets and o.task.task in ("classification", "multilabel"),
        lambda o: (f"Argument `standardize_targets=True` applies to regression targets, but task={o.task.task!r}. "
                   "HINT: pass task='regression' (or 'auto'), or standardize_targets=False."),
    ),
    Conflict(
        lambda o: o.task.label_smoothing > 0 and o.task.task == "regression",
        lambda o: (f"Argument `label_smoothing={o.task.label_smoothing}` smooths class labels, but "
                   "task='regression'. HINT: pass label_smoothing=0."),
    ),
    Conflict(
        lambda o: o.task.class_weight is not None and o.task.task == "regression",
        lambda o: (f"Argument `class_weight={o.task.class_weight!r}` applies to classification, but "
                   "task='regression'. HINT: pass class_weight=None."),
    ),
    Conflict(
        lambda o: o.recipe.kind == "head" and (_set(o.recipe.lr_mult) or _set(o.recipe.layer_decay)),
        lambda o: ("Arguments `lr_mult` / `layer_decay` spread rates over layer groups, but "
                   "recipe='head' trains only the head. Received: "
                   f"lr_mult={o.recipe.lr_mult!r}, layer_decay={o.recipe.layer_decay!r}"),
    ),
    Conflict(
        lambda o: o.recipe.kind in ("gradual", "phases") and o.recipe.unfreeze != "all",
        lambda o: (f"Argument `unfreeze` applies to the 'lp-ft' and 'full' recipes; recipe "
                   f"{o.recipe.kind!r} unfreezes by phases. Received: unfreeze={o.recipe.unfreeze!r}"),
    ),
    Conflict(
        lambda o: o.recipe.finds_lr and o.speed.distribute is not None,
        lambda o: (f"Argument `lr='find'` cannot run under `distribute` ({_strategy_name(o.speed.distribute)}): "
                   "the LR finder trains on one device. HINT: run kerasft.lr_find without a strategy "
                   "first and pass its suggestion as lr=."),
    ),
    Conflict(
        lambda o: _set(o.regularization.prune) and bool(_prune_clashes(o)),
        lambda o: (f"Argument `prune` cannot be combined with {sorted(_prune_clashes(o))} yet. Received: "
                   f"prune={o.regularization.prune!r}, "
                   + ", ".join(f"{k}={v!r}" for k, v in sorted(_prune_clashes(o).items()))
                   + ". HINT: prune the fine-tuned model afterwards with `pruning_plan`."),
    ),
    Conflict(
        lambda o: o.recipe.kind != "head" and _plain_plateau_callback(o),
        lambda o: ("Argument `callbacks` holds a keras.callbacks.ReduceLROnPlateau, which fails "
                   "mid-fit on the scheduled learning rates of the fine-tuning phases (Keras "
                   "cannot set the rate of a scheduled optimizer). HINT: pass "
                   "reduce_on_plateau=True, or use kerasft.callbacks.ReduceLROnPlateauScaled."),
    ),
]


def _strategy_name(distribute: Any) -> str:
    return distribute if isinstance(distribute, str) else type(distribute).__name__


def check_conflicts(options: Options) -> None:
    """Raise for the first row of :data:`CONFLICTS` that ``options`` hit.

    Raises:
        ValueError: naming the arguments, their values and what to do instead.
    """
    for conflict in CONFLICTS:
        if conflict.when(options):
            raise ValueError(conflict.message(options))
