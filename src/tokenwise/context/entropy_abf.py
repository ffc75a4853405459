"""Entropy-ABF (Zhang et al., 2024, "Extending LLMs' Context Window with 100 Samples").

Two changes keep attention entropy where it was inside the trained window:

- RoPE's base is raised (adjusted base frequency): the paper takes LLaMA-2 from 10,000 to
  500,000, a factor of 50, and keeps that base for every target length; we apply the same
  factor to the model's own base (``base_factor``) unless a base is given.
- queries are scaled by ``lambda = max(1, log_L(pos + 1))``, L the trained length, so logits
  grow with ``log(position)`` past the window as the number of keys does. The first layers
  may be left unscaled (the paper skips two); windowed layers (Gemma 3's sliding layers) never
  see more keys than their window and are left unscaled too.

The scaling is an attention function (:mod:`tokenwise.models.attention`) registered in
transformers' ``AttentionInterface`` under :data:`ATTENTION_NAME`; it reads its settings from
``module.config.tokenwise_context`` (so they are saved with the config) and hands the scaled
queries to SDPA (or to an explicit softmax that returns the weights, for
:func:`tokenwise.context.attention_entropies`).

Unlike the public code (GAIR-NLP/Entropy-ABF): the layer skip is read by the forward that
applies the scaling; nothing private (``_init_rope``) is patched; the base, the trained
length and the factor come from the model and the call, not constants.
"""

from __future__ import annotations

from typing import Any

# The scaled attention itself lives with the models, so that ``tokenwise.load`` can register
# it when a saved config names it; re-exported here, where the method is.
from tokenwise.models.attention import ATTENTION_NAME, query_scale, register, scaled_attention

__all__ = ["ATTENTION_NAME", "PAPER_BASE_FACTOR", "PAPER_SKIP_LAYERS", "default_skip_layers",
           "query_scale", "register", "rope_parameters", "scaled_attention"]

#: the paper's base change: LLaMA-2's 10,000 -> 500,000.
PAPER_BASE_FACTOR = 50.0
#: the paper leaves the first two layers unscaled (on models deep enough to spare them).
PAPER_SKIP_LAYERS = 2


def default_skip_layers(num_layers: int) -> int:
    """The paper's two unscaled layers, or none on models of fewer than 8 layers (tw-reader
    has 2: skipping 2 would leave no layer scaled).

    Example:
        >>> default_skip_layers(30), default_skip_layers(2)
        (2, 0)
    """
    return PAPER_SKIP_LAYERS if num_layers >= 8 else 0


def rope_parameters(params: dict[str, Any], factor: float, original_length: int, dim: int,
                    base: float | None = None,
                    base_factor: float = PAPER_BASE_FACTOR) -> dict[str, Any]:
    """New RoPE parameters: the model's RoPE with the raised base.

    Args:
        params: the model's RoPE parameters.
        factor: target length / trained length (unused: the paper's base does not depend on it).
        original_length: the trained length (unused here; the query scale uses it).
        dim: rotated dimensions per head (unused).
        base: the new base; default ``rope_theta * base_factor``.
        base_factor: the multiplier of the paper (10,000 -> 500,000).

    Example:
        >>> rope_parameters({"rope_type": "default", "rope_theta": 1e4}, 4.0, 256, 16)
        {'rope_type': 'default', 'rope_theta': 500000.0}
    """
    out = dict(params)
    out["rope_theta"] = float(base) if base is not None else float(
        params.get("rope_theta", 10_000.0)) * float(base_factor)
    return out
