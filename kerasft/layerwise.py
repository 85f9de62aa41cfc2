"""Layer groups and discriminative (layer-wise) learning rates on Keras's ``MultiOptimizer``.

Fine-tuning moves a pretrained backbone less than a new head: fastai spreads the rate
geometrically from ``lr / lr_mult`` at the bottom group to ``lr`` at the top
(``slice(lo, hi)``), timm/BEiT scale it by ``layer_decay ** depth_from_top``. Both need
the model cut into groups, bottom to top: ``layer_groups`` derives them from block
prefixes in layer names (``block1_conv1`` -> ``block1``), nested sub-models, or user
regexes. ``discriminative_optimizer`` then builds a ``keras.optimizers.MultiOptimizer``
with one sub-optimizer per group (two when weight decay must skip biases and
normalization parameters), routed by an ``OptimizerMap`` of variable-path regexes, so
the whole thing saves and loads with the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from kerasft import _keras_compat as compat
from kerasft import schedules as _schedules
from kerasft import surgery

__all__ = [
    "layer_groups",
    "discriminative_optimizer",
    "group_multipliers",
    "no_decay_variables",
]

LayerGroups = list[tuple[str, list[keras.layers.Layer]]]
Patterns = str | Sequence[str] | Mapping[str, str | Sequence[str]]

# "block1_conv1" -> "block1", "block2a_expand" -> "block2", "conv2_block1_1_conv" -> "conv2",
# "block_13_expand" -> "block_13": the name up to its first number (and one letter suffix).
_BLOCK_KEY = re.compile(r"^(.*?\d+)[a-z]?(?:_|$)")


def _snake(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _block_key(layer: keras.layers.Layer) -> str:
    name = layer.name
    # Auto-generated names ("conv2d_3", "dense") say nothing about blocks: "conv2d_1"
    # would otherwise read as block "conv2".
    if re.fullmatch(rf"{re.escape(_snake(type(layer).__name__))}(_\d+)?", name):
        return name
    match = _BLOCK_KEY.match(name)
    return match.group(1) if match else name


def _normalize_patterns(patterns: Patterns) -> list[tuple[str, list[re.Pattern]]]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if isinstance(patterns, Mapping):
        items = list(patterns.items())
    elif isinstance(patterns, Sequence):
        items = [(p, p) for p in patterns]
    else:
        raise TypeError(
            "Argument `patterns` must be a regex, a list of regexes or a dict "
            f"{{group name: regex or list of regexes}}. Received: patterns={patterns!r}"
        )
    if not items:
        raise ValueError("Argument `patterns` must not be empty. Received: patterns=[]")
    out = []
    for name, regexes in items:
        if isinstance(regexes, str):
            regexes = [regexes]
        compiled = []
        for regex in regexes:
            if not isinstance(regex, str):
                raise TypeError(f"Patterns must be strings. Received: {regex!r} in group {name!r}")
            try:
                compiled.append(re.compile(regex))
            except re.error as e:
                raise ValueError(f"Invalid regex {regex!r} in argument `patterns`: {e}") from None
        out.append((str(name), compiled))
    return out


def layer_groups(model: keras.Model, patterns: Patterns | None = None) -> LayerGroups:
    """Cut a model into groups of layers with weights, ordered from bottom to top.

    Without ``patterns``, layers are grouped by the block prefix of their name (the name
    up to its first number: ``block1_conv1`` and ``block1_bn1`` form ``block1``;
    ``conv2_block1_1_conv`` belongs to ``conv2``); layers without such a prefix, and
    auto-named ones like ``dense_3``, form a group each. Layers inside a nested model
    are grouped within it and named ``"backbone/block1"``.

    With ``patterns``, each layer goes to the first group whose regex matches its name
    (``re.fullmatch``; for layers in nested models the qualified name
    ``"backbone/block1_conv1"`` is tried too). Every layer with weights must match one:
    end with ``".*"`` to catch the rest. Groups are then ordered by their lowest layer.
    Layers without weights are left out, since no rate applies to them.

    Example:

    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(4, name="block1_dense")(inputs)
    >>> x = keras.layers.Dense(4, name="block2_dense")(x)
    >>> outputs = keras.layers.Dense(2, name="head")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> [name for name, _ in layer_groups(model)]
    ['block1', 'block2', 'head']
    >>> [name for name, _ in layer_groups(model, {"body": "block.*", "top": ".*"})]
    ['body', 'top']

    Args:
        model: a built Keras model.
        patterns: ``None`` to derive groups, a list of regexes (each its own group, named
            by the regex), or a dict ``{group name: regex or list of regexes}``.
            Defaults to `None`.

    Returns:
        A list of ``(group name, [layers])`` from the input side to the output side.

    Raises:
        ValueError: if a regex is invalid, a layer with weights matches no pattern, a
            pattern matches no layer, or the model has no weights.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a keras.Model. Received: model={model!r}")
    leaves = [(q, layer) for q, layer in surgery.leaf_layers(model) if layer.weights]
    if not leaves:
        raise ValueError(f"Model {model.name!r} has no layers with weights to group.")
    order = {id(layer): i for i, (_, layer) in enumerate(leaves)}
    groups: dict[str, list[keras.layers.Layer]] = {}
    if patterns is None:
        for qualified, layer in leaves:
            parent = qualified.rsplit("/", 1)[0] + "/" if "/" in qualified else ""
            groups.setdefault(parent + _block_key(layer), []).append(layer)
    else:
        compiled = _normalize_patterns(patterns)
        unmatched = []
        for qualified, layer in leaves:
            for name, regexes in compiled:
                if any(r.fullmatch(layer.name) or r.fullmatch(qualified) for r in regexes):
                    groups.setdefault(name, []).append(layer)
                    break
            else:
                unmatched.append(qualified)
        if unmatched:
            raise ValueError(
                f"These layers with weights match no pattern: {unmatched}. Patterns: "
                f"{[[r.pattern for r in rs] for _, rs in compiled]}. HINT: add a last "
                "catch-all pattern '.*' to put the remaining layers in one group."
            )
        empty = [name for name, _ in compiled if name not in groups]
        if empty:
            names = [q for q, _ in leaves]
            raise ValueError(
                f"Patterns of groups {empty} match no layer with weights (or only layers "
                f"an earlier pattern took). Layers with weights are: {names}"
            )
    return sorted(groups.items(), key=lambda item: min(order[id(layer)] for layer in item[1]))


def group_multipliers(
    num_groups: int,
    *,
    lr_mult: float | Sequence[float] | None = None,
    layer_decay: float | None = None,
) -> list[float]:
    """Per-group rate multipliers, bottom group first; the top group gets 1.

    ``lr_mult=m`` spreads geometrically from ``1/m`` to 1 (fastai's ``slice(lr/m, lr)``);
    ``layer_decay=d`` gives ``d ** (groups above)`` (timm/BEiT); a sequence of
    ``lr_mult`` values is used as is.

    Example:

    >>> group_multipliers(3, lr_mult=100)
    [0.01, 0.1, 1.0]
    >>> group_multipliers(3, layer_decay=0.5)
    [0.25, 0.5, 1.0]

    Args:
        num_groups: number of groups, at least 1.
        lr_mult: ratio of the top group's rate to the bottom group's (``>= 1``), or one
            multiplier per group. Defaults to `None`.
        layer_decay: factor per group going down, in ``(0, 1]``. Defaults to `None`.

    Returns:
        ``num_groups`` floats (all 1 when neither argument is given).

    Raises:
        ValueError: when both are given or a value is out of range.
    """
    if lr_mult is not None and layer_decay is not None:
        raise ValueError(
            "Arguments `lr_mult` and `layer_decay` are two ways to spread rates over groups; "
            f"pass one. Received: lr_mult={lr_mult!r}, layer_decay={layer_decay!r}"
        )
    n = num_groups
    if lr_mult is not None and (
        isinstance(lr_mult, (str, bool)) or not isinstance(lr_mult, (int, float, Sequence))
    ):
        raise ValueError(
            "Argument `lr_mult` must be a number >= 1 or a list of per-group multipliers. "
            f"Received: lr_mult={lr_mult!r}"
        )
    if lr_mult is not None and not isinstance(lr_mult, (int, float)):
        mults = [float(m) for m in lr_mult]
        if len(mults) != n or any(m < 0 for m in mults):
            raise ValueError(
                f"Argument `lr_mult` as a sequence must hold {n} non-negative multipliers, one "
                f"per group. Received: lr_mult={list(lr_mult)!r}"
            )
        return mults
    if lr_mult is not None:
        if isinstance(lr_mult, bool) or lr_mult < 1:
            raise ValueError(
                "Argument `lr_mult` must be >= 1 (the bottom group trains at lr / lr_mult). "
                f"Received: lr_mult={lr_mult!r}"
            )
        if n == 1:
            return [1.0]
        return [float(lr_mult) ** (-(n - 1 - i) / (n - 1)) for i in range(n)]
    if layer_decay is not None:
        if isinstance(layer_decay, bool) or not 0 < layer_decay <= 1:
            raise ValueError(
                f"Argument `layer_decay` must be in (0, 1]. Received: layer_decay={layer_decay!r}"
            )
        return [float(layer_decay) ** (n - 1 - i) for i in range(n)]
    return [1.0] * n


def is_no_decay(layer: keras.layers.Layer, variable) -> bool:
    return (
        isinstance(layer, surgery.NORMALIZATION_LAYERS)
        or variable.name in ("bias", "beta", "gamma")
        or len(variable.shape) <= 1
    )


def no_decay_variables(model: keras.Model) -> list:
    """Weights that weight decay should skip: biases, normalization parameters, 1-D weights.

    Use it with a single optimizer:
    ``optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))``
    (before the optimizer is built). ``discriminative_optimizer`` applies the same rule.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> [v.name for v in no_decay_variables(model)]
    ['bias']

    Args:
        model: a built Keras model.

    Returns:
        The model's variables that should not be decayed, moving statistics excluded.
    """
    out = []
    for _, layer in surgery.leaf_layers(model):
        for v in layer.weights:
            if compat.created_trainable(layer, v) and is_no_decay(layer, v):
                out.append(v)
    return out


def optimizer_factory(optimizer: Any, weight_decay: float | None) -> Callable[[Any, str, Any], Any]:
    """Return ``make(learning_rate, name, weight_decay) -> Optimizer`` for one sub-optimizer."""
    sched = keras.optimizers.schedules.LearningRateSchedule
    if isinstance(optimizer, (int, float, sched)) and not isinstance(optimizer, bool):
        cls = keras.optimizers.AdamW if weight_decay else keras.optimizers.Adam

        def make(lr, name, wd):
            if cls is keras.optimizers.AdamW:
                return cls(learning_rate=lr, weight_decay=wd or 0.0, name=name)
            return cls(learning_rate=lr, name=name)

        return make
    if not isinstance(optimizer, keras.optimizers.Optimizer) and callable(optimizer):
        optimizer = optimizer()
    if isinstance(optimizer, keras.optimizers.MultiOptimizer) or not isinstance(
        optimizer, keras.optimizers.Optimizer
    ):
        raise TypeError(
            "Argument `optimizer` must be a learning rate (float or LearningRateSchedule), a "
            "keras.optimizers.Optimizer to copy per group, or a callable returning one "
            f"(not a MultiOptimizer). Received: optimizer={optimizer!r}"
        )
    config = optimizer.get_config()

    def make(lr, name, wd):
        c = dict(config, learning_rate=lr, name=name)
        if "weight_decay" in c:
            # AdamW refuses None: its no-decay twin gets 0.0 instead.
            c["weight_decay"] = wd if wd else (0.0 if config.get("weight_decay") else None)
        return type(optimizer).from_config(c)

    return make


def _base_rate(optimizer: Any):
    sched = keras.optimizers.schedules.LearningRateSchedule
    if isinstance(optimizer, (int, float, sched)) and not isinstance(optimizer, bool):
        return optimizer
    if not isinstance(optimizer, keras.optimizers.Optimizer) and callable(optimizer):
        optimizer = optimizer()
    lr = compat.learning_rate_object(optimizer)
    if isinstance(lr, sched):
        return lr
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _path_tail(layer: keras.layers.Layer, variable) -> str:
    """The variable's path from its layer's name on (``"fc/kernel"``)."""
    match = re.search(rf"(?:^|/)({re.escape(layer.name)}/.*)$", variable.path)
    return match.group(1) if match else variable.path


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def discriminative_optimizer(
    model: keras.Model,
    optimizer: float
    | keras.optimizers.schedules.LearningRateSchedule
    | keras.optimizers.Optimizer
    | Callable[[], keras.optimizers.Optimizer] = 1e-3,
    *,
    lr_mult: float | Sequence[float] | None = None,
    layer_decay: float | None = None,
    groups: LayerGroups | Patterns | None = None,
    weight_decay: float | None = None,
    name: str = "discriminative",
) -> keras.optimizers.MultiOptimizer:
    """Build a ``MultiOptimizer`` giving each layer group its own learning rate.

    Group ``i`` (bottom first) trains at ``base rate * multiplier[i]``, the multipliers
    coming from ``lr_mult`` or ``layer_decay`` (see ``group_multipliers``). A schedule
    as base rate is shared in shape: each group gets a copy scaled by its multiplier
    (kerasft schedules) or wrapped in ``kerasft.schedules.Scaled`` (others). With
    ``weight_decay``, biases, normalization parameters and other 1-D weights go to a
    twin sub-optimizer without decay. Each sub-optimizer counts its own iterations, so a
    group that starts frozen begins Adam's bias correction (and its schedule) when it
    is unfrozen.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="block1_fc"),
    ...                           keras.layers.Dense(2, name="head")])
    >>> opt = discriminative_optimizer(model, 1e-3, lr_mult=10)
    >>> [(o.name, round(float(o.learning_rate), 6)) for o in opt.optimizers]
    [('block1', 0.0001), ('head', 0.001), ('rest', 0.001)]

    Args:
        model: the built model to optimize.
        optimizer: the base rate (float or ``LearningRateSchedule``; Adam, or AdamW with
            ``weight_decay``), or an optimizer (or a callable returning one) whose
            config is copied for every group with the rate scaled. Defaults to `1e-3`.
        lr_mult: ratio of the top group's rate to the bottom's, or one multiplier per
            group. Defaults to `None`.
        layer_decay: rate factor per group going down from the top. Defaults to `None`.
        groups: the output of ``layer_groups``, or patterns for it. Defaults to `None`
            (``layer_groups(model)``).
        weight_decay: decoupled weight decay for weights other than biases and
            normalization parameters. Defaults to `None` (the template's own, if any).
        name: name of the ``MultiOptimizer``. Defaults to `"discriminative"`.

    Returns:
        A ``keras.optimizers.MultiOptimizer`` with one sub-optimizer per group (two with
        weight decay), plus a last ``"rest"`` one at the base rate for weights of layers
        outside every group. Pass it to ``model.compile``.

    Raises:
        ValueError: for conflicting or out-of-range ``lr_mult`` / ``layer_decay``, a
            negative ``weight_decay``, or variable paths shared by two layers.
        TypeError: for an ``optimizer`` of another kind.
    """
    if weight_decay is not None and (
        not isinstance(weight_decay, (int, float)) or weight_decay < 0
    ):
        raise ValueError(
            "Argument `weight_decay` must be a number >= 0. "
            f"Received: weight_decay={weight_decay!r}"
        )
    if groups is None or not (
        isinstance(groups, list) and groups and all(isinstance(g, tuple) for g in groups)
    ):
        groups = layer_groups(model, groups)
    multipliers = group_multipliers(len(groups), lr_mult=lr_mult, layer_decay=layer_decay)
    if weight_decay is None and isinstance(optimizer, keras.optimizers.Optimizer):
        weight_decay = optimizer.weight_decay
    make = optimizer_factory(optimizer, weight_decay)
    base = _base_rate(optimizer)

    rates = [_schedules.scale_schedule(base, mult) for mult in multipliers]
    return grouped_optimizer(
        groups, rates, make, weight_decay, _schedules.scale_schedule(base, 1.0), name
    )


def grouped_optimizer(
    groups: LayerGroups,
    rates: Sequence[Any],
    make: Callable[[Any, str, Any], Any],
    weight_decay: float | None,
    default_rate: Any,
    name: str,
) -> keras.optimizers.MultiOptimizer:
    """One sub-optimizer per group at ``rates[i]`` (two with weight decay), plus ``"rest"``."""
    seen: dict[str, str] = {}
    optimizer_map: dict[str, keras.optimizers.Optimizer] = {}
    for (group, layers), rate in zip(groups, rates):
        decay_paths, plain_paths = [], []
        for layer in layers:
            for v in layer.weights:
                tail = _path_tail(layer, v)
                if tail in seen and seen[tail] != group:
                    raise ValueError(
                        f"Two layers hold a variable {tail!r} (groups {seen[tail]!r} and "
                        f"{group!r}), so rates cannot be routed by variable path. HINT: give "
                        "the layers of nested models distinct names."
                    )
                seen[tail] = group
                if weight_decay and is_no_decay(layer, v):
                    plain_paths.append(tail)
                else:
                    decay_paths.append(tail)
        for paths, wd, suffix in (
            (decay_paths, weight_decay, ""),
            (plain_paths, None, "_no_decay"),
        ):
            if paths:
                # Any prefix: Sequential models put their own (auto-generated) name in
                # front of variable paths, and it changes when the model is reloaded.
                key = "(?:.*/)?(?:" + "|".join(re.escape(p) for p in paths) + ")"
                optimizer_map[key] = make(rate, _safe_name(group) + suffix, wd)
    default = make(default_rate, "rest", weight_decay)
    return keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(default, optimizer_map), name=name
    )
