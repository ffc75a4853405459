"""Presses by name: one line per press in :data:`PRESSES`."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import Press

#: name -> "module:Class" (imported on first use).
PRESSES: dict[str, str] = {
    "streaming": "tokenwise.kv.streaming:StreamingLLM",
    "h2o": "tokenwise.kv.h2o:H2O",
    "snapkv": "tokenwise.kv.snapkv:SnapKV",
    "expected_attention": "tokenwise.kv.expected_attention:ExpectedAttention",
    "key_norm": "tokenwise.kv.key_norm:KeyNorm",
    "critic": "tokenwise.kv.critic:Critic",
    "random": "tokenwise.kv.random:RandomPress",
    "oracle": "tokenwise.kv.oracle:Oracle",
}


def press_class(name: str) -> type[Press]:
    """The class registered as ``name`` (raises, listing the names, if there is none).

    Example:
        >>> press_class("snapkv").__name__
        'SnapKV'
    """
    if name not in PRESSES:
        raise TokenwiseError(f"unknown press {name!r}; known: {', '.join(sorted(PRESSES))}")
    module, attr = PRESSES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str, **params: Any) -> Press:
    """Build a press by name: ``get("snapkv", budget=0.25, window=16)``.

    Args:
        name: a key of :data:`PRESSES`.
        params: the press's settings; unknown ones are an error, never ignored.

    Example:
        >>> get("streaming", budget=64, sinks=2).sinks
        2
    """
    cls = press_class(name)
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TokenwiseError(f"press {name!r} has no setting(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(accepted)}")
    return cls(**params)
