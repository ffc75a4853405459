"""YaRN (Peng et al., 2023): interpolate the low frequencies, keep the high ones, and scale
attention by ``0.1 ln(factor) + 1``, through transformers' own ``"yarn"`` RoPE type."""

from __future__ import annotations

from typing import Any


def rope_parameters(params: dict[str, Any], factor: float, original_length: int,
                    dim: int, beta_fast: float = 32.0, beta_slow: float = 1.0) -> dict[str, Any]:
    """New RoPE parameters for YaRN.

    Args:
        params: the model's RoPE parameters.
        factor: target length / trained length.
        original_length: the trained length (YaRN's ``original_max_position_embeddings``).
        dim: rotated dimensions per head (unused: transformers derives it).
        beta_fast: rotations above which a dimension is kept as trained (paper: 32).
        beta_slow: rotations below which a dimension is fully interpolated (paper: 1).

    Example:
        >>> p = rope_parameters({"rope_type": "default", "rope_theta": 1e4}, 4.0, 256, 16)
        >>> p["rope_type"], p["factor"], p["original_max_position_embeddings"]
        ('yarn', 4.0, 256)
    """
    out = {k: v for k, v in params.items() if k != "rope_type"}
    return {"rope_type": "yarn", **out, "factor": float(factor),
            "original_max_position_embeddings": int(original_length),
            "beta_fast": float(beta_fast), "beta_slow": float(beta_slow)}
