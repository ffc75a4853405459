"""Chat messages -> one prompt: the model's own chat template, or a documented fallback.

The built-in models were trained on plain text and carry no chat template. For them (and
any model without one) the fallback is the testbed's question-answer form, so a single
question reaches a built-in model exactly as it saw questions in training::

    {system or developer content}\\n        (each such message, in order)
    Q: {user content}\\n
    A: {assistant content}\\n
    A:                                    (the model writes from here)

A reply ends at the first line break (the fallback adds the stop string ``"\\n"``), because
in this form a turn is one line. Line breaks inside a message are kept as they are.

Example:
    >>> render_fallback([{"role": "user", "content": "What is 2+3?"}])
    'Q: What is 2+3?\\nA:'
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.models.language_model import EncodedText

#: the stop strings the fallback format adds.
FALLBACK_STOPS = ("\n",)
_PREFIX = {"user": "Q: ", "assistant": "A: "}


@dataclass
class ChatPrompt:
    """A rendered chat prompt.

    Attributes:
        text: the prompt text; for a template, an :class:`EncodedText` carrying the ids the
            model reads (turn markers as their control tokens, message content as text).
        format: ``"template"`` (the model's chat template) or ``"qa-fallback"``.
        stops: stop strings the format needs (added to the request's own).
    """

    text: str
    format: str
    stops: list[str] = field(default_factory=list)


def render_fallback(messages: list[dict[str, str]]) -> str:
    """The fallback prompt for ``messages`` (see the module docstring).

    Args:
        messages: ``[{"role": ..., "content": ...}]`` with roles system, developer, user,
            assistant.

    Example:
        >>> render_fallback([{"role": "system", "content": "Be brief."},
        ...                  {"role": "user", "content": "7+2="},
        ...                  {"role": "assistant", "content": "9"},
        ...                  {"role": "user", "content": "8+1="}])
        'Be brief.\\nQ: 7+2=\\nA: 9\\nQ: 8+1=\\nA:'
    """
    lines = [_PREFIX.get(m["role"], "") + m["content"] for m in messages]
    return "\n".join([*lines, "A:"])


def _specials_in(tokenizer: Any, text: str) -> list[str]:
    """The added (control) token strings that occur in ``text``."""
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    return [t for t in added if t and t in text]


def _encode_parsed(tokenizer: Any, text: str) -> list[int]:
    """Ids of template text, its special-token strings read as the control tokens."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=False,
                          verbose=False)["input_ids"])


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of message content, special-token strings in it read as plain text."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                          verbose=False)["input_ids"])


def encode_template(tokenizer: Any, messages: list[dict[str, str]]) -> EncodedText:
    """The chat template's rendering of ``messages`` with the ids the model reads for it.

    The template's own markers (``<|im_start|>``, ``<|im_end|>``, a ``<bos>``) become their
    control tokens, as transformers' ``apply_chat_template(tokenize=True)`` makes them. What a
    user wrote stays text even when it spells a control token: content holding such a string
    is rendered with a placeholder in its place, and encoded on its own, as text.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        messages: role/content dicts.

    Example:
        >>> from tokenwise.models import load
        >>> tok = load("smollm2-135m").tokenizer  # doctest: +SKIP
        >>> msgs = [{"role": "user", "content": "a <|im_end|>"}]
        >>> p = encode_template(tok, msgs)  # doctest: +SKIP
        >>> p.ids.count(tok.convert_tokens_to_ids("<|im_end|>"))  # doctest: +SKIP
        1
    """
    def apply(msgs: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    text = apply(messages)
    risky = [i for i, m in enumerate(messages) if _specials_in(tokenizer, m["content"])]
    if not risky:
        return EncodedText(text, _encode_parsed(tokenizer, text))
    # A placeholder no template changes and no tokenizer splits across content boundaries.
    marks = {i: f"TWCONTENT{secrets.token_hex(8)}X" for i in risky}
    shown = apply([{**m, "content": marks[i]} if i in marks else m
                   for i, m in enumerate(messages)])
    ids: list[int] = []
    rest = shown
    for i in risky:
        before, found, rest = rest.partition(marks[i])
        if not found or marks[i] in rest:
            raise TokenwiseError(
                f"message {i} holds the control token string "
                f"{_specials_in(tokenizer, messages[i]['content'])[0]!r}, and this chat "
                "template changes message content, so it cannot be kept as text; remove it"
            )
        ids += _encode_parsed(tokenizer, before) + _encode_text(tokenizer, messages[i]["content"])
    ids += _encode_parsed(tokenizer, rest)
    return EncodedText(text, ids)


def render(tokenizer: Any, messages: list[dict[str, str]]) -> ChatPrompt:
    """Render ``messages`` with the tokenizer's chat template if it has one, else the fallback.

    A template's prompt is an :class:`EncodedText` (see :func:`encode_template`): the
    decode loop reads its ids as they are, start token and turn markers included, and the
    reply ends on the model's end-of-turn token (its EOS, e.g. SmolLM2's ``<|im_end|>``).

    Args:
        tokenizer: a Hugging Face tokenizer.
        messages: role/content dicts.

    Example:
        >>> from tokenwise.models import load
        >>> p = render(load("tw-small").tokenizer, [{"role": "user", "content": "hi"}])
        >>> p.format, p.stops
        ('qa-fallback', ['\\n'])
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return ChatPrompt(render_fallback(messages), "qa-fallback", list(FALLBACK_STOPS))
    return ChatPrompt(encode_template(tokenizer, messages), "template", [])
