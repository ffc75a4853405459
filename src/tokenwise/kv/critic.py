"""CRITIC-style value-weighted importance: attention received times the value's norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenwise.kv.base import Press, ScoreInputs, check_positive, pool_scores


@dataclass
class Critic(Press):
    """A token matters by how much it is attended *and* how much it moves the output: the
    window's mean attention to it times ``||v||`` (the seed paper's "compress by token
    importance", which names no formula; this is the value-weighted reading, as in
    VATP). The window's own tokens are kept.

    Args:
        budget: tokens kept.
        window: trailing queries that vote.
        kernel: pooling width (1: none).

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs
        >>> k = torch.zeros(1, 1, 3, 2)  # equal attention: the value's norm decides
        >>> v = torch.tensor([[[[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]]]])
        >>> inp = ScoreInputs(k, v, torch.arange(3).view(1, 1, 3), k[:, :, -1:],
        ...                   torch.tensor([2]), 1.0, 0)
        >>> s = Critic(2, window=1, kernel=1).score(inp)[0, 0]
        >>> bool(s[1] > s[0])
        True
    """

    window: int = 16
    kernel: int = 1

    name = "critic"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = check_positive("window", self.window)
        self.kernel = check_positive("kernel", self.kernel)

    def queries_needed(self) -> int | None:
        return self.window

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        attn = inputs.attention().mean(2)  # (B, H_kv, S)
        scores = pool_scores(attn * inputs.values.float().norm(dim=-1), self.kernel)
        assert inputs.query_positions is not None
        in_window = inputs.positions >= inputs.query_positions.min().to(scores.device)
        return torch.where(in_window, torch.full_like(scores, float("inf")), scores)
