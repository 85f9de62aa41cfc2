"""Save adapters apart from the base model, and load them onto the same base model.

One ``.npz`` file holds the adapter weights (LoRA factors, DoRA magnitudes), the layers
trained in full (PEFT's ``modules_to_save``: the new head...), how each adapter was
configured, and a fingerprint of the base model: the path, class and weight shapes of
every layer with weights, and a hash of each frozen layer's weights. Loading refuses a
base model that differs and names the first layer that does.

The hash reads a strided sample of at most 65,536 values per variable plus the
variable's float64 sum, so it stays cheap on large models; any two different
checkpoints of one architecture differ in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Any

import keras
import numpy as np

from kerasft._fileio import atomic_file
from kerasft.peft import _walk
from kerasft.peft.layers import LoRA, is_in_place_dora
from kerasft.peft.lora import AdapterSpec, LoraResult, apply_plan
from kerasft.peft.report import trainable_report

__all__ = ["save_adapters", "load_adapters"]

_FORMAT = "kerasft.peft.adapters"
_VERSION = 1
_SAMPLE = 1 << 16


def _digest(variables: list[keras.Variable]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for v in variables:
        a = keras.ops.convert_to_numpy(v)
        flat = a.reshape(-1)
        if flat.size > _SAMPLE:
            flat = flat[:: flat.size // _SAMPLE][:_SAMPLE]
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(flat).tobytes())
        h.update(np.float64(a.sum(dtype=np.float64)).tobytes())
    return h.hexdigest()


def _weighted(model: keras.Model) -> list[_walk.Node]:
    """Layers holding base weights; their positions are the layer indices in the file."""
    return [n for n in _walk.walk(model) if n.base_weights]


def _describe(node: _walk.Node, with_digest: bool) -> dict[str, Any]:
    weights = node.base_weights
    return {
        "path": node.path,
        "class": _walk.base_class(node.layer),
        "shapes": [[int(d) for d in v.shape] for v in weights],
        "digest": _digest(weights) if with_digest else None,
    }


def _spec_of(layer: keras.layers.Layer) -> AdapterSpec:
    if isinstance(layer, LoRA):
        return AdapterSpec(layer.kind, layer.rank, layer.alpha, layer.dropout, layer.use_rslora)
    # Keras's in-place LoRA (and DoRA on top of it) keeps only lora_alpha; store it as
    # alpha with the plain scale.
    kind = "dora" if is_in_place_dora(layer) else "lora"
    return AdapterSpec(kind, int(layer.lora_rank), float(layer.lora_alpha))


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).endswith(".npz"):
        raise ValueError(
            f"Argument `path` must be a file path ending in '.npz'. Received: path={path!r}"
        )
    return os.fspath(path)


def save_adapters(model: keras.Model, path: str | os.PathLike) -> str:
    """Write the adapters of ``model`` and its trained layers to one ``.npz`` file.

    The file is written beside ``path`` and renamed over it, so a crash never leaves a
    half-written file. Only adapter weights, DoRA magnitudes and the weights of layers
    that train in full (the head...) are stored, with the fingerprint of the frozen base.

    Example:

    >>> import os, tempfile, keras
    >>> from kerasft import peft
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    >>> adapted = peft.apply_lora(model, rank=2).model
    >>> path = peft.save_adapters(adapted, os.path.join(tempfile.mkdtemp(), "a.npz"))

    Args:
        model: a model with adapters (``result.model`` from ``apply_lora``).
        path: file path ending in ``.npz``; an existing file is replaced.

    Returns:
        The absolute path written.

    Raises:
        TypeError: for a subclassed model.
        ValueError: for a path not ending in ``.npz`` or a model without adapters.
    """
    _walk.check_model(model)
    path = _check_path(path)
    nodes = _weighted(model)
    trainable = {id(v) for v in model.trainable_weights}
    adapters, trained, layers, arrays = [], [], [], {}

    def put(values: list[keras.Variable]) -> list[str]:
        names = []
        for v in values:
            names.append(f"a{len(arrays)}")
            arrays[names[-1]] = keras.ops.convert_to_numpy(v)
        return names

    for i, n in enumerate(nodes):
        full = any(id(v) in trainable for v in n.base_weights)
        layers.append(_describe(n, with_digest=not full))
        if _walk.is_adapted(n.layer):
            spec = _spec_of(n.layer)
            adapters.append(
                {
                    "layer": i,
                    "kind": spec.kind,
                    "rank": spec.rank,
                    "alpha": spec.alpha,
                    "dropout": spec.dropout,
                    "use_rslora": spec.use_rslora,
                    "arrays": put(_walk.adapter_variables(n.layer)),
                }
            )
        if full:
            trained.append({"layer": i, "arrays": put(n.base_weights)})
    if not adapters:
        raise ValueError(
            f"Model {model.name!r} has no adapters to save. HINT: save `result.model` from "
            "`apply_lora(...)`, not the model you passed to it."
        )
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "model": model.name,
        "keras_version": keras.__version__,
        "layers": layers,
        "adapters": adapters,
        "trained": trained,
        "quantized": [i for i, n in enumerate(nodes) if n.layer.quantization_mode == "int8"],
    }
    with atomic_file(path) as tmp:
        # UTF-8 bytes: a numpy string array would spend four bytes per character.
        meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        np.savez(tmp, __meta__=meta_bytes, **arrays)
    return os.path.abspath(path)


def _read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Argument `path`: no adapter file at {path!r}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        # numpy suggests allow_pickle=True for object arrays: never load a file that way.
        why = (
            "it holds Python objects, which kerasft never loads"
            if "pickle" in str(e)
            else (f"{type(e).__name__}: {str(e).strip()[:200]}")
        )
        raise ValueError(
            f"Argument `path`: {path!r} is damaged or not a kerasft adapter file ({why}). "
            "HINT: save the adapters again with kerasft.peft.save_adapters."
        ) from None
    raw = arrays.pop("__meta__", None)
    try:
        meta = (
            json.loads(raw.tobytes().decode("utf-8"))
            if raw is not None and raw.dtype == np.uint8
            else {}
        )
    except (UnicodeDecodeError, ValueError):
        meta = {}
    if (
        not isinstance(meta, dict)
        or meta.get("format") != _FORMAT
        or meta.get("version") != _VERSION
    ):
        meta = meta if isinstance(meta, dict) else {}
        raise ValueError(
            f"Argument `path`: {path!r} is not a kerasft adapter file of version {_VERSION} "
            f"(format={meta.get('format')!r}, version={meta.get('version')!r})."
        )
    return meta, arrays


def _kernel_shape(layer: keras.layers.Layer) -> tuple[int, ...] | None:
    """The shape of the weight an adapter on ``layer`` adds to (kernel or embeddings)."""
    layer = layer.layer if isinstance(layer, LoRA) else layer
    for name in ("kernel", "embeddings"):
        try:
            weight = getattr(layer, name, None)
        except (AttributeError, ValueError):  # a quantized layer before its kernel is read
            weight = None
        if weight is not None:
            return tuple(int(d) for d in weight.shape)
    return None


def _check_file(
    meta: dict[str, Any], arrays: dict[str, np.ndarray], nodes: list[_walk.Node], path: str
) -> None:
    """Check every entry and array of the file against ``model`` before anything changes.

    A failure half-way through loading would leave the model with adapters enabled and
    layers frozen: everything that can fail is checked here first.
    """
    try:
        adapters, trained, quantized = (
            list(meta["adapters"]),
            list(meta["trained"]),
            list(meta["quantized"]),
        )
        entries = adapters + trained
        layers = [int(e["layer"]) for e in entries] + [int(i) for i in quantized]
        names = [n for e in entries for n in e["arrays"]]
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(path, f"its description lacks {e}") from None
    if any(i < 0 or i >= len(nodes) for i in layers):
        raise _damaged(
            path, f"a layer index is outside the model's {len(nodes)} layers with weights"
        )
    missing = [n for n in names if n not in arrays]
    if missing:
        raise _damaged(path, f"arrays {missing[:5]} are missing")
    for name in names:
        if arrays[name].dtype.kind not in "fiu" or not np.all(np.isfinite(arrays[name])):
            raise _damaged(
                path,
                f"array {name!r} holds {arrays[name].dtype} values that are not finite numbers",
            )
    for entry in trained:
        node = nodes[entry["layer"]]
        expected = [tuple(v.shape) for v in node.base_weights]
        found = [arrays[n].shape for n in entry["arrays"]]
        if found != expected:
            raise _damaged(
                path,
                f"the trained layer {node.path!r} has weights of shapes {found}, "
                f"the model {expected}",
            )
    for entry in adapters:
        _check_adapter_entry(entry, arrays, nodes[entry["layer"]], path)


def _damaged(path: str, what: str) -> ValueError:
    return ValueError(
        f"Argument `path`: {path!r} is damaged ({what}). HINT: save the adapters again with "
        "kerasft.peft.save_adapters."
    )


def _check_adapter_entry(
    entry: dict[str, Any], arrays: dict[str, np.ndarray], node: _walk.Node, path: str
) -> None:
    """Check one adapter's kind, rank and array shapes against the layer it adapts."""
    kind, rank = entry.get("kind"), entry.get("rank")
    if (
        kind not in ("lora", "dora")
        or isinstance(rank, bool)
        or not isinstance(rank, int)
        or rank < 1
    ):
        raise _damaged(path, f"the adapter on {node.path!r} has kind {kind!r} and rank {rank!r}")
    shapes = [arrays[n].shape for n in entry["arrays"]]
    kernel = _kernel_shape(node.layer)
    if kernel is None:
        return  # the rank and kind checks are all that can be told before enabling it
    expected = [kernel[:-1] + (rank,), (rank, kernel[-1])]
    if (
        shapes[:2] != expected
        or len(shapes) != (3 if kind == "dora" else 2)
        or kind == "dora"
        and (
            len(shapes[2]) != len(kernel) or any(m not in (1, k) for m, k in zip(shapes[2], kernel))
        )
    ):
        raise _damaged(
            path,
            f"the {kind} adapter of rank {rank} on {node.path!r} (kernel {kernel}) has arrays "
            f"of shapes {shapes}",
        )


def _check_architecture(meta: dict[str, Any], nodes: list[_walk.Node], path: str) -> None:
    saved = meta.get("layers")
    if not isinstance(saved, list) or not all(isinstance(e, dict) and "class" in e for e in saved):
        raise ValueError(
            f"Argument `path`: {path!r} is damaged (its description of the base model's "
            "layers is missing). HINT: save the adapters again with kerasft.peft.save_adapters."
        )
    for i, (entry, node) in enumerate(zip(saved, nodes)):
        if entry["class"] != _walk.base_class(node.layer):
            raise ValueError(
                f"The adapters in {path!r} belong to a different architecture: layer #{i} is "
                f"{entry['path']!r} ({entry['class']}) in the file but {node.path!r} "
                f"({_walk.base_class(node.layer)}) in `model`."
            )
    if len(saved) != len(nodes):
        raise ValueError(
            f"The adapters in {path!r} belong to a different architecture: the file's base "
            f"model {meta['model']!r} has {len(saved)} layers with weights, `model` has "
            f"{len(nodes)}."
        )


def _check_weights(meta: dict[str, Any], nodes: list[_walk.Node], path: str) -> None:
    differ = []
    for entry, node in zip(meta["layers"], nodes):
        here = _describe(node, with_digest=entry["digest"] is not None)
        if here["shapes"] != entry["shapes"]:
            raise ValueError(
                f"The adapters in {path!r} belong to a different architecture: layer "
                f"{node.path!r} has weight shapes {here['shapes']} in `model` but "
                f"{entry['shapes']} in the file."
            )
        if here["digest"] != entry["digest"]:
            differ.append(node.path)
    if differ:
        raise ValueError(
            f"The frozen weights of `model` differ from those of the base model the adapters "
            f"in {path!r} were trained on, in {len(differ)} of {len(nodes)} layers: "
            f"{differ[:5]}{' ...' if len(differ) > 5 else ''}. Adapters only fit the exact "
            "base weights. HINT: load the same pretrained model file (and quantize it the same "
            "way) before `load_adapters`."
        )


def load_adapters(model: keras.Model, path: str | os.PathLike) -> LoraResult:
    """Put the adapters from ``path`` on ``model``, the base model they were trained on.

    On a model without adapters (typically just loaded with ``keras.models.load_model``)
    this repeats what ``apply_lora`` did (same layers, kinds, ranks, scales, trained
    layers and int8 quantization) and then sets the saved values; the predictions equal
    those of the model that was saved. On a model that already has adapters, they must
    be the same ones; their values are replaced. The base is checked first: a different
    architecture or different frozen weights raise, naming the first layer that differs.

    Example:

    >>> import os, tempfile, keras
    >>> from kerasft import peft
    >>> layers = [keras.layers.Dense(8, name="body"), keras.layers.Dense(2, name="head")]
    >>> model = keras.Sequential([keras.Input((4,))] + layers)
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> fresh = keras.models.clone_model(model)
    >>> fresh.set_weights(model.get_weights())
    >>> _ = peft.save_adapters(peft.apply_lora(model, rank=2).model, path)
    >>> peft.load_adapters(fresh, path).targets
    ('body',)

    Args:
        model: the base model (or the same model with the same adapters).
        path: an ``.npz`` file written by :func:`save_adapters`.

    Returns:
        A :class:`LoraResult`; ``result.model`` carries the adapters (a rebuilt model for
        DoRA and adapter dropout, ``model`` itself otherwise).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        TypeError: for a subclassed model.
        ValueError: for a file that is not an adapter file, a base model that differs
            from the one in the file, or a model whose adapters differ from the file's.
    """
    _walk.check_model(model)
    path = _check_path(path)
    meta, arrays = _read(path)
    nodes = _weighted(model)
    _check_architecture(meta, nodes, path)
    _check_file(meta, arrays, nodes, path)
    adapted = [i for i, n in enumerate(nodes) if _walk.is_adapted(n.layer)]
    if adapted:
        expected = [a["layer"] for a in meta["adapters"]]
        if adapted != expected:
            raise ValueError(
                f"`model` already has adapters on {[nodes[i].path for i in adapted]}, but "
                f"{path!r} holds adapters for {[nodes[i].path for i in expected]}. HINT: pass "
                "the base model without adapters."
            )
        _check_weights(meta, nodes, path)
        before = after = _walk.num_bytes(model.weights)
    else:
        plan = [
            (
                nodes[a["layer"]],
                AdapterSpec(a["kind"], a["rank"], a["alpha"], a["dropout"], a["use_rslora"]),
            )
            for a in meta["adapters"]
        ]
        trained = [nodes[t["layer"]] for t in meta["trained"]]
        quantized = [nodes[i] for i in meta["quantized"]]
        result = apply_plan(
            model,
            plan,
            trained,
            quantized,
            check=lambda: _check_weights(meta, _weighted(model), path),
        )
        model, before, after = result.model, result.base_bytes_before, result.base_bytes_after
        nodes = _weighted(model)
    for entry in meta["adapters"]:
        node = nodes[entry["layer"]]
        variables = _walk.adapter_variables(node.layer)
        if _spec_of(node.layer).rank != entry["rank"] or len(variables) != len(entry["arrays"]):
            raise ValueError(
                f"The adapter on {node.path!r} in `model` does not match the one in {path!r} "
                f"(rank {entry['rank']}, kind {entry['kind']!r})."
            )
        for v, name in zip(variables, entry["arrays"]):
            v.assign(arrays[name])
    for entry in meta["trained"]:
        for v, name in zip(nodes[entry["layer"]].base_weights, entry["arrays"]):
            v.assign(arrays[name])
    adapted_nodes = [nodes[a["layer"]] for a in meta["adapters"]]
    return LoraResult(
        model=model,
        targets=tuple(n.path for n in adapted_nodes),
        trained=tuple(nodes[t["layer"]].path for t in meta["trained"]),
        report=trainable_report(model),
        base_bytes_before=before,
        base_bytes_after=after,
    )
