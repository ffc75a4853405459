"""Key-norm: keep the tokens whose keys have the smallest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenwise.kv.base import Press, ScoreInputs


@dataclass
class KeyNorm(Press):
    """Low key norm predicts high attention (Devoto et al., 2024): score = ``-||k||``.

    Reads no queries and no attention, so it works with any attention implementation.

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs
        >>> k = torch.tensor([[[[3.0, 4.0], [0.0, 1.0]]]])
        >>> inp = ScoreInputs(k, k, torch.arange(2).view(1, 1, 2), None, None, 1.0, 0)
        >>> KeyNorm(1).score(inp).tolist()
        [[[-5.0, -1.0]]]
    """

    name = "key_norm"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -inputs.keys.float().norm(dim=-1)
