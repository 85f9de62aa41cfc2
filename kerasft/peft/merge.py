"""Fold adapters into the kernels: a new plain model, as PEFT's ``merge_and_unload``."""

from __future__ import annotations

from typing import Any

import keras

from kerasft.peft import _walk
from kerasft.peft.layers import LoRA

__all__ = ["merge"]


def merge(model: keras.Model) -> keras.Model:
    """Return a new plain model with every adapter folded into its layer's kernel.

    The new model is rebuilt from ``model.get_config()`` with the adapters taken out of
    the config (no ``lora_rank``, no :class:`LoRA`/:class:`DoRA` layers), so it saves and
    loads without kerasft, and its weights are copied with each layer's
    ``save_own_variables``/``load_own_variables`` (Keras merges its own LoRA there; an
    int8 layer is re-quantized after the merge, so its predictions move by the int8
    rounding). Predictions equal the adapted model's within float tolerance. All its
    layers are trainable. ``model`` is left as it was. A KerasHub task keeps its
    preprocessor (the same object: its vocabulary lives in assets, not in the config).

    Example:

    >>> import keras, numpy as np
    >>> from kerasft import peft
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(2)])
    >>> adapted = peft.apply_lora(model, rank=2, method="dora").model
    >>> merged = peft.merge(adapted)
    >>> x = np.ones((1, 4), "float32")
    >>> bool(np.allclose(merged(x), adapted(x), atol=1e-6))
    True

    Args:
        model: a model with adapters, from ``apply_lora`` or ``load_adapters``.

    Returns:
        A new Keras model of the same class, without adapters.

    Raises:
        TypeError: for a subclassed model.
        ValueError: when ``model`` has no adapters, or the rebuilt model's layers do not
            line up with ``model``'s.
    """
    _walk.check_model(model)
    old_nodes = _walk.walk(model)
    if not any(_walk.is_adapted(n.layer) for n in old_nodes):
        raise ValueError(
            f"Model {model.name!r} has no adapters to merge. HINT: merge the `model` that "
            "`apply_lora(...)` or `load_adapters(...)` returned (`result.model`)."
        )
    config = _strip_adapters(model.get_config())
    if isinstance(config, dict) and config.get("preprocessor") is not None:
        config["preprocessor"] = getattr(model, "preprocessor", None)
    merged = type(model).from_config(config)
    new_nodes = [n for n in _walk.walk(merged) if n.own_weights]
    old_nodes = [n for n in old_nodes if n.own_weights]
    if len(new_nodes) != len(old_nodes):
        raise ValueError(
            f"merge rebuilt model {model.name!r} with {len(new_nodes)} layers holding weights "
            f"instead of {len(old_nodes)}; its config does not describe it fully."
        )
    for old, new in zip(old_nodes, new_nodes):
        if _walk.base_class(old.layer) != type(new.layer).__name__:
            raise ValueError(
                f"merge cannot line up {old.path!r} ({_walk.base_class(old.layer)}) with "
                f"{new.path!r} ({type(new.layer).__name__}) in the rebuilt model."
            )
        store: dict[str, Any] = {}
        source = old.layer.layer if isinstance(old.layer, LoRA) else old.layer
        source.save_own_variables(store)
        new.layer.load_own_variables(store)
        if isinstance(old.layer, LoRA):
            new.layer.kernel.assign(old.layer.adapted_kernel())
    merged.trainable = True
    return merged


def _strip_adapters(config: Any) -> Any:
    """Config with Keras's ``lora_rank``/``lora_alpha`` removed and wrappers unwrapped."""
    if isinstance(config, list):
        return [_strip_adapters(c) for c in config]
    if not isinstance(config, dict):
        return config
    if config.get("registered_name") in ("kerasft>LoRA", "kerasft>DoRA"):
        inner = config["config"]["layer"]
        unwrapped = dict(config)
        for key in ("module", "class_name", "registered_name"):
            unwrapped[key] = inner.get(key)
        unwrapped["config"] = dict(inner["config"], name=config["config"]["name"])
        return _strip_adapters(unwrapped)
    return {
        k: _strip_adapters(v) for k, v in config.items() if k not in ("lora_rank", "lora_alpha")
    }


def has_adapters(model: keras.Model) -> bool:
    """Whether any layer of ``model`` carries a LoRA or DoRA adapter."""
    return any(_walk.is_adapted(node.layer) for node in _walk.walk(model))
