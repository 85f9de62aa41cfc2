"""The option groups of ``kerasft.finetune``: small frozen configs to build, reuse and print.

``finetune`` takes the options most runs set as flat keywords (``epochs``, ``lr``,
``batch_size``...) and the rest as one object per concern, the way HuggingFace PEFT
takes a ``LoraConfig``: :class:`HeadConfig` (task, labels, head, loss),
:class:`LayerwiseConfig` (how the unfrozen layers train), :class:`LoraConfig`
(low-rank adapters), :class:`OptimizerConfig`, :class:`RegularizationConfig`,
:class:`SpeedConfig` and :class:`RunConfig` (outputs of the run). Each checks its
values once, when it is built, and prints the fields that differ from their defaults;
being immutable, one object can serve many calls.

Every option used to be a flat keyword of ``finetune``, and the engine
(:class:`kerasft.engine.options.Options`) still names them that way. :data:`LEGACY`
maps each old keyword to its config and field; :func:`sort_keywords` sorts a call's
keywords into flat ones and configs, warning about the old spelling where asked to.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import reprlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import keras

from kerasft import augment as augment_lib
from kerasft import layerwise, regularizers
from kerasft.data import labels
from kerasft.speed import plan as speed_plan
from kerasft.speed import store as speed_store

__all__ = [
    "CONFIGS",
    "FLAT",
    "LEGACY",
    "HeadConfig",
    "LayerwiseConfig",
    "LoraConfig",
    "OptimizerConfig",
    "RegularizationConfig",
    "RunConfig",
    "SpeedConfig",
    "flatten",
    "given_keywords",
    "sort_keywords",
]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


class _Config:
    """What the configs share: their ``finetune`` keyword, their old flat names, a short repr."""

    keyword: ClassVar[str]
    # Fields whose old flat keyword of finetune differs from the field's name.
    renamed: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def flat_name(cls, field: str) -> str:
        """The flat ``finetune`` keyword ``field`` had (the name the engine reads)."""
        return cls.renamed.get(field, field)

    def keywords(self) -> dict[str, Any]:
        """Every field, under its flat keyword."""
        return {self.flat_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def non_defaults(self) -> dict[str, Any]:
        """The fields that differ from their defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not _same(getattr(self, f.name), f.default)
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.non_defaults().items())
        return f"{type(self).__name__}({fields})"


def _plain_class_prior(prior: Any) -> tuple[float, ...] | dict[int, float] | None:
    """``prior`` checked, as plain numbers (a tuple, or a dict of floats): a model card shows them.

    Raises:
        ValueError: unless ``prior`` is None, positive proportions, or a dict of them.
    """
    if prior is None:
        return None
    if isinstance(prior, Mapping):
        keys_ok = all(
            isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 0 for k in prior
        )
        values = list(prior.values())
    elif hasattr(prior, "__len__") and not isinstance(prior, (str, bytes)):  # a list, an array
        values = prior.tolist() if hasattr(prior, "tolist") else list(prior)
        keys_ok = len(values) >= 2
    else:
        keys_ok, values = False, []
    if not (
        keys_ok
        and values
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
        and all(math.isfinite(float(v)) and float(v) > 0 for v in values)
    ):
        raise ValueError(
            "Argument `class_prior` must be None, a list of one proportion > 0 per class "
            "(at least two), or a dict {class id: proportion > 0}: the class proportions the "
            f"model will meet. Received: class_prior={prior!r}"
        )
    if isinstance(prior, Mapping):
        return {int(k): float(v) for k, v in prior.items()}
    return tuple(float(v) for v in values)


@dataclass(frozen=True, repr=False)
class HeadConfig(_Config):
    """What the model is fine-tuned for: the task, how labels are read, the head and its loss.

    By default everything is read off the labels and the model's head: the task, the
    number of classes, the label encoding, whether the head outputs logits, and the
    loss and metrics that fit them.

    Example:

    >>> HeadConfig(task="regression", loss="huber", standardize_targets=True)
    HeadConfig(task='regression', loss='huber', standardize_targets=True)

    Args:
        task: ``"auto"`` reads it off the labels and the head (see
            :mod:`kerasft.data.labels`): ``"classification"`` (integer, one-hot or binary
            labels), ``"multilabel"`` (a 0/1 label matrix: sigmoid head, binary
            cross-entropy) or ``"regression"`` (float targets: linear head, mean squared
            error; ``loss="huber"`` for Huber). Defaults to `"auto"`.
        num_classes: number of classes (labels, outputs); read off the labels when
            ``None``. Defaults to `None`.
        label_mode: ``"sparse"``, ``"one_hot"``, ``"binary"``, ``"multi_hot"`` or
            ``"continuous"``; detected when ``None``. Defaults to `None`.
        label_columns: the label column(s) when ``data`` is a pandas DataFrame; the other
            columns are the inputs (by name for a model with named inputs). Defaults to `None`.
        output: the output to fine-tune, for a model with several outputs (the returned
            model keeps that output only). Defaults to `None`.
        new: ``True`` always rebuilds the output layer, ``False`` never does (an error if
            the class count differs), ``None`` rebuilds it when the class count differs.
            Defaults to `None`.
        dropout: dropout before a rebuilt head. Defaults to `0.0`.
        activation: activation of a rebuilt head; ``None`` keeps the old head's kind
            (logits stay logits, probabilities stay probabilities). Defaults to `None`.
        from_logits: whether the head outputs logits; detected from its activation when
            ``None``. Defaults to `None`.
        loss: overrides the loss chosen from the labels; ``"focal"`` picks the focal
            cross-entropy that fits the labels (with ``class_weight`` as its per-class
            alpha). Defaults to `None`.
        metrics: overrides the metrics (``["accuracy"]``-like). Defaults to `None`.
        standardize_targets: train a regression head on targets scaled to mean 0 and
            standard deviation 1; the scale is folded back into the head at the end (the
            model predicts in the targets' units) and kept on ``result.target_mean`` /
            ``target_std``. Defaults to `False`.
        thresholds: multi-label decision thresholds: ``"tune"`` picks per label the one
            that maximises F1 on the validation data, ``None`` keeps 0.5, or one value per
            label. Kept on ``result.thresholds`` and used by ``result.evaluate``.
            Defaults to `"tune"`.
        label_smoothing: smooth class labels by this much (Keras's ``label_smoothing``:
            one-hot targets become ``y * (1 - s) + s / num_classes``). Defaults to `0.0`.
        class_prior: the class proportions the model will meet in use, when they are not
            the labels' (one per class, or ``{class id: proportion}``; scaled to sum to 1).
            At the end, ``log(prior / seen)`` is added to the head's bias, ``seen`` the
            labels' proportions weighted by ``class_weight``: the model then predicts for
            ``prior`` (see :mod:`kerasft.engine.prior`). Single-label classification with
            a Dense head that has a bias; kept on ``result.class_prior``. Defaults to `None`.

    Raises:
        ValueError: a value out of range or not among the choices.
    """

    keyword: ClassVar[str] = "head"
    renamed: ClassVar[Mapping[str, str]] = {
        "output": "head",
        "new": "new_head",
        "dropout": "head_dropout",
        "activation": "head_activation",
    }

    task: str = "auto"
    num_classes: int | None = None
    label_mode: str | None = None
    label_columns: str | Sequence[str] | None = None
    output: str | None = None
    new: bool | None = None
    dropout: float = 0.0
    activation: str | None = None
    from_logits: bool | None = None
    loss: Any = None
    metrics: Sequence[Any] | None = None
    standardize_targets: bool = False
    thresholds: str | Sequence[float] | None = "tune"
    label_smoothing: float = 0.0
    class_prior: Sequence[float] | Mapping[int, float] | None = None

    def __post_init__(self) -> None:
        labels.check_choices(self.task, self.label_mode, self.num_classes)
        object.__setattr__(self, "class_prior", _plain_class_prior(self.class_prior))
        if self.output is not None and not isinstance(self.output, str):
            raise ValueError(
                "Argument `output` must be the name of a model output, or None. "
                f"Received: output={self.output!r}"
            )
        for name in ("new", "from_logits"):
            _optional_bool(name, getattr(self, name))
        _fraction("dropout", self.dropout)
        _fraction("label_smoothing", self.label_smoothing)
        if not isinstance(self.standardize_targets, bool):
            raise ValueError(
                "Argument `standardize_targets` must be True or False. "
                f"Received: standardize_targets={self.standardize_targets!r}"
            )
        th = self.thresholds
        if not (
            th is None
            or th == "tune"
            or (
                isinstance(th, Sequence)
                and not isinstance(th, str)
                and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1
                    for v in th
                )
            )
        ):
            raise ValueError(
                "Argument `thresholds` must be 'tune' (per-label thresholds that maximise F1 on "
                "the validation data), None (0.5) or a list of per-label thresholds in (0, 1). "
                f"Received: thresholds={th!r}"
            )
        if isinstance(self.loss, str) and self.loss == "focal" and self.task == "regression":
            raise ValueError(
                "Argument `loss='focal'` is a classification loss, but task='regression'."
            )


@dataclass(frozen=True, repr=False)
class LayerwiseConfig(_Config):
    """How the unfrozen layers train: rates spread over layer groups, warmup, BatchNormalization.

    Example:

    >>> LayerwiseConfig(lr_mult=100)  # fastai's slice(lr / 100, lr) over the layer groups
    LayerwiseConfig(lr_mult=100)

    Args:
        lr_mult: discriminative rates after unfreezing (fastai's ``slice(lr / lr_mult,
            lr)``): layer groups get rates spread geometrically from ``finetune_lr /
            lr_mult`` (bottom) to ``finetune_lr`` (head), through a
            ``keras.optimizers.MultiOptimizer``; or one multiplier per group.
            Defaults to `None`.
        layer_decay: layer-wise rate decay instead: group ``k`` levels below the top
            trains at ``finetune_lr * layer_decay ** k``. Defaults to `None`.
        layer_groups: how to cut the model into groups for ``lr_mult``, ``layer_decay``
            and ``recipe="gradual"``: regexes or ``{name: regex}`` (see
            :func:`kerasft.layerwise.layer_groups`). Defaults to `None` (blocks by name).
        train_bn: let BatchNormalization layers train (batch statistics, updated moving
            averages) once unfrozen. Defaults to `None`: ``recipe="auto"`` lets them
            train in its fine-tune; `False` (inference mode, as the Keras
            transfer-learning guide keeps them) for the other recipes.
        warmup: fraction of the fine-tuning steps spent warming the rate up linearly,
            in ``[0, 1)``. Defaults to `None` (`0.1`).

    Raises:
        ValueError: ``lr_mult`` and ``layer_decay`` together, or a value out of range.
    """

    keyword: ClassVar[str] = "layerwise"

    lr_mult: float | Sequence[float] | None = None
    layer_decay: float | None = None
    layer_groups: Any = None
    train_bn: bool | None = None
    warmup: float | None = None

    def __post_init__(self) -> None:
        sequence = isinstance(self.lr_mult, Sequence) and not isinstance(self.lr_mult, str)
        layerwise.group_multipliers(
            len(self.lr_mult) if sequence else 2, lr_mult=self.lr_mult, layer_decay=self.layer_decay
        )
        _optional_bool("train_bn", self.train_bn)
        if self.warmup is not None:
            _fraction("warmup", self.warmup)


@dataclass(frozen=True, repr=False)
class LoraConfig(_Config):
    """Low-rank adapters: what recipes ``"lora"``, ``"dora"``, ``"lp-lora"``, ``"lp-dora"`` train.

    Example:

    >>> LoraConfig(rank=4, targets=["fc"])
    LoraConfig(rank=4, targets=['fc'])

    Args:
        rank: rank of the adapters. Defaults to `8`.
        alpha: adapter scale numerator (scale ``alpha / rank``); ``None`` gives a scale
            of 1. Defaults to `None`.
        dropout: dropout on the adapters' input, in ``[0, 1)``. Defaults to `0.0`.
        targets: layers that get adapters: regexes over layer paths or names, or layer
            classes; ``None`` picks the attention query/value projections of a
            transformer, else the Dense and 1x1 convolution layers below the head (see
            :func:`kerasft.peft.apply_lora`). Defaults to `None`.
        train: layers trained in full beside the adapters (PEFT's ``modules_to_save``):
            ``"head"``, ``"norm"`` or path regexes. Defaults to `("head",)`.
        quantize: ``"int8"`` quantizes the frozen base under the adapters (QLoRA-style,
            Keras's ``Model.quantize``). Defaults to `None`.

    Raises:
        ValueError: a value out of range or not among the choices.
    """

    keyword: ClassVar[str] = "lora"
    renamed: ClassVar[Mapping[str, str]] = {
        "rank": "lora_rank",
        "alpha": "lora_alpha",
        "dropout": "lora_dropout",
        "targets": "lora_targets",
        "train": "lora_train",
    }

    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    targets: Any = None
    train: Sequence[str] = ("head",)
    quantize: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(
                f"Argument `rank` must be a positive integer. Received: rank={self.rank!r}"
            )
        if self.alpha is not None and (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not self.alpha > 0
        ):
            raise ValueError(
                "Argument `alpha` must be a positive number or None. "
                f"Received: alpha={self.alpha!r}"
            )
        _fraction("dropout", self.dropout)
        if self.quantize not in (None, "int8"):
            raise ValueError(
                f"Argument `quantize` must be None or 'int8'. Received: quantize={self.quantize!r}"
            )


@dataclass(frozen=True, repr=False)
class OptimizerConfig(_Config):
    """Every phase's optimizer; ``finetune(optimizer="adamw")`` is ``OptimizerConfig("adamw")``.

    Example:

    >>> OptimizerConfig("adamw", weight_decay=0.05, global_clipnorm=1.0)
    OptimizerConfig(name='adamw', weight_decay=0.05, global_clipnorm=1.0)

    Args:
        name: ``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9, Nesterov) or
            ``"rmsprop"``. Defaults to `None`: ``recipe="auto"`` takes AdamW for
            transformers, Adam otherwise; ``"adam"`` for the other recipes.
        weight_decay: decoupled weight decay of ``"adamw"``. Defaults to `None` (`1e-4`).
        clipnorm: per-variable gradient norm clip. Defaults to `None`.
        global_clipnorm: global gradient norm clip. Defaults to `None`.
        use_ema: keep an exponential moving average of the weights (Keras's optimizer
            ``use_ema``); validation, best-weights selection and the returned model use
            the averaged weights. Defaults to `False`.

    Raises:
        ValueError: an unknown optimizer or a negative number.
    """

    keyword: ClassVar[str] = "optimizer"
    renamed: ClassVar[Mapping[str, str]] = {"name": "optimizer"}

    name: str | None = None
    weight_decay: float | None = None
    clipnorm: float | None = None
    global_clipnorm: float | None = None
    use_ema: bool = False

    def __post_init__(self) -> None:
        if self.name is not None and (
            not isinstance(self.name, str) or self.name.lower() not in OPTIMIZERS
        ):
            raise ValueError(
                f"Argument `optimizer` must be one of {list(OPTIMIZERS)}, None (the recipe "
                "decides) or a kerasft.OptimizerConfig named one of them. "
                f"Received: optimizer={self.name!r}"
            )
        if not isinstance(self.use_ema, bool):
            raise ValueError(
                f"Argument `use_ema` must be True or False. Received: use_ema={self.use_ema!r}"
            )
        for name in ("weight_decay", "clipnorm", "global_clipnorm"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ValueError(
                    f"Argument `{name}` must be a number >= 0 or None. Received: {name}={value!r}"
                )

    def make(self, learning_rate: Any) -> keras.optimizers.Optimizer:
        """A new optimizer of this kind at ``learning_rate`` (a float or a schedule)."""
        kwargs: dict[str, Any] = {"learning_rate": learning_rate}
        if self.use_ema:
            kwargs["use_ema"] = True
        if self.clipnorm is not None:
            kwargs["clipnorm"] = self.clipnorm
        if self.global_clipnorm is not None:
            kwargs["global_clipnorm"] = self.global_clipnorm
        name = (self.name or "adam").lower()
        if name == "adamw":
            return keras.optimizers.AdamW(weight_decay=self.weight_decay or 1e-4, **kwargs)
        if name == "sgd":
            return keras.optimizers.SGD(momentum=0.9, nesterov=True, **kwargs)
        if name == "rmsprop":
            return keras.optimizers.RMSprop(**kwargs)
        return keras.optimizers.Adam(**kwargs)


@dataclass(frozen=True, repr=False)
class RegularizationConfig(_Config):
    """Penalties, augmentation, pruning: keep the model near its pretrained weights, or sparse.

    Example:

    >>> RegularizationConfig(l2sp=0.1, clip_weights=(0.5, "fc"))
    RegularizationConfig(l2sp=0.1, clip_weights=(0.5, 'fc'))

    Args:
        l2sp: strength of the L2-SP penalty pulling pretrained weights toward their
            starting values (a rebuilt head is left free). Defaults to `None`.
        clip_weights: keep weights in ``[-c, c]``: ``c`` for every layer but
            normalization layers, or ``(c, layer regex(es))``. Defaults to `None`.
        augment: augmentation of the training batches in the input pipeline (never in
            the exported model): ``None``, ``"light"``, ``"light+flip"``,
            ``"randaugment"``, ``"mixup"``, ``"cutmix"``, ``"feature_mixup"`` (MixUp of
            what the trainable layers take: cached features stay cached), or a list of
            Keras preprocessing layers. Input augmentation applies to images (see
            :mod:`kerasft.augment`). Defaults to `None`.
        prune: prune the weights by magnitude during the last phase and return the
            stripped model (zeros in its kernels): a target sparsity such as ``0.8``, or
            a dict of :func:`kerasft.pruning.pruning_plan` options (``target_sparsity``,
            ``end_fraction``, ``block_size``, ``sparsity_m_by_n``, ``layers``...). By
            default the largest layers that the phase trains, together holding 95% of
            their weights, are pruned (the head and small early layers stay dense),
            sparsity ramps up over the first 70% of the phase's steps, and the best
            weights are picked among the epochs at full sparsity. The result is
            recorded in ``result.pruning``. Recipes ``"lp-ft"``, ``"full"`` and
            ``"head"`` only. Defaults to `None`.

    Raises:
        ValueError: a value out of range, an unknown preset or pruning option.
    """

    keyword: ClassVar[str] = "regularization"

    l2sp: float | None = None
    clip_weights: float | tuple[float, Any] | None = None
    augment: Any = None
    prune: float | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.l2sp is not None:
            regularizers.check_strength("l2sp", self.l2sp)
        if self.clip_weights is not None:
            value = self.clip_weights
            c = value[0] if isinstance(value, (tuple, list)) and len(value) == 2 else value
            if (
                isinstance(c, bool)
                or not isinstance(c, (int, float))
                or not math.isfinite(c)
                or c <= 0
            ):
                raise ValueError(
                    "Argument `clip_weights` must be a bound c > 0, or (c, layer regex or list of "
                    f"regexes). Received: clip_weights={value!r}"
                )
        augment_lib.check_augment(self.augment)
        if self.prune is not None:
            from kerasft.pruning import finetune as pruning_finetune

            # The value alone; whether the recipe can prune is checked with the other options.
            pruning_finetune.parse_prune_option(self.prune, None)

    @property
    def clip(self) -> tuple[float, Any] | None:
        """``(c, layers)`` from ``clip_weights=c`` or ``(c, layer regexes)``."""
        value = self.clip_weights
        if value is None:
            return None
        c, layers = value if isinstance(value, (tuple, list)) and len(value) == 2 else (value, None)
        return float(c), layers


@dataclass(frozen=True, repr=False)
class SpeedConfig(_Config):
    """How fast the run goes: feature caching, XLA, precision, step grouping, distribution.

    None of these changes what is computed, except ``mixed_precision``.

    Example:

    >>> SpeedConfig(cache_features=False, steps_per_execution=8)
    SpeedConfig(cache_features=False, steps_per_execution=8)

    Args:
        cache_features: while the bottom of the network is frozen and deterministic and
            the input pipeline has no random ops, compute its outputs once and train only
            the layers above on them (same results, much faster head phases). ``"auto"``
            caches where that is exact, ``False`` never, ``True`` raises where it would
            change results (augmentation). See :mod:`kerasft.speed.caching`.
            Defaults to `"auto"`.
        cache_budget: bytes of cached features kept in memory; more go to a ``tf.data``
            cache file in a temporary directory. Defaults to 1 GiB.
        jit_compile: XLA-compile the training step: ``"auto"`` on GPU/TPU only (XLA was
            7x slower on CPU), ``True`` or ``False``. Defaults to `"auto"`.
        mixed_precision: ``None`` (float32), ``True``/``"auto"`` (``mixed_float16`` on
            GPU, ``mixed_bfloat16`` on TPU and bfloat16-capable CPUs), or a policy name.
            The output layer stays float32. Defaults to `None`.
        steps_per_execution: training steps per call into TensorFlow; ``"auto"`` groups
            up to 32 when training on cached features. Defaults to `"auto"`.
        distribute: a ``tf.distribute`` strategy, or ``"auto"`` (multi-worker from
            ``TF_CONFIG``, TPU, several GPUs): the model is copied, compiled and trained
            under its scope; ``batch_size`` is the global batch (see
            :mod:`kerasft.speed.distribute` on scaling rates). Defaults to `None`.
        feature_store: a :class:`kerasft.speed.FeatureStore` shared by several calls:
            cached features are looked up there before they are computed (keyed by the
            frozen layers, their weights' values and the inputs' values), so calls on
            the same pretrained model and data compute them once. ``kerasft.search``
            gives one to all its trials. Defaults to `None`.

    Raises:
        ValueError: a value not among the choices.
    """

    keyword: ClassVar[str] = "speed"

    cache_features: bool | str = "auto"
    cache_budget: float = 1024**3
    jit_compile: bool | str = "auto"
    mixed_precision: bool | str | None = None
    steps_per_execution: int | str = "auto"
    distribute: Any = None
    feature_store: Any = None

    def __post_init__(self) -> None:
        speed_store.check_feature_store(self.feature_store)
        speed_plan.check_options(
            cache_features=self.cache_features,
            cache_budget=self.cache_budget,
            jit_compile=self.jit_compile,
            mixed_precision=self.mixed_precision,
            steps_per_execution=self.steps_per_execution,
        )


@dataclass(frozen=True, repr=False)
class RunConfig(_Config):
    """What the run writes besides the model, and how a model file is loaded.

    Example:

    >>> RunConfig(tensorboard="runs/tb", checkpoint_dir="runs/ckpt")
    RunConfig(tensorboard='runs/tb', checkpoint_dir='runs/ckpt')

    Args:
        tensorboard: directory for TensorBoard event files: losses, metrics and learning
            rate per epoch, numbered across phases, and where each phase begins (see
            :class:`kerasft.tensorboard.TensorBoardLogger`). Defaults to `None`.
        checkpoint_dir: directory for resumable checkpoints (weights, optimizer state,
            epoch, finished phases, best weights), written every epoch. Calling
            ``finetune`` again with the same arguments after an interruption skips the
            finished phases and continues the interrupted one where it stopped. A
            directory written by a different call is refused. Defaults to `None`.
        safe_mode: when loading the model from a file, refuse Python code in it (Keras's
            ``safe_mode``). Defaults to `True`.

    Raises:
        ValueError: a directory that is not a path, or a ``safe_mode`` that is not a bool.
    """

    keyword: ClassVar[str] = "run"

    tensorboard: str | os.PathLike | None = None
    checkpoint_dir: str | os.PathLike | None = None
    safe_mode: bool = True

    def __post_init__(self) -> None:
        for name in ("tensorboard", "checkpoint_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(
                    f"Argument `{name}` must be a directory path or None. "
                    f"Received: {name}={value!r}"
                )
        if not isinstance(self.safe_mode, bool):
            raise ValueError(
                "Argument `safe_mode` must be True or False. "
                f"Received: safe_mode={self.safe_mode!r}"
            )


# ------------------------------------------------------------------ keywords and configs

# finetune's flat keywords (besides `optimizer`, a name or an OptimizerConfig), with their defaults.
FLAT: dict[str, Any] = {
    "recipe": None,
    "epochs": None,
    "head_epochs": None,
    "lr": None,
    "finetune_lr": None,
    "unfreeze": None,
    "batch_size": None,
    "validation_data": None,
    "validation_split": None,
    "monitor": None,
    "patience": 5,
    "reduce_on_plateau": None,
    "class_weight": None,
    "callbacks": None,
    "seed": 0,
    "verbose": 1,
    "copy": True,
}
# finetune's keyword for each config.
CONFIGS: dict[str, type[_Config]] = {
    cls.keyword: cls
    for cls in (
        OptimizerConfig,
        HeadConfig,
        LayerwiseConfig,
        LoraConfig,
        RegularizationConfig,
        SpeedConfig,
        RunConfig,
    )
}
# Every old flat keyword: (the config's keyword, its field).
LEGACY: dict[str, tuple[str, str]] = {
    cls.flat_name(f.name): (keyword, f.name)
    for keyword, cls in CONFIGS.items()
    for f in dataclasses.fields(cls)
}
# Old keywords that remain the flat spelling: `optimizer="adamw"` is OptimizerConfig("adamw").
SHORTHANDS = frozenset({"optimizer"})


def sort_keywords(
    keywords: Mapping[str, Any],
    *,
    caller: str = "finetune",
    deprecated: bool = False,
    stacklevel: int = 3,
) -> tuple[dict[str, Any], dict[str, _Config]]:
    """Sort a call's keywords into ``(flat keywords, {keyword: config})``.

    Config objects are taken as they are; old flat keywords (``lora_rank=4``) are
    gathered into their config (``LoraConfig(rank=4)``), which checks them. Configs
    neither given nor named by an old keyword are left out (their defaults apply).

    Args:
        keywords: the call's keywords.
        caller: the function named in errors and warnings. Defaults to `"finetune"`.
        deprecated: warn (``DeprecationWarning``) about each config built from old
            keywords, naming the new spelling. Defaults to `False`.
        stacklevel: the warning's stack level. Defaults to `3` (the caller's caller).

    Raises:
        TypeError: an unknown keyword (with the closest valid one), or a config keyword
            given something other than its config.
        ValueError: a setting given both as an old keyword and through its config, or a
            bad value.
    """
    flat: dict[str, Any] = {}
    configs: dict[str, _Config] = {}
    old: dict[str, dict[str, Any]] = {}
    for key, value in keywords.items():
        cls = CONFIGS.get(key)
        if key in FLAT:
            flat[key] = value
        elif cls is not None and isinstance(value, cls):
            configs[key] = value
        elif cls is not None and value is None:
            continue
        elif key in LEGACY and (cls is None or key in SHORTHANDS or isinstance(value, str)):
            old.setdefault(LEGACY[key][0], {})[key] = (
                value  # `head="aux"`: the output's old keyword
            )
        elif cls is not None:
            raise TypeError(
                f"Argument `{key}` must be a kerasft.{cls.__name__} or None. "
                f"Received: {key}={value!r}"
            )
        else:
            raise TypeError(_unknown(key, caller, deprecated))
    for keyword, given in old.items():
        cls = CONFIGS[keyword]
        fields = {LEGACY[k][1]: v for k, v in given.items()}
        if keyword in configs:
            there = ", ".join(f"{f}={_short_repr(getattr(configs[keyword], f))}" for f in fields)
            raise ValueError(
                f"{_spell(given)} and `{keyword}={configs[keyword]!r}` ({there} there) both set "
                f"{keyword} options: pass each setting once. HINT: "
                f"{keyword}={_merged(configs[keyword], fields)}"
            )
        configs[keyword] = cls(**fields)
        old_names = {k: v for k, v in given.items() if k not in SHORTHANDS}
        if deprecated and old_names:
            warnings.warn(
                f"{_spell(old_names)} {'is' if len(old_names) == 1 else 'are'} deprecated; pass "
                f"`{keyword}=kerasft.{configs[keyword]!r}`.",
                DeprecationWarning,
                stacklevel=stacklevel,
            )
    return flat, configs


def flatten(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """``keywords``, each config object replaced by its non-default fields under flat names."""
    out: dict[str, Any] = {}
    for key, value in keywords.items():
        if isinstance(value, _Config) and isinstance(value, CONFIGS.get(key, ())):
            out.update({value.flat_name(k): v for k, v in value.non_defaults().items()})
        else:
            out[key] = value
    return out


def given_keywords(flat: Mapping[str, Any], configs: Mapping[str, _Config]) -> dict[str, Any]:
    """The options a call set, by flat name: keywords off their defaults, then config fields."""
    given = {k: v for k, v in flat.items() if not _same(v, FLAT.get(k, dataclasses.MISSING))}
    return flatten({**given, **configs})


def _unknown(key: str, caller: str, facade: bool) -> str:
    names = [*FLAT, *CONFIGS] if facade else [*FLAT, *LEGACY]
    match = difflib.get_close_matches(key, [*FLAT, *CONFIGS, *LEGACY], n=1)
    hint = ""
    if match:
        name = match[0]
        hint = f" Did you mean {name!r}?"
        if facade and name in LEGACY and name not in CONFIGS and name not in SHORTHANDS:
            keyword, field = LEGACY[name]
            hint = (
                f" Did you mean {keyword}=kerasft.{CONFIGS[keyword].__name__}({field}=...) "
                f"(formerly {name!r})?"
            )
    return (
        f"{caller}() got an unexpected keyword argument {key!r}.{hint} Valid keywords are: "
        f"{sorted(set(names))}"
    )


def _spell(keywords: Mapping[str, Any]) -> str:
    parts = [f"`{k}={_short_repr(v)}`" for k, v in keywords.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _merged(config: _Config, fields: Mapping[str, Any]) -> str:
    try:
        return f"kerasft.{dataclasses.replace(config, **fields)!r}"
    except (TypeError, ValueError):
        return f"kerasft.{type(config).__name__}(...) holding all of them"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _short_repr(value: Any) -> str:
    return _REPR.repr(value)


def _same(value: Any, default: Any) -> bool:
    if value is default:
        return True
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # array-likes compare element-wise
        return False


def _optional_bool(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(
            f"Argument `{name}` must be True, False or None. Received: {name}={value!r}"
        )


def _fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"Argument `{name}` must be in [0, 1). Received: {name}={value!r}")
