"""A NumPy forward pass of a Llama GGUF model, written from llama.cpp's layout alone.

The check of :func:`kerasft.llm.load_gguf`: this module shares no code with the
converter or with KerasHub. It reads the dequantized tensors as the file stores them
(query/key rows in llama.cpp's order, rotary embeddings turning adjacent pairs of
features, as ggml's ``rope`` does for Llama) and computes in float64, so that the
converted model's logits can be compared with an implementation of the architecture
that does not undo the row reordering at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasft.llm.gguf import GGUFFile, read_gguf

__all__ = ["reference_logits"]


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope_adjacent_pairs(x: np.ndarray, base: float) -> np.ndarray:
    """Rotate features ``(2i, 2i+1)`` of every head by ``position * base ** (-2i / d)``."""
    length, _, dim = x.shape
    angles = np.arange(length)[:, None] * base ** (-np.arange(0, dim, 2) / dim)[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def reference_logits(source: Any, token_ids: Sequence[int]) -> np.ndarray:
    """Logits of a Llama GGUF model for one sequence, computed in NumPy (float64).

    Args:
        source: a ``.gguf`` path or a :class:`kerasft.llm.GGUFFile`.
        token_ids: the token ids of one sequence (no padding).

    Returns:
        A ``(len(token_ids), vocabulary_size)`` float64 array.
    """
    f = source if isinstance(source, GGUFFile) else read_gguf(os.fspath(source))
    m, arch = f.metadata, f.architecture
    heads, kv_heads = (
        int(m[f"{arch}.attention.head_count"]),
        int(m[f"{arch}.attention.head_count_kv"]),
    )
    eps = float(m[f"{arch}.attention.layer_norm_rms_epsilon"])
    base = float(m.get(f"{arch}.rope.freq_base", 10000.0))

    def w(name: str) -> np.ndarray:
        return f.tensor(name).astype(np.float64)

    ids = np.asarray(token_ids, dtype=np.int64)
    embedding = w("token_embd.weight")
    x = embedding[ids]
    length, hidden = x.shape
    head_dim = hidden // heads
    causal = np.tril(np.ones((length, length), dtype=bool))
    for i in range(int(m[f"{arch}.block_count"])):
        h = _rms_norm(x, w(f"blk.{i}.attn_norm.weight"), eps)
        q = (h @ w(f"blk.{i}.attn_q.weight").T).reshape(length, heads, head_dim)
        k = (h @ w(f"blk.{i}.attn_k.weight").T).reshape(length, kv_heads, head_dim)
        v = (h @ w(f"blk.{i}.attn_v.weight").T).reshape(length, kv_heads, head_dim)
        q, k = _rope_adjacent_pairs(q, base), _rope_adjacent_pairs(k, base)
        out = np.empty_like(q)
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = q[:, head] @ k[:, kv].T / np.sqrt(head_dim)
            scores = np.where(causal, scores, -np.inf)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, head] = (scores / scores.sum(axis=-1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(length, hidden) @ w(f"blk.{i}.attn_output.weight").T
        h = _rms_norm(x, w(f"blk.{i}.ffn_norm.weight"), eps)
        gate = h @ w(f"blk.{i}.ffn_gate.weight").T
        x = (
            x
            + (gate / (1.0 + np.exp(-gate)) * (h @ w(f"blk.{i}.ffn_up.weight").T))
            @ w(f"blk.{i}.ffn_down.weight").T
        )
    x = _rms_norm(x, w("output_norm.weight"), eps)
    output = w("output.weight") if f.has_tensor("output.weight") else embedding
    return x @ output.T
