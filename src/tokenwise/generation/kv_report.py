"""What a compressed or quantised KV cache holds, as a small JSON-ready report.

Every number is read from the cache itself (tensor sizes, packed bytes), never estimated from
the settings: ``cache_bytes`` is what the cache stores now, ``full_bytes`` what the same
tokens would take in a plain cache of the model's dtype, ``peak_bytes`` the most it held while
reading (before an eviction freed the rest).
"""

from __future__ import annotations

from typing import Any


def cache_report(cache: Any, prompt_tokens: int) -> dict[str, Any]:
    """Report of a :class:`tokenwise.kv.CompressedCache` or :class:`tokenwise.kv.QuantizedKVCache`.

    Args:
        cache: the cache after (or during) decoding.
        prompt_tokens: the prompt's length in tokens.

    Returns:
        ``{"kind", "prompt_tokens", "seen_tokens", "kept_tokens", "cache_bytes", "full_bytes",
        "peak_bytes", ...}``: ``kind`` is ``"press"`` (with ``press``, its name, and
        ``noop``, True when the budget evicted nothing) or ``"quantized"`` (with ``bits``, the
        stairs, and ``bits_histogram``, tokens per width summed over layers, ``"fp"`` for
        the full-precision tail). ``kept_tokens`` is the most tokens a pressed layer holds
        per head; on a hybrid model (Gemma-3) ``sliding_window_tokens`` is what its
        sliding-window layers hold (never pressed), and ``full_bytes`` counts those layers
        at the model's window, as a plain cache holds them.

    Example:
        >>> import warnings
        >>> from tokenwise.models import load
        >>> from tokenwise.kv import StreamingLLM, prefill
        >>> lm = load("tw-reader")
        >>> ids = lm.encode("Memo:\\nThe code of Avo is 123.\\nQ: What is", add_bos=True)
        >>> cache, _ = prefill(lm, ids, StreamingLLM(6, sinks=1))
        >>> r = cache_report(cache, len(ids))
        >>> r["kept_tokens"], r["seen_tokens"] == len(ids), r["cache_bytes"] < r["full_bytes"]
        (6, True, True)
    """
    from tokenwise.kv import CompressedCache, QuantizedKVCache
    from tokenwise.kv.quantized import QuantizedLayer

    if isinstance(cache, CompressedCache):
        layers = [layer for layer in cache.layers if layer.keys is not None]
        pressed = [layer for layer in layers if not getattr(layer, "is_sliding", False)]
        sliding = [layer for layer in layers if getattr(layer, "is_sliding", False)]
        seen = max((layer.seen for layer in layers), default=0)
        kept = max((layer.get_seq_length() for layer in pressed or layers), default=0)
        # a plain cache holds every token of a full-attention layer, but only the model's
        # window of a sliding-window one
        full = sum(_token_bytes(layer.keys) * layer.seen for layer in pressed)
        full += sum(_token_bytes(layer.keys) * min(layer.seen, layer.sliding_window - 1)
                    for layer in sliding)
        out = {"kind": "press", "press": cache.press.name, "prompt_tokens": prompt_tokens,
               "seen_tokens": seen, "kept_tokens": kept, "cache_bytes": cache.nbytes(),
               "full_bytes": full, "peak_bytes": max(cache.peak_bytes, cache.nbytes()),
               "noop": any("noop" in r for r in cache.report)}
        if sliding:
            out["sliding_window_tokens"] = max(layer.get_seq_length() for layer in sliding)
        return out
    if isinstance(cache, QuantizedKVCache):
        layers = [layer for layer in cache.layers
                  if isinstance(layer, QuantizedLayer) and layer.keys is not None]
        windows = cache.windows()
        seen = max((layer.total for layer in layers), default=0)
        full = sum(_token_bytes(layer.keys) * layer.total for layer in layers)
        full += sum(_token_bytes(layer.keys) * layer.keys.shape[2] for layer in windows)
        out = {"kind": "quantized", "bits": list(cache.spec.bits),
               "prompt_tokens": prompt_tokens, "seen_tokens": seen, "kept_tokens": seen,
               "cache_bytes": cache.nbytes(), "full_bytes": full,
               "peak_bytes": max(cache.peak_bytes, cache.nbytes()),
               "bits_histogram": cache.bits_histogram()}
        if windows:
            out["sliding_window_tokens"] = max(layer.keys.shape[2] for layer in windows)
        return out
    raise TypeError(f"cache_report takes a tokenwise.kv cache, not {type(cache).__name__}")


def _token_bytes(keys: Any) -> int:
    """Bytes one token takes in a plain cache of this layer: keys and values of every row
    and KV head, in the keys' dtype."""
    b, h, _, d = keys.shape
    return 2 * b * h * d * keys.element_size()
