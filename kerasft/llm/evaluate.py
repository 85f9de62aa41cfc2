"""Evaluating a causal LM: held-out loss and perplexity, and accuracy by generating answers.

:func:`perplexity` scores text (or the completions of pairs, or assistant turns) token
by token; :func:`generate` decodes greedily with KerasHub's key/value cache, batching
prompts of equal token length so that no row is padded (KerasHub's cached decoding
takes no padding mask); :func:`answer_accuracy` generates an answer to each prompt and
compares it with the expected completion, reading the first of the ``choices`` it
names when choices are given (``"fresh"``/``"rotten"``), else the whole answer.
:func:`evaluate_causal_lm` gives both figures in one :class:`GenerationReport`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from kerasft.llm import chat, sft

__all__ = [
    "GenerationReport",
    "perplexity",
    "generate",
    "parse_answer",
    "answer_accuracy",
    "evaluate_causal_lm",
]


@dataclasses.dataclass
class GenerationReport:
    """What :func:`evaluate_causal_lm` measured.

    Attributes:
        loss: mean cross-entropy per scored token (the completions of pairs, assistant
            turns, every token of plain text).
        perplexity: ``exp(loss)``.
        tokens: the number of scored tokens.
        accuracy: share of prompts whose generated answer matches the completion, or
            `None` for plain text.
        unparsed: share of answers naming none of the choices.
        predictions: the parsed answers (``None`` where none was found).
        answers: the generated texts.
    """

    loss: float
    perplexity: float
    tokens: int
    accuracy: float | None = None
    unparsed: float | None = None
    predictions: list[str | None] | None = None
    answers: list[str] | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("predictions", "answers")
        }

    def __str__(self) -> str:
        text = f"loss {self.loss:.4f}, perplexity {self.perplexity:.2f} on {self.tokens} tokens"
        if self.accuracy is not None:
            text += f"; answer accuracy {self.accuracy:.4f} ({self.unparsed:.1%} unparsed)"
        return text


def _template(causal_lm: Any, chat_template: Any) -> str | None:
    if chat_template == "auto":
        return chat.chat_template_of(causal_lm)
    return chat_template


def _tokenizer(causal_lm: Any) -> Any:
    tokenizer = getattr(getattr(causal_lm, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"Argument `causal_lm` ({type(causal_lm).__name__}) has no preprocessor with a "
            "tokenizer; evaluation needs one to read text."
        )
    return tokenizer


def _loss_function(causal_lm: Any) -> Any:
    """A compiled ``(token_ids, segment_ids, targets, weights) -> (loss sum, weight sum)``."""
    import tensorflow as tf

    from kerasft.llm.trainer import SFTModel

    model = SFTModel(causal_lm)
    backbone = causal_lm.backbone

    @tf.function(reduce_retracing=True)
    def sums(token_ids, segment_ids, targets, weights):
        import keras

        hidden = model({"token_ids": token_ids, "segment_ids": segment_ids}, training=False)
        flat = tf.reshape(weights, [-1])
        where = tf.where(flat > 0)[:, 0]
        states = tf.gather(tf.reshape(hidden, [-1, tf.shape(hidden)[-1]]), where)
        logits = tf.cast(backbone.token_embedding(states, reverse=True), "float32")
        losses = keras.losses.sparse_categorical_crossentropy(
            tf.gather(tf.reshape(targets, [-1]), where), logits, from_logits=True
        )
        picked = tf.gather(flat, where)
        return tf.reduce_sum(losses * picked), tf.reduce_sum(picked)

    return sums


def perplexity(
    causal_lm: Any,
    data: Any,
    *,
    sequence_length: int = 256,
    batch_size: int = 8,
    chat_template: Any = "auto",
    loss_on: str = "completion",
) -> tuple[float, float, int]:
    """Mean cross-entropy per token, perplexity and token count of ``causal_lm`` on ``data``.

    Plain text is cut into pieces of ``sequence_length + 1`` tokens, each scored on its
    own; pairs and conversations are scored on their completions / assistant turns
    (``loss_on="all"``: every token). Examples are packed (attention stays within each).

    Example:

    ```python
    loss, ppl, tokens = kerasft.llm.perplexity(causal_lm, reviews)
    ```

    Args:
        causal_lm: a KerasHub causal LM with its preprocessor.
        data: text, pairs or conversations (see :func:`kerasft.llm.sft.normalize_data`).
        sequence_length: row length. Defaults to `256`.
        batch_size: rows per batch. Defaults to `8`.
        chat_template: the template for pairs and conversations; ``"auto"`` takes the
            model's, `None` renders pairs as plain ``prompt + completion``. Defaults to `"auto"`.
        loss_on: ``"completion"`` or ``"all"``. Defaults to `"completion"`.

    Returns:
        ``(loss, perplexity, tokens)``.
    """
    tokenizer = _tokenizer(causal_lm)
    _, examples = sft.tokenize_examples(
        data,
        tokenizer,
        chat_template=_template(causal_lm, chat_template),
        loss_on=loss_on,
        max_length=sequence_length + 1,
    )
    packed = sft.pack(examples, sequence_length, pad_id=int(tokenizer.pad_token_id or 0))
    return packed_loss(causal_lm, packed, batch_size=batch_size)


def packed_loss(
    causal_lm: Any, packed: sft.PackedData, *, batch_size: int = 8
) -> tuple[float, float, int]:
    """``(loss, perplexity, tokens)`` of ``causal_lm`` on already packed rows."""
    sums = _loss_function(causal_lm)
    total, count = 0.0, 0.0
    for start in range(0, len(packed.token_ids), batch_size):
        s = slice(start, start + batch_size)
        loss, n = sums(
            packed.token_ids[s], packed.segment_ids[s], packed.target_ids[s], packed.loss_weights[s]
        )
        total, count = total + float(loss), count + float(n)
    loss = total / max(count, 1.0)
    return loss, math.exp(min(loss, 80.0)), int(count)


def _step_function(causal_lm: Any) -> Any:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(token_ids, cache, index):
        logits, _, cache = causal_lm.call_with_cache(token_ids, cache, index)
        return tf.argmax(logits[:, -1, :], axis=-1, output_type=tf.int32), cache

    return step


def generate(
    causal_lm: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations of ``prompts``, rendered (:func:`kerasft.llm.apply_chat_template`).

    Prompts are grouped by token length (no padding, which KerasHub's cached decoding
    could not mask); decoding stops at the tokenizer's end token or after
    ``max_new_tokens``. Special tokens are left out of the returned text.

    Args:
        causal_lm: a KerasHub causal LM with ``call_with_cache`` and its preprocessor.
        prompts: the prompt texts.
        max_new_tokens: most tokens generated per prompt. Defaults to `16`.
        batch_size: prompts decoded together. Defaults to `16`.

    Returns:
        The generated texts, in the order of ``prompts``.

    Raises:
        ValueError: a non-positive ``max_new_tokens``, or a prompt of no tokens.
    """
    import keras

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(
            "Argument `max_new_tokens` must be a positive integer. Received: "
            f"max_new_tokens={max_new_tokens!r}"
        )
    tokenizer = _tokenizer(causal_lm)
    backbone = causal_lm.backbone
    encoded = (
        [[int(t) for t in np.asarray(ids).reshape(-1)] for ids in tokenizer(list(prompts))]
        if prompts
        else []
    )
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("Argument `prompts` holds a prompt of no tokens.")
    end = tokenizer.end_token_id
    special = set(int(i) for i in getattr(tokenizer, "special_token_ids", []) or [])
    step = _step_function(causal_lm)
    outputs: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    for length, members in sorted(by_length.items()):
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            ids = np.asarray([encoded[i] for i in rows], np.int32)
            cache = np.zeros(
                (
                    len(rows),
                    backbone.num_layers,
                    2,
                    length + max_new_tokens,
                    backbone.num_key_value_heads,
                    head_dim,
                ),
                keras.backend.standardize_dtype(causal_lm.compute_dtype),
            )
            token, cache = step(ids, cache, np.int32(0))
            done = np.zeros(len(rows), bool)
            for t in range(max_new_tokens):
                token_np = token.numpy()
                for r, i in enumerate(rows):
                    if not done[r]:
                        if end is not None and token_np[r] == end:
                            done[r] = True
                        else:
                            outputs[i].append(int(token_np[r]))
                if done.all() or t == max_new_tokens - 1:
                    break
                token, cache = step(token_np[:, None], cache, np.int32(length + t))
    texts = []
    for out in outputs:
        kept = [t for t in out if t not in special]
        texts.append(str(tokenizer.detokenize([kept])[0]) if kept else "")
    return texts


def parse_answer(text: str, choices: Sequence[str] | None = None) -> str | None:
    """The answer in a generated text: the first of ``choices`` it names, else the stripped text.

    A choice is named as a whole word, in any case.

    Example:

    >>> parse_answer("I'd say it is Fresh.", ["fresh", "rotten"])
    'fresh'
    >>> parse_answer("no idea", ["fresh", "rotten"]) is None
    True
    """
    if not choices:
        return text.strip()
    found = [
        (m.start(), c)
        for c in choices
        for m in [re.search(rf"\b{re.escape(c)}\b", text, re.IGNORECASE)]
        if m
    ]
    return min(found)[1] if found else None


def answer_accuracy(
    causal_lm: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    choices: Sequence[str] | None = None,
    chat_template: Any = "auto",
    max_new_tokens: int = 8,
    batch_size: int = 16,
) -> tuple[float, float, list[str | None], list[str]]:
    """Generate an answer to each prompt and compare it with the completion.

    Returns:
        ``(accuracy, unparsed share, parsed answers, generated texts)``.
    """
    kind, items = sft.normalize_data(pairs, "data")
    if kind != "pairs":
        raise ValueError(
            "Argument `data` must hold (prompt, completion) pairs to measure answers; it holds "
            f"{kind}."
        )
    template = _template(causal_lm, chat_template)
    tokenizer = _tokenizer(causal_lm)
    context = {
        "bos_token": getattr(tokenizer, "start_token", None) or "",
        "eos_token": getattr(tokenizer, "end_token", None) or "",
    }
    prompts = [
        chat.render_chat(
            template, [{"role": "user", "content": p}], add_generation_prompt=True, **context
        )
        if template
        else p
        for p, _ in items
    ]
    answers = generate(causal_lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    parsed = [parse_answer(a, choices) for a in answers]
    expected = [parse_answer(c, choices) or c.strip() for _, c in items]
    correct = [p is not None and p.lower() == e.lower() for p, e in zip(parsed, expected)]
    return float(np.mean(correct)), float(np.mean([p is None for p in parsed])), parsed, answers


def evaluate_causal_lm(
    causal_lm: Any,
    data: Any,
    *,
    choices: Sequence[str] | None = None,
    generate_answers: bool = True,
    chat_template: Any = "auto",
    sequence_length: int = 256,
    batch_size: int = 8,
    max_new_tokens: int = 8,
) -> GenerationReport:
    """Held-out loss and perplexity of ``causal_lm`` on ``data``, and answer accuracy for pairs.

    Example:

    ```python
    report = kerasft.llm.evaluate_causal_lm(causal_lm, test_pairs, choices=["fresh", "rotten"])
    report.accuracy, report.perplexity
    ```

    Args:
        causal_lm: a KerasHub causal LM with its preprocessor.
        data: pairs, conversations or text (see :func:`kerasft.llm.sft.normalize_data`).
        choices: the possible answers, for parsing generated text. Defaults to `None`
            (the whole answer must equal the completion, ignoring case and spaces).
        generate_answers: generate and score answers for pairs. Defaults to `True`.
        chat_template: ``"auto"`` (the model's), a template, or `None`. Defaults to `"auto"`.
        sequence_length: row length for the loss. Defaults to `256`.
        batch_size: rows (prompts) per batch. Defaults to `8`.
        max_new_tokens: most tokens generated per answer. Defaults to `8`.

    Returns:
        A :class:`GenerationReport`.
    """
    loss, ppl, tokens = perplexity(
        causal_lm,
        data,
        sequence_length=sequence_length,
        batch_size=batch_size,
        chat_template=chat_template,
    )
    report = GenerationReport(loss=loss, perplexity=ppl, tokens=tokens)
    kind, _ = sft.normalize_data(data)
    if kind == "pairs" and generate_answers:
        report.accuracy, report.unparsed, report.predictions, report.answers = answer_accuracy(
            causal_lm,
            data,
            choices=choices,
            chat_template=chat_template,
            max_new_tokens=max_new_tokens,
            batch_size=max(batch_size, 16),
        )
    return report
