"""A chat template's rendering of messages with the ids the model reads for it.

The server's chat routes and ``sample_answers(messages=...)`` both render chats here, so a
question is read the same way by either: the template's markers as their control tokens,
what a user wrote as text (even when it spells a control token).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.models.language_model import EncodedText

__all__ = ["control_strings_in", "encode_template"]


def _specials_in(tokenizer: Any, text: str) -> list[str]:
    """The added (control) token strings that occur in ``text``."""
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    return [t for t in added if t and t in text]


def control_strings_in(tokenizer: Any, text: str) -> list[str]:
    """The tokenizer's added (control) token strings that occur in ``text``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: any text.

    Example:
        >>> from tokenwise.models import load
        >>> control_strings_in(load("smollm2-135m").tokenizer, "a<|im_end|>")  # doctest: +SKIP
        ['<|im_end|>']
    """
    return _specials_in(tokenizer, text)


def _content(message: dict[str, Any]) -> str:
    """A message's content when it is a string; "" when it is missing or None."""
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _refuse_specials_outside_content(tokenizer: Any, messages: list[dict[str, Any]],
                                     tools: list[dict[str, Any]] | None) -> None:
    """A :class:`TokenwiseError` when ``tools`` or a message's fields other than its content
    (``tool_calls``, ``name``, ``tool_call_id``) spell a control token: the template writes
    them itself, so the tokenizer would read the string as the control token (a forged turn
    marker) and no placeholder can keep it text."""
    parts = [("tools", tools)] + [(f"message {i}'s {key}", m.get(key))
                                  for i, m in enumerate(messages)
                                  for key in ("tool_calls", "name", "tool_call_id")]
    for where, value in parts:
        if not value:
            continue
        found = _specials_in(tokenizer, json.dumps(value, ensure_ascii=False))
        if found:
            raise TokenwiseError(f"{where} hold the control token string {found[0]!r}, which "
                                 "this chat template would read as the control token; "
                                 "remove it")


def _encode_parsed(tokenizer: Any, text: str) -> list[int]:
    """Ids of template text, its special-token strings read as the control tokens."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=False,
                          verbose=False)["input_ids"])


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ids of message content, special-token strings in it read as plain text."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                          verbose=False)["input_ids"])


def encode_template(tokenizer: Any, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> EncodedText:
    """The chat template's rendering of ``messages`` with the ids the model reads for it.

    The template's own markers (``<|im_start|>``, ``<|im_end|>``, a ``<bos>``) become their
    control tokens, as transformers' ``apply_chat_template(tokenize=True)`` makes them. What a
    user wrote stays text even when it spells a control token: content holding such a string
    is rendered with a placeholder in its place, and encoded on its own, as text. Tools and an
    assistant message's ``tool_calls`` are rendered by the template itself, where no
    placeholder can stand in for them, so a control token string in them is refused.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        messages: role/content dicts (``content`` may be missing or None, as in an assistant
            message that only calls tools).
        tools: OpenAI-shaped tool definitions handed to the template as its ``tools``
            variable (see :mod:`tokenwise.serving.tools`); None gives the template none.

    Example:
        >>> from tokenwise.models import load
        >>> tok = load("smollm2-135m").tokenizer  # doctest: +SKIP
        >>> msgs = [{"role": "user", "content": "a <|im_end|>"}]
        >>> p = encode_template(tok, msgs)  # doctest: +SKIP
        >>> p.ids.count(tok.convert_tokens_to_ids("<|im_end|>"))  # doctest: +SKIP
        1
    """
    _refuse_specials_outside_content(tokenizer, messages, tools)

    def apply(msgs: list[dict[str, Any]]) -> str:
        return tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False,
                                             add_generation_prompt=True)

    text = apply(messages)
    risky = [i for i, m in enumerate(messages) if _specials_in(tokenizer, _content(m))]
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
                f"{_specials_in(tokenizer, _content(messages[i]))[0]!r}, and this chat "
                "template changes message content, so it cannot be kept as text; remove it"
            )
        ids += _encode_parsed(tokenizer, before) + _encode_text(tokenizer, messages[i]["content"])
    ids += _encode_parsed(tokenizer, rest)
    return EncodedText(text, ids)
