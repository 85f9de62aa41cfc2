"""Shift a classifier to the class proportions it will meet: ``HeadConfig(class_prior=...)``.

Every choice a run makes is scored on the labels given. When their class proportions are
not the ones the model will meet in use (as many examples of each class, labelled from a
population where some classes are rare), the model returned predicts for the labels'
proportions, and nothing scored on those labels can see it. For a change of the class
proportions alone (each class's inputs alike in both), the correction is exact: add
``log(prior / seen)`` to each class's logit, ``seen`` the proportions training saw (the
labels', weighted by ``class_weight``) and ``prior`` the ones given (Saerens et al.,
2002; the post-hoc logit adjustment of Menon et al., 2021). :func:`check` tells a head it
cannot shift before training; :func:`apply` folds the shift into the head's bias of the
model returned, so the model, its evaluation and its export all predict for ``prior``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from kerasft import surgery
from kerasft.data.labels import class_weights

__all__ = ["check", "apply", "shift"]

_LABEL_MODES = ("sparse", "one_hot", "binary")


def _proportions(prior: Any, num_classes: int) -> np.ndarray:
    if isinstance(prior, Mapping):
        unknown = sorted(int(k) for k in prior if int(k) >= num_classes)
        missing = sorted(set(range(num_classes)) - {int(k) for k in prior})
        if unknown or missing:
            raise ValueError(
                f"Argument `class_prior` must give a proportion for each of the {num_classes} "
                f"classes (ids 0-{num_classes - 1}). Received: class_prior={prior!r} "
                f"(unknown ids {unknown}, missing ids {missing})"
            )
        values = np.asarray([float(prior[c]) for c in range(num_classes)])
    else:
        values = np.asarray(prior, dtype="float64").reshape(-1)
        if len(values) != num_classes:
            raise ValueError(
                f"Argument `class_prior` has {len(values)} proportions, but the labels have "
                f"{num_classes} classes. Received: class_prior={values.tolist()!r}"
            )
    return values / values.sum()


def _seen(spec: Any, class_weight: Any) -> np.ndarray:
    """The class proportions training saw: the labels' counts times their class weights."""
    counts = np.asarray([spec.class_counts.get(i, 0) for i in range(spec.num_classes)], float)
    weights = class_weights(spec, class_weight)
    if weights:
        counts = counts * np.asarray([weights.get(i, 1.0) for i in range(len(counts))])
    return counts / counts.sum()


def shift(prior: Any, spec: Any, class_weight: Any = None) -> np.ndarray:
    """``log(prior / seen)`` per class: what :func:`apply` adds to the head's logits.

    Raises:
        ValueError: a prior that does not fit the labels' classes, or a class the labels
            never show (its proportion in training is zero).
    """
    prior = _proportions(prior, spec.num_classes)
    seen = _seen(spec, class_weight)
    absent = [c for c in range(len(seen)) if seen[c] == 0]
    if absent:
        raise ValueError(
            f"Argument `class_prior` cannot shift classes {absent}: the labels have no example "
            "of them (or their class_weight is 0), so no proportion of them was learned."
        )
    return np.log(prior) - np.log(seen)


def check(model: keras.Model, spec: Any, options: Any) -> None:
    """Raise a ``ValueError`` before training if ``options.task.class_prior`` cannot be applied."""
    prior = options.task.class_prior
    if prior is None:
        return
    if spec.task != "classification" or spec.label_mode not in _LABEL_MODES:
        raise ValueError(
            "Argument `class_prior` shifts single-label class outputs, but the labels are "
            f"{spec.task} ({spec.label_mode}). HINT: pass class_prior=None."
        )
    shift(prior, spec, options.task.class_weight)
    head = surgery.find_head(model)
    activation = surgery.head_activation(model)
    bias = getattr(head, "bias", None)
    units = int(head.units) if isinstance(head, keras.layers.Dense) else None
    fits = activation in ("softmax", "linear") or (activation == "sigmoid" and units == 1)
    if not isinstance(head, keras.layers.Dense) or bias is None or not fits:
        raise ValueError(
            "Argument `class_prior` is folded into the head's bias, which needs a Dense head "
            "with a bias that outputs logits, softmax probabilities or one sigmoid unit. "
            f"Received: head {head.name!r} ({type(head).__name__}, activation {activation!r}, "
            f"{'a' if bias is not None else 'no'} bias). HINT: pass "
            "HeadConfig(new=True) for a new Dense head."
        )


def apply(model: keras.Model, spec: Any, options: Any) -> list[float] | None:
    """Fold ``log(prior / seen)`` into ``model``'s head bias; the proportions applied, or None."""
    prior = options.task.class_prior
    if prior is None:
        return None
    logits = shift(prior, spec, options.task.class_weight)
    head = surgery.find_head(model)
    bias = keras.ops.convert_to_numpy(head.bias).astype("float64")
    if int(head.units) == 1:  # one sigmoid unit: the logit of class 1 against class 0
        bias = bias + (logits[1] - logits[0])
    else:
        bias = bias + logits
    head.bias.assign(bias.astype(keras.backend.standardize_dtype(head.bias.dtype)))
    return [float(p) for p in _proportions(prior, spec.num_classes)]
