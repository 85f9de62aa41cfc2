"""Exporting a fine-tuned causal LM where people run LLMs, each export read back and checked.

Four formats, chosen from the path: a ``.keras`` file and a KerasHub preset directory
(``save_to_preset``; ``keras_hub.models.LlamaCausalLM.from_preset`` loads it) hold the
model with its adapters merged into the weights (:func:`kerasft.peft.merge`); an ``.npz``
file holds the adapters alone (:func:`kerasft.peft.save_adapters`); a ``.gguf`` file
(f32, f16 or Q8_0) runs in llama.cpp-based tools (:func:`kerasft.llm.export_gguf`).
Every export but the adapters is loaded again and its logits compared with the model's
on a probe text; the result carries that check.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["CausalLMExport", "export_causal_lm", "FORMATS", "compare_logits"]

FORMATS = ("keras", "preset", "adapters", "gguf")
_PROBE = "The film opens on a quiet street, and for two hours it never raises its voice."


class CausalLMExport(str):
    """The path written (a ``str``), with ``format`` and ``check``.

    ``check`` is `None` when nothing was compared (adapters), else a dict:
    ``max_abs_diff`` between the logits of the model and of the export read back,
    ``top1_agreement`` (share of positions where both predict the same next token) and
    ``tokens`` (the probe's length).
    """

    format: str
    check: dict[str, float] | None


def _format_of(path: str, format: str) -> str:
    if format != "auto":
        if format not in FORMATS:
            raise ValueError(
                f"Argument `format` must be 'auto' or one of {list(FORMATS)}. Received: "
                f"format={format!r}"
            )
        return format
    for suffix, name in ((".keras", "keras"), (".gguf", "gguf"), (".npz", "adapters")):
        if path.endswith(suffix):
            return name
    return "preset"


def compare_logits(model: Any, other: Any, text: str = _PROBE) -> dict[str, float]:
    """Logits of two causal LMs on one text: largest difference and top-1 agreement."""
    tokenizer = model.preprocessor.tokenizer
    ids = np.asarray(tokenizer(text), np.int32).reshape(1, -1)
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    a, b = np.asarray(model(x)), np.asarray(other(x))
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
        "tokens": int(ids.shape[1]),
    }


def export_causal_lm(
    causal_lm: Any,
    path: str | os.PathLike,
    *,
    format: str = "auto",
    dtype: str = "f16",
    overwrite: bool = False,
    verify: Any = None,
) -> CausalLMExport:
    """Write a fine-tuned causal LM as a merged ``.keras`` file, KerasHub preset, adapters or GGUF.

    Example:

    ```python
    kerasft.llm.export_causal_lm(result.model, "reviews.keras")
    kerasft.llm.export_causal_lm(result.model, "reviews_preset/")  # KerasHub preset
    kerasft.llm.export_causal_lm(result.model, "reviews.Q8_0.gguf", dtype="q8_0")
    ```

    Args:
        causal_lm: a KerasHub causal LM with its preprocessor, adapters or not.
        path: ``*.keras``, ``*.gguf``, ``*.npz`` (adapters) or a directory (preset).
        format: ``"auto"`` (from the path) or one of :data:`FORMATS`. Defaults to `"auto"`.
        dtype: GGUF only: ``"f32"``, ``"f16"`` or ``"q8_0"``. Defaults to `"f16"`.
        overwrite: replace what is at ``path``. Defaults to `False`.
        verify: the probe text whose logits are compared after reading the export back,
            or `False` to skip the check. Defaults to `None` (a built-in sentence).

    Returns:
        A :class:`CausalLMExport`.

    Raises:
        ValueError: an unknown format, an existing path without ``overwrite``, adapters
            asked of a model without any, or a GGUF export of a model GGUF cannot hold.
    """
    from kerasft import peft

    path = os.fspath(path)
    fmt = _format_of(path, format)
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"Argument `path`: {path!r} exists. HINT: pass overwrite=True to replace it."
        )
    probe = _PROBE if verify is None else verify
    adapted = peft.has_adapters(causal_lm)
    check = None
    if fmt == "adapters":
        if not adapted:
            raise ValueError(
                f"Argument `causal_lm` ({causal_lm.name!r}) has no adapters to save. HINT: export "
                "the whole model ('.keras', a preset directory or '.gguf') instead."
            )
        written = peft.save_adapters(causal_lm, path)
    elif fmt == "gguf":
        from kerasft.llm.gguf import export_gguf, load_gguf

        written = export_gguf(causal_lm, path, dtype=dtype, overwrite=overwrite)
        if probe is not False:
            check = compare_logits(causal_lm, load_gguf(written), probe)
    else:
        merged = peft.merge(causal_lm) if adapted else causal_lm
        written = _save_keras(merged, path, fmt, overwrite)
        if probe is not False:
            check = compare_logits(causal_lm, _load_keras(written, fmt), probe)
    out = CausalLMExport(written)
    out.format, out.check = fmt, check
    return out


def _save_keras(model: Any, path: str, fmt: str, overwrite: bool) -> str:
    import shutil

    if os.path.isdir(path) and overwrite:
        shutil.rmtree(path)
    if fmt == "keras":
        model.save(path)
    else:
        model.save_to_preset(path)
    return path


def _load_keras(path: str, fmt: str) -> Any:
    import keras

    if fmt == "keras":
        return keras.models.load_model(path)
    import keras_hub

    return keras_hub.models.CausalLM.from_preset(path)
