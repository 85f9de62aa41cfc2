"""The options of supervised fine-tuning, checked once, where they come in.

:class:`SFTConfig` holds every keyword of :func:`kerasft.llm.finetune_causal_lm` with the
defaults of the recipe (LoRA rank 8 on the attention query/value projections, AdamW at
1e-3 with warmup and cosine decay, 3 epochs, packed rows of 256 tokens, the loss on
completion tokens). Values are checked at construction with Keras-style messages.
The group travels whole: ``kerasft.finetune(causal_lm, data, recipe=SFTConfig(...))``
reaches the options that ``kerasft.finetune`` has no keyword for (``sequence_length``,
``packing``, ``remat``...). :func:`from_facade` takes the keywords of a
``kerasft.finetune`` call and keeps those that mean something for a causal LM (``lr``,
``epochs``, ``lora_rank``...), refusing the classifier-only ones that were set.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

from kerasft.llm.sft import LOSS_ON

__all__ = ["SFTConfig", "RECIPES", "from_facade"]

RECIPES = ("lora", "dora", "full")
_OPTIMIZERS = ("adamw", "adam", "sgd")
_QUANTIZE = (None, "int8")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Every option of a supervised fine-tuning run (see :func:`kerasft.llm.finetune_causal_lm`).

    Example:

    >>> config = SFTConfig(sequence_length=512, gradient_accumulation=4, remat=True)
    >>> config.non_defaults()
    {'gradient_accumulation': 4, 'sequence_length': 512, 'remat': True}

    Raises:
        ValueError: a value out of range or not among the choices, or options that
            conflict (``quantize`` without LoRA, ``validation_data`` with
            ``validation_split``).
    """

    recipe: str = "lora"
    epochs: int = 3
    lr: float = 1e-3
    warmup: float = 0.1
    batch_size: int = 4
    gradient_accumulation: int = 1
    sequence_length: int | None = None
    packing: bool = True
    loss_on: str = "completion"
    chat_template: Any = "auto"
    remat: bool = False
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: Any = None
    quantize: str | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    global_clipnorm: float | None = 1.0
    validation_data: Any = None
    validation_split: float = 0.0
    callbacks: Sequence[Any] | None = None
    checkpoint_dir: str | os.PathLike | None = None
    seed: int = 0
    copy: bool = True
    verbose: int = 1

    def __post_init__(self) -> None:
        _choice("recipe", self.recipe, RECIPES)
        _choice("loss_on", self.loss_on, LOSS_ON)
        _choice("optimizer", self.optimizer, _OPTIMIZERS)
        _choice("quantize", self.quantize, _QUANTIZE)
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("gradient_accumulation", self.gradient_accumulation, 1)
        _int("lora_rank", self.lora_rank, 1)
        _int("verbose", self.verbose, 0)
        if self.sequence_length is not None:
            _int("sequence_length", self.sequence_length, 8)
        _number("lr", self.lr, low=0.0, low_open=True)
        _number("warmup", self.warmup, low=0.0, high=1.0, high_open=True)
        _number("lora_dropout", self.lora_dropout, low=0.0, high=1.0, high_open=True)
        _number("weight_decay", self.weight_decay, low=0.0)
        _number("validation_split", self.validation_split, low=0.0, high=1.0, high_open=True)
        if self.lora_alpha is not None:
            _number("lora_alpha", self.lora_alpha, low=0.0, low_open=True)
        if self.global_clipnorm is not None:
            _number("global_clipnorm", self.global_clipnorm, low=0.0, low_open=True)
        if self.quantize is not None and self.recipe != "lora":
            raise ValueError(
                f"Argument `quantize={self.quantize!r}` quantizes the frozen base under LoRA "
                f"adapters and needs recipe='lora'. Received: recipe={self.recipe!r}"
            )
        if self.validation_data is not None and self.validation_split:
            raise ValueError(
                "Give `validation_data` or `validation_split`, not both. Received: "
                f"validation_split={self.validation_split!r} with validation_data"
            )
        if not (self.chat_template is None or isinstance(self.chat_template, str)):
            raise ValueError(
                "Argument `chat_template` must be 'auto' (the model's), a Jinja template string or "
                "None (plain prompt + completion). Received: "
                f"chat_template={self.chat_template!r:.80}"
            )

    @property
    def adapters(self) -> bool:
        return self.recipe in ("lora", "dora")

    def non_defaults(self) -> dict[str, Any]:
        """The options that differ from their defaults (for the plan and the model card)."""
        skip = ("validation_data", "callbacks", "verbose", "copy")
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in skip and getattr(self, f.name) != f.default
        }


def _choice(name: str, value: Any, valid: Sequence[Any]) -> None:
    if value not in valid:
        raise ValueError(
            f"Argument `{name}` must be one of {list(valid)}. Received: {name}={value!r}"
        )


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"Argument `{name}` must be an integer >= {low}. Received: {name}={value!r}"
        )


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        raise ValueError(
            f"Argument `{name}` must be a number {' and '.join(bounds)}. Received: {name}={value!r}"
        )


# kerasft.finetune keywords that carry over to a causal LM, and the name they take here.
_CARRIED = {
    "recipe": "recipe",
    "epochs": "epochs",
    "lr": "lr",
    "finetune_lr": "lr",
    "warmup": "warmup",
    "batch_size": "batch_size",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_targets": "lora_targets",
    "quantize": "quantize",
    "optimizer": "optimizer",
    "weight_decay": "weight_decay",
    "global_clipnorm": "global_clipnorm",
    "validation_data": "validation_data",
    "validation_split": "validation_split",
    "callbacks": "callbacks",
    "checkpoint_dir": "checkpoint_dir",
    "seed": "seed",
    "copy": "copy",
    "verbose": "verbose",
}


def from_facade(keywords: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The SFT keywords of a ``kerasft.finetune`` call on a causal LM.

    ``keywords`` are the call's values and ``defaults`` the facade's defaults: a keyword
    left at its default takes the SFT default instead (``lr`` 1e-3 rather than the
    classifier's 1e-2); one set to something else carries over under its SFT name, or
    is refused when it means nothing for a causal LM.

    Raises:
        ValueError: a classifier-only keyword that was set (``head_epochs``, ``unfreeze``...).
    """
    out: dict[str, Any] = {}
    refused = []
    for name, value in keywords.items():
        default = defaults.get(name, dataclasses.MISSING)
        if name in ("model", "data") or _same(value, default):
            continue
        if name in _CARRIED:
            out[_CARRIED[name]] = value
        elif name in {f.name for f in dataclasses.fields(SFTConfig)}:
            out[name] = value
        else:
            refused.append(name)
    if refused:
        raise ValueError(
            f"Arguments {sorted(refused)} do not apply to a causal LM (supervised fine-tuning). "
            "HINT: see kerasft.llm.finetune_causal_lm for its options (sequence_length, packing, "
            "loss_on, gradient_accumulation, remat...)."
        )
    return out


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value == default) and type(value) is type(default)
    except Exception:  # array-likes compare element-wise
        return False
