"""Supervised fine-tuning data: examples to token ids with loss masks, packed into rows.

Three kinds of data, each example turned into token ids and a mask of the tokens the
loss is taken on:

- ``(prompt, completion)`` pairs: rendered as a user turn and an assistant turn with
  the model's chat template when it has one (else ``prompt + completion`` and the end
  token); the loss covers the completion and the end of its turn;
- conversations, lists of ``{"role", "content"}`` messages: rendered with the chat
  template; the loss covers every assistant turn (:func:`kerasft.llm.chat.assistant_spans`);
- plain text: the loss covers every token (long texts are cut into several examples).

``loss_on="all"`` takes the loss on every token instead, as KerasHub's
``CausalLMPreprocessor`` does. :func:`pack` then lays the examples end to end in rows of
``sequence_length`` positions (first-fit decreasing, so rows are nearly full) with a
segment id per example: the training model lets a token attend only to earlier tokens
of its own example, so packing changes no example's loss. :func:`pad` puts one example
per row instead.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kerasft.llm import chat

__all__ = [
    "Example",
    "PackedData",
    "LOSS_ON",
    "normalize_data",
    "tokenize_examples",
    "pack",
    "pad",
    "auto_sequence_length",
]

LOSS_ON = ("completion", "all")
_KINDS = ("pairs", "messages", "text")


@dataclasses.dataclass(frozen=True)
class Example:
    """One example as token ids, and which of them the loss is taken on."""

    token_ids: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclasses.dataclass(frozen=True)
class PackedData:
    """Training rows: inputs, next-token targets, loss weights and segment ids, ``(rows, length)``.

    ``segment_ids`` numbers the examples of a row from 1 (0 is padding); a position's
    target is the next token of the same example.
    """

    token_ids: np.ndarray
    segment_ids: np.ndarray
    target_ids: np.ndarray
    loss_weights: np.ndarray
    examples: int

    @property
    def tokens(self) -> int:
        """Positions holding an example's token (not padding)."""
        return int((self.segment_ids > 0).sum())

    @property
    def target_tokens(self) -> int:
        """Positions the loss is taken on."""
        return int(self.loss_weights.sum())

    @property
    def fill(self) -> float:
        """Share of positions holding a token (1.0: no padding)."""
        return self.tokens / max(1, self.segment_ids.size)

    def inputs(self) -> dict[str, np.ndarray]:
        return {"token_ids": self.token_ids, "segment_ids": self.segment_ids}


def _is_text_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and all(isinstance(v, str) for v in value)
    )


def _columns(data: Any) -> dict[str, list] | None:
    """A dict or DataFrame of columns as ``{name: list}``, else ``None``."""
    if hasattr(data, "columns") and hasattr(data, "to_dict"):  # pandas
        return {str(c): list(data[c]) for c in data.columns}
    if isinstance(data, Mapping):
        return {str(k): list(v) for k, v in data.items()}
    return None


def normalize_data(data: Any, argument: str = "data") -> tuple[str, list[Any]]:
    """Sort ``data`` into ``("pairs", [(p, c)])``, ``("messages", [[...]])`` or ``("text", [str])``.

    Accepted: a list of ``(prompt, completion)`` tuples; a tuple ``(prompts, completions)``
    of two lists; a dict or DataFrame with ``prompt``/``completion``, ``messages`` or
    ``text`` columns; a list of such row dicts; a list of conversations; a list of strings.

    Raises:
        ValueError: anything else, or empty data, with what was received.
    """
    columns = _columns(data)
    if (
        columns is None
        and isinstance(data, Sequence)
        and not isinstance(data, (str, bytes))
        and data
        and all(isinstance(row, Mapping) and not {"role", "content"} <= set(row) for row in data)
    ):
        keys = set(data[0])
        columns = {k: [row.get(k) for row in data] for k in keys}
    if columns is not None:
        if "prompt" in columns and "completion" in columns:
            return _pairs(list(zip(columns["prompt"], columns["completion"])), argument)
        if "messages" in columns:
            return "messages", [chat.check_messages(m, argument) for m in columns["messages"]]
        if "text" in columns:
            return _texts(columns["text"], argument)
        raise ValueError(
            f"Argument `{argument}` has columns {sorted(columns)}; it needs 'prompt' and "
            "'completion', 'messages', or 'text'."
        )
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and _is_text_list(data[0])
        and _is_text_list(data[1])
    ):
        if len(data[0]) != len(data[1]):
            raise ValueError(
                f"Argument `{argument}` as (prompts, completions) needs lists of the same length. "
                f"Received: {len(data[0])} prompts and {len(data[1])} completions."
            )
        return _pairs(list(zip(data[0], data[1])), argument)
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence) or len(data) == 0:
        raise ValueError(
            f"Argument `{argument}` must be a non-empty list of (prompt, completion) pairs, of "
            "conversations (lists of {'role', 'content'} messages) or of strings, or a "
            f"dict/DataFrame of such columns. Received: {type(data).__name__} {data!r:.120}"
        )
    first = data[0]
    if isinstance(first, str):
        return _texts(data, argument)
    if (
        isinstance(first, (tuple, list))
        and len(first) == 2
        and all(isinstance(v, str) for v in first)
    ):
        return _pairs(data, argument)
    if isinstance(first, Sequence) and first and isinstance(first[0], Mapping):
        return "messages", [chat.check_messages(m, argument) for m in data]
    raise ValueError(
        f"Argument `{argument}`: cannot tell what its items are. Each must be a (prompt, "
        "completion) pair of strings, a list of {'role', 'content'} messages or a string. "
        f"Received first item: {first!r:.120}"
    )


def _pairs(rows: Sequence[Any], argument: str) -> tuple[str, list[tuple[str, str]]]:
    for i, row in enumerate(rows):
        if not (
            isinstance(row, (tuple, list))
            and len(row) == 2
            and all(isinstance(v, str) for v in row)
        ):
            raise ValueError(
                f"Argument `{argument}`: item {i} must be a (prompt, completion) pair of strings. "
                f"Received: {row!r:.120}"
            )
    return "pairs", [(str(p), str(c)) for p, c in rows]


def _texts(rows: Sequence[Any], argument: str) -> tuple[str, list[str]]:
    for i, row in enumerate(rows):
        if not isinstance(row, str):
            raise ValueError(
                f"Argument `{argument}`: item {i} must be a string. Received: {row!r:.120}"
            )
    return "text", list(rows)


def _encode(tokenizer: Any, pieces: Sequence[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Tokenize each piece apart (so that the mask lines up exactly) and join them."""
    ids: list[int] = []
    mask: list[bool] = []
    texts = [text for text, _ in pieces]
    encoded = tokenizer(texts) if texts else []
    for (_, flag), piece in zip(pieces, encoded):
        piece = [int(t) for t in np.asarray(piece).reshape(-1)]
        ids += piece
        mask += [flag] * len(piece)
    return ids, mask


def _pieces(kind: str, item: Any, tokenizer: Any, template: str | None) -> list[tuple[str, bool]]:
    end = getattr(tokenizer, "end_token", None)
    if kind == "text":
        return [(item, True)]
    if template is None:
        if kind == "messages":
            raise ValueError(
                "Conversations need a chat template, and the model's tokenizer has none. HINT: "
                "pass (prompt, completion) pairs, or a model read with kerasft.llm.load_gguf."
            )
        prompt, completion = item
        return [(prompt, False), (completion + (end or ""), True)]
    context = {"bos_token": getattr(tokenizer, "start_token", None) or "", "eos_token": end or ""}
    messages = (
        item
        if kind == "messages"
        else [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}]
    )
    return chat.assistant_spans(template, messages, end_token=end, **context)


def tokenize_examples(
    data: Any,
    tokenizer: Any,
    *,
    chat_template: str | None = None,
    loss_on: str = "completion",
    max_length: int | None = None,
) -> tuple[str, list[Example]]:
    """Token ids and loss masks of every example of ``data`` (see :func:`normalize_data`).

    Args:
        data: the training data.
        tokenizer: the model's tokenizer.
        chat_template: the template for pairs and conversations, or `None` (pairs are
            then ``prompt + completion + end token``). Defaults to `None`.
        loss_on: ``"completion"`` (completions, assistant turns; every token of plain
            text) or ``"all"``. Defaults to `"completion"`.
        max_length: longest example in tokens: plain text is cut into pieces of this
            length; a longer pair or conversation loses its beginning (with a warning).
            Defaults to `None` (no limit).

    Returns:
        ``(kind, examples)``: ``"pairs"``, ``"messages"`` or ``"text"``, and the examples.

    Raises:
        ValueError: bad ``loss_on``, data as :func:`normalize_data` says, or an example
            whose loss mask ends up empty.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(
            f"Argument `loss_on` must be one of {list(LOSS_ON)}. Received: loss_on={loss_on!r}"
        )
    kind, items = normalize_data(data)
    examples: list[Example] = []
    cut = 0
    for item in items:
        ids, mask = _encode(tokenizer, _pieces(kind, item, tokenizer, chat_template))
        if loss_on == "all":
            mask = [True] * len(ids)
        if max_length is not None and len(ids) > max_length:
            if kind == "text":
                for start in range(0, len(ids) - 1, max_length):
                    chunk = ids[start : start + max_length]
                    if len(chunk) > 1:
                        examples.append(
                            Example(np.asarray(chunk, np.int32), np.ones(len(chunk), bool))
                        )
                continue
            ids, mask, cut = ids[-max_length:], mask[-max_length:], cut + 1
        if len(ids) < 2 or not any(mask[1:]):
            raise ValueError(
                f"Example {len(examples)} of `data` has no token to learn from after tokenization "
                f"({len(ids)} tokens). HINT: check for empty completions, or raise "
                "`sequence_length`."
            )
        examples.append(Example(np.asarray(ids, np.int32), np.asarray(mask, bool)))
    if cut:
        warnings.warn(
            f"{cut} of {len(items)} examples were longer than {max_length} tokens and lost their "
            "beginning. HINT: raise `sequence_length`.",
            stacklevel=3,
        )
    return kind, examples


def auto_sequence_length(
    examples: Sequence[Example], *, packing: bool, limit: int | None = None
) -> int:
    """Row length: the longest example, rounded up to a multiple of 64 (>= 256 when packing)."""
    longest = max(len(e) for e in examples) - 1
    length = -(-longest // 64) * 64
    if packing:
        length = max(length, 256)
    return min(length, limit) if limit else length


def _row_arrays(rows: list[list[Example]], length: int, pad_id: int) -> PackedData:
    n = len(rows)
    token_ids = np.full((n, length), pad_id, np.int32)
    target_ids = np.full((n, length), pad_id, np.int32)
    segment_ids = np.zeros((n, length), np.int32)
    weights = np.zeros((n, length), np.float32)
    for r, row in enumerate(rows):
        at = 0
        for s, e in enumerate(row, start=1):
            k = len(e) - 1
            token_ids[r, at : at + k] = e.token_ids[:-1]
            target_ids[r, at : at + k] = e.token_ids[1:]
            weights[r, at : at + k] = e.loss_mask[1:]
            segment_ids[r, at : at + k] = s
            at += k
    return PackedData(token_ids, segment_ids, target_ids, weights, sum(len(r) for r in rows))


def pack(
    examples: Sequence[Example], sequence_length: int, *, pad_id: int = 0, seed: int = 0
) -> PackedData:
    """Lay examples end to end in rows of ``sequence_length`` positions (first-fit decreasing).

    An example of ``n`` tokens takes ``n - 1`` positions (each token but the last
    predicts the next); rows are shuffled with ``seed`` so that a batch mixes lengths.

    Example:

    >>> e = [Example(np.arange(5, dtype=np.int32), np.ones(5, bool)) for _ in range(3)]
    >>> packed = pack(e, 8)
    >>> packed.segment_ids.tolist()
    [[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]]

    Raises:
        ValueError: an example longer than ``sequence_length + 1`` tokens.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    rows: list[list[Example]] = []
    free: list[int] = []
    for i in order:
        need = len(examples[i]) - 1
        if need > sequence_length:
            raise ValueError(
                f"Example {i} has {need + 1} tokens, more than `sequence_length` + 1 = "
                f"{sequence_length + 1}."
            )
        slot = next((r for r, space in enumerate(free) if space >= need), None)
        if slot is None:
            rows.append([])
            free.append(sequence_length)
            slot = len(rows) - 1
        rows[slot].append(examples[i])
        free[slot] -= need
    np.random.default_rng(seed).shuffle(rows)
    return _row_arrays(rows, sequence_length, pad_id)


def pad(examples: Sequence[Example], sequence_length: int, *, pad_id: int = 0) -> PackedData:
    """One example per row, padded to ``sequence_length`` positions.

    Raises:
        ValueError: an example longer than ``sequence_length + 1`` tokens.
    """
    for i, e in enumerate(examples):
        if len(e) - 1 > sequence_length:
            raise ValueError(
                f"Example {i} has {len(e)} tokens, more than `sequence_length` + 1 = "
                f"{sequence_length + 1}."
            )
    return _row_arrays([[e] for e in examples], sequence_length, pad_id)
