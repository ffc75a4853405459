"""Apply a request's ``tokenwise.compress`` options to its prompt.

The compressor reads with the model the operator configured for the method at start
(``--compress-model METHOD=DIR``) or the method's own default; tokens are counted with the
served model's tokenizer. Chat messages keep their roles, and by default only user and
assistant turns are compressed (system prompts are left alone).

Example:
    >>> from tokenwise.serving.schemas import CompressOptions
    >>> compress_prompt(CompressOptions(method="nope", rate=0.5), "text", None, {})
    Traceback (most recent call last):
    ...
    tokenwise.serving.errors.APIError: tokenwise.compress.method='nope': ...
"""

from __future__ import annotations

from typing import Any

from tokenwise.compression import compress, names
from tokenwise.errors import TokenwiseError
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import CompressOptions


def compress_prompt(options: CompressOptions, prompt: str | list[dict[str, str]], lm: Any,
                    compress_models: dict[str, str]
                    ) -> tuple[str | list[dict[str, str]], dict[str, Any]]:
    """Compress a prompt text or chat messages; return the new prompt and what happened.

    Args:
        options: the request's options.
        prompt: a text, or ``[{"role", "content"}]`` messages.
        lm: the served model (its tokenizer counts the tokens).
        compress_models: method -> model fixed at start.

    Returns:
        ``(compressed prompt, stats)``; stats hold the method, tokens before and after,
        the rate, the seconds, the compressed text and the words with their fate
        (``pieces``: ``[segment, text, kept]``, kept None for the text between words).
    """
    known = names()
    if options.method not in known:
        raise APIError(400, f"tokenwise.compress.method={options.method!r}: allowed "
                            f"{', '.join(known)}", param="tokenwise.compress.method")
    budget = [k for k in ("rate", "target_tokens", "threshold")
              if getattr(options, k) is not None]
    if len(budget) != 1:
        raise APIError(400, "tokenwise.compress needs exactly one of rate, target_tokens, "
                            f"threshold (got {budget or 'none'})", param="tokenwise.compress")
    model = compress_models.get(options.method)
    try:
        result = compress(
            prompt, options.method, rate=options.rate, target_tokens=options.target_tokens,
            threshold=options.threshold, question=options.question,
            force_tokens=tuple(options.force_tokens), keep_digits=options.keep_digits,
            protect=options.protect, model=model, target_model=lm,
            percentile=options.percentile, context_filter=options.context_filter,
            context_rate=options.context_rate)
    except TokenwiseError as exc:
        hint = ""
        if model is None and "model" in str(exc):
            hint = (f" (the server was started without a model for {options.method!r}; "
                    f"start it with --compress-model {options.method}=DIR)")
        raise APIError(400, f"tokenwise.compress: {exc}{hint}",
                       param="tokenwise.compress") from None
    try:
        pieces = [[seg, text, kept] for seg, text, kept in result.pieces()]
    except ValueError:  # a method that reports no word spans
        pieces = []
    stats = {"method": result.method, "tokens_before": result.tokens_before,
             "tokens_after": result.tokens_after, "rate": result.rate,
             "seconds": result.seconds, "text": result.text, "pieces": pieces}
    if isinstance(prompt, str):
        return result.text, stats
    assert result.messages is not None
    return [{"role": m["role"], "content": m["content"]} for m in result.messages], stats
