"""Round-to-nearest (RTN) weight quantisation, group-wise, of the linear layers.

Each row of a weight matrix is cut into groups of ``group_size`` consecutive input weights;
each group gets its own scale (symmetric: ``max|w| / (2^(b-1) - 1)``, codes
``-2^(b-1) .. 2^(b-1) - 1``) or scale and zero point (asymmetric: ``(max - min) / (2^b - 1)``,
codes ``0 .. 2^b - 1``), and every weight is rounded to the nearest code. The model keeps the
dequantised values (``code * scale``), so it runs as a normal float model; the bit budget
it stands for is ``info["bits_per_compressed_weight"]`` (see
:func:`~tokenwise.evaluate.compressed.storage_bits`).
"""

from __future__ import annotations

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.evaluate.compressed import (
    Compressed,
    copy_model,
    linear_layers,
    storage_bits,
    summarise,
)
from tokenwise.models import LanguageModel
from tokenwise.progress import progress_bar

#: Allowed bit widths.
BITS = (2, 3, 4, 8)


def rtn(weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False
        ) -> torch.Tensor:
    """The dequantised round-to-nearest version of ``weight`` (out, in).

    Args:
        weight: a weight matrix ``(out, in)``.
        bits: code width, one of :data:`BITS`.
        group_size: input weights per group (must divide ``in``); None: one group per row.
        symmetric: no zero point (codes centred on 0).

    Example:
        >>> w = torch.tensor([[0.0, 0.1, 0.2, 0.3]])
        >>> bool((rtn(w, 2, 4) - w).abs().max() < 1e-6)  # 4 evenly spaced values fit 2 bits
        True
    """
    rows, cols = weight.shape  # (out, in)
    g = cols if group_size is None else group_size
    if cols % g:
        raise TokenwiseError(f"group_size={group_size} does not divide a layer's input width "
                             f"{cols}; choose a divisor of every layer's width (or none: one "
                             "group per row)")
    w = weight.float().reshape(rows, cols // g, g)  # (out, groups, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(-1, keepdim=True) / qmax  # (out, groups, 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = (w / scale).round().clamp(-qmax - 1, qmax)
        deq = q * scale
    else:
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = (hi - lo) / (2**bits - 1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = (-lo / scale).round()
        q = ((w / scale).round() + zero).clamp(0, 2**bits - 1)
        deq = (q - zero) * scale
    return deq.reshape(rows, cols).to(weight.dtype)


def check_settings(bits: int, group_size: int | None) -> None:
    """Raise unless ``bits`` is one of :data:`BITS` and ``group_size`` is None or >= 1.

    Example:
        >>> check_settings(4, 64)
    """
    if isinstance(bits, bool) or bits not in BITS:
        raise TokenwiseError(f"bits={bits!r}: allowed {', '.join(map(str, BITS))}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise TokenwiseError(f"group_size={group_size!r}: allowed an int >= 1, or none (one "
                             "group per row)")


def quantize(model: LanguageModel, *, bits: int = 4, group_size: int | None = 64,
             symmetric: bool = False, include_head: bool = False,
             progress: bool = False) -> Compressed:
    """A round-to-nearest quantised copy of ``model`` (the original is not changed).

    Args:
        model: the model to quantise.
        bits: code width, one of :data:`BITS`.
        group_size: input weights per group; it must divide every layer's input width.
            None: one group per output row.
        symmetric: symmetric codes (no zero point) instead of asymmetric.
        include_head: quantise the output head too (it may be tied to the embeddings).
        progress: a progress bar over the layers on standard error.

    Returns:
        A :class:`~tokenwise.evaluate.compressed.Compressed`; ``info`` gives the true bit
        budget (codes plus per-group scales and zero points).

    Example:
        >>> from tokenwise.models import load
        >>> out = quantize(load("tw-small"), bits=4, group_size=32)
        >>> out.info["bits_per_compressed_weight"]  # 4 + (16 + 4) / 32
        4.625
    """
    check_settings(bits, group_size)
    out = copy_model(model, f"{model.name}-rtn{bits}-g{group_size or 'row'}"
                            f"{'-sym' if symmetric else ''}")
    layers = linear_layers(out.hf_model, include_head=include_head)
    if group_size is not None:  # fail before any work when a layer cannot be grouped
        bad = [(n, m.in_features) for n, m in layers if m.in_features % group_size]
        if bad:
            raise TokenwiseError(f"group_size={group_size} does not divide the input width "
                                 f"{bad[0][1]} of {bad[0][0]}; choose a divisor of every "
                                 "layer's width (or none: one group per row)")
    total = 0
    bar = progress_bar(layers, desc=f"quantize rtn{bits}", unit="layer", enabled=progress)
    with torch.no_grad():
        for _name, mod in bar:
            w = mod.weight.data
            w.copy_(rtn(w, bits, group_size, symmetric))
            g = group_size or w.shape[1]
            total += storage_bits(w.numel(), bits=bits, groups=w.numel() // g,
                                  symmetric=symmetric)
    settings = {"method": "rtn", "bits": bits, "group_size": group_size,
                "symmetric": symmetric, "include_head": include_head,
                "base_model": model.name}
    return Compressed(out, summarise(out, layers, total, settings))
