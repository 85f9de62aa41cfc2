"""Add low-rank adapters to a pretrained Keras model and freeze the rest.

``apply_lora`` picks target layers (by path regex, class, or a default per
architecture), optionally quantizes the frozen layers to int8, and adds adapters:
Keras's own ``layer.enable_lora`` for LoRA (in place, on any layer of the tree,
including the attention projections inside KerasHub transformer blocks), or the
:class:`DoRA` / :class:`LoRA` wrapper layers when DoRA or adapter dropout is asked for
(the model graph is then rebuilt around the wrapped layers). Inside layers that kerasft
cannot rebuild (KerasHub blocks), DoRA goes in place too (:func:`enable_dora`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from kerasft import _keras_compat as compat
from kerasft import surgery
from kerasft.peft import _targets, _walk
from kerasft.peft.layers import DoRA, LoRA, enable_dora, supports_wrapping
from kerasft.peft.report import TrainableReport, trainable_report

__all__ = ["LoraResult", "apply_lora"]

_METHODS = ("lora", "dora")
_QUANTIZE = (None, "int8")


@dataclass(frozen=True)
class AdapterSpec:
    """What to add to one layer; ``alpha`` is the user's (before rsLoRA scaling)."""

    kind: str
    rank: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def keras_alpha(self) -> float:
        """``lora_alpha`` for Keras's ``enable_lora``, whose scale is ``lora_alpha / rank``."""
        return self.alpha * math.sqrt(self.rank) if self.use_rslora else self.alpha

    def wraps(self, layer: keras.layers.Layer) -> bool:
        """True when Keras's in-place ``enable_lora`` cannot express this adapter."""
        if self.kind == "dora":
            return True
        # Dropout on token ids means nothing; PEFT's Embedding LoRA ignores it too.
        return self.dropout > 0 and not isinstance(layer, keras.layers.Embedding)


@dataclass(frozen=True)
class LoraResult:
    """What ``apply_lora``/``load_adapters`` did.

    Attributes:
        model: the adapted model. The same object as the input for LoRA without dropout
            (Keras adds adapters in place); a rebuilt model sharing the input's layers
            for DoRA or adapter dropout. Always train and save this one.
        targets: paths of the adapted layers.
        trained: paths of the layers trained as a whole (head, normalization...).
        report: the :class:`TrainableReport` of ``model``.
        base_bytes_before: bytes of the base model's weights before quantization.
        base_bytes_after: the same after quantization, before adapters were added
            (equal to ``base_bytes_before`` without ``quantize``).
    """

    model: keras.Model
    targets: tuple[str, ...]
    trained: tuple[str, ...]
    report: TrainableReport
    base_bytes_before: int
    base_bytes_after: int

    def __str__(self) -> str:
        text = f"{len(self.targets)} adapted layers, {len(self.trained)} trained in full\n"
        text += str(self.report)
        if self.base_bytes_after != self.base_bytes_before:
            text += (
                f"\nweights: {self.base_bytes_before / 2**20:.2f} MiB -> "
                f"{self.base_bytes_after / 2**20:.2f} MiB after quantization"
            )
        return text


def _validate(
    rank: Any, alpha: Any, dropout: Any, method: Any, use_rslora: Any, quantize: Any
) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"Argument `rank` must be a positive integer. Received: rank={rank!r}")
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0
    ):
        raise ValueError(
            f"Argument `alpha` must be a positive number or None. Received: alpha={alpha!r}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout!r}")
    if method not in _METHODS:
        raise ValueError(
            f"Argument `method` must be one of {_METHODS}. Received: method={method!r}"
        )
    if not isinstance(use_rslora, bool):
        raise TypeError(
            f"Argument `use_rslora` must be a bool. Received: use_rslora={use_rslora!r}"
        )
    if quantize not in _QUANTIZE:
        raise ValueError(
            f"Argument `quantize` must be one of {_QUANTIZE}. Received: quantize={quantize!r}"
        )
    if quantize and (method == "dora" or dropout):
        raise ValueError(
            "Argument `quantize='int8'` works with method='lora' and dropout=0.0 only: DoRA "
            "and adapter dropout need kerasft's wrapper layers, which compute with a float "
            f"kernel. Received: method={method!r}, dropout={dropout!r}."
        )


def _check_fresh(model: keras.Model, nodes: list[_walk.Node]) -> None:
    adapted = [n for n in nodes if _walk.is_adapted(n.layer)]
    if adapted:
        raise ValueError(
            f"Model {model.name!r} already has adapters on {_targets.listing(adapted)}. Adapters "
            "cannot be stacked. HINT: `merge(model)` first to fold them in, or start again "
            "from the pretrained model."
        )


def apply_lora(
    model: keras.Model,
    *,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: str | type | Sequence[str | type] | None = None,
    method: str = "lora",
    use_rslora: bool = False,
    train: Sequence[str] = ("head",),
    quantize: str | None = None,
) -> LoraResult:
    """Add low-rank adapters to ``model`` and freeze everything else but ``train``.

    LoRA uses Keras's ``layer.enable_lora`` and modifies ``model`` in place (as PEFT's
    ``get_peft_model`` does). DoRA and adapter dropout need the :class:`DoRA`/:class:`LoRA`
    wrapper layers, so the model graph is rebuilt around them: ``result.model`` is then a
    new model that shares the input's layers. Either way, use ``result.model`` and compile
    it after this call. Layers that Keras creates inside other layers (the attention
    projections of KerasHub transformer blocks) take adapters in place only, since a
    wrapper there would be dropped when the model is loaded again: Keras's LoRA, or DoRA
    with :func:`~kerasft.peft.layers.enable_dora` (no adapter dropout there). Saving such
    a model writes merged kernels, as Keras's LoRA does; ``save_adapters`` keeps the
    adapters.

    Example:

    >>> import keras
    >>> from kerasft import peft
    >>> inputs = keras.Input((16,))
    >>> x = keras.layers.Dense(32, activation="relu", name="body")(inputs)
    >>> outputs = keras.layers.Dense(3, name="head")(x)
    >>> result = peft.apply_lora(keras.Model(inputs, outputs), rank=4)
    >>> result.targets, result.trained
    (('body',), ('head',))

    Args:
        model: a built Functional or Sequential model, KerasHub tasks and backbones
            included.
        rank: rank of the adapters. Defaults to `8`.
        alpha: scaling numerator (``scale = alpha / rank``); `None` means ``rank``, a
            scale of 1 (Keras's default). Defaults to `None`.
        dropout: dropout rate on the adapter input during training (PEFT's
            ``lora_dropout``); Embedding layers take none, their inputs being token ids.
            Defaults to `0.0`.
        targets: layers to adapt: regexes matched in full against layer paths
            (``"backbone/.*/query"``) or layer names (``"query"``), and/or layer classes.
            `None` picks per architecture: every projection (attention and feed-forward)
            of the top half of the attention blocks when the model has any, else every
            ``Dense`` and 1x1 convolution except the head. Defaults to `None`.
        method: ``"lora"`` or ``"dora"``. Defaults to `"lora"`.
        use_rslora: scale by ``alpha / sqrt(rank)`` (rank-stabilised LoRA). Defaults to
            `False`.
        train: layers trained in full besides the adapters (PEFT's ``modules_to_save``):
            ``"head"`` (the last layer with weights), ``"norm"`` (all normalization
            layers), or path regexes. Defaults to `("head",)`.
        quantize: ``"int8"`` quantizes the frozen Dense/EinsumDense/Embedding layers with
            ``model.quantize`` before adding adapters (QLoRA-style); the ``train`` layers
            stay in float. Needs ``method="lora"`` and ``dropout=0.0``. Defaults to `None`.

    Returns:
        A :class:`LoraResult` with the adapted ``model``, the adapted and trained layer
        paths, the trainable-parameter report and the weight bytes before/after
        quantization.

    Raises:
        TypeError: for a subclassed model or arguments of the wrong type.
        ValueError: for invalid values, targets that select nothing (the message lists
            the layers that can take adapters), a model that already has adapters, or
            a layer that both takes an adapter and is in ``train``.
    """
    _walk.check_model(model)
    _validate(rank, alpha, dropout, method, use_rslora, quantize)
    nodes = _walk.walk(model)
    _check_fresh(model, nodes)
    head = _walk.last_weighted_layer(model)
    chosen = _targets.resolve_targets(model, nodes, targets, head)
    trained = _targets.resolve_trained(model, nodes, train, head)
    both = [n for n in chosen if any(n is t for t in trained)]
    if both:
        raise ValueError(
            f"Layers {_targets.listing(both)} are both adapter targets and in `train` (trained in "
            f"full). Choose one. Received: targets={targets!r}, train={train!r}"
        )
    spec = AdapterSpec(
        method, rank, float(alpha if alpha is not None else rank), float(dropout), use_rslora
    )
    quantized = _quantizable(nodes, trained) if quantize else []
    return apply_plan(model, [(n, spec) for n in chosen], trained, quantized)


def _quantizable(nodes: list[_walk.Node], trained: list[_walk.Node]) -> list[_walk.Node]:
    """Leaf layers that ``Model.quantize("int8")`` handles, minus those trained in full."""
    skip = {id(n.layer) for n in trained}
    return [
        n
        for n in nodes
        if isinstance(
            n.layer, (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
        )
        and id(n.layer) not in skip
        and not any(id(a) in skip for a in n.ancestors)
    ]


def apply_plan(
    model: keras.Model,
    plan: list[tuple[_walk.Node, AdapterSpec]],
    trained: list[_walk.Node],
    quantized: list[_walk.Node],
    check: Callable[[], None] | None = None,
) -> LoraResult:
    """Quantize, add the adapters of ``plan``, freeze; shared with ``load_adapters``.

    ``check`` runs after quantization and before any adapter is added (``load_adapters``
    compares the base weights there).
    """
    _check_plan(plan)
    wrapped = [(n, s) for n, s in plan if s.wraps(n.layer) and _owner(n) is None]
    bytes_before = _walk.num_bytes(model.weights)
    # Layers quantized already (a base the user quantized) are left as they are.
    ids = {id(n.layer) for n in quantized if n.layer.quantization_mode is None}
    if ids:
        model.quantize("int8", filters=lambda layer: id(layer) in ids)
    bytes_after = _walk.num_bytes(model.weights)
    if check is not None:
        check()
    for n, s in plan:
        if not s.wraps(n.layer):
            n.layer.enable_lora(s.rank, lora_alpha=s.keras_alpha)
        elif _owner(n) is not None:  # DoRA where a wrapper cannot stand (_check_plan)
            enable_dora(n.layer, s.rank, lora_alpha=s.keras_alpha)
    if wrapped:
        model = _rebuild(model, {id(n.layer): _wrapper(n.layer, s) for n, s in wrapped})
    nodes = _walk.walk(model)
    adapted_ids = {id(n.layer) for n, _ in plan}
    # After a rebuild the wrappers stand where their layers were.
    adapted = [
        n
        for n in nodes
        if id(n.layer) in adapted_ids
        or (isinstance(n.layer, LoRA) and id(n.layer.layer) in adapted_ids)
    ]
    trained_ids = {id(n.layer) for n in trained}
    kept = [n for n in nodes if id(n.layer) in trained_ids]
    _freeze(model, nodes, adapted, kept)
    reset_compiled_functions(model)
    return LoraResult(
        model=model,
        targets=tuple(n.path for n in adapted),
        trained=tuple(n.path for n in kept),
        report=trainable_report(model),
        base_bytes_before=bytes_before,
        base_bytes_after=bytes_after,
    )


def _check_rank(n: _walk.Node, spec: AdapterSpec) -> None:
    """Refuse an adapter of a rank larger than its layer's.

    ``A @ B`` has rank at most ``min(fan_in, fan_out)``: a larger rank adds parameters and
    nothing else (rank 1000 on a 3136x128 layer trained 99.8% of the model).
    """
    layer = n.layer.layer if isinstance(n.layer, LoRA) else n.layer
    kernel = (
        getattr(layer, "kernel", None)
        if not isinstance(layer, keras.layers.Embedding)
        else layer.embeddings
    )
    if kernel is None or len(kernel.shape) < 2:
        return
    fan_in, fan_out = math.prod(int(d) for d in kernel.shape[:-1]), int(kernel.shape[-1])
    limit = min(fan_in, fan_out)
    if spec.rank > limit:
        raise ValueError(
            f"Argument `rank={spec.rank}` is larger than layer {n.path!r} allows: its update has "
            f"rank at most min(fan_in={fan_in}, fan_out={fan_out}) = {limit}, and the adapter "
            f"would have {spec.rank * (fan_in + fan_out):,} parameters for the "
            f"{fan_in * fan_out:,} weights it adapts. HINT: pass rank <= {limit}, well below for a "
            f"low-rank update (finetune: lora_rank=), or leave {n.path!r} out of the targets."
        )


def _check_plan(plan: list[tuple[_walk.Node, AdapterSpec]]) -> None:
    """Refuse what would fail half-way, before anything in the model changes."""
    for n, spec in plan:
        _check_rank(n, spec)
        if not spec.wraps(n.layer):
            if getattr(n.layer, "kernel_constraint", None) or getattr(
                n.layer, "embeddings_constraint", None
            ):
                raise ValueError(
                    f"LoRA cannot go on {n.path!r}: it has a weight constraint, which Keras's "
                    "LoRA refuses. HINT: remove the constraint, or target other layers."
                )
            continue
        reason = supports_wrapping(n.layer)
        owner = _owner(n)
        in_place = spec.kind == "dora" and spec.dropout == 0
        if reason is None and owner is not None and not in_place:
            reason = (
                f"it lives inside {owner.name!r} ({type(owner).__name__}), which kerasft "
                "cannot rebuild with a new layer in it (KerasHub models and subclassed "
                "layers re-create their sublayers as plain layers when loaded)"
            )
        if reason is not None:
            kind = {
                ("dora", False): "DoRA",
                ("dora", True): "DoRA with dropout",
                ("lora", True): "LoRA with dropout",
            }[spec.kind, spec.dropout > 0]
            hint = (
                "dropout=0.0 there (DoRA then goes in place)"
                if spec.kind == "dora"
                else "method='lora' with dropout=0.0 there (Keras's in-place LoRA)"
            )
            raise ValueError(
                f"{kind} needs a wrapper layer around {n.path!r}, but {reason}. HINT: use "
                f"{hint}, or target other layers."
            )


def _owner(node: _walk.Node) -> keras.layers.Layer | None:
    """The innermost container of ``node`` that kerasft cannot rebuild, if any.

    A layer inside one takes adapters in place (Keras's LoRA, :func:`enable_dora`): a
    wrapper there would be dropped when the model is loaded again.
    """
    return next((a for a in reversed(node.ancestors) if not _rebuildable(a)), None)


def reset_compiled_functions(model: keras.Model) -> None:
    """Drop traced train/test/predict functions, which captured the layers before adapters.

    Keras's ``Model.quantize`` does the same after changing layers in place.
    """
    for layer in [model] + [n.layer for n in _walk.walk(model)]:
        if isinstance(layer, keras.Model):
            layer.train_function = layer.test_function = layer.predict_function = None


def _rebuildable(container: keras.layers.Layer) -> bool:
    return isinstance(container, keras.Sequential) or compat.is_plain_functional(container)


def _wrapper(layer: keras.layers.Layer, spec: AdapterSpec) -> LoRA:
    cls = DoRA if spec.kind == "dora" else LoRA
    return cls(
        layer, rank=spec.rank, alpha=spec.alpha, dropout=spec.dropout, use_rslora=spec.use_rslora
    )


def _rebuild(model: keras.Model, wrappers: dict[int, LoRA]) -> keras.Model:
    """Clone the graph, wrapping the listed layers and reusing every other layer as is."""

    def holds_target(container: keras.layers.Layer) -> bool:
        return any(id(n.layer) in wrappers for n in _walk.walk(container))

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) in wrappers:
            return wrappers[id(layer)]
        if surgery.is_container(layer) and holds_target(layer):
            return keras.models.clone_model(layer, clone_function=clone_function)
        return layer

    return keras.models.clone_model(model, clone_function=clone_function)


def _freeze(
    model: keras.Model, nodes: list[_walk.Node], adapted: list[_walk.Node], kept: list[_walk.Node]
) -> None:
    """Only adapter weights and the ``kept`` layers stay trainable.

    Whole layers are frozen with ``layer.trainable = False`` (BatchNorm then runs in
    inference mode, as fine-tuning wants); the layers on the way down to an adapter or a
    kept layer stay "trainable" containers whose own weights are frozen one by one.
    """
    model.trainable = True
    keep = {id(n.layer) for n in adapted + kept}
    open_path = {id(a) for n in adapted + kept for a in n.ancestors}
    for w in _walk.own_weights(model):
        w.trainable = False
    for n in nodes:
        if id(n.layer) in keep or any(id(a) in keep for a in n.ancestors):
            continue
        if id(n.layer) in open_path:
            for w in n.own_weights:
                w.trainable = False
        else:
            n.layer.trainable = False
    for n in adapted:
        if isinstance(n.layer, LoRA):
            n.layer.layer.trainable = False
        adapters = {id(v) for v in _walk.adapter_variables(n.layer)}
        for w in n.own_weights:
            w.trainable = id(w) in adapters
