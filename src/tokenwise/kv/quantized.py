"""Quantised KV caches with packed storage: KIVI and the SAQ staircase.

KIVI (Liu et al., 2024) quantises keys per channel (each channel's min and scale over a group
of ``group`` tokens, because key outliers live in fixed channels) and values per token (groups
of ``group`` channels), and keeps the ``residual`` most recent tokens in full precision. Keys
are quantised a whole group of tokens at a time, never one token at a time (per-channel
statistics over a single token would be the token itself: quantising nothing).

SAQ (staircase adaptive quantisation) lowers the bit-width as tokens age, e.g. 8 -> 4 -> 2:
a block is re-quantised to the next stair's width when its newest token passes the stair's
age. KIVI is the one-stair case.

Storage is real: codes are packed into ``uint8`` (four 2-bit or two 4-bit codes a byte) with
float16 minimum and scale per group, so :meth:`QuantizedKVCache.nbytes` is the memory the
cache holds, not an estimate. The attention reads dequantised copies made per layer and
pass (pure PyTorch: no fused kernel, so decoding is slower than a full cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import SLIDING, check_positive, layer_kinds

_BITS = (2, 4, 8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``uint8`` codes ``(..., D)`` below ``2**bits`` packed ``8 // bits`` to a byte along the
    last axis (``D * bits`` must be a multiple of 8).

    Example:
        >>> pack(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist()
        [57]
    """
    per = 8 // bits
    if codes.shape[-1] % per:
        raise TokenwiseError(f"{codes.shape[-1]} channels cannot be packed at {bits} bits "
                             f"(need a multiple of {per})")
    c = codes.view(*codes.shape[:-1], codes.shape[-1] // per, per).to(torch.int32)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    return (c << shifts).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack`: ``uint8`` codes ``(..., D)``.

    Example:
        >>> unpack(torch.tensor([57], dtype=torch.uint8), 2).tolist()
        [1, 2, 3, 0]
    """
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32)[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per).to(torch.uint8)


@dataclass
class Quantized:
    """One tensor quantised with a min and a scale per group, codes packed.

    Attributes:
        packed: ``uint8`` packed codes.
        low: float16 group minima.
        scale: float16 group scales.
        bits: the code width.
        shape: the original shape.
        per_channel: keys' layout (statistics over tokens) when True, values' (over groups of
            channels within a token) when False.
        group: channels per group (values).
    """

    packed: torch.Tensor
    low: torch.Tensor
    scale: torch.Tensor
    bits: int
    shape: tuple[int, ...]
    per_channel: bool
    group: int

    def nbytes(self) -> int:
        """Bytes stored (codes, minima and scales)."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.low, self.scale))


def quantize(x: torch.Tensor, bits: int, *, per_channel: bool, group: int = 32) -> Quantized:
    """Quantise ``x`` ``(B, H, T, D)`` to ``bits`` with a min and scale per group.

    Args:
        x: the block.
        bits: 2, 4 or 8.
        per_channel: one min/scale per channel over the block's tokens (KIVI's keys);
            otherwise per token over groups of ``group`` channels (KIVI's values).
        group: channels per group when not ``per_channel``.

    Example:
        >>> x = torch.randn(1, 1, 4, 8)
        >>> err = (dequantize(quantize(x, 8, per_channel=True)) - x).abs().max()
        >>> bool(err < 0.02)
        True
    """
    if bits not in _BITS:
        raise TokenwiseError(f"bits={bits!r}: allowed {', '.join(map(str, _BITS))}")
    xf = x.float()
    if per_channel:
        low = xf.amin(-2, keepdim=True)
        high = xf.amax(-2, keepdim=True)
        grouped = xf
    else:
        d = xf.shape[-1]
        g = min(group, d)
        if d % g:
            raise TokenwiseError(f"group={group}: the head dimension {d} is not a multiple")
        grouped = xf.view(*xf.shape[:-1], d // g, g)
        low = grouped.amin(-1, keepdim=True)
        high = grouped.amax(-1, keepdim=True)
    low16, scale16 = low.half(), ((high - low) / (2**bits - 1)).clamp(min=1e-8).half()
    codes = ((grouped - low16.float()) / scale16.float()).round().clamp(0, 2**bits - 1)
    codes = codes.to(torch.uint8).reshape(xf.shape)
    return Quantized(pack(codes, bits), low16, scale16, bits, tuple(x.shape), per_channel,
                     group)


def dequantize(q: Quantized, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The block back in ``dtype`` (with the quantisation error)."""
    codes = unpack(q.packed, q.bits).float()
    if q.per_channel:
        out = codes * q.scale.float() + q.low.float()
    else:
        d = q.shape[-1]
        g = min(q.group, d)
        out = codes.view(*q.shape[:-1], d // g, g) * q.scale.float() + q.low.float()
    return out.reshape(q.shape).to(dtype)


def requantize(q: Quantized, bits: int) -> Quantized:
    """The block at a lower width, from its dequantised values (SAQ's next stair)."""
    return quantize(dequantize(q), bits, per_channel=q.per_channel, group=q.group)


@dataclass
class QuantSpec:
    """Settings of a quantised cache: widths by age, groups and the full-precision window.

    Attributes:
        bits: the stairs' widths, widest first (one entry: KIVI).
        ages: token ages (past the residual window) where each next stair starts; one fewer
            than ``bits``, increasing.
        group: tokens per key block (per-channel statistics) and channels per value group.
        residual: most recent tokens kept in full precision (at least ``residual``; up to
            ``residual + group - 1`` before a block is quantised).
        chunk_size: read the prompt this many tokens at a time (bounds the full-precision
            peak to one chunk), None for one pass.
    """

    bits: Sequence[int] = (2,)
    ages: Sequence[int] = ()
    group: int = 32
    residual: int = 32
    chunk_size: int | None = field(default=None, kw_only=True)

    name = "quantized"

    def __post_init__(self) -> None:
        self.bits = tuple(self.bits)
        self.ages = tuple(self.ages)
        if not self.bits:
            raise TokenwiseError("bits=(): allowed one or more widths from 2, 4, 8")
        for b in self.bits:
            if b not in _BITS:
                raise TokenwiseError(f"bits={b!r}: allowed {', '.join(map(str, _BITS))}")
        if list(self.bits) != sorted(self.bits, reverse=True):
            raise TokenwiseError(f"bits={list(self.bits)}: stairs go from wide to narrow "
                                 "(e.g. 8, 4, 2)")
        if len(self.ages) != len(self.bits) - 1:
            raise TokenwiseError(f"ages={list(self.ages)}: give {len(self.bits) - 1} age(s), "
                                 f"one where each stair after the first of bits="
                                 f"{list(self.bits)} starts")
        for a in self.ages:
            check_positive("ages", a)
        if list(self.ages) != sorted(set(self.ages)):
            raise TokenwiseError(f"ages={list(self.ages)}: must increase")
        self.group = check_positive("group", self.group)
        self.residual = check_positive("residual", self.residual)
        if self.chunk_size is not None:
            self.chunk_size = check_positive("chunk_size", self.chunk_size)

    def bits_at(self, age: int) -> int:
        """The width for a block whose newest token is ``age`` tokens past the window.

        Example:
            >>> SAQ(bits=(8, 4, 2), ages=(64, 256)).bits_at(100)
            4
        """
        width = self.bits[0]
        for a, b in zip(self.ages, self.bits[1:], strict=True):
            if age >= a:
                width = b
        return width

    def make_cache(self, model: Any = None) -> QuantizedKVCache:
        """A fresh cache with these settings (``model`` gives the layer count)."""
        return QuantizedKVCache(self, model)


def KIVI(bits: int = 2, group: int = 32, residual: int = 32,
         *, chunk_size: int | None = None) -> QuantSpec:
    """KIVI settings: keys per channel, values per token, at one width.

    Args:
        bits: 2, 4 or 8.
        group: tokens per key block and channels per value group.
        residual: recent tokens kept in full precision.
        chunk_size: prompt chunk size (None: one pass).

    Example:
        >>> KIVI(4).bits
        (4,)
    """
    return QuantSpec(bits=(bits,), ages=(), group=group, residual=residual,
                     chunk_size=chunk_size)


def SAQ(bits: Sequence[int] = (8, 4, 2), ages: Sequence[int] = (64, 256),
        group: int = 32, residual: int = 32, *, chunk_size: int | None = None) -> QuantSpec:
    """Staircase settings: ``bits[i+1]`` from age ``ages[i]`` on.

    Example:
        >>> SAQ().bits_at(0), SAQ().bits_at(300)
        (8, 2)
    """
    return QuantSpec(bits=bits, ages=ages, group=group, residual=residual,
                     chunk_size=chunk_size)


class QuantizedLayer(DynamicLayer):
    """One layer: quantised blocks (oldest first) and a full-precision tail."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.blocks: list[tuple[Quantized, Quantized, int]] = []  # keys, values, last pos
        self.total = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.dtype = key_states.dtype
        self.keys = torch.cat([self.keys, key_states], -2)
        self.values = torch.cat([self.values, value_states], -2)
        self.total += key_states.shape[-2]
        parts_k = [dequantize(k, self.dtype) for k, _, _ in self.blocks] + [self.keys]
        parts_v = [dequantize(v, self.dtype) for _, v, _ in self.blocks] + [self.values]
        full_k, full_v = torch.cat(parts_k, -2), torch.cat(parts_v, -2)
        self._flush()
        return full_k, full_v

    def _flush(self) -> None:
        spec = self.spec
        g = spec.group
        while self.keys.shape[-2] >= spec.residual + g:
            first = self.total - self.keys.shape[-2]
            last = first + g - 1
            bits = spec.bits_at(max(0, self.total - spec.residual - last - 1))
            qk = quantize(self.keys[:, :, :g], bits, per_channel=True, group=g)
            qv = quantize(self.values[:, :, :g], bits, per_channel=False, group=g)
            self.blocks.append((qk, qv, last))
            self.keys = self.keys[:, :, g:].clone()
            self.values = self.values[:, :, g:].clone()
        for i, (qk, qv, last) in enumerate(self.blocks):
            bits = spec.bits_at(max(0, self.total - spec.residual - last - 1))
            if bits < qk.bits:
                self.blocks[i] = (requantize(qk, bits), requantize(qv, bits), last)

    def get_seq_length(self) -> int:
        return self.total

    def nbytes(self) -> int:
        """Bytes held: packed blocks with their minima and scales, and the full tail."""
        total = sum(k.nbytes() + v.nbytes() for k, v, _ in self.blocks)
        for t in (self.keys, self.values):
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def bits_histogram(self) -> dict[str, int]:
        """Tokens per width (``"fp"`` for the full-precision tail)."""
        out: dict[str, int] = {}
        for k, _, _ in self.blocks:
            out[str(k.bits)] = out.get(str(k.bits), 0) + k.shape[-2]
        if self.keys is not None:
            out["fp"] = self.keys.shape[-2]
        return out

    def crop(self, max_length: int) -> None:
        raise TokenwiseError("a QuantizedKVCache cannot be cropped")

    def reset(self) -> None:
        self.blocks, self.total = [], 0
        self.keys = self.values = None
        self.is_initialized = False


class QuantizedKVCache(Cache):
    """A transformers ``Cache`` holding packed low-bit keys and values (KIVI, SAQ).

    Args:
        spec: the settings (:func:`KIVI`, :func:`SAQ`).
        model: the model (for its layer count and which layers slide); without it every
            layer is quantised, added as it comes.

    On a hybrid model (Gemma-3) the sliding-window layers are not quantised: they keep the
    model's own window (transformers' ``DynamicSlidingWindowLayer``, the last
    ``sliding_window - 1`` tokens) in the model's dtype, which :meth:`nbytes` counts.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-reader")
        >>> cache = QuantizedKVCache(KIVI(2, group=8, residual=8), lm)
        >>> ids = torch.tensor([lm.encode("Memo:\\n" + "The code of Avo is 123.\\n" * 5,
        ...                               add_bos=True)])
        >>> _ = lm.forward(ids, cache=cache, use_cache=True)
        >>> cache.get_seq_length() == ids.shape[1], cache.nbytes() < cache.fp16_bytes()
        (True, True)
    """

    def __init__(self, spec: QuantSpec, model: Any = None) -> None:
        if not isinstance(spec, QuantSpec):
            raise TokenwiseError(f"spec={spec!r}: allowed kv.KIVI(...) or kv.SAQ(...)")
        self.spec = spec
        if model is not None:
            config = getattr(model, "hf_model", model).config.get_text_config(decoder=True)
            # a sliding-window layer keeps the model's own window in full precision: it is
            # bounded already, and quantising its whole history would hold more than it needs
            super().__init__(layers=[
                DynamicSlidingWindowLayer(sliding_window=int(config.sliding_window))
                if kind == SLIDING else QuantizedLayer(spec) for kind in layer_kinds(config)])
        else:
            # transformers wants one of layers / a class to replicate; update() appends ours
            super().__init__(layer_class_to_replicate=DynamicLayer)
            self.layer_class_to_replicate = None
        self.peak_bytes = 0
        #: forward passes and tokens :func:`tokenwise.kv.prefill` ran to read the prompt
        self.prefill_passes = 0
        self.prefill_tokens = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.layers) <= layer_idx:
            self.layers.append(QuantizedLayer(self.spec))
        out = self.layers[layer_idx].update(key_states, value_states)
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        return out

    def windows(self) -> list[Any]:
        """The sliding-window layers that hold tokens (each keeps the model's own window)."""
        return [layer for layer in self.layers
                if getattr(layer, "is_sliding", False) and getattr(layer, "keys", None) is not None
                and layer.keys.numel() > 0]

    def nbytes(self) -> int:
        """Bytes the cache holds now (packed codes, minima, scales, full-precision tail; the
        sliding-window layers' windows)."""
        quantized = sum(layer.nbytes() for layer in self.layers
                        if isinstance(layer, QuantizedLayer))
        return quantized + sum(layer.keys.numel() * layer.keys.element_size()
                               + layer.values.numel() * layer.values.element_size()
                               for layer in self.windows())

    def fp16_bytes(self) -> int:
        """What the same tokens would take as float16 keys and values (a sliding-window
        layer: its window)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, QuantizedLayer) and layer.keys is not None:
                b, h, _, d = layer.keys.shape
                total += 2 * 2 * b * h * d * layer.total
        for layer in self.windows():
            b, h, n, d = layer.keys.shape
            total += 2 * 2 * b * h * d * n
        return total

    def bits_histogram(self) -> dict[str, int]:
        """Tokens per width summed over layers."""
        out: dict[str, int] = {}
        for layer in self.layers:
            if isinstance(layer, QuantizedLayer):
                for key, n in layer.bits_histogram().items():
                    out[key] = out.get(key, 0) + n
        return out
