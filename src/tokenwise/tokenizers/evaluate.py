"""Compare models that read text with different tokenizers: bits per byte, tokens per byte.

Per-token perplexity depends on how much text a token holds, so it cannot compare a model
before and after a tokenizer change (a tokenizer with longer tokens has fewer, harder
predictions). Bits per byte can: the total surprisal of a text, in bits, over its UTF-8
bytes, is the same quantity whatever the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.progress import progress_bar
from tokenwise.scoring import token_surprisal

__all__ = ["bits_per_byte", "text_bits", "tokens_per_byte"]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TokenwiseError("texts: allowed a non-empty list of strings")
    if not any(texts):
        raise TokenwiseError("texts are all empty: there are no bytes to score")
    return texts


def text_bits(model: Any, text: str) -> float:
    """Total surprisal of ``text`` in bits, every token of it scored.

    The text is read after the tokenizer's start ids (its BOS); a tokenizer that puts
    nothing in front of a text (SmolLM2, GPT-2) gets its EOS (else BOS) as the context of
    the first token, so no byte goes unscored.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`.
        text: the text.

    Example:
        >>> from tokenwise.models import load
        >>> text_bits(load("tw-large"), "2+2=4\\n") > 0
        True
    """
    ids = model.encode(text)
    if not ids:
        return 0.0
    prefix: list[int] = []
    if not model.start_ids:
        tid = model.eos_token_id if model.eos_token_id is not None else model.bos_token_id
        if tid is None:
            raise TokenwiseError(f"model {model.name!r} has no start, EOS or BOS token to read "
                                 "the first token after; bits per byte would skip it")
        prefix = [int(tid)]
    nats = token_surprisal(model, ids, prefix)
    return float(np.sum(nats)) / math.log(2)


def bits_per_byte(model: Any, texts: Sequence[str], *, progress: bool = False) -> float:
    """Bits per UTF-8 byte of ``texts`` under ``model`` (each text read on its own).

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`.
        texts: held-out texts.
        progress: show a progress bar on standard error.

    Example:
        >>> from tokenwise.models import load
        >>> 0 < bits_per_byte(load("tw-large"), ["Q: What is 2+2?\\n", "2+2=4\\n"]) < 8
        True
    """
    texts = _check_texts(texts)
    bits = sum(text_bits(model, t) for t in progress_bar(texts, desc="bits per byte",
                                                           unit="text", enabled=progress))
    return bits / sum(len(t.encode("utf-8")) for t in texts)


def tokens_per_byte(tokenizer: Any, texts: Sequence[str]) -> float:
    """Tokens per UTF-8 byte of ``texts`` (no special tokens counted).

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the texts.

    Example:
        >>> from tokenwise.models import load
        >>> round(tokens_per_byte(load("tw-small").tokenizer, ["12+7=19"]), 3)  # one per char
        1.0
    """
    texts = _check_texts(texts)
    n = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return n / sum(len(t.encode("utf-8")) for t in texts)
