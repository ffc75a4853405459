"""A chat template's rendering of messages with the ids the model reads for it.

The server's chat routes and ``sample_answers(messages=...)`` both render chats here, so a
question is read the same way by either: the template's markers as their control tokens,
what a user wrote as text (even when it spells a control token).
"""

from __future__ import annotations

import secrets
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.models.language_model import EncodedText

__all__ = ["encode_template"]


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
