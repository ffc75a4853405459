"""Position interpolation (Chen et al., 2023): squeeze positions by the extension factor.

transformers' ``"linear"`` RoPE type divides every frequency by ``factor``, the same as
dividing positions; position ``target_length`` then turns each rotation as far as position
``original_length`` did in training.
"""

from __future__ import annotations

from typing import Any


def rope_parameters(params: dict[str, Any], factor: float, original_length: int,
                    dim: int) -> dict[str, Any]:
    """New RoPE parameters for position interpolation.

    Args:
        params: the model's RoPE parameters (``rope_theta``, ...).
        factor: target length / trained length.
        original_length: the trained length (unused: the factor carries it).
        dim: rotated dimensions per head (unused).

    Example:
        >>> rope_parameters({"rope_type": "default", "rope_theta": 1e4}, 4.0, 256, 16)
        {'rope_type': 'linear', 'rope_theta': 10000.0, 'factor': 4.0}
    """
    out = {k: v for k, v in params.items() if k not in ("rope_type", "factor")}
    return {"rope_type": "linear", **out, "factor": float(factor)}
