"""SEED-GRPO (Chen et al. 2025): smaller policy updates on prompts the model is unsure of."""

from __future__ import annotations

import math
import numbers

import torch

from tokenwise.errors import TokenwiseError


def scale_advantages(advantages: torch.Tensor, semantic_entropy: torch.Tensor | float,
                     n_samples: int, alpha: float = 1.0, kind: str = "linear") -> torch.Tensor:
    """Scale each prompt's GRPO advantages by its semantic entropy.

    ``A' = A · f(alpha · SE / SE_max)`` with ``SE_max = log G`` (the largest semantic
    entropy G answers can have: every answer its own meaning), and
    ``f(x) = 1 - x`` (``kind="linear"``) or ``f(x) = exp(-x)`` (``kind="exp"``). A
    prompt whose answers all agree (SE = 0) keeps its advantages; the more its answers
    disagree, the smaller its update.

    Args:
        advantages: ``(G,)`` advantages of one prompt's G answers, or ``(P, G)`` for P
            prompts.
        semantic_entropy: the prompt's semantic entropy (a number), or ``(P,)``.
        n_samples: G, the answers per prompt (>= 2).
        alpha: strength (>= 0; for "linear" at most 1, so the factor stays in [0, 1]).
        kind: ``"linear"`` or ``"exp"``.

    Returns:
        The scaled advantages, same shape and dtype (a new tensor).

    Example:
        >>> import math
        >>> a = torch.tensor([1.0, -1.0])
        >>> scale_advantages(a, math.log(2) / 2, n_samples=2, alpha=1.0)
        tensor([ 0.5000, -0.5000])
    """
    if not isinstance(advantages, torch.Tensor) or advantages.ndim not in (1, 2):
        raise TokenwiseError("advantages: allowed a (G,) or (P, G) tensor")
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) \
            or n_samples < 2:
        raise TokenwiseError(f"n_samples={n_samples!r}: allowed an integer >= 2 (SE_max = "
                             "log G is 0 for one sample)")
    if kind not in ("linear", "exp"):
        raise TokenwiseError(f"kind={kind!r}: allowed 'linear' or 'exp'")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha >= 0 \
            or not math.isfinite(alpha) or (kind == "linear" and alpha > 1):
        raise TokenwiseError(f"alpha={alpha!r}: allowed 0 <= alpha "
                             f"{'<= 1 for kind=linear' if kind == 'linear' else '(finite)'}")
    se = torch.as_tensor(semantic_entropy, dtype=torch.float64)
    se_max = math.log(n_samples)
    expected = () if advantages.ndim == 1 else (advantages.shape[0],)
    if tuple(se.shape) != expected:
        raise TokenwiseError(f"semantic_entropy of shape {tuple(se.shape)} for advantages of "
                             f"shape {tuple(advantages.shape)}: expected {expected}")
    if not torch.isfinite(se).all() or (se < -1e-9).any() or (se > se_max + 1e-6).any():
        raise TokenwiseError(f"semantic_entropy={se.tolist()}: allowed values in "
                             f"[0, log {n_samples} = {se_max:.4f}]")
    x = alpha * se.clamp(0.0, se_max) / se_max  # float noise at the ends only
    factor = 1.0 - x if kind == "linear" else torch.exp(-x)
    if advantages.ndim == 2:
        factor = factor[:, None]  # (P, 1)
    return (advantages.to(torch.float64) * factor).to(advantages.dtype)
