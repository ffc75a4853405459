"""NTK-aware scaled RoPE (bloc97, 2023): raise the base so the lowest frequency interpolates
by the extension factor while the highest ones stay as trained.

``base' = base * factor ** (dim / (dim - 2))``. This is the static rule; transformers'
``"dynamic"`` type re-derives the base from the current length at every call, which changes
what a position means as a sequence grows, so it is not used here.
"""

from __future__ import annotations

from typing import Any


def ntk_base(base: float, factor: float, dim: int) -> float:
    """The NTK-aware base for ``factor`` over ``dim`` rotated dimensions.

    Example:
        >>> round(ntk_base(10_000.0, 4.0, 16), 1)
        48760.5
    """
    return float(base) * float(factor) ** (dim / (dim - 2))


def rope_parameters(params: dict[str, Any], factor: float, original_length: int,
                    dim: int) -> dict[str, Any]:
    """New RoPE parameters for NTK-aware scaling (a plain ``"default"`` RoPE, new base).

    Args:
        params: the model's RoPE parameters.
        factor: target length / trained length.
        original_length: the trained length (unused).
        dim: rotated dimensions per head.

    Example:
        >>> p = rope_parameters({"rope_type": "default", "rope_theta": 1e4}, 4.0, 256, 16)
        >>> p["rope_type"], round(p["rope_theta"])
        ('default', 48761)
    """
    out = dict(params)
    out["rope_theta"] = ntk_base(params.get("rope_theta", 10_000.0), factor, dim)
    return out
