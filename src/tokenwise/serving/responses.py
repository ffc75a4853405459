"""Response bodies and stream chunks in OpenAI's shapes (chat and legacy completions), and
the server-sent-events framing.

Streams end with ``data: [DONE]``. With ``stream_options.include_usage`` every chunk carries
``"usage": null`` and one last chunk with empty ``choices`` carries the usage. The
``tokenwise`` object rides on the chunk that carries the last ``finish_reason``.

Example:
    >>> sse({"a": 1})
    b'data: {"a": 1}\\n\\n'
    >>> usage(3, 2)
    {'prompt_tokens': 3, 'completion_tokens': 2, 'total_tokens': 5}
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event holding ``data`` as JSON."""
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def new_id(kind: str) -> str:
    """A fresh response id (``chatcmpl-...`` or ``cmpl-...``)."""
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Envelope:
    """Shared fields of one response's body and chunks.

    Args:
        kind: ``"chat"`` or ``"completion"``.
        model: the model id.
        include_usage: streaming with ``stream_options.include_usage``.
    """

    def __init__(self, kind: str, model: str, include_usage: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.id = new_id(kind)
        self.created = int(time.time())
        self.include_usage = include_usage

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def body(self, choices: list[dict[str, Any]], use: dict[str, int],
             tokenwise: dict[str, Any]) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": choices, "usage": use, "tokenwise": tokenwise}

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """One stream chunk."""
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        out = {**self._head(obj), "choices": choices}
        if self.include_usage:
            out["usage"] = None
        out.update(extra)
        return out

    def usage_chunk(self, use: dict[str, int]) -> dict[str, Any]:
        """The last chunk when usage was asked for."""
        return {**self.chunk([]), "usage": use}


def chat_choice(index: int, text: str | None, finish_reason: str,
                logprobs: dict[str, Any] | None,
                tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One choice of a chat response; with ``tool_calls`` the message carries them (its
    ``content`` is the text outside the calls, None when there is none).

    Example:
        >>> call = {"id": "call_1", "type": "function",
        ...         "function": {"name": "now", "arguments": "{}"}}
        >>> chat_choice(0, None, "tool_calls", None, [call])["message"]["tool_calls"][0]["id"]
        'call_1'
    """
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs,
            "finish_reason": finish_reason}


def tool_call_deltas(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stream's ``delta.tool_calls``: each call whole, with its ``index`` (OpenAI sends the
    arguments in pieces; clients join the pieces of one index, so one piece is the same).

    Example:
        >>> call = {"id": "call_1", "type": "function",
        ...         "function": {"name": "now", "arguments": "{}"}}
        >>> tool_call_deltas([call])[0]["index"]
        0
    """
    return [{"index": k, **call} for k, call in enumerate(tool_calls)]


def chat_delta(index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None = None,
               finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a chat stream chunk."""
    return {"index": index, "delta": delta, "logprobs": logprobs,
            "finish_reason": finish_reason}


def text_choice(index: int, text: str, logprobs: dict[str, Any] | None = None,
                finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a completions response or stream chunk."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def models_list(models: dict[str, Any], created: int) -> dict[str, Any]:
    """``GET /v1/models``: the models fixed at start, with their context length."""
    return {"object": "list", "data": [model_card(k, lm, created) for k, lm in models.items()]}


def model_card(name: str, lm: Any, created: int) -> dict[str, Any]:
    """One model of the list."""
    return {"id": name, "object": "model", "created": created, "owned_by": "tokenwise",
            "context_length": lm.context_length,
            "chat_template": bool(getattr(lm.tokenizer, "chat_template", None))}
