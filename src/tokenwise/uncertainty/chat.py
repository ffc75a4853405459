"""Chat questions: messages rendered with the model's chat template, the question kept apart.

A chat model reads its question inside its template (``<|im_start|>user\\n...``), but the
estimators that read the question (NLI's ``condition_on_question``, Semantic Volume over
questions, Inv-Entropy) want the question alone. :func:`~tokenwise.uncertainty.samples.
sample_answers` with ``messages=`` keeps both: the model reads the rendered prompt, the
sample set stores the last user message as its question, and the messages themselves, so a
paraphrase is rendered with the same template and the same system message.

The rendered prompt is an :class:`~tokenwise.models.language_model.EncodedText`: the
template's turn markers are read as their control tokens, as the server renders a chat
(:func:`tokenwise.models.chat_template.encode_template`).

Example:
    >>> msgs = check_messages([{"role": "system", "content": "Be brief."},
    ...                        {"role": "user", "content": " Where was Ana born? "}])
    >>> question_of(msgs)
    'Where was Ana born?'
    >>> [m["content"] for m in with_question(msgs, "Ana's birthplace?")]
    ['Be brief.', "Ana's birthplace?"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.models.chat_template import encode_template
from tokenwise.models.language_model import EncodedText

#: the roles a message may have (as the server's chat endpoint).
ROLES = ("system", "developer", "user", "assistant")

Messages = tuple[dict[str, str], ...]


def check_messages(messages: object) -> Messages:
    """``messages`` checked and copied: role/content dicts, the last one the user's question.

    Args:
        messages: a list of ``{"role": ..., "content": ...}`` with roles system, developer,
            user, assistant; the last message is the user's question (non-empty).

    Raises:
        TokenwiseError: not a list of such dicts, an empty list, an unknown role, a content
            that is not a string, or a last message that is not a non-empty user message.

    Example:
        >>> check_messages([{"role": "user", "content": "hi"}])
        ({'role': 'user', 'content': 'hi'},)
    """
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise TokenwiseError(f"messages is {type(messages).__name__}: allowed a list of "
                             "{'role': ..., 'content': ...} dicts")
    if not messages:
        raise TokenwiseError("messages is empty: allowed a list of role/content dicts whose "
                             "last one is the user's question")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) != {"role", "content"}:
            raise TokenwiseError(f"messages[{i}] is {m!r}: allowed a dict with exactly the "
                                 "keys 'role' and 'content'")
        if m["role"] not in ROLES:
            raise TokenwiseError(f"messages[{i}] has role {m['role']!r}: allowed "
                                 f"{', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise TokenwiseError(f"messages[{i}] has content {m['content']!r}: allowed a "
                                 "string")
        out.append({"role": m["role"], "content": m["content"]})
    last = out[-1]
    if last["role"] != "user" or not last["content"].strip():
        raise TokenwiseError(f"the last message is {last!r}: allowed a user message with "
                             "the (non-empty) question the answers are sampled for")
    return tuple(out)


def question_of(messages: Messages) -> str:
    """The question: the last (user) message's content, stripped.

    Args:
        messages: checked messages (:func:`check_messages`).
    """
    return messages[-1]["content"].strip()


def with_question(messages: Messages, question: str) -> Messages:
    """``messages`` with ``question`` in place of the last user message (the rest kept).

    Args:
        messages: checked messages (:func:`check_messages`).
        question: the new question (e.g. a paraphrase).
    """
    return (*messages[:-1], {"role": "user", "content": question})


def render_chat(model: Any, messages: Messages) -> EncodedText:
    """``messages`` rendered with ``model``'s chat template, ready for the assistant's turn,
    exactly as the server renders a chat (:func:`tokenwise.models.chat_template.encode_template`:
    the template's markers become their control tokens, message content stays text).

    Args:
        model: a model with a Hugging Face ``tokenizer`` that has a chat template (a
            :class:`~tokenwise.models.LanguageModel`, or an engine adapter such as
            :class:`tokenwise.vllm.VLLMModel`).
        messages: checked messages (:func:`check_messages`).

    Raises:
        TokenwiseError: the model has no chat template.

    Example:
        >>> from tokenwise.models import load
        >>> render_chat(load("tw-small"), ({"role": "user", "content": "hi"},))
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: model 'tw-small' has no chat template, so messages= ...
    """
    tokenizer = getattr(model, "tokenizer", None)
    name = getattr(model, "name", type(model).__name__)
    if not getattr(tokenizer, "chat_template", None):
        raise TokenwiseError(
            f"model {name!r} has no chat template, so messages= cannot be rendered: pass the "
            "question as a plain string (rendered with prompt_template), or prompt= (the "
            "exact prompt) with question=")
    return encode_template(tokenizer, list(messages))
