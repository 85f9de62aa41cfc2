"""How ``finetune`` applies its strategy keywords: phase recipes, rates, regularization.

``kerasft.finetune`` hands ``recipe="gradual"`` or a phase list, ``lr="find"``,
``lr_mult`` / ``layer_decay``, ``l2sp``, ``clip_weights``, ``use_ema`` and
``reduce_on_plateau`` to the helpers here; the strategies themselves live in
``schedules``, ``layerwise``, ``lr_finder``, ``regularizers`` and ``callbacks``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import callbacks as _callbacks
from kerasft import layerwise, regularizers, surgery
from kerasft import schedules as _schedules

GRADUAL = "gradual"
PHASES = "phases"
MakeOptimizer = Callable[[Any], keras.optimizers.Optimizer]


def normalize_recipe(recipe: Any, builtin: Sequence[str]) -> tuple[str, list[dict] | None]:
    """``(kind, phases)``: a built-in recipe name, ``"gradual"``, or ``"phases"`` and the list."""
    valid = list(dict.fromkeys([*builtin, GRADUAL]))
    if isinstance(recipe, str) and recipe in valid:
        return recipe, None
    hint = (
        f"Argument `recipe` must be one of {valid}, a list of phases "
        "([{'layers': regex(es), 'epoch': int, 'lr': float}, ...]) or the path of a "
        f".yaml/.json file of phases. Received: recipe={recipe!r}"
    )
    if isinstance(recipe, (str, os.PathLike)):
        if not os.fspath(recipe).lower().endswith((".yaml", ".yml", ".json")):
            raise ValueError(hint)
    elif not isinstance(recipe, (Sequence, Mapping)) or isinstance(recipe, bytes):
        raise ValueError(hint)
    try:
        phases = _callbacks.load_phases(recipe)
    except ValueError as e:
        raise ValueError(f"Argument `recipe`: {e}") from None
    missing = [i for i, p in enumerate(phases) if p["epoch"] is None]
    if missing:
        raise ValueError(
            f"Argument `recipe`: phases {missing} have no `epoch`. finetune starts phases at "
            "declared epochs. HINT: for phases that start on a validation plateau, use "
            "kerasft.callbacks.GradualUnfreezing(phases, monitor='val_loss') with model.fit."
        )
    return PHASES, phases


def check_options(
    *,
    kind: str,
    lr_mult: Any,
    layer_decay: Any,
    l2sp: Any,
    clip_weights: Any,
    use_ema: Any,
    reduce_on_plateau: Any,
    unfreeze: Any,
    callbacks: Sequence[Any] | None,
) -> None:
    """Validate the strategy keywords of ``finetune`` before anything trains."""
    sequence = isinstance(lr_mult, Sequence) and not isinstance(lr_mult, str)
    layerwise.group_multipliers(len(lr_mult) if sequence else 2, lr_mult=lr_mult, layer_decay=layer_decay)
    if (lr_mult is not None or layer_decay is not None) and kind == "head":
        raise ValueError(
            "Arguments `lr_mult` / `layer_decay` spread rates over layer groups, but "
            "recipe='head' trains only the head. Received: "
            f"lr_mult={lr_mult!r}, layer_decay={layer_decay!r}"
        )
    if kind in (GRADUAL, PHASES) and unfreeze != "all":
        raise ValueError(
            f"Argument `unfreeze` applies to the 'lp-ft' and 'full' recipes; recipe {kind!r} "
            f"unfreezes by phases. Received: unfreeze={unfreeze!r}"
        )
    if l2sp is not None:
        regularizers._check_strength("l2sp", l2sp)
    if clip_weights is not None:
        clip_value(clip_weights)
    if not isinstance(use_ema, bool):
        raise ValueError(f"Argument `use_ema` must be True or False. Received: use_ema={use_ema!r}")
    plateau_kwargs(reduce_on_plateau, "val_loss")
    if kind != "head":
        for cb in callbacks or []:
            if isinstance(cb, keras.callbacks.ReduceLROnPlateau) and not isinstance(
                cb, _callbacks.ReduceLROnPlateauScaled
            ):
                raise ValueError(
                    "Argument `callbacks` holds a keras.callbacks.ReduceLROnPlateau, which fails "
                    "mid-fit on the scheduled learning rates of the fine-tuning phases (Keras "
                    "cannot set the rate of a scheduled optimizer). HINT: pass "
                    "reduce_on_plateau=True, or use kerasft.callbacks.ReduceLROnPlateauScaled."
                )


def clip_value(clip_weights: Any) -> tuple[float, Any]:
    """``(c, layers)`` from ``clip_weights=c`` or ``clip_weights=(c, layer regexes)``."""
    c, layers = clip_weights, None
    if isinstance(clip_weights, (tuple, list)) and len(clip_weights) == 2:
        c, layers = clip_weights
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise ValueError(
            "Argument `clip_weights` must be a bound c > 0, or (c, layer regex or list of "
            f"regexes). Received: clip_weights={clip_weights!r}"
        )
    return float(c), layers


def plateau_kwargs(reduce_on_plateau: Any, monitor: str) -> dict[str, Any] | None:
    """Keyword arguments of ``ReduceLROnPlateauScaled``, or ``None`` when not asked for."""
    if reduce_on_plateau is None or reduce_on_plateau is False:
        return None
    if reduce_on_plateau is True:
        return {"monitor": monitor, "factor": 0.5, "patience": 2}
    if isinstance(reduce_on_plateau, Mapping):
        return {"monitor": monitor, "factor": 0.5, "patience": 2, **reduce_on_plateau}
    raise ValueError(
        "Argument `reduce_on_plateau` must be True, False, None or a dict of "
        "kerasft.callbacks.ReduceLROnPlateauScaled arguments. "
        f"Received: reduce_on_plateau={reduce_on_plateau!r}"
    )


def regularize(
    model: keras.Model, head: keras.layers.Layer, head_rebuilt: bool, l2sp: Any, clip_weights: Any
) -> dict[str, Any]:
    """Attach L2-SP (pretrained layers; a rebuilt head is left free) and weight clipping."""
    report: dict[str, Any] = {}
    if l2sp:
        new = [re.escape(_path(model, head))] if head_rebuilt else None
        report["l2sp"] = regularizers.apply_l2sp(model, alpha=float(l2sp), beta=0.0, new_layers=new)
    if clip_weights is not None:
        c, layers = clip_value(clip_weights)
        report["clip_weights"] = regularizers.clip_weights(model, c, layers)
    return report


def _path(model: keras.Model, layer: keras.layers.Layer) -> str:
    return next(p for p, lyr in surgery.iter_layers(model) if lyr is layer)


def find_lr(
    model: keras.Model,
    head: keras.layers.Layer,
    data: Any,
    *,
    loss: Any,
    kind: str,
    train_bn: bool,
    make_optimizer: MakeOptimizer,
) -> Any:
    """Run ``lr_find`` with the first phase's trainable set; the model is left as it was."""
    from kerasft.lr_finder import lr_find

    state = surgery.trainable_state(model)
    surgery.freeze(model)
    if kind == "full":
        surgery.unfreeze(model, train_bn=train_bn)
    else:
        surgery.set_trainable(model, {_path(model, head): True})
    try:
        return lr_find(model, data, loss=loss, optimizer=make_optimizer(1e-3))
    finally:
        surgery.set_trainable(model, state)


def phase_optimizer(
    model: keras.Model,
    learning_rate: Any,
    make_optimizer: MakeOptimizer,
    *,
    spread: bool,
    lr_mult: Any,
    layer_decay: Any,
    layer_groups: Any,
) -> keras.optimizers.Optimizer:
    """The optimizer of one phase: one rate, or one per layer group (``spread``)."""
    template = make_optimizer(learning_rate)
    if spread and (lr_mult is not None or layer_decay is not None):
        return layerwise.discriminative_optimizer(
            model, template, lr_mult=lr_mult, layer_decay=layer_decay, groups=layer_groups,
            name="finetune",
        )
    if template.weight_decay:
        template.exclude_from_weight_decay(var_list=layerwise.no_decay_variables(model))
    return template


def gradual_phases(
    model: keras.Model, head: keras.layers.Layer, head_epochs: int, epochs: int, patterns: Any
) -> list[dict[str, Any]]:
    """Phases of ``recipe="gradual"``: the head, then body groups top-down.

    The head trains alone for ``head_epochs``; then over ``epochs`` the body groups
    join from the top, evenly spaced (several per phase when there are more groups than
    epochs), so that the last phase still trains for ``epochs // phases`` epochs or more.
    """
    groups = layerwise.layer_groups(model, patterns)
    top = [i for i, (_, layers) in enumerate(groups) if any(lyr is head for lyr in layers)]
    head_group = top[0] if top else len(groups) - 1
    top_down = [groups[i] for i in range(len(groups) - 1, -1, -1) if i != head_group]
    # A group of normalization layers alone ("bn1" between "conv2" and "conv1") would be
    # a phase that trains nothing: it joins the group below it, whose output it normalizes.
    body: list[tuple[str, list]] = []
    pending: list = []
    for name, layers in top_down:
        if all(isinstance(lyr, layerwise._NORMALIZATION) for lyr in layers):
            pending += layers
            continue
        body.append((name, pending + layers))
        pending = []
    if pending and body:
        body[-1] = (body[-1][0], body[-1][1] + pending)
    elif pending:
        body.append(("normalization", pending))

    def regexes(items) -> list[str]:
        return [re.escape(_path(model, lyr)) for _, layers in items for lyr in layers]

    phases = [{"layers": regexes([groups[head_group]]), "epoch": 0, "lr": None}]
    if epochs and body:
        size = math.ceil(len(body) / epochs)
        chunks = [body[k : k + size] for k in range(0, len(body), size)]
        every = epochs // len(chunks)
        for j, chunk in enumerate(chunks):
            start = head_epochs + j * every
            if start == 0:
                phases[0]["layers"] += regexes(chunk)
            else:
                phases.append({"layers": regexes(chunk), "epoch": start, "lr": None})
    return phases


@dataclass
class GradualStage:
    """What the single fit of a phase recipe needs: optimizer, callback, rates."""

    optimizer: keras.optimizers.Optimizer
    callback: _callbacks.GradualUnfreezing
    rates: list[float]
    start_from_epoch: int


def gradual_stage(
    model: keras.Model,
    phases: list[dict[str, Any]],
    *,
    lr: float,
    finetune_lr: float,
    lr_mult: Any,
    layer_decay: Any,
    total_epochs: int,
    steps_per_epoch: int,
    warmup: float,
    train_bn: bool,
    make_optimizer: MakeOptimizer,
    verbose: int,
) -> GradualStage:
    """Freeze all but phase 0 and build one sub-optimizer per phase with its own schedule.

    Phase ``i`` trains at ``phases[i]["lr"]``, else ``lr`` for phase 0 and
    ``finetune_lr`` (spread by ``lr_mult`` / ``layer_decay``, deepest phase lowest)
    for the others, with linear warmup and cosine decay from the epoch it starts to
    the end of the run. Each sub-optimizer counts its own steps, so a phase's warmup
    begins when it is unfrozen.
    """
    late = [p for p in phases if p["epoch"] is not None and p["epoch"] >= total_epochs]
    if late:
        raise ValueError(
            f"Argument `recipe`: phases start at epochs {[p['epoch'] for p in phases]} but the "
            f"run lasts {total_epochs} epochs, so some would never train. HINT: raise `epochs`."
        )
    mults = layerwise.group_multipliers(max(1, len(phases) - 1), lr_mult=lr_mult, layer_decay=layer_decay)
    rates = []
    for i, phase in enumerate(phases):
        if phase["lr"] is not None:
            rates.append(float(phase["lr"]))
        elif i == 0:
            rates.append(float(lr))
        else:
            rates.append(float(finetune_lr) * mults[len(phases) - 1 - i])
    callback = _callbacks.GradualUnfreezing(
        [{"layers": p["layers"], "epoch": p["epoch"]} for p in phases],
        train_bn=train_bn, verbose=int(verbose > 0),
    )
    groups = callback.phase_groups(model)
    first = callback._resolved(model)[0][0]
    surgery.freeze(model)
    _callbacks._apply_trainable(model, {id(lyr): True for lyr in first}, train_bn)
    by_name = {}
    for i, phase in enumerate(phases):
        steps = max(1, (total_epochs - phase["epoch"]) * steps_per_epoch)
        warm = min(int(round(warmup * steps)), steps - 1)
        by_name[f"phase{i}"] = _schedules.WarmupCosineDecay(
            rates[i], total_steps=steps, warmup_steps=warm, name=f"phase{i}"
        )
    template = make_optimizer(float(finetune_lr))
    weight_decay = template.weight_decay
    make = layerwise._template_from(template, weight_decay)
    group_rates = [by_name.get(name, float(finetune_lr)) for name, _ in groups]
    optimizer = layerwise._grouped_optimizer(
        groups, group_rates, make, weight_decay, float(finetune_lr), "gradual"
    )
    starts = [p["epoch"] for p in phases]
    return GradualStage(optimizer, callback, rates, max(starts))
