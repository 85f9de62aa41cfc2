"""The search space: which ``finetune`` keywords a search may draw, and their values.

:func:`parse_space` checks a space (``{keyword: [values]}`` or ``("float", low, high,
"log")`` ranges) against ``finetune``'s keywords and values and returns one
:class:`Param` per keyword, which adds itself to KerasTuner's hyperparameters and
translates the oracle's values back; :func:`baseline_values` finds ``finetune``'s
defaults in the space, for a first trial that runs them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kerasft.engine.options import Options

__all__ = [
    "NOT_SEARCHED",
    "Param",
    "baseline_values",
    "parse_space",
    "searchable_keywords",
    "warn_incomparable",
]

# Keywords that are about the run, not the model it returns, or that make the trials'
# objectives incomparable (another validation set), with why.
NOT_SEARCHED = {
    "validation_data": "the objective must be measured on the same validation data in every trial",
    "validation_split": "the objective must be measured on the same validation data in every trial",
    "monitor": "the search sets it to `objective`",
    "callbacks": "it does not change the fine-tuned model",
    "tensorboard": "it does not change the fine-tuned model",
    "checkpoint_dir": "a search resumes trial by trial from its project directory",
    "copy": "every trial fine-tunes a fresh copy of the model",
    "verbose": "search() has its own `verbose`",
    "feature_store": "it does not change the fine-tuned model",
    "distribute": "it does not change the fine-tuned model",
    "safe_mode": "it does not change the fine-tuned model",
}
_LOSS_CHANGING = ("label_smoothing", "loss", "class_weight")


@dataclass(frozen=True)
class Param:
    """One searched keyword: a choice of values, or a float/int range."""

    name: str
    kind: str  # "choice", "float" or "int"
    values: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    labels: tuple[str, ...] | None = None  # choices of mixed types are searched by label

    def add_to(self, hp: Any) -> None:
        if self.kind == "choice":
            if self.labels is None:
                hp.Choice(self.name, list(self.values))
            else:
                hp.Choice(self.name, list(self.labels), ordered=False)
        elif self.kind == "float":
            hp.Float(self.name, self.low, self.high, sampling="log" if self.log else "linear")
        else:
            hp.Int(
                self.name, int(self.low), int(self.high), sampling="log" if self.log else "linear"
            )

    def decode(self, value: Any) -> Any:
        if self.labels is not None:
            return self.values[self.labels.index(value)]
        if self.kind == "choice":
            return next((v for v in self.values if v == value and type(v) is type(value)), value)
        return int(value) if self.kind == "int" else float(value)  # not NumPy scalars

    def encode(self, value: Any) -> Any:
        """The oracle's value for ``value``, or ``None`` when the space does not hold it."""
        if self.kind == "choice":
            for i, v in enumerate(self.values):
                same = (
                    math.isclose(v, value, rel_tol=1e-9)
                    if isinstance(v, float) and isinstance(value, float)
                    else v == value
                )
                if type(v) is type(value) and same:
                    return v if self.labels is None else self.labels[i]
            return None
        number = int if self.kind == "int" else (int, float)
        ok = (
            isinstance(value, number)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )
        return value if ok else None

    def describe(self) -> list:
        if self.kind == "choice":
            return ["choice", [repr(v) for v in self.values]]
        return [self.kind, self.low, self.high, "log" if self.log else "linear"]


def searchable_keywords() -> list[str]:
    """The ``finetune`` keywords a search space may hold."""
    return sorted(k for k in Options().keywords() if k not in NOT_SEARCHED)


def parse_space(space: Any, fixed: Mapping[str, Any]) -> list[Param]:
    """Check ``space`` against ``finetune``'s keywords and values; return its parameters.

    Raises:
        ValueError: an empty space, a keyword that cannot be searched or is also fixed, a
            bad specification, or a value ``finetune`` would refuse.
    """
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            "Argument `space` must be a non-empty dict {finetune keyword: values}, e.g. "
            f"{{'lr': [1e-3, 1e-2], 'unfreeze': [1, 2, 'all']}}. Received: space={space!r}"
        )
    params = []
    for name, spec in space.items():
        if name in NOT_SEARCHED:
            raise ValueError(f"Argument `space` cannot search {name!r}: {NOT_SEARCHED[name]}.")
        if name not in searchable_keywords():
            raise ValueError(
                f"Argument `space` has {name!r}, which is not a finetune keyword. Keywords that "
                f"can be searched: {searchable_keywords()}"
            )
        if name in fixed:
            raise ValueError(
                f"Keyword {name!r} is both in `space` and fixed ({name}={fixed[name]!r}). "
                "Pass it in one place."
            )
        param = _parse_spec(name, spec)
        for value in param.values if param.kind == "choice" else (param.low, param.high):
            value = int(value) if param.kind == "int" else value
            try:
                Options.from_keywords(**{**fixed, name: value})
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"Argument `space[{name!r}]`: finetune refuses {name}={value!r}: {e}"
                ) from None
        params.append(param)
    return params


def _parse_spec(name: str, spec: Any) -> Param:
    valid = (
        f"Argument `space[{name!r}]` must be a list of values (a choice), ('float', low, high), "
        f"('float', low, high, 'log'), ('int', low, high) or ('int', low, high, 'log'). "
        f"Received: space[{name!r}]={spec!r}"
    )
    if isinstance(spec, list):
        if not spec:
            raise ValueError(
                f"Argument `space[{name!r}]` is an empty list: give at least one value."
            )
        labels = [repr(v) for v in spec]
        if len(set(labels)) != len(labels):
            raise ValueError(f"Argument `space[{name!r}]` repeats a value. Received: {spec!r}")
        kinds = {type(v) for v in spec}
        native = len(kinds) == 1 and kinds <= {int, float, str, bool}
        return Param(name, "choice", tuple(spec), labels=None if native else tuple(labels))
    if not isinstance(spec, tuple) or len(spec) not in (3, 4) or spec[0] not in ("float", "int"):
        raise ValueError(valid)
    kind, low, high, *rest = spec
    if rest not in ([], ["log"]):
        raise ValueError(valid)
    number = int if kind == "int" else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, number) for v in (low, high)) or not low < high:
        raise ValueError(f"{valid}. Bounds must be {kind}s with low < high.")
    if rest and low <= 0:
        raise ValueError(
            f"Argument `space[{name!r}]`: a log range needs low > 0. Received: low={low!r}"
        )
    return Param(name, kind, low=low, high=high, log=bool(rest))


def baseline_values(params: list[Param], fixed: Mapping[str, Any]) -> dict[str, Any] | None:
    """The oracle's values for ``finetune``'s defaults, or ``None`` when the space lacks one.

    ``finetune_lr=None`` (the default) stands for a tenth of the run's ``lr``.
    """
    defaults = Options().keywords()
    values: dict[str, Any] = {}
    for param in params:
        default = defaults[param.name]
        if param.name == "finetune_lr" and default is None:
            lr = next(
                (p.decode(values[p.name]) for p in params if p.name == "lr" and p.name in values),
                fixed.get("lr", defaults["lr"]),
            )
            default = lr / 10 if isinstance(lr, (int, float)) else None
        value = None if default is None else param.encode(default)
        if value is None:
            return None
        values[param.name] = value
    return values


def warn_incomparable(params: list[Param], objective: str) -> None:
    changed = [p.name for p in params if p.name in _LOSS_CHANGING]
    name = objective.removeprefix("val_")
    if changed and (name == "loss" or name.endswith("_loss")):
        warnings.warn(
            f"kerasft.search: the space changes {changed}, so the trials compute {objective!r} "
            "with different losses and their values are not fully comparable. "
            "HINT: objective='val_accuracy'.",
            UserWarning,
            stacklevel=3,
        )
