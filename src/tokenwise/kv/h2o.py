"""H2O: heavy hitters (accumulated attention) plus a recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import Press, ScoreInputs


@dataclass
class H2O(Press):
    """Heavy-Hitter Oracle (Zhang et al., 2023): each token's attention received, summed over
    every query the cache has seen (carried across compressions), and the last ``recent``
    positions always kept.

    Unlike the public mask-based version, the evicted tokens are gone from the tensors. The
    attention comes from the queries recomputed in blocks, so no full ``(T, T)`` matrix is
    held; during decoding it accumulates the queries since the last compression.

    Args:
        budget: tokens kept.
        recent: latest positions always kept.

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs
        >>> k = torch.randn(1, 1, 4, 8)
        >>> inp = ScoreInputs(k, k, torch.arange(4).view(1, 1, 4), k, torch.arange(4),
        ...                   8 ** -0.5, 0)
        >>> H2O(2, recent=1).score(inp)[0, 0, -1].item()
        inf
    """

    recent: int = 8

    name = "h2o"
    window_queries = None
    accumulates = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.recent, bool) or not isinstance(self.recent, int) or self.recent < 0:
            raise TokenwiseError(f"recent={self.recent!r}: allowed a whole number >= 0")

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        acc = inputs.attention().sum(2)  # (B, H_kv, S)
        if inputs.state is not None:
            acc = acc + torch.nan_to_num(inputs.state, posinf=0.0)
        newest = inputs.positions.max()
        recent = inputs.positions > newest - self.recent
        return torch.where(recent, torch.full_like(acc, float("inf")), acc)
