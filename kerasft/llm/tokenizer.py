"""The byte-level BPE tokenizer of a GGUF file, as a KerasHub tokenizer.

GGUF files of GPT-2-style vocabularies (``tokenizer.ggml.model = "gpt2"``: Llama 3,
SmolLM, StarCoder, Qwen...) carry the tokens, the merge rules, the special tokens and the
name of the pre-tokenizer (``tokenizer.ggml.pre``) that cuts text into words before the
merges run. :class:`GGUFTokenizer` is KerasHub's ``BytePairTokenizer`` with those: the
pre-tokenizer named by the file instead of Llama 3's (SmolLM splits digits apart and
uses GPT-2's word pattern), the special tokens kept whole, and the chat template
carried in its config, so that a saved model or preset renders prompts as the
original does (see :mod:`kerasft.llm.chat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras_hub.src.models.llama.llama_backbone import LlamaBackbone
from keras_hub.src.tokenizers.byte_pair_tokenizer import SPLIT_PATTERN_TOKENIZERS, BytePairTokenizer

from kerasft import _keras_compat as compat

__all__ = ["GGUFTokenizer", "PRE_TOKENIZERS"]

# GPT-2's word pattern, as Hugging Face's ByteLevel pre-tokenizer applies it.
_GPT2 = "gpt2"
_DIGITS_THEN_GPT2 = "digits+gpt2"
_LLAMA3 = "llama3"
# llama.cpp's names (``tokenizer.ggml.pre``) -> how the text is cut into words.
PRE_TOKENIZERS: dict[str, str] = {
    "default": _GPT2,
    "gpt2": _GPT2,
    "gpt-2": _GPT2,
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "llama-bpe": _LLAMA3,
    "llama3": _LLAMA3,
}


def _hf_pre_tokenizer(kind: str) -> Any:
    """The Hugging Face ``tokenizers`` pre-tokenizer that cuts text as ``kind`` says."""
    from tokenizers import Regex, pre_tokenizers

    if kind == _LLAMA3:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN_TOKENIZERS), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _unsplittable_order(tokens: Sequence[str | None], chat_template: str | None) -> list[str]:
    """Special tokens, those of the chat template first, then the end and start tokens.

    KerasHub's TensorFlow path stands each special token in for a placeholder numbered
    in this order, and placeholder 1 is a prefix of placeholders 10-19, which come back
    garbled: the tokens that text actually contains must come among the first ten.
    """
    unique = list(dict.fromkeys(t for t in tokens if t))
    template = chat_template or ""
    in_template = sorted((t for t in unique if t in template), key=template.index)
    return list(dict.fromkeys([*in_template, *unique]))


@keras.saving.register_keras_serializable(package="kerasft")
class GGUFTokenizer(BytePairTokenizer):
    """A byte-level BPE tokenizer built from a GGUF file's vocabulary and merges.

    Eager calls run Hugging Face ``tokenizers`` with the file's pre-tokenizer; inside
    ``tf.data`` KerasHub's TensorFlow path runs (GPT-2's pattern; it agrees with the
    digit-splitting pre-tokenizers for vocabularies without multi-digit tokens, as
    SmolLM's). Special tokens (the file's control and user-defined tokens) are never
    split and are stripped from generated text; on the TensorFlow path only the first
    ten of them are (those of the chat template and the end token come first).

    Example:

    ```python
    causal_lm = kerasft.llm.load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = causal_lm.preprocessor.tokenizer
    tokenizer("Hello world")  # [19556, 905]
    ```

    Args:
        vocabulary: ``{token: id}``. Defaults to `None` (set later, as KerasHub does
            when loading assets).
        merges: merge rules, ``"a b"`` strings, highest priority first. Defaults to `None`.
        start_token: the beginning-of-sequence token, or `None`. Defaults to `None`.
        end_token: the end-of-sequence token (generation stops there). Defaults to `None`.
        pad_token: the padding token; `None` uses ``end_token``. Defaults to `None`.
        special_tokens: further tokens kept whole and stripped from generated text
            (``"<|im_start|>"``...). Defaults to `()`.
        pre_tokenizer: how text is cut into words before merging, by llama.cpp's name:
            one of :data:`PRE_TOKENIZERS`. Defaults to `"gpt2"`.
        chat_template: the Jinja chat template, or `None`. Defaults to `None`.
        gguf_metadata: what the source GGUF file said that Keras does not model (its
            name, license, context length, whether it adds a start token), written back
            by :func:`kerasft.llm.export_gguf`. Defaults to `None`.
        **kwargs: further ``BytePairTokenizer`` arguments (``name``, ``dtype``).

    Raises:
        ValueError: an unknown ``pre_tokenizer``.
    """

    backbone_cls = LlamaBackbone

    def __init__(
        self,
        vocabulary: dict[str, int] | str | None = None,
        merges: Sequence[str] | str | None = None,
        *,
        start_token: str | None = None,
        end_token: str | None = None,
        pad_token: str | None = None,
        special_tokens: Sequence[str] = (),
        pre_tokenizer: str = "gpt2",
        chat_template: str | None = None,
        gguf_metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if pre_tokenizer not in PRE_TOKENIZERS:
            raise ValueError(
                f"Argument `pre_tokenizer` must be one of {sorted(PRE_TOKENIZERS)} (llama.cpp's "
                f"`tokenizer.ggml.pre` names). Received: pre_tokenizer={pre_tokenizer!r}"
            )
        self.pre_tokenizer = pre_tokenizer
        self.chat_template = chat_template
        self.gguf_metadata = dict(gguf_metadata or {})
        self.pad_token = pad_token if pad_token is not None else end_token
        self.extra_special_tokens = [t for t in special_tokens if t not in (start_token, end_token)]
        for token, attr in ((start_token, "start_token"), (end_token, "end_token")):
            if token is not None:
                self._add_special_token(token, attr)
            else:
                setattr(self, attr, None)
                setattr(self, f"{attr}_id", None)
        for i, token in enumerate(self.extra_special_tokens):
            self._add_special_token(token, f"special_token_{i:03d}")
        kwargs.pop("unsplittable_tokens", None)  # follows from the special tokens
        self.pad_token_id = None
        unsplittable = _unsplittable_order(
            [start_token, end_token, *self.extra_special_tokens], chat_template
        )
        super().__init__(
            vocabulary=vocabulary, merges=merges, unsplittable_tokens=unsplittable, **kwargs
        )

    def _update_special_token_ids(self) -> None:
        compat.parent_hook(GGUFTokenizer, self, "_update_special_token_ids")()
        if self.vocabulary is not None and self.pad_token is not None:
            self.pad_token_id = self.token_to_id(self.pad_token)

    def _set_vocabulary_and_merges_tokenizers(self, vocabulary, merges) -> None:
        compat.parent_hook(GGUFTokenizer, self, "_set_vocabulary_and_merges_tokenizers")(
            vocabulary, merges
        )
        self._tokenizer.pre_tokenizer = _hf_pre_tokenizer(PRE_TOKENIZERS[self.pre_tokenizer])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("unsplittable_tokens", None)
        config.update(
            {
                "start_token": self.start_token,
                "end_token": self.end_token,
                "pad_token": self.pad_token,
                "special_tokens": list(self.extra_special_tokens),
                "pre_tokenizer": self.pre_tokenizer,
                "chat_template": self.chat_template,
                "gguf_metadata": dict(self.gguf_metadata),
            }
        )
        return config
