"""Prompt compression: keep the words a reader needs, drop the rest, on a token budget.

``compress(text_or_messages, method=..., rate=... | target_tokens=... | threshold=...)``
returns a :class:`CompressionResult`; the keywords other than the method's form one checked
:class:`CompressionRequest`, which every compressor's ``compress`` also takes. Methods are
registered by name in :mod:`tokenwise.compression.registry`: ``token_classifier``
(LLMLingua-2 over any local token-classification model), ``perplexity`` (LLMLingua /
LongLLMLingua), ``selective_context``, ``extractive`` (RECOMP) and ``generative`` (SCOPE).

Example:
    >>> from tokenwise.compression import names
    >>> "token_classifier" in names()
    True
"""

from tokenwise.compression.api import compress, get
from tokenwise.compression.base import (
    DEFAULT_ROLES,
    Compressor,
    SelectiveCompressor,
    WordScores,
    check_budget,
    parse_input,
)
from tokenwise.compression.counting import TokenCounter
from tokenwise.compression.registry import METHODS, compressor_class, names
from tokenwise.compression.request import CompressionRequest
from tokenwise.compression.result import CompressionResult

__all__ = [
    "DEFAULT_ROLES",
    "METHODS",
    "CompressionRequest",
    "CompressionResult",
    "Compressor",
    "SelectiveCompressor",
    "TokenCounter",
    "WordScores",
    "check_budget",
    "compress",
    "compressor_class",
    "get",
    "names",
    "parse_input",
]
