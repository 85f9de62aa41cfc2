"""GGUF files in and out: a llama.cpp model as a KerasHub ``LlamaCausalLM``, and back.

GGUF is the single-file format of llama.cpp and the tools built on it (Ollama, LM
Studio, GPT4All...): metadata (architecture, hyper-parameters, tokenizer, chat template)
followed by tensors, usually quantized. :func:`load_gguf` reads a Llama-family file
(Llama 1-3, SmolLM, TinyLlama...) with the ``gguf`` package, dequantizes every tensor to
float32 and builds a ``keras_hub.models.LlamaCausalLM`` with its preprocessor: a
:class:`~kerasft.llm.tokenizer.GGUFTokenizer` from the file's vocabulary, merges and
special tokens, carrying the chat template. :func:`export_gguf` writes a Llama causal LM
back in f32, f16 or Q8_0, so that a fine-tuned model runs in llama.cpp-based tools.

llama.cpp's converter reorders the rows of the query and key projections so that rotary
embeddings rotate adjacent pairs of features; KerasHub rotates the two halves of each
head, as Hugging Face does. The reader undoes that reordering and the writer redoes it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from kerasft import _keras_compat as compat

__all__ = [
    "GGUFFile",
    "read_gguf",
    "llama_config",
    "load_gguf",
    "export_gguf",
    "EXPORT_TYPES",
    "SUPPORTED_ARCHITECTURES",
]

SUPPORTED_ARCHITECTURES = ("llama",)
# Export types -> (GGML type of the matrices, llama.cpp's file type).
EXPORT_TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
# Metadata kept on the tokenizer so that an export writes back what Keras does not model.
_CARRIED = (
    "general.name",
    "general.basename",
    "general.organization",
    "general.finetune",
    "general.size_label",
    "general.license",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
)


@dataclasses.dataclass
class GGUFFile:
    """What a GGUF file holds: its metadata and its tensors, read lazily.

    Attributes:
        path: the file.
        metadata: every key-value pair of the header, as Python values.
        tensor_types: ``{tensor name: GGML type name}`` (``"Q4_1"``, ``"F32"``...).
        reader: the ``gguf.GGUFReader`` (the file stays memory-mapped while it lives).
    """

    path: str
    metadata: dict[str, Any]
    tensor_types: dict[str, str]
    reader: Any

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` dequantized to float32, in NumPy's axis order.

        GGUF lists dimensions fastest-first, so a matrix with ``out`` rows of ``in``
        values is ``[in, out]`` in the file and ``(out, in)`` here.

        Raises:
            KeyError: no tensor of that name (the message lists a few that exist).
        """
        import gguf

        for t in self.reader.tensors:
            if t.name == name:
                shape = tuple(int(d) for d in reversed(t.shape))
                return np.asarray(
                    gguf.quants.dequantize(t.data, t.tensor_type), np.float32
                ).reshape(shape)
        names = list(self.tensor_types)
        raise KeyError(
            f"No tensor named {name!r} in {self.path}. It has {len(names)}: {names[:8]}..."
        )

    def has_tensor(self, name: str) -> bool:
        return name in self.tensor_types


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open a GGUF file: its metadata now, its tensors on demand (memory-mapped).

    Args:
        path: a ``.gguf`` file.

    Returns:
        A :class:`GGUFFile`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not GGUF.
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Argument `path` must be an existing .gguf file. Received: path={path!r}"
        )
    try:
        reader = gguf.GGUFReader(path)
    except ValueError as e:
        raise ValueError(f"Argument `path`: {path!r} is not a GGUF file ({e}).") from e
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = field.contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return GGUFFile(path=path, metadata=metadata, tensor_types=types, reader=reader)


def _check_architecture(f: GGUFFile) -> str:
    arch = f.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Argument `path`: {f.path!r} holds a {arch!r} model; kerasft reads GGUF models of "
            f"architectures {list(SUPPORTED_ARCHITECTURES)} (Llama 1-3, SmolLM, TinyLlama...)."
        )
    if f.has_tensor("rope_freqs.weight"):
        raise ValueError(
            f"Argument `path`: {f.path!r} scales its rotary embeddings with a `rope_freqs` "
            "tensor (Llama 3.1-style long context), which kerasft does not convert yet."
        )
    if f.has_tensor("blk.0.attn_q.bias"):
        raise ValueError(
            f"Argument `path`: {f.path!r} has attention biases, which Llama models do not have."
        )
    return arch


def llama_config(f: GGUFFile) -> dict[str, Any]:
    """``keras_hub.models.LlamaBackbone`` arguments from a GGUF file's metadata.

    Raises:
        ValueError: an architecture other than Llama, or hyper-parameters KerasHub's
            Llama cannot express (a rotary dimension other than the head size).
    """
    arch = _check_architecture(f)
    m = f.metadata

    def get(key: str, default: Any = None) -> Any:
        value = m.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"Argument `path`: {f.path!r} has no `{arch}.{key}` in its metadata.")
        return value

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    vocab = m.get(f"{arch}.vocab_size") or len(m.get("tokenizer.ggml.tokens", ()))
    if not vocab:
        vocab = int(
            f.reader.tensors[[t.name for t in f.reader.tensors].index("token_embd.weight")].shape[1]
        )
    rope_dim = int(m.get(f"{arch}.rope.dimension_count", hidden // heads))
    if rope_dim != hidden // heads:
        raise ValueError(
            f"Argument `path`: {f.path!r} rotates {rope_dim} of the {hidden // heads} features of "
            "each head; KerasHub's Llama rotates all of them."
        )
    scaling = 1.0
    if m.get(f"{arch}.rope.scaling.type") == "linear":
        scaling = float(m.get(f"{arch}.rope.scaling.factor", 1.0))
    elif m.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise ValueError(
            f"Argument `path`: {f.path!r} uses rope scaling {m[f'{arch}.rope.scaling.type']!r}; "
            "kerasft converts 'linear' or none."
        )
    return {
        "vocabulary_size": int(vocab),
        "num_layers": int(get("block_count")),
        "num_query_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "hidden_dim": hidden,
        "intermediate_dim": int(get("feed_forward_length")),
        "rope_max_wavelength": float(get("rope.freq_base", 10000.0)),
        "rope_position_scaling_factor": scaling,
        "layer_norm_epsilon": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        # KerasHub 0.32's LlamaBackbone.get_config leaves `tie_word_embeddings` out, so a
        # tied model would not load again from a .keras file or a preset: a file without
        # `output.weight` gets it as a copy of the embedding (export_gguf ties it back).
        "tie_word_embeddings": False,
    }


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's query/key row order (adjacent rotary pairs) -> Hugging Face's (halves)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's query/key row order -> llama.cpp's (what its converter writes)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _block_tensors(backbone: Any, i: int) -> Iterator[tuple[str, Any, str, str]]:
    """``(GGUF name, layer, attribute, kind)`` of block ``i``; kind says how the layouts differ."""
    parts = compat.llama_block_parts(backbone.get_layer(f"transformer_layer_{i}"))
    yield f"blk.{i}.attn_norm.weight", parts["attention_norm"], "scale", "vector"
    yield f"blk.{i}.attn_q.weight", parts["query"], "kernel", "query"
    yield f"blk.{i}.attn_k.weight", parts["key"], "kernel", "key"
    yield f"blk.{i}.attn_v.weight", parts["value"], "kernel", "value"
    yield f"blk.{i}.attn_output.weight", parts["output"], "kernel", "output"
    yield f"blk.{i}.ffn_norm.weight", parts["ffn_norm"], "scale", "vector"
    yield f"blk.{i}.ffn_gate.weight", parts["gate"], "kernel", "dense"
    yield f"blk.{i}.ffn_up.weight", parts["up"], "kernel", "dense"
    yield f"blk.{i}.ffn_down.weight", parts["down"], "kernel", "dense"


def _tensors(backbone: Any) -> Iterator[tuple[str, Any, str, str]]:
    """Every ``(GGUF name, layer, attribute, kind)`` of a Llama backbone.

    ``getattr(layer, attribute)`` is the weight the layer computes with: with Keras's
    LoRA (or kerasft's in-place DoRA) enabled, the kernel with the adapter folded in.
    """
    embedding = backbone.get_layer("token_embedding")
    yield "token_embd.weight", embedding, "embeddings", "vector"
    for i in range(backbone.num_layers):
        yield from _block_tensors(backbone, i)
    yield "output_norm.weight", backbone.get_layer("sequence_output_layernorm"), "scale", "vector"
    if not backbone.tie_word_embeddings:
        yield "output.weight", embedding, "reverse_embeddings", "dense"


def _to_keras(array: np.ndarray, kind: str, backbone: Any) -> np.ndarray:
    """A GGUF tensor (NumPy order, ``(out, in)`` for matrices) in the Keras variable's layout."""
    hidden, heads, kv = backbone.hidden_dim, backbone.num_query_heads, backbone.num_key_value_heads
    head_dim = hidden // heads
    if kind == "query":
        return _unpermute(array, heads).T.reshape(hidden, heads, head_dim)
    if kind == "key":
        return _unpermute(array, kv).T.reshape(hidden, kv, head_dim)
    if kind == "value":
        return array.T.reshape(hidden, kv, head_dim)
    if kind == "output":
        return array.T.reshape(heads, head_dim, hidden)
    if kind == "dense":
        return array.T
    return array


def _to_gguf(value: np.ndarray, kind: str, backbone: Any) -> np.ndarray:
    """The inverse of :func:`_to_keras`."""
    hidden, heads, kv = backbone.hidden_dim, backbone.num_query_heads, backbone.num_key_value_heads
    if kind == "query":
        return _permute(value.reshape(hidden, -1).T, heads)
    if kind == "key":
        return _permute(value.reshape(hidden, -1).T, kv)
    if kind == "value":
        return value.reshape(hidden, -1).T
    if kind == "output":
        return value.reshape(-1, hidden).T
    if kind == "dense":
        return value.T
    return value


def gguf_tokenizer(f: GGUFFile) -> Any:
    """A :class:`~kerasft.llm.tokenizer.GGUFTokenizer` from a GGUF file's tokenizer metadata.

    Raises:
        ValueError: a vocabulary other than byte-level BPE (``tokenizer.ggml.model``
            ``"gpt2"``), or an unknown pre-tokenizer.
    """
    from kerasft.llm.tokenizer import GGUFTokenizer

    m = f.metadata
    pre = _check_tokenizer(f)
    tokens = list(m["tokenizer.ggml.tokens"])
    carried = _carried_metadata(f)
    # KerasHub's packers add the start token whenever the tokenizer has one (generation
    # included), so a file that adds none keeps its beginning-of-sequence token aside.
    add_bos = bool(m.get("tokenizer.ggml.add_bos_token", False))
    bos = _named_token(m, tokens, "bos")
    if bos is not None:
        carried["bos_token"] = bos
    pad, file_pad = _pad_token(m, tokens)
    if file_pad is not None:
        carried["padding_token"] = file_pad
    return GGUFTokenizer(
        {t: i for i, t in enumerate(tokens)},
        list(m.get("tokenizer.ggml.merges", [])),
        start_token=bos if add_bos else None,
        end_token=_named_token(m, tokens, "eos"),
        pad_token=pad,
        special_tokens=_special_tokens(m, tokens),
        pre_tokenizer=pre,
        chat_template=m.get("tokenizer.chat_template"),
        gguf_metadata=carried,
    )


def _check_tokenizer(f: GGUFFile) -> str:
    """The pre-tokenizer of a byte-level BPE vocabulary; other vocabularies are refused."""
    from kerasft.llm.tokenizer import PRE_TOKENIZERS

    m = f.metadata
    model = m.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"Argument `path`: {f.path!r} has a {model!r} tokenizer; kerasft reads byte-level BPE "
            "vocabularies (tokenizer.ggml.model 'gpt2'). HINT: pass `preprocessor=False` to load "
            "the model without its tokenizer."
        )
    pre = m.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(
            f"Argument `path`: {f.path!r} names the pre-tokenizer {pre!r}; kerasft knows "
            f"{sorted(PRE_TOKENIZERS)}. HINT: pass `preprocessor=False` to load the model "
            "without it."
        )
    return pre


def _named_token(m: dict[str, Any], tokens: list[str], key: str) -> str | None:
    """The token whose id is ``tokenizer.ggml.{key}_token_id``, if the file names one."""
    i = m.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None


def _special_tokens(m: dict[str, Any], tokens: list[str]) -> list[str]:
    """The control and user-defined tokens, which the tokenizer must not split."""
    import gguf as gguf_lib

    types = list(m.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    return [
        t
        for t, k in zip(tokens, types)
        if k in (gguf_lib.TokenType.CONTROL, gguf_lib.TokenType.USER_DEFINED)
    ]


def _carried_metadata(f: GGUFFile) -> dict[str, Any]:
    """What an export writes back and Keras does not model (see ``_CARRIED``)."""
    m = f.metadata
    carried = {k: m[k] for k in _CARRIED if k in m}
    arch = f.architecture
    if f"{arch}.context_length" in m:
        carried["context_length"] = int(m[f"{arch}.context_length"])
    return carried


def _pad_token(m: dict[str, Any], tokens: list[str]) -> tuple[str | None, str | None]:
    """The padding token to give KerasHub, and the file's own when it cannot be that one.

    KerasHub's generation stops once every row holds a stop token past its prompt, and
    the padding there counts: padding with the end token (SmolLM does) would stop it
    before the first step. Padding is masked everywhere, so any other token will do.
    """
    eos = _named_token(m, tokens, "eos")
    pad = _named_token(m, tokens, "padding") or eos
    if pad is None or pad != eos:
        return pad, None
    other = next(
        t
        for t in (_named_token(m, tokens, "unknown"), tokens[0], tokens[1])
        if t is not None and t != eos
    )
    return other, pad


def load_gguf(
    path: str | os.PathLike,
    *,
    preprocessor: bool = True,
    sequence_length: int = 1024,
    dtype: str | None = None,
) -> Any:
    """Read a Llama-family GGUF file into a KerasHub ``LlamaCausalLM``.

    Every tensor is dequantized to float32 (Q4_0, Q4_1, Q8_0, K-quants...: whatever the
    ``gguf`` package dequantizes), the query/key rows are put back in KerasHub's rotary
    order, and the model gets a ``LlamaCausalLMPreprocessor`` with the file's tokenizer
    (adding the start token only where the file says so). Generation stops at the
    file's end-of-sequence token.

    Example:

    ```python
    causal_lm = kerasft.llm.load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    prompt = kerasft.llm.apply_chat_template(causal_lm, [{"role": "user", "content": "Hi!"}])
    causal_lm.generate(prompt, max_length=64)
    ```

    Args:
        path: a ``.gguf`` file.
        preprocessor: attach the preprocessor built from the file's tokenizer.
            Defaults to `True`.
        sequence_length: the preprocessor's sequence length. Defaults to `1024`.
        dtype: the Keras dtype policy of the model (``"float32"``, ``"bfloat16"``...).
            Defaults to `None` (Keras's global policy).

    Returns:
        A ``keras_hub.models.LlamaCausalLM``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file, an architecture or tokenizer kerasft does not read.
    """
    import keras_hub

    f = read_gguf(path)
    config = llama_config(f)
    tokenizer = gguf_tokenizer(f) if preprocessor else None
    if not isinstance(sequence_length, int) or sequence_length < 2:
        raise ValueError(
            "Argument `sequence_length` must be an integer >= 2. Received: "
            f"sequence_length={sequence_length!r}"
        )
    backbone = keras_hub.models.LlamaBackbone(**config, dtype=dtype)
    for name, layer, attr, kind in _tensors(backbone):
        variable = getattr(layer, attr)
        if name == "output.weight" and not f.has_tensor(name):
            name = "token_embd.weight"
        value = _to_keras(f.tensor(name), kind, backbone)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Argument `path`: tensor {name!r} of {f.path!r} has shape {value.shape}; the "
                f"model built from its metadata expects {tuple(variable.shape)}."
            )
        variable.assign(value)
    pre = None
    if tokenizer is not None:
        pre = keras_hub.models.LlamaCausalLMPreprocessor(
            tokenizer,
            sequence_length=sequence_length,
            add_start_token=tokenizer.start_token is not None,
            add_end_token=tokenizer.end_token is not None,
        )
    name = os.path.splitext(os.path.basename(f.path))[0]
    return keras_hub.models.LlamaCausalLM(backbone, preprocessor=pre, name=_keras_name(name))


def _keras_name(text: str) -> str:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in text).strip("_").lower()
    return clean or "causal_lm"


def export_gguf(
    causal_lm: Any, path: str | os.PathLike, *, dtype: str = "f16", overwrite: bool = False
) -> str:
    """Write a KerasHub Llama causal LM as a GGUF file for llama.cpp-based tools.

    Matrices (and the token embedding) are written as ``dtype``; normalization scales
    stay float32, as llama.cpp's converter writes them. Low-rank adapters are folded
    into the weights they adapt (the model is left unchanged). The tokenizer (vocabulary,
    merges, special tokens, pre-tokenizer, chat template) must be a byte-level BPE one:
    the :class:`~kerasft.llm.tokenizer.GGUFTokenizer` of :func:`load_gguf` or KerasHub's
    ``Llama3Tokenizer``.

    Example:

    ```python
    kerasft.llm.export_gguf(result.model, "smollm2-reviews.Q8_0.gguf", dtype="q8_0")
    ```

    Args:
        causal_lm: a ``keras_hub.models.LlamaCausalLM`` with its preprocessor.
        path: the ``.gguf`` file to write.
        dtype: ``"f32"``, ``"f16"`` or ``"q8_0"`` (8-bit blocks of 32 with an f16 scale).
            Defaults to `"f16"`.
        overwrite: replace an existing file. Defaults to `False`.

    Returns:
        The path written.

    Raises:
        ValueError: an unknown ``dtype``, an existing file without ``overwrite``, a model
            other than a Llama causal LM, or a tokenizer GGUF cannot hold.
    """
    import gguf
    import keras

    if dtype not in EXPORT_TYPES:
        raise ValueError(
            f"Argument `dtype` must be one of {list(EXPORT_TYPES)}. Received: dtype={dtype!r}"
        )
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"Argument `path`: {path!r} exists. HINT: pass overwrite=True to replace it."
        )
    backbone = _llama_backbone(causal_lm)
    quantized = sorted(
        {
            layer.name
            for _, layer, _, _ in _tensors(backbone)
            if getattr(layer, "quantization_mode", None)
        }
    )
    if quantized:
        raise ValueError(
            f"Argument `causal_lm` has quantized layers ({quantized[:4]}...); export_gguf writes "
            "float weights. HINT: load the adapters onto the float model "
            "(`kerasft.peft.load_adapters`) and export that."
        )
    tokenizer = getattr(getattr(causal_lm, "preprocessor", None), "tokenizer", None)
    writer = gguf.GGUFWriter(path + ".partial", "llama")
    _write_metadata(writer, backbone, tokenizer, dtype)
    qtype = getattr(gguf.GGMLQuantizationType, EXPORT_TYPES[dtype][0])
    embedding = None
    for name, layer, attr, kind in _tensors(backbone):
        array = _to_gguf(keras.ops.convert_to_numpy(getattr(layer, attr)), kind, backbone).astype(
            np.float32
        )
        if name == "token_embd.weight":
            embedding = array
        if name == "output.weight" and np.array_equal(array, embedding):
            continue  # tied, as llama.cpp expects when there is no output matrix
        if array.ndim == 1:
            writer.add_tensor(name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        elif qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(path + ".partial", path)
    return path


def _llama_backbone(causal_lm: Any) -> Any:
    import keras_hub

    backbone = getattr(causal_lm, "backbone", None)
    if not isinstance(backbone, keras_hub.models.LlamaBackbone):
        raise ValueError(
            "Argument `causal_lm` must be a KerasHub Llama causal LM (LlamaCausalLM, "
            f"Llama3CausalLM). Received: {type(causal_lm).__name__} with backbone "
            f"{type(backbone).__name__}"
        )
    if backbone.rope_low_freq_factor is not None:
        raise ValueError(
            "Argument `causal_lm`: Llama 3.1-style rope scaling cannot be written to GGUF yet."
        )
    return backbone


def _write_metadata(writer: Any, backbone: Any, tokenizer: Any, dtype: str) -> None:
    import gguf

    carried = dict(getattr(tokenizer, "gguf_metadata", None) or {})
    heads = backbone.num_query_heads
    writer.add_name(str(carried.get("general.name", backbone.name)))
    for key in (
        "general.basename",
        "general.organization",
        "general.finetune",
        "general.size_label",
        "general.license",
    ):
        if key in carried:
            writer.add_string(key, str(carried[key]))
    writer.add_context_length(int(carried.get("context_length", 4096)))
    writer.add_embedding_length(backbone.hidden_dim)
    writer.add_block_count(backbone.num_layers)
    writer.add_feed_forward_length(backbone.intermediate_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_rope_freq_base(float(backbone.rope_max_wavelength))
    writer.add_rope_dimension_count(backbone.hidden_dim // heads)
    if backbone.rope_position_scaling_factor != 1.0:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(backbone.rope_position_scaling_factor))
    writer.add_layer_norm_rms_eps(float(backbone.layer_norm_epsilon))
    writer.add_vocab_size(backbone.vocabulary_size)
    writer.add_file_type(int(getattr(gguf.LlamaFileType, EXPORT_TYPES[dtype][1])))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(writer, tokenizer, backbone.vocabulary_size, carried)


def _write_tokenizer(
    writer: Any, tokenizer: Any, vocabulary_size: int, carried: dict[str, Any]
) -> None:
    import gguf
    from keras_hub.tokenizers import BytePairTokenizer

    if not isinstance(tokenizer, BytePairTokenizer):
        raise ValueError(
            "Argument `causal_lm` must have a byte-level BPE tokenizer on its preprocessor (GGUF "
            f"files carry their tokenizer). Received: tokenizer of type {type(tokenizer).__name__}"
        )
    vocabulary = tokenizer.vocabulary
    tokens = [""] * max(vocabulary_size, max(vocabulary.values()) + 1)
    for token, i in vocabulary.items():
        tokens[int(i)] = token
    special = set(tokenizer.special_tokens)
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(getattr(tokenizer, "pre_tokenizer", "llama-bpe"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m for m in tokenizer.merges if "#version:" not in m])
    bos = tokenizer.start_token_id
    if bos is None and carried.get("bos_token") in vocabulary:
        bos = vocabulary[carried["bos_token"]]
    pad = vocabulary.get(carried.get("padding_token"), getattr(tokenizer, "pad_token_id", None))
    for value, add in (
        (bos, writer.add_bos_token_id),
        (tokenizer.end_token_id, writer.add_eos_token_id),
        (pad, writer.add_pad_token_id),
    ):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(bool(carried.get("tokenizer.ggml.add_bos_token", False)))
    if "tokenizer.ggml.add_space_prefix" in carried:
        writer.add_add_space_prefix(bool(carried["tokenizer.ggml.add_space_prefix"]))
    template = getattr(tokenizer, "chat_template", None)
    if template:
        writer.add_chat_template(template)
