"""Model surgery: find the head and the backbone, freeze and unfreeze, replace the head.

Works on Sequential and Functional Keras 3 models, including Functional models that
hold a nested backbone model (the Keras transfer-learning guide's pattern). Layers are
addressed by their path, ``"backbone/block_1_conv"`` for a layer inside a nested model,
or by bare name when that name is unique. :func:`walk_layers` is kerasft's one walk over
nested layers, and :func:`select_layers` its one rule for arguments that select layers
(a regular expression matched in full against a path or a name, a class, a callable).

BatchNormalization gets special care: in Keras 3 a BN layer with ``trainable=False``
runs in inference mode (moving statistics used, never updated), which is what
fine-tuning wants. ``unfreeze`` therefore leaves BN layers frozen unless
``train_bn=True``.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import _keras_compat as compat

__all__ = [
    "NORMALIZATION_LAYERS",
    "unused_layers",
    "ParamCount",
    "iter_layers",
    "get_layer",
    "select_layers",
    "freeze",
    "unfreeze",
    "set_trainable",
    "trainable_state",
    "TrainableSnapshot",
    "LayerNode",
    "walk_layers",
    "find_head",
    "find_backbone",
    "replace_head",
    "count_params",
    "check_operable",
    "head_activation",
    "head_units",
    "is_container",
    "is_functional_model",
    "layer_path",
    "leaf_layers",
    "output_chain",
    "classifier_input",
    "settle_adapted_layers",
]

# Layers that normalize activations: weight decay skips them, layer groups merge them into
# the group they normalize, weight clipping leaves them alone.
NORMALIZATION_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
    keras.layers.RMSNormalization,
)


def check_operable(model: Any, argument: str = "model") -> None:
    """Raise unless ``model`` is a Sequential or Functional Keras 3 model.

    Subclassed models have no layer graph that kerasft can read or rebuild.

    Raises:
        TypeError: naming the type received and what to pass instead.
    """
    if isinstance(model, keras.Sequential) or is_functional_model(model):
        return
    if isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `{argument}` must be a Sequential or Functional Keras model, but "
            f"received a subclassed model of type {type(model).__name__}, whose layer graph "
            "cannot be read or rebuilt. HINT: build the same network with the Functional API "
            "(`inputs = keras.Input(shape); outputs = ...; keras.Model(inputs, outputs)`), "
            "or wrap it: `x = keras.Input(shape); keras.Model(x, keras.layers.Dense(n)("
            "my_backbone(x, training=False)))` and pass that."
        )
    raise TypeError(
        f"Argument `{argument}` must be a Keras 3 `keras.Model` (Sequential or Functional) "
        f"or a path to a .keras/.h5 file. Received: {argument}={model!r} of type "
        f"{type(model).__name__}."
    )


def is_functional_model(model: Any) -> bool:
    """Whether ``model`` is a Functional Keras model (built from a graph of layers)."""
    return compat.is_functional(model)


def is_container(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or is_functional_model(layer)
    )


@dataclass(frozen=True)
class LayerNode:
    """A layer met by :func:`walk_layers`: its path, the layer, and the layers above it.

    ``ancestors`` runs from the walked model down to the layer's parent.
    """

    path: str
    layer: keras.layers.Layer
    ancestors: tuple[Any, ...]


def walk_layers(
    model: Any, *, sublayers: bool | Callable[[Any], bool] = False, recursive: bool = True
) -> list[LayerNode]:
    """Every layer below ``model``, parents before children, each once; Input layers skipped.

    This is kerasft's one walk over nested layers. Paths join names with ``/`` from the
    model down (``"backbone/block1_conv1"``). By default the walk looks into nested
    Sequential and Functional models, in graph order (``Model.layers``): the layers that
    freezing, surgery and :func:`select_layers` work on. With ``sublayers`` it also looks
    into the layers that other layers keep as attributes (custom blocks, the attention
    projections of a KerasHub transformer layer), in Keras's tracking order: the layers
    low-rank adapters can target.

    Example:

    >>> import keras, kerasft
    >>> inner = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(3, name="fc")], name="inner"
    ... )
    >>> outer = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="head")])
    >>> [node.path for node in kerasft.surgery.walk_layers(outer)]
    ['inner', 'inner/fc', 'head']

    Args:
        model: the model (or layer) to walk.
        sublayers: `False` to look into nested graph models only, `True` to look into
            every layer, or a predicate ``layer -> bool`` naming the layers to look into
            (the walk always looks into ``model`` itself). Defaults to `False`.
        recursive: `False` lists the layers directly in ``model`` only.
            Defaults to `True`.

    Returns:
        A list of :class:`LayerNode`.
    """
    nodes: list[LayerNode] = []
    seen = {id(model)}

    def children(layer: Any, root: bool) -> list:
        if sublayers is False:
            return list(getattr(layer, "layers", ())) if root or is_container(layer) else []
        if not root and sublayers is not True and not sublayers(layer):
            return []
        return compat.direct_sublayers(layer)

    def visit(layer: Any, prefix: str, ancestors: tuple, root: bool) -> None:
        for sub in children(layer, root):
            if id(sub) in seen or isinstance(sub, keras.layers.InputLayer):
                continue
            seen.add(id(sub))
            path = f"{prefix}{sub.name}"
            nodes.append(LayerNode(path, sub, ancestors))
            if recursive:
                visit(sub, path + "/", ancestors + (sub,), False)

    visit(model, "", (model,), True)
    return nodes


def iter_layers(
    model: keras.Model, *, recursive: bool = True
) -> list[tuple[str, keras.layers.Layer]]:
    """List ``(path, layer)`` pairs in graph order, descending into nested models.

    Input layers are skipped. A nested model appears itself (its path is its name) and,
    with ``recursive=True``, is followed by its own layers (``"outer/inner"``). Raw
    operations of a graph (``x + y``, ``x[:, 0]``: ``keras.Operation`` objects that are not
    layers, as in ConvNeXt or a KerasHub ViT) have no weights and no ``trainable`` flag,
    and are not listed: selecting, freezing and counting work on layers only.

    Args:
        model: a Sequential or Functional model.
        recursive: descend into nested Sequential/Functional models. Defaults to `True`.
    """
    return [(n.path, n.layer) for n in walk_layers(model, recursive=recursive)]


def leaf_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """``(path, layer)`` of the layers that are not nested models, in graph order."""
    return [(p, lyr) for p, lyr in iter_layers(model) if not is_container(lyr)]


def layer_path(model: keras.Model, layer: keras.layers.Layer) -> str:
    """The path of ``layer`` in ``model`` (``"backbone/conv1"``).

    Raises:
        ValueError: when ``layer`` is not in ``model``.
    """
    for path, candidate in iter_layers(model):
        if candidate is layer:
            return path
    raise ValueError(f"Layer {layer.name!r} is not in model {model.name!r}.")


def _names_listing(model: keras.Model) -> str:
    return "[" + ", ".join(repr(p) for p, _ in iter_layers(model)) + "]"


def get_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """Return the layer at ``name``: a path (``"backbone/conv1"``) or a unique bare name.

    Raises:
        ValueError: when no layer has that name (the message lists existing layers), or
            the bare name is ambiguous (it lists the matching paths).
    """
    pairs = iter_layers(model)
    for path, layer in pairs:
        if path == name:
            return layer
    matches = [(p, lyr) for p, lyr in pairs if lyr.name == name]
    if len(matches) == 1:
        return matches[0][1]
    if len(matches) > 1:
        raise ValueError(
            f"Layer name {name!r} is ambiguous in model {model.name!r}; use a full path: "
            f"{[p for p, _ in matches]}"
        )
    raise ValueError(
        f"No layer named {name!r} in model {model.name!r}. Existing layers are: "
        f"{_names_listing(model)}"
    )


# A layer spec: what `select_layers` accepts, alone or in a list.
LayerSpec = Any

# Old matching rules still honoured by the arguments that used them (see `select_layers`).
_LEGACY_RULES = {
    "search": "searching the regular expression in each layer path (re.search)",
    "name": "matching the regular expression against layer names only",
}


def select_layers(
    model: keras.Model,
    spec: LayerSpec = None,
    *,
    argument: str = "spec",
    sublayers: bool | Callable[[Any], bool] = False,
    legacy: str | None = None,
    names: str | Sequence[str] | None = None,
    pattern: str | None = None,
    indices: int | Sequence[int] | None = None,
    types: type | tuple[type, ...] | None = None,
    up_to: str | None = None,
    include_up_to: bool = True,
) -> list[keras.layers.Layer]:
    """Select layers: kerasft's one rule for every argument that names layers.

    ``spec`` may be a string, a regular expression matched **in full** against each
    layer's path (``"backbone/block1_conv1"``) or its name (so ``"block1_conv1"``,
    ``"block1_.*"`` and ``"backbone/.*"`` all work, and ``"conv"`` matches only a layer
    named ``conv``); a layer class or a tuple of classes; a callable ``layer -> bool``;
    a layer object (a nested model stands for its layers); or a list of these, each of
    which must select something. ``unfreeze=``, phase ``layers``, LoRA ``targets`` and
    ``train``, L2-SP's ``new_layers``, ``clip_weights(layers=)`` and pruning's
    ``layers=`` all select with it. The nested models are looked into, not selected.

    The keywords ``names``, ``pattern``, ``indices``, ``types`` and ``up_to`` are the
    older criteria of :func:`freeze` and :func:`unfreeze`; all criteria combine with
    AND, and with none given every layer is selected.

    Example:

    >>> import keras, kerasft
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="block1_fc"),
    ...                       keras.layers.Dense(3, name="block2_fc"),
    ...                       keras.layers.Dense(2, name="head")], name="mlp")
    >>> [layer.name for layer in kerasft.select_layers(m, "block.*")]
    ['block1_fc', 'block2_fc']
    >>> [layer.name for layer in kerasft.select_layers(m, ["head", lambda layer: layer.units == 3])]
    ['block1_fc', 'block2_fc', 'head']
    >>> kerasft.select_layers(
    ...     m, "blok1_fc", argument="unfreeze"
    ... )  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    ValueError: No layer of model 'mlp' matches 'blok1_fc' in argument `unfreeze`.
    Existing layers are: ['block1_fc', 'block2_fc', 'head']. HINT: did you mean
    'block1_fc'...?

    Args:
        model: a Sequential or Functional model.
        spec: what to select (see above). Defaults to `None` (no restriction).
        argument: the name of the user's argument, for messages. Defaults to `"spec"`.
        sublayers: also look into the layers kept inside other layers, as
            :func:`walk_layers` does: then any layer of the walk can be selected, not
            only those at the bottom of the graph. Defaults to `False`.
        legacy: the old rule of an argument being moved to this one, ``"search"``
            (``re.search`` in paths: ``unfreeze=``, ``pattern=``) or ``"name"`` (names
            only: pruning's ``layers=``). Where a string selects differently under it,
            the old selection is kept and a ``FutureWarning`` shows the full-match
            pattern to write. Defaults to `None`.
        names: layer paths or unique bare names (a nested model selects its layers).
            Defaults to `None`.
        pattern: a regular expression, as a string ``spec`` under the old
            ``"search"`` rule. Defaults to `None`.
        indices: positions in ``iter_layers(model, recursive=False)``, negative allowed;
            a nested model at an index selects all its layers. Defaults to `None`.
        types: layer classes (``isinstance``). Defaults to `None`.
        up_to: a layer path/name: select every layer before it in graph order.
            Defaults to `None`.
        include_up_to: whether ``up_to`` itself is included. Defaults to `True`.

    Returns:
        The selected layers, in model order.

    Raises:
        ValueError: an entry that selects no layer (the message names the argument and
            the entry, lists the layers, and suggests close names), an invalid regular
            expression, unknown ``names``, an index out of range.
        TypeError: a spec of another type, or a model that is not a Keras model.
    """
    _check_selectable(model)
    if legacy is not None and legacy not in _LEGACY_RULES:
        raise ValueError(
            f"Argument `legacy` must be None or one of {list(_LEGACY_RULES)}. "
            f"Received: legacy={legacy!r}"
        )
    nodes = walk_layers(model, sublayers=sublayers)
    candidates = (
        nodes if sublayers is not False else [n for n in nodes if not is_container(n.layer)]
    )
    selected = {id(n.layer) for n in candidates}

    def restrict(ids: Iterable[int]) -> None:
        nonlocal selected
        selected &= set(ids)

    if spec is not None:
        restrict(_match(model, nodes, candidates, spec, argument, legacy))
    if pattern is not None:
        restrict(_match(model, nodes, candidates, pattern, "pattern", "search"))
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        restrict(i for n in names for i in _leaf_ids(get_layer(model, n)))
    if indices is not None:
        top = iter_layers(model, recursive=False)
        indices = [indices] if isinstance(indices, int) else list(indices)
        ids = set()
        for i in indices:
            if not -len(top) <= i < len(top):
                raise ValueError(
                    f"Argument `indices` contains {i}, out of range for model {model.name!r} "
                    f"with {len(top)} layers (valid: {-len(top)}..{len(top) - 1})."
                )
            ids |= _leaf_ids(top[i][1])
        restrict(ids)
    if types is not None:
        restrict(id(n.layer) for n in candidates if isinstance(n.layer, types))
    if up_to is not None:
        target_ids = _leaf_ids(get_layer(model, up_to))
        ids = set()
        for n in candidates:
            if id(n.layer) in target_ids:
                if include_up_to:
                    ids |= target_ids
                break
            ids.add(id(n.layer))
        restrict(ids)
    return [n.layer for n in candidates if id(n.layer) in selected]


def _check_selectable(model: Any) -> None:
    # tf_keras models (pruning hands them over) have `layers` too and are walked as they are.
    if isinstance(model, keras.layers.Layer) or not hasattr(model, "layers"):
        check_operable(model)


def _entries(spec: LayerSpec) -> list:
    """The entries of ``spec``: a list's items, else ``spec`` (a tuple of classes is one entry)."""
    if isinstance(spec, tuple) and spec and all(isinstance(t, type) for t in spec):
        return [spec]
    if isinstance(spec, (list, tuple)):
        return list(spec)
    return [spec]


def _match(
    model: Any,
    nodes: list[LayerNode],
    candidates: list[LayerNode],
    spec: LayerSpec,
    argument: str,
    legacy: str | None,
) -> set[int]:
    """Ids of the candidates ``spec`` selects; every entry must select one at least."""
    out: set[int] = set()
    for entry in _entries(spec):
        hits = _match_entry(model, nodes, candidates, entry, argument, legacy)
        if not hits:
            raise _no_match(model, nodes, candidates, entry, argument)
        out |= {id(n.layer) for n in hits}
    return out


def _match_entry(
    model: Any,
    nodes: list[LayerNode],
    candidates: list[LayerNode],
    entry: Any,
    argument: str,
    legacy: str | None,
) -> list[LayerNode]:
    if isinstance(entry, str):
        regex = _compile(entry, argument)
        hits = [n for n in candidates if _full_match(regex, n)]
        if legacy is None:
            return hits
        old = [n for n in candidates if _legacy_match(regex, n, legacy)]
        if old and {id(n.layer) for n in old} != {id(n.layer) for n in hits}:
            _warn_legacy(candidates, entry, argument, legacy, old, hits)
            return old
        return hits
    if isinstance(entry, type) or (
        isinstance(entry, tuple) and entry and all(isinstance(t, type) for t in entry)
    ):
        return [n for n in candidates if isinstance(n.layer, entry)]
    if isinstance(entry, keras.layers.Layer):
        found = [n for n in nodes if n.layer is entry]
        if not found:
            return []
        if any(n is found[0] for n in candidates):
            return found
        prefix = found[0].path + "/"  # a nested model: the layers in it
        return [n for n in candidates if n.path.startswith(prefix)]
    if callable(entry):
        return [n for n in candidates if entry(n.layer)]
    raise TypeError(
        f"Argument `{argument}` must hold layer-path regexes (str, matched in full against each "
        "layer's path or name), layer classes, layers, or callables `layer -> bool`, alone or "
        f"in a list. Received: {entry!r} of type {type(entry).__name__}."
    )


def _compile(entry: str, argument: str) -> re.Pattern:
    try:
        return re.compile(entry)
    except re.error as e:
        raise ValueError(
            f"Invalid regex {entry!r} in argument `{argument}`: {e}. HINT: layer specs are "
            "regular expressions; an invalid regular expression is often a literal name with "
            "special characters: pass `re.escape(name)`."
        ) from None


def _full_match(regex: re.Pattern, node: LayerNode) -> bool:
    return bool(regex.fullmatch(node.path) or regex.fullmatch(node.layer.name))


def _legacy_match(regex: re.Pattern, node: LayerNode, rule: str) -> bool:
    if rule == "search":
        return bool(regex.search(node.path))
    return bool(regex.fullmatch(node.layer.name))


def _as_full_match(entry: str, rule: str) -> str:
    """A pattern that, matched in full, selects what ``entry`` selected under ``rule``."""
    if rule == "name":
        return f"(?!.*/)(?:{entry})"  # never a nested path: names only
    body, start, end = entry, ".*", ".*"
    if "|" not in body:
        if body.startswith("^"):
            body, start = body[1:], ""
        if body.endswith("$") and not body.endswith("\\$"):
            body, end = body[:-1], ""
    else:
        body = f"(?:{body})"
    if body.startswith(".*"):
        start = ""
    if body.endswith(".*") and not body.endswith("\\.*"):
        end = ""
    return start + body + end


def _warn_legacy(
    candidates: list[LayerNode],
    entry: str,
    argument: str,
    rule: str,
    old: list[LayerNode],
    new: list[LayerNode],
) -> None:
    suggestion = _as_full_match(entry, rule)
    regex = re.compile(suggestion)
    same = {id(n.layer) for n in candidates if _full_match(regex, n)} == {id(n.layer) for n in old}
    advice = (
        f"To keep today's selection, write {suggestion!r}"
        if same
        else (
            f"Write a pattern that matches in full (for example {suggestion!r}), or pass the layers"
        )
    )
    warnings.warn(
        f"Argument `{argument}={entry!r}` selects layers by {_LEGACY_RULES[rule]}: "
        f"{_paths(old)}. Layer specs are regular expressions matched in full against each "
        f"layer's path or name, which will be the only rule in a future version; in full, "
        f"{entry!r} selects {_paths(new) if new else 'no layer'}. {advice}.",
        FutureWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside kerasft: the user's call."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = inspect.currentframe(), 0
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return max(level, 1)


def _paths(nodes: Sequence[LayerNode], limit: int = 8) -> str:
    shown = [n.path for n in nodes[:limit]]
    more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return f"{shown}{more}"


def _describe_entry(entry: Any) -> str:
    if isinstance(entry, keras.layers.Layer):
        return f"layer {entry.name!r}"
    if isinstance(entry, type):
        return entry.__name__
    if isinstance(entry, tuple) and all(isinstance(t, type) for t in entry):
        return "(" + ", ".join(t.__name__ for t in entry) + ")"
    if callable(entry) and not isinstance(entry, str):
        return getattr(entry, "__name__", repr(entry))
    return repr(entry)


def _no_match(
    model: Any, nodes: list[LayerNode], candidates: list[LayerNode], entry: Any, argument: str
) -> ValueError:
    """The one message for a selection that selects nothing."""
    listing = "[" + ", ".join(repr(n.path) for n in candidates) + "]"
    return ValueError(
        f"No layer of model {getattr(model, 'name', None)!r} matches {_describe_entry(entry)} in "
        f"argument `{argument}`. Existing layers are: {listing}{_hint(nodes, candidates, entry)}"
    )


def _hint(nodes: list[LayerNode], candidates: list[LayerNode], entry: Any) -> str:
    if isinstance(entry, keras.layers.Layer):
        return f". HINT: layer {entry.name!r} is not in this model; pass its name or path instead."
    if not isinstance(entry, str):
        return "."
    regex = re.compile(entry)
    containers = [n.path for n in nodes if is_container(n.layer) and _full_match(regex, n)]
    if containers:
        return (
            f". HINT: {containers[0]!r} is a nested model; write "
            f"'{containers[0]}/.*' to select the layers in it."
        )
    searched = [n for n in candidates if regex.search(n.path)]
    if searched:
        return (
            f". HINT: a string must match a layer's path or name in full: write "
            f"{_as_full_match(entry, 'search')!r} to select {_paths(searched)}."
        )
    words = list(dict.fromkeys([n.path for n in candidates] + [n.layer.name for n in candidates]))
    close = difflib.get_close_matches(entry, words, n=3, cutoff=0.75)
    if close:
        return f". HINT: did you mean {' or '.join(repr(c) for c in close)}?"
    return "."


def _leaf_ids(layer: keras.layers.Layer) -> set[int]:
    if is_container(layer):
        return {id(lyr) for _, lyr in leaf_layers(layer)}
    return {id(layer)}


def settle_adapted_layers(model: Any) -> None:
    """Rebuild what adapted ``Normalization`` layers derive from their weights.

    An adapted ``Normalization`` keeps its statistics in weights but normalises with
    tensors derived from them when it is adapted or loaded (``finalize_state``):
    ``set_weights`` alone (as after ``keras.models.clone_model``) leaves those tensors at
    their initial values, and the layer passes its inputs through unnormalised. Call
    after setting weights on a model that may hold such layers; loading from a file
    already does this.
    """
    for layer in compat.flatten_layers(model):
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()  # a no-op unless built and adapted (not given mean=)


def trainable_state(model: keras.Model) -> dict[str, bool]:
    """Map each leaf layer path to its ``trainable`` flag (effective, parents included)."""
    return {
        n.path: model.trainable and all(a.trainable for a in n.ancestors[1:]) and n.layer.trainable
        for n in walk_layers(model)
        if not is_container(n.layer)
    }


@dataclass
class TrainableSnapshot:
    """Every layer's and variable's ``trainable`` flag, to put back exactly.

    Layer flags cascade to sublayers and variables in Keras, so low-rank adapters (a
    frozen kernel beside trainable factors in one layer) survive a freeze/unfreeze only
    by restoring the variables' own flags after the layers'. :func:`trainable_state` is
    the by-path view of the same flags, for leaf layers.
    """

    layers: list[tuple[keras.layers.Layer, bool]]
    variables: list[tuple[Any, bool]]

    @classmethod
    def take(cls, model: keras.Model) -> TrainableSnapshot:
        layers = [(lyr, lyr.trainable) for lyr in compat.flatten_layers(model)]
        return cls(layers, [(v, v.trainable) for v in model.weights])

    def restore(self, model: keras.Model) -> None:
        for layer, flag in self.layers:  # top-down: children end with their own flags
            layer.trainable = flag
        for variable, flag in self.variables:
            variable.trainable = flag


def set_trainable(model: keras.Model, state: dict[str, bool]) -> None:
    """Apply a ``{leaf path: trainable}`` map (as returned by :func:`trainable_state`).

    Leaves not in ``state`` keep their flag. Containers are made trainable when any of
    their leaves is, because Keras hides all weights of a non-trainable container.
    """
    current = trainable_state(model)
    unknown = sorted(set(state) - set(current))
    if unknown:
        raise ValueError(
            f"Argument `state` names layers that model {model.name!r} does not have: "
            f"{unknown}. Existing layers are: {_names_listing(model)}"
        )
    wanted = {**current, **state}
    leaves = dict(leaf_layers(model))
    model_trainable = any(wanted.values())
    # Keras propagates a container's flag down to every sublayer, so set containers
    # first (trainable), then every leaf.
    model.trainable = True
    for _path, layer in iter_layers(model):
        if is_container(layer):
            layer.trainable = True
    for path, layer in leaves.items():
        layer.trainable = wanted[path]
    # Containers with nothing trainable below are marked frozen too, so that
    # `summary()` and a later `container.trainable` read as users expect.
    for path, layer in reversed(iter_layers(model)):
        if is_container(layer) and not any(wanted[p] for p in wanted if p.startswith(path + "/")):
            compat.set_trainable_flag(layer, False)  # every leaf below is already frozen
    if not model_trainable:
        compat.set_trainable_flag(model, False)


def freeze(
    model: keras.Model, spec: LayerSpec = None, **selection: Any
) -> list[keras.layers.Layer]:
    """Freeze the selected layers (all leaf layers by default).

    ``spec`` and the selection keywords are those of :func:`select_layers` (``names``,
    ``pattern``, ``indices``, ``types``, ``up_to``, ``include_up_to``). A frozen
    BatchNormalization layer runs in inference mode.

    Example:

    >>> import keras, kerasft
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
    ...                       keras.layers.Dense(2, name="b")])
    >>> [layer.name for layer in kerasft.freeze(m, up_to="a")]
    ['a']
    >>> kerasft.count_params(m).trainable
    8

    Returns:
        The layers frozen.
    """
    layers = select_layers(model, spec, **selection)
    _set_flags(model, layers, False)
    return layers


def unfreeze(
    model: keras.Model, spec: LayerSpec = None, *, train_bn: bool = False, **selection: Any
) -> list[keras.layers.Layer]:
    """Unfreeze the selected layers (all leaf layers by default), BatchNorm excepted.

    Args:
        model: a Sequential or Functional model.
        spec: the layers, as :func:`select_layers` takes them. Defaults to `None`.
        train_bn: also unfreeze BatchNormalization layers, which then train in training
            mode and update their moving statistics. The Keras transfer-learning guide
            keeps them frozen when fine-tuning. Defaults to `False`.
        **selection: keywords of :func:`select_layers`.

    Returns:
        The layers unfrozen.
    """
    layers = select_layers(model, spec, **selection)
    if not train_bn:
        layers = [lyr for lyr in layers if not isinstance(lyr, keras.layers.BatchNormalization)]
    _set_flags(model, layers, True)
    return layers


def _set_flags(model: keras.Model, layers: Sequence[keras.layers.Layer], value: bool) -> None:
    ids = {id(lyr) for lyr in layers}
    state = {p: value for p, lyr in leaf_layers(model) if id(lyr) in ids}
    set_trainable(model, state)


@dataclass(frozen=True)
class ParamCount:
    """Trainable and frozen (non-trainable) parameter counts."""

    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable / {self.frozen:,} frozen / {self.total:,} total"


def count_params(model: keras.Model) -> ParamCount:
    """Count trainable and frozen parameters (BatchNorm moving statistics count as frozen)."""
    trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
    total = sum(int(v.numpy().size) for v in model.weights)
    return ParamCount(trainable, total - trainable)


# Weightless layers that may follow the classifier: they change the output's shape or
# activation, not what the classifier computes.
_ACTIVATION_TAIL = (keras.layers.Activation, keras.layers.Softmax)
_RESHAPING_TAIL = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_WEIGHTLESS_TAIL = (
    *_ACTIVATION_TAIL,
    *_RESHAPING_TAIL,
    keras.layers.Dropout,
    keras.layers.Identity,
)
_CONV_HEADS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_TAIL_NAMES = "Activation, Softmax, Dropout, Identity, Flatten, Reshape, global pooling"


def _is_conv_classifier(layer: Any) -> bool:
    """A 1x1 (1, 1x1x1) ungrouped convolution: a Dense applied at every position."""
    return (
        isinstance(layer, _CONV_HEADS)
        and all(k == 1 for k in layer.kernel_size)
        and getattr(layer, "groups", 1) == 1
    )


def _is_classifier(layer: Any) -> bool:
    return isinstance(layer, keras.layers.Dense) or _is_conv_classifier(layer)


def _check_classifier_output(model: keras.Model, head: keras.layers.Layer, tail: list) -> None:
    """Refuse a conv head (or a reshaped Dense) whose output is not ``(batch, width)``.

    A 1x1 convolution on a feature map wider than 1x1 followed by ``Flatten`` outputs
    one score per position and class, not a class distribution.
    """
    if not (_is_conv_classifier(head) or any(isinstance(t, _RESHAPING_TAIL) for t in tail)):
        return
    shape = tuple(model.outputs[0].shape)
    units = head_units(head)
    if len(shape) != 2 or shape[-1] != units:
        raise ValueError(
            f"Model {model.name!r} ends in {head.name!r} ({type(head).__name__}, {units} "
            f"outputs per position) followed by {[t.name for t in tail]}, but outputs shape "
            f"{shape}, not (batch, {units}): the classifier does not see a single position. "
            "kerasft fine-tunes a convolutional head only when it classifies a 1x1 feature "
            "map (pooled features). HINT: pool first, e.g. "
            "`keras.layers.GlobalAveragePooling2D(keepdims=True)` before the 1x1 convolution."
        )


def output_chain(model: keras.Model) -> tuple[keras.layers.Layer, list[keras.layers.Layer]]:
    """The classifier layer and the weightless layers after it, in call order.

    The classifier is a Dense layer or a 1x1 convolution (``Conv1D``/``Conv2D``/
    ``Conv3D``, as in MobileNet and MobileNetV3); the tail may hold Activation, Softmax,
    Dropout, Identity, Flatten, Reshape and global pooling layers, each called on one
    tensor. A nested model's head is returned when the outer model adds nothing.

    Raises:
        ValueError: several outputs, no classifier at the end of the graph, or a 1x1
            convolution whose output is not ``(batch, classes)``.
    """
    head, tail, _ = _walk_output(model)
    return head, tail


def classifier_input(model: keras.Model) -> Any:
    """The tensor of ``model``'s graph that its classifier reads (the features).

    ``None`` when the classifier is inside a nested model. Found from the output back,
    so it is right even when the head layer was called more than once.

    Raises:
        ValueError: as :func:`output_chain`.
    """
    return _walk_output(model)[2]


def _walk_output(model: keras.Model) -> tuple[keras.layers.Layer, list[keras.layers.Layer], Any]:
    """``(head, tail, the head's input tensor or None)``, walking back from the output tensor."""
    if len(model.outputs) != 1:
        raise ValueError(
            f"Argument `model` must have one output, but {model.name!r} has "
            f"{len(model.outputs)}. HINT: build a single-output model for classification."
        )
    tail: list[keras.layers.Layer] = []
    # Walk tensors, not layers: a layer called again (each feature-cache split replays
    # the graph) has several calls, and only the tensor knows which one is this graph's.
    tensor = model.outputs[0]
    layer = first = compat.producer(tensor)
    while True:
        inputs = compat.call_inputs(tensor)
        if _is_classifier(layer):
            tail.reverse()
            _check_classifier_output(model, layer, tail)
            return layer, tail, inputs[0] if len(inputs) == 1 else None
        if is_container(layer):
            inner, inner_tail = output_chain(layer)
            if not inner_tail and not tail:
                return inner, [], None
            break
        # A raw operation (`x[:, 0]`, `x * 2`) is not a layer: the walk stops there.
        if isinstance(layer, _WEIGHTLESS_TAIL) and not layer.weights and len(inputs) == 1:
            tail.append(layer)
            tensor = inputs[0]
            layer = compat.producer(tensor)
            continue
        break
    where = _describe(first)
    if layer is not first:
        where += f", and before that, through weightless layers, from {_describe(layer)}"
    raise ValueError(
        f"Model {model.name!r} has no Dense output layer, nor a 1x1 convolution classifier: "
        f"its output comes from "
        f"{where}. kerasft fine-tunes models whose output comes from a Dense layer or a "
        "1x1 convolution (Conv1D/Conv2D/Conv3D), followed only by weightless layers "
        f"({_TAIL_NAMES}). HINT: add a head, e.g. "
        "`keras.Model(model.input, keras.layers.Dense(num_classes)(model.output))`."
    )


def _describe(op: Any) -> str:
    kind = "a layer" if isinstance(op, keras.layers.Layer) else "a raw operation"
    return f"{getattr(op, 'name', None)!r} ({kind} of type {type(op).__name__})"


def find_head(model: keras.Model) -> keras.layers.Layer:
    """Return the classifier layer: the output Dense, or a 1x1 convolution classifier.

    Trailing weightless layers (Activation, Softmax, Dropout, Flatten, Reshape, global
    pooling) are looked through: MobileNetV3's head is its ``"logits"`` Conv2D, followed
    by ``Flatten`` and ``Activation("softmax")``.

    Example:

    >>> import keras, kerasft
    >>> inputs = keras.Input((4, 4, 8))
    >>> x = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    >>> x = keras.layers.Conv2D(5, 1, name="logits")(x)
    >>> outputs = keras.layers.Activation("softmax")(keras.layers.Flatten()(x))
    >>> model = keras.Model(inputs, outputs)
    >>> head = kerasft.find_head(model)
    >>> head.name, kerasft.surgery.head_units(head), kerasft.surgery.head_activation(model)
    ('logits', 5, 'softmax')

    Raises:
        ValueError: when the model's output does not come from such a classifier.
    """
    check_operable(model)
    return output_chain(model)[0]


def head_units(layer: keras.layers.Layer) -> int:
    """The width of a classifier layer: ``units`` of a Dense, ``filters`` of a convolution.

    Raises:
        ValueError: a layer that is neither (naming its type).
    """
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    if isinstance(layer, _CONV_HEADS):
        return int(layer.filters)
    for attribute in ("units", "filters"):
        value = getattr(layer, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(
        f"Argument `layer` must be a classifier layer (Dense, or a convolution with "
        f"`filters`). Received: layer {getattr(layer, 'name', layer)!r} of type "
        f"{type(layer).__name__}, which has no `units` or `filters`."
    )


def _activation_name(activation: Any) -> str:
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else getattr(activation, "__name__", "custom")


def head_activation(model: keras.Model) -> str:
    """Name of the output activation: ``"softmax"``, ``"sigmoid"`` or ``"linear"`` (logits).

    Read from the classifier and the layers after it: a later Activation or Softmax
    layer overrides the classifier's own activation (MobileNetV3 puts its softmax after
    ``Flatten``; built with ``classifier_activation=None`` it outputs logits).
    """
    head, tail = output_chain(model)
    name = _activation_name(head.activation)
    for layer in tail:
        if isinstance(layer, keras.layers.Softmax):
            name = "softmax"
        elif isinstance(layer, keras.layers.Activation):
            act = _activation_name(layer.activation)
            if act != "linear":
                name = act
    return name


def find_backbone(model: keras.Model) -> keras.layers.Layer | list[keras.layers.Layer]:
    """Return the backbone: the nested model if there is one, else the layers below the head.

    For the guide's pattern ``inputs -> base_model -> pooling -> Dense`` this is
    ``base_model``. Otherwise it is the list of leaf layers that carry weights before the
    head (the "body").
    """
    check_operable(model)
    nested = [lyr for _, lyr in iter_layers(model, recursive=False) if is_container(lyr)]
    if nested:
        return max(nested, key=lambda m: m.count_params())
    head = find_head(model)
    return [lyr for _, lyr in leaf_layers(model) if lyr is not head and lyr.weights]


def replace_head(
    model: keras.Model,
    num_classes: int,
    *,
    activation: str | Callable | None = "softmax",
    dropout: float = 0.0,
    name: str | None = None,
    seed: int | None = None,
) -> keras.Model:
    """Return a new model whose classifier is rebuilt for ``num_classes``.

    Every other layer is shared with ``model`` (same objects, same weights): the new
    model is the old body plus a freshly initialised head. A Dense head becomes a new
    Dense carrying ``activation``; a trailing Activation/Softmax/Dropout after it is
    dropped. A 1x1 convolution head (MobileNet, MobileNetV3) becomes a new 1x1
    convolution of ``num_classes`` filters; the flattening and pooling layers after the
    old one are applied again (fresh copies), the output is flattened to
    ``(batch, num_classes)`` if it is not already, and ``activation`` comes last, in
    an Activation layer named like the old one.

    Example:

    >>> import keras, kerasft
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="body"),
    ...                       keras.layers.Dense(10, activation="softmax", name="head")])
    >>> kerasft.replace_head(m, 3).output.shape
    (None, 3)

    Args:
        model: a Sequential or Functional model with a Dense or 1x1 convolution head.
        num_classes: width of the new head; 1 means one sigmoid unit. Must be >= 1.
        activation: output activation, ``None``/``"linear"`` for logits.
            Defaults to `"softmax"`.
        dropout: dropout rate before the new head, in ``[0, 1)``. Defaults to `0.0`.
        name: name of the new classifier layer. Defaults to the old head's name.
        seed: seed of the new head's initialiser. Defaults to `None`.

    Returns:
        A new Functional model.

    Raises:
        ValueError: bad ``num_classes``/``dropout``, or a model without such a head.
        TypeError: a subclassed model.
    """
    check_operable(model)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(
            "Argument `num_classes` must be a positive integer. "
            f"Received: num_classes={num_classes!r}"
        )
    if num_classes == 1 and activation == "softmax":
        raise ValueError(
            "Argument `num_classes=1` with activation='softmax' always outputs 1.0. "
            "HINT: use num_classes=2 with softmax, or num_classes=1 with activation='sigmoid'."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout!r}")
    head, tail, x = _walk_output(model)
    if head not in model.layers or x is None:
        raise ValueError(
            f"The head {head.name!r} of model {model.name!r} is inside a nested model. "
            "HINT: build the outer model from the nested model's features, e.g. "
            "`keras.Model(inner.input, inner.get_layer(<layer before head>).output)`."
        )
    if dropout:
        x = keras.layers.Dropout(dropout, seed=seed, name=f"{head.name}_dropout")(x)
    initializer = keras.initializers.GlorotUniform(seed=seed)
    reshaped = any(isinstance(t, _RESHAPING_TAIL) for t in tail)
    if isinstance(head, keras.layers.Dense) and not reshaped:
        new_head = keras.layers.Dense(
            num_classes,
            activation=activation,
            kernel_initializer=initializer,
            name=name or head.name,
        )
        return keras.Model(model.inputs, new_head(x), name=model.name)
    outputs = _new_classifier(head, num_classes, initializer, name or head.name)(x)
    for layer in tail:
        # Reshape has the old width in its config; the Flatten below replaces it.
        if isinstance(layer, _RESHAPING_TAIL) and not isinstance(layer, keras.layers.Reshape):
            outputs = type(layer).from_config(layer.get_config())(outputs)
    if len(outputs.shape) > 2 and len(model.outputs[0].shape) == 2:
        outputs = keras.layers.Flatten(name=f"{head.name}_flatten")(outputs)
    if activation is not None and _activation_name(keras.activations.get(activation)) != "linear":
        named = [t.name for t in tail if isinstance(t, _ACTIVATION_TAIL)]
        outputs = keras.layers.Activation(
            activation, name=named[-1] if named else f"{head.name}_activation"
        )(outputs)
    return keras.Model(model.inputs, outputs, name=model.name)


def _new_classifier(
    head: keras.layers.Layer, units: int, initializer: Any, name: str
) -> keras.layers.Layer:
    """A fresh, linear classifier of the old head's kind (Dense or 1x1 convolution)."""
    if isinstance(head, keras.layers.Dense):
        return keras.layers.Dense(units, kernel_initializer=initializer, name=name)
    base = next(cls for cls in _CONV_HEADS if isinstance(head, cls))
    return base(
        units,
        kernel_size=1,
        padding=head.padding,
        data_format=head.data_format,
        use_bias=head.use_bias,
        kernel_initializer=initializer,
        name=name,
    )


def unused_layers(model: keras.Model, sample: Any) -> list[keras.layers.Layer]:
    """The leaf layers with weights that ``model``'s output does not depend on.

    A KerasHub backbone computes every output it has (a BERT's ``[CLS]`` pooler among
    them) whichever one a task reads; training such a layer is a step on no gradient
    (Keras warns, and an optimizer that holds only such variables fails). Found by one
    gradient of the output with respect to every weight, on ``sample`` (a batch of inputs).
    """
    import tensorflow as tf

    snapshot = TrainableSnapshot.take(model)
    try:
        for layer, _ in snapshot.layers:
            layer.trainable = True
        variables = [v for v in model.weights if v.trainable]
        with tf.GradientTape() as tape:
            out = model(sample, training=False)
            total = keras.ops.sum(keras.ops.cast(keras.tree.flatten(out)[0], "float32"))
        grads = tape.gradient(total, [v.value if hasattr(v, "value") else v for v in variables])
    finally:
        snapshot.restore(model)
    seen = {id(v) for v in variables}
    dead = {id(v) for v, g in zip(variables, grads) if g is None}
    unused = []
    for _, layer in leaf_layers(model):
        own = [id(v) for v in layer.weights if id(v) in seen]
        if own and all(i in dead for i in own):
            unused.append(layer)
    return unused
