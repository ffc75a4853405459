"""Compression methods by name: one line per method, imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from tokenwise.errors import TokenwiseError

#: name -> "module:Class". A new method is one file and one line here.
METHODS: dict[str, str] = {
    "token_classifier": "tokenwise.compression.token_classifier:TokenClassifierCompressor",
    "perplexity": "tokenwise.compression.perplexity:PerplexityCompressor",
    "selective_context": "tokenwise.compression.selective_context:SelectiveContextCompressor",
    "extractive": "tokenwise.compression.extractive:ExtractiveCompressor",
    "generative": "tokenwise.compression.generative:GenerativeCompressor",
    "semantic": "tokenwise.compression.semantic:SemanticCompressor",
}

#: other spellings users type.
ALIASES: dict[str, str] = {
    "llmlingua2": "token_classifier",
    "llmlingua-2": "token_classifier",
    "llmlingua": "perplexity",
    "longllmlingua": "perplexity",
    "recomp": "extractive",
    "scope": "generative",
}


def names() -> list[str]:
    """The registered method names.

    Example:
        >>> "token_classifier" in names()
        True
    """
    return sorted(METHODS)


def compressor_class(name: str) -> Any:
    """The class registered under ``name`` (or one of its aliases).

    Example:
        >>> compressor_class("llmlingua2").__name__
        'TokenClassifierCompressor'
    """
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise TokenwiseError(
            f"unknown compression method {name!r}; available: {', '.join(names())}"
        )
    module, attr = METHODS[key].split(":")
    return getattr(importlib.import_module(module), attr)
