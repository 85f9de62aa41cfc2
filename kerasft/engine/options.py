"""The options of a fine-tuning run, grouped by concern and validated in one place.

``kerasft.finetune`` takes the common options as flat keywords and the rest as the
configs of :mod:`kerasft.configs`, each checked when it is built. :meth:`Options.build`
sorts both into small frozen dataclasses, one per part of the engine that reads them
(recipe, optimizer, task, data, monitoring, regularization, speed, run), so that each
part receives only what concerns it and a plan or a hook can be built and tested from a
few fields. The optimizer, regularization and speed configs are such groups themselves
and travel whole; the fields of the others join the flat keywords of their group. The
engine names every option by its flat keyword (``lora_rank``, not ``LoraConfig.rank``):
:meth:`Options.from_keywords` takes that spelling, :meth:`Options.keywords` gives it back.
:meth:`Options.validate` checks the flat values (the configs checked theirs), then
:func:`check_conflicts` walks one table of the combinations that do not work together.
Messages name the argument, the value received and what would be valid.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import configs as configs_lib
from kerasft import data as data_lib
from kerasft.callbacks import ReduceLROnPlateauScaled
from kerasft.configs import OptimizerConfig, RegularizationConfig, SpeedConfig
from kerasft.engine.registry import RECIPES
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
FIXED_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "validation_split": 0.2,
    "head_epochs": 5,
    "epochs": 10,
    "lr": 1e-2,
    "optimizer": "adam",
    "warmup": 0.1,
    "unfreeze": "all",
    "train_bn": False,
}
# Recipes that train low-rank adapters beside frozen pretrained weights, and their method.
ADAPTER_RECIPES = {"lora": "lora", "dora": "dora", "lp-lora": "lora", "lp-dora": "dora"}


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
        return (
            self.recipe
            if isinstance(self.recipe, str) and self.recipe in recipe_names()
            else "phases"
        )

    @property
    def phase_list(self) -> list[dict[str, Any]] | None:
        """The user's phase list of a ``"phases"`` recipe, normalised; else ``None``."""
        return None if self.kind != "phases" else load_phases(self.recipe)

    @property
    def finds_lr(self) -> bool:
        return isinstance(self.lr, str) and self.lr == "find"


# The optimizer's options are a public config, passed whole
# (`finetune(optimizer=OptimizerConfig(...))`).
OptimizerOptions = OptimizerConfig


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
    class_prior: Sequence[float] | Mapping[int, float] | None = None


@dataclass(frozen=True)
class DataOptions:
    """Validation data, batching and the seed of the run."""

    validation_data: Any = None
    validation_split: float = 0.2
    batch_size: int = 32
    seed: int = 0
    label_columns: str | Sequence[str] | None = None


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
        return {
            "monitor": monitor,
            "factor": 0.5,
            "patience": 2,
            **(value if isinstance(value, Mapping) else {}),
        }


# Public configs passed whole (`finetune(regularization=..., speed=...)`).
RegularizationOptions = RegularizationConfig
SpeedOptions = SpeedConfig


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
    optimizer: OptimizerConfig = OptimizerConfig(name="adam")
    task: TaskOptions = TaskOptions()
    data: DataOptions = DataOptions()
    monitor: MonitorOptions = MonitorOptions()
    regularization: RegularizationConfig = RegularizationConfig()
    speed: SpeedConfig = SpeedConfig()
    run: RunOptions = RunOptions()
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @classmethod
    def build(cls, flat: Mapping[str, Any], configs: Mapping[str, Any]) -> Options:
        """The options of a ``finetune`` call: its flat keywords and its configs, then validated.

        The configs (``{"lora": LoraConfig(...), ...}``, see :mod:`kerasft.configs`)
        checked their values when they were built; this checks the flat values and the
        combinations. A keyword of :data:`FIXED_DEFAULTS` that is ``None`` (or absent)
        is left to the recipe: ``"auto"`` decides it from the model and the data, the
        other recipes take its fixed default. :attr:`given` holds the ones the caller set.

        Raises:
            ValueError: a bad value, or options that do not work together.
        """
        options = cls.assemble(flat, configs)
        options.validate()
        return options

    @classmethod
    def assemble(cls, flat: Mapping[str, Any], configs: Mapping[str, Any]) -> Options:
        """A call's flat keywords and configs in their groups, unvalidated (see :meth:`build`)."""
        keywords = dict(flat)
        for config in configs.values():
            keywords.update(config.keywords())
        given = frozenset(k for k in FIXED_DEFAULTS if keywords.get(k) is not None)
        filled = {
            **keywords,
            **{k: v for k, v in FIXED_DEFAULTS.items() if keywords.get(k) is None},
        }
        if keywords.get("recipe") is None:
            filled["recipe"] = default_recipe(keywords)
        groups = {}
        for name, group in _GROUPS.items():
            config = configs.get(name)
            if isinstance(config, group):  # a public config that is a group travels whole
                fills = {
                    f.name: filled[config.flat_name(f.name)]
                    for f in dataclasses.fields(config)
                    if config.flat_name(f.name) in FIXED_DEFAULTS
                    and config.flat_name(f.name) not in given
                }
                groups[name] = dataclasses.replace(config, **fills) if fills else config
            else:
                groups[name] = group(
                    **{
                        f.name: filled[_flat_name(group, f.name)]
                        for f in dataclasses.fields(group)
                        if _flat_name(group, f.name) in filled
                    }
                )
        return cls(**groups, given=given)

    @classmethod
    def from_keywords(cls, **keywords: Any) -> Options:
        """:meth:`build` from flat keywords: every option under its flat name (``lora_rank=4``).

        Config objects are accepted too. No deprecation warning: this is the engine's spelling.

        Raises:
            TypeError: an unknown keyword (with the closest valid one).
            ValueError: a bad value, or options that do not work together.
        """
        return cls.build(*configs_lib.sort_keywords(keywords))

    @property
    def auto(self) -> bool:
        """Whether the recipe is ``"auto"``."""
        return self.recipe.kind == "auto"

    @classmethod
    def group(cls, **keywords: Any) -> Options:
        """:meth:`assemble` from flat keywords, without validating the combinations.

        Raises:
            TypeError: an unknown keyword (with the closest valid one).
            ValueError: a bad value of a config's field (the configs check theirs when built).
        """
        return cls.assemble(*configs_lib.sort_keywords(keywords))

    def keywords(self) -> dict[str, Any]:
        """Every option under its flat ``finetune`` keyword (``lora_rank``, ``optimizer``...)."""
        return {
            _flat_name(type(group), f.name): getattr(group, f.name)
            for group in (getattr(self, name) for name in _GROUPS)
            for f in dataclasses.fields(group)
        }

    def replace(self, **keywords: Any) -> Options:
        """A copy with some flat keywords changed (validated again); :attr:`given` grows by them."""
        return Options.from_keywords(**{**self.user_keywords(), **keywords})

    def user_keywords(self) -> dict[str, Any]:
        """The flat keywords, with those the recipe decides (not :attr:`given`) as ``None``."""
        return {
            k: (None if k in FIXED_DEFAULTS and k not in self.given else v)
            for k, v in self.keywords().items()
        }

    def validate(self) -> None:
        """Check every value, then the combinations (:func:`check_conflicts`)."""
        for check in _VALUE_CHECKS:
            check(self)
        check_conflicts(self)


def _flat_name(group: type, field: str) -> str:
    """The flat keyword of a group's field (the configs renamed a few: ``OptimizerConfig.name``)."""
    return group.flat_name(field) if hasattr(group, "flat_name") else field


def default_recipe(keywords: Mapping[str, Any]) -> str:
    """The default recipe: ``"auto"``, or ``"lp-ft"`` for options only its head phase has.

    ``head_epochs=`` and ``lr="find"`` describe a head trained by gradient, which
    ``"auto"`` does not have (it fits the head in closed form), and ``prune=`` prunes
    the last phase of a fixed recipe: code written for the LP-FT recipe with those
    options keeps its meaning.
    """
    if (
        keywords.get("head_epochs") is not None
        or keywords.get("lr") == "find"
        or keywords.get("prune") is not None
    ):
        return "lp-ft"
    return "auto"


# ------------------------------------------------------------------------ value checks
# The flat keywords' values; each config checked its own fields when it was built.


def recipe_names() -> list[str]:
    """The recipes a name can select: the built-in ones and any :func:`register_recipe` added."""
    return [
        *BUILTIN_RECIPES,
        *(name for name in RECIPES if name not in BUILTIN_RECIPES and name != "phases"),
    ]


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
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10
        ):
            raise ValueError(
                f"Argument `{arg}` must be a number in (0, 10). Received: {arg}={value!r}"
            )
    patience = o.monitor.patience
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 0
    ):
        raise ValueError(
            "Argument `patience` must be a non-negative int or None. "
            f"Received: patience={patience!r}"
        )
    if o.run.verbose not in (0, 1, 2) or isinstance(o.run.verbose, bool):
        raise ValueError(
            f"Argument `verbose` must be 0, 1 or 2. Received: verbose={o.run.verbose!r}"
        )
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


def _check_plateau(o: Options) -> None:
    plateau = o.monitor.reduce_on_plateau
    if not (plateau is None or isinstance(plateau, bool) or isinstance(plateau, Mapping)):
        raise ValueError(
            "Argument `reduce_on_plateau` must be True, False, None or a dict of "
            "kerasft.callbacks.ReduceLROnPlateauScaled arguments. "
            f"Received: reduce_on_plateau={plateau!r}"
        )


def _check_prune(o: Options) -> None:
    # Whether the recipe can prune; RegularizationConfig checked the value itself.
    if o.regularization.prune is not None:
        from kerasft.pruning import finetune as pruning_finetune

        pruning_finetune.parse_prune_option(o.regularization.prune, o.recipe.kind)


def _check_class_weight(o: Options) -> None:
    t = o.task
    if (
        t.class_weight is not None
        and t.class_weight != "balanced"
        and not isinstance(t.class_weight, Mapping)
    ):
        raise ValueError(
            "Argument `class_weight` must be None, 'balanced' or a dict {class id: weight}. "
            f"Received: class_weight={t.class_weight!r}"
        )


_VALUE_CHECKS: list[Callable[[Options], None]] = [
    _check_recipe,
    _check_numbers,
    _check_unfreeze,
    _check_plateau,
    _check_prune,
    _check_class_weight,
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
    values = {
        "lr_mult": o.recipe.lr_mult,
        "layer_decay": o.recipe.layer_decay,
        "l2sp": o.regularization.l2sp,
        "clip_weights": o.regularization.clip_weights,
        "checkpoint_dir": o.run.checkpoint_dir,
    }
    return {k: v for k, v in values.items() if _set(v)}


def _plain_plateau_callback(o: Options) -> bool:
    return any(
        isinstance(cb, keras.callbacks.ReduceLROnPlateau)
        and not isinstance(cb, ReduceLROnPlateauScaled)
        for cb in o.run.callbacks or []
    )


CONFLICTS: list[Conflict] = [
    Conflict(
        lambda o: o.auto and "head_epochs" in o.given,
        lambda o: (
            f"Argument `head_epochs={o.recipe.head_epochs!r}` sets the epochs of a head trained by "
            "gradient, but recipe='auto' fits the head in closed form (a converged linear probe) "
            "before it fine-tunes. HINT: leave head_epochs out, or pass recipe='lp-ft'."
        ),
    ),
    Conflict(
        lambda o: o.auto and o.recipe.finds_lr,
        lambda o: (
            "Argument `lr='find'` sweeps the rate of a head trained by gradient, but recipe='auto' "
            "fits the head in closed form and picks the fine-tuning rate by model family. HINT: "
            "pass lr=<rate> to set the fine-tuning rate, or recipe='lp-ft' with lr='find'."
        ),
    ),
    Conflict(
        lambda o: o.recipe.quantize is not None and o.recipe.adapters is None,
        lambda o: (
            f"Argument `quantize={o.recipe.quantize!r}` quantizes the frozen base under low-rank "
            f"adapters, but recipe={o.recipe.recipe!r} trains no adapters. HINT: pass "
            "recipe='lora' or 'lp-lora' (or export with quantization instead)."
        ),
    ),
    Conflict(
        lambda o: o.task.standardize_targets and o.task.task in ("classification", "multilabel"),
        lambda o: (
            "Argument `standardize_targets=True` applies to regression targets, but "
            f"task={o.task.task!r}. HINT: pass task='regression' (or 'auto'), or "
            "standardize_targets=False."
        ),
    ),
    Conflict(
        lambda o: o.task.label_smoothing > 0 and o.task.task == "regression",
        lambda o: (
            f"Argument `label_smoothing={o.task.label_smoothing}` smooths class labels, but "
            "task='regression'. HINT: pass label_smoothing=0."
        ),
    ),
    Conflict(
        lambda o: o.task.class_prior is not None and o.task.task in ("regression", "multilabel"),
        lambda o: (
            "Argument `class_prior` shifts single-label class outputs to the proportions given, "
            f"but task={o.task.task!r}. HINT: pass class_prior=None."
        ),
    ),
    Conflict(
        lambda o: o.task.class_weight is not None and o.task.task == "regression",
        lambda o: (
            f"Argument `class_weight={o.task.class_weight!r}` applies to classification, but "
            "task='regression'. HINT: pass class_weight=None."
        ),
    ),
    Conflict(
        lambda o: (
            o.recipe.kind == "head" and (_set(o.recipe.lr_mult) or _set(o.recipe.layer_decay))
        ),
        lambda o: (
            "Arguments `lr_mult` / `layer_decay` spread rates over layer groups, but "
            "recipe='head' trains only the head. Received: "
            f"lr_mult={o.recipe.lr_mult!r}, layer_decay={o.recipe.layer_decay!r}"
        ),
    ),
    Conflict(
        lambda o: o.recipe.kind == "head" and o.recipe.unfreeze != "all",
        lambda o: (
            "Argument `unfreeze` applies to the 'lp-ft' and 'full' recipes; recipe='head' "
            f"trains only the head and would ignore it. Received: unfreeze={o.recipe.unfreeze!r}. "
            "HINT: pass recipe='lp-ft' to train the head, then the layers of `unfreeze`."
        ),
    ),
    Conflict(
        lambda o: o.recipe.kind in ("gradual", "phases") and o.recipe.unfreeze != "all",
        lambda o: (
            f"Argument `unfreeze` applies to the 'lp-ft' and 'full' recipes; recipe "
            f"{o.recipe.kind!r} unfreezes by phases. Received: unfreeze={o.recipe.unfreeze!r}"
        ),
    ),
    Conflict(
        lambda o: o.recipe.adapters is not None and o.recipe.unfreeze != "all",
        lambda o: (
            f"Argument `unfreeze` applies to the 'lp-ft' and 'full' recipes; recipe "
            f"{o.recipe.kind!r} trains low-rank adapters beside the layers of `lora_train`, "
            f"and would ignore it. Received: unfreeze={o.recipe.unfreeze!r}. HINT: name the "
            "layers to train in full with lora_train=[...]."
        ),
    ),
    Conflict(
        lambda o: o.recipe.finds_lr and o.speed.distribute is not None,
        lambda o: (
            "Argument `lr='find'` cannot run under `distribute` "
            f"({_strategy_name(o.speed.distribute)}): the LR finder trains on one device. "
            "HINT: run kerasft.lr_find without a strategy first and pass its suggestion as lr=."
        ),
    ),
    Conflict(
        lambda o: _set(o.regularization.prune) and bool(_prune_clashes(o)),
        lambda o: (
            f"Argument `prune` cannot be combined with {sorted(_prune_clashes(o))} yet. Received: "
            f"prune={o.regularization.prune!r}, "
            + ", ".join(f"{k}={v!r}" for k, v in sorted(_prune_clashes(o).items()))
            + ". HINT: prune the fine-tuned model afterwards with `pruning_plan`."
        ),
    ),
    Conflict(
        lambda o: o.recipe.kind != "head" and _plain_plateau_callback(o),
        lambda o: (
            "Argument `callbacks` holds a keras.callbacks.ReduceLROnPlateau, which fails "
            "mid-fit on the scheduled learning rates of the fine-tuning phases (Keras "
            "cannot set the rate of a scheduled optimizer). HINT: pass "
            "reduce_on_plateau=True, or use kerasft.callbacks.ReduceLROnPlateauScaled."
        ),
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
