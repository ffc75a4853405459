"""Expected attention: the attention future queries are expected to pay, from the statistics
of recent queries."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenwise.kv.base import Press, ScoreInputs, check_positive


@dataclass
class ExpectedAttention(Press):
    """Future queries modelled as Gaussian with the mean ``mu`` and per-dimension variance
    ``sigma^2`` of the last ``window`` queries; a key's expected attention logit is
    ``s * mu.k + s^2/2 * sum(sigma^2 k^2)`` (the Gaussian moment generating function), softmaxed
    over the cache and weighted by ``||v||`` as in kvpress's ExpectedAttentionPress. Unlike
    kvpress, the rotation of future positions is not averaged in (the statistics are taken
    from RoPE'd queries of the recent positions). The window's own tokens are kept.

    Args:
        budget: tokens kept.
        window: recent queries the statistics come from.

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs
        >>> k = torch.randn(1, 1, 5, 4)
        >>> inp = ScoreInputs(k, k, torch.arange(5).view(1, 1, 5), k[:, :, -2:],
        ...                   torch.tensor([3, 4]), 0.5, 0)
        >>> ExpectedAttention(3, window=2).score(inp).shape
        torch.Size([1, 1, 5])
    """

    window: int = 32

    name = "expected_attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = check_positive("window", self.window)

    def queries_needed(self) -> int | None:
        return self.window

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        assert inputs.queries is not None and inputs.query_positions is not None
        b, h_kv, _, d = inputs.keys.shape
        q = inputs.queries.float()
        group = q.shape[1] // h_kv
        q = q.view(b, h_kv, group, q.shape[2], d)
        mu = q.mean(3)  # (B, H_kv, G, D)
        var = q.var(3, unbiased=False) if q.shape[3] > 1 else torch.zeros_like(mu)
        keys = inputs.keys.float()
        sc = inputs.scaling
        logits = torch.einsum("bhgd,bhsd->bhgs", mu, keys) * sc \
            + 0.5 * sc * sc * torch.einsum("bhgd,bhsd->bhgs", var, keys * keys)
        scores = logits.softmax(-1).mean(2) * inputs.values.float().norm(dim=-1)
        in_window = inputs.positions >= inputs.query_positions.min().to(scores.device)
        return torch.where(in_window, torch.full_like(scores, float("inf")), scores)
