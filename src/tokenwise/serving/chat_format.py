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

from dataclasses import dataclass, field
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.models.chat_template import encode_template

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


def render(tokenizer: Any, messages: list[dict[str, Any]],
           tools: list[dict[str, Any]] | None = None) -> ChatPrompt:
    """Render ``messages`` with the tokenizer's chat template if it has one, else the fallback.

    A template's prompt is an :class:`EncodedText` (see :func:`encode_template`): the
    decode loop reads its ids as they are, start token and turn markers included, and the
    reply ends on the model's end-of-turn token (its EOS, e.g. SmolLM2's ``<|im_end|>``).

    Args:
        tokenizer: a Hugging Face tokenizer.
        messages: role/content dicts.
        tools: OpenAI-shaped tool definitions for the template's ``tools`` variable. The
            fallback form has no place for them, so giving tools to a tokenizer without a
            template is a :class:`~tokenwise.errors.TokenwiseError`, never a silent drop
            (:func:`tokenwise.serving.tools.render_tool_chat` decides how tools reach a
            template that ignores them).

    Example:
        >>> from tokenwise.models import load
        >>> p = render(load("tw-small").tokenizer, [{"role": "user", "content": "hi"}])
        >>> p.format, p.stops
        ('qa-fallback', ['\\n'])
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        if tools:
            raise TokenwiseError("this model has no chat template, so it cannot be given "
                                 "tools: the question-answer fallback has no place for them")
        return ChatPrompt(render_fallback(messages), "qa-fallback", list(FALLBACK_STOPS))
    return ChatPrompt(encode_template(tokenizer, messages, tools=tools), "template", [])
