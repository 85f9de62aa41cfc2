"""Chat templates: a conversation rendered as the model saw conversations in training.

Instruct models learn a format (SmolLM's ``<|im_start|>user\\n...<|im_end|>``, Llama 3's
header tokens...), and each GGUF file carries its own as a Jinja template
(``tokenizer.chat_template``). :func:`render_chat` renders one the way Hugging Face
``transformers`` does (a sandboxed Jinja environment with ``trim_blocks`` and
``lstrip_blocks``, ``raise_exception`` and the special tokens in scope), and
:func:`assistant_spans` cuts a rendered conversation into the pieces the model reads
and the assistant turns it should learn to write, for supervised fine-tuning.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "render_chat",
    "apply_chat_template",
    "assistant_spans",
    "chat_template_of",
    "check_messages",
]

_ROLES = ("system", "user", "assistant", "tool")


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


def check_messages(messages: Any, argument: str = "messages") -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or a ``ValueError`` saying why."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            f"Argument `{argument}` must be a non-empty list of {{'role': ..., 'content': ...}} "
            f"dicts. Received: {argument}={messages!r:.200}"
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(
                f"Argument `{argument}`: message {i} must be a dict with 'role' and 'content'. "
                f"Received: {message!r:.200}"
            )
        if message["role"] not in _ROLES or not isinstance(message["content"], str):
            raise ValueError(
                f"Argument `{argument}`: message {i} must have a role in {list(_ROLES)} and string "
                f"content. Received: role={message['role']!r}, content of type "
                f"{type(message['content']).__name__}"
            )
        out.append(dict(message))
    return out


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
    **context: Any,
) -> str:
    """Render ``messages`` with a Jinja chat template.

    Example:

    >>> template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\\n{% endfor %}"
    >>> render_chat(template, [{"role": "user", "content": "Hi"}])
    '<user>Hi\\n'

    Args:
        template: the Jinja template (a GGUF file's ``tokenizer.chat_template``).
        messages: ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt: end with the opening of an assistant turn, for
            generation. Defaults to `False`.
        **context: further template variables (``bos_token``, ``eos_token``, ``tools``...).

    Returns:
        The rendered text.

    Raises:
        ValueError: malformed messages, or an error the template raised.
    """
    from jinja2.exceptions import TemplateError

    messages = check_messages(messages)
    try:
        return _compile(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **context
        )
    except TemplateError as e:
        raise ValueError(f"The chat template refused these messages: {e}") from e


def chat_template_of(model_or_tokenizer: Any) -> str | None:
    """The chat template carried by a causal LM's tokenizer (or a tokenizer), if any."""
    tokenizer = (
        getattr(getattr(model_or_tokenizer, "preprocessor", None), "tokenizer", None)
        or model_or_tokenizer
    )
    return getattr(tokenizer, "chat_template", None) or None


def _context(tokenizer: Any) -> dict[str, Any]:
    return {
        "bos_token": getattr(tokenizer, "start_token", None) or "",
        "eos_token": getattr(tokenizer, "end_token", None) or "",
    }


def apply_chat_template(
    causal_lm: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with the chat template of ``causal_lm``'s tokenizer.

    Example:

    ```python
    prompt = kerasft.llm.apply_chat_template(causal_lm, [{"role": "user", "content": "Hi!"}])
    causal_lm.generate(prompt, max_length=64)
    ```

    Args:
        causal_lm: a KerasHub causal LM whose tokenizer has a ``chat_template`` (one read
            by :func:`kerasft.llm.load_gguf`), or such a tokenizer.
        messages: ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt: end with the opening of an assistant turn. Defaults to `True`.

    Returns:
        The prompt text.

    Raises:
        ValueError: the tokenizer has no chat template, or malformed messages.
    """
    template = chat_template_of(causal_lm)
    if template is None:
        raise ValueError(
            f"Argument `causal_lm` ({type(causal_lm).__name__}) has no chat template on its "
            "tokenizer. HINT: models read with kerasft.llm.load_gguf carry the file's template."
        )
    tokenizer = getattr(getattr(causal_lm, "preprocessor", None), "tokenizer", None) or causal_lm
    return render_chat(
        template, messages, add_generation_prompt=add_generation_prompt, **_context(tokenizer)
    )


def assistant_spans(
    template: str,
    messages: Sequence[Mapping[str, str]],
    end_token: str | None = None,
    **context: Any,
) -> list[tuple[str, bool]]:
    """Cut a rendered conversation into ``(text, is_assistant)`` pieces, in order.

    Each assistant turn is what the template adds between the conversation before it
    (rendered with the generation prompt) and the conversation up to and including it:
    the reply and the template's end-of-turn marker. Text after the last ``end_token``
    of a turn (the template's line break) is given to the next piece, as the model
    never writes it. Joined, the pieces are the rendered conversation.

    Example:

    >>> t = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}</s>\\n{% endfor %}"
    >>> t += "{% if add_generation_prompt %}[assistant]{% endif %}"
    >>> msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    >>> assistant_spans(t, msgs, end_token="</s>")
    [('[user]2+2?</s>\\n[assistant]', False), ('4</s>', True), ('\\n', False)]

    Raises:
        ValueError: no assistant message, or a template that renders earlier turns
            differently once later ones follow (the pieces would not line up).
    """
    messages = check_messages(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            "Argument `messages` must hold at least one assistant message to learn from. "
            f"Received roles: {[m['role'] for m in messages]}"
        )
    full = render_chat(template, messages, **context)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = (
            render_chat(template, messages[:i], add_generation_prompt=True, **context) if i else ""
        )
        upto = render_chat(template, messages[: i + 1], **context)
        if not full.startswith(upto) or not upto.startswith(before) or len(before) < done:
            raise ValueError(
                "The chat template renders earlier turns differently once later turns follow, so "
                f"the assistant turn {i} cannot be located in the rendered conversation. HINT: "
                "pass the conversation as (prompt, completion) pairs instead."
            )
        reply = upto[len(before) :]
        if end_token and end_token in reply:
            cut = reply.rindex(end_token) + len(end_token)
            reply = reply[:cut]
        pieces.append((before[done:], False))
        pieces.append((reply, True))
        done = len(before) + len(reply)
    pieces.append((full[done:], False))
    return [(text, flag) for text, flag in pieces if text]
