"""StreamingLLM: keep the first tokens (attention sinks) and the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import Press, ScoreInputs


@dataclass
class StreamingLLM(Press):
    """Sinks + recent window (Xiao et al., 2023): the first ``sinks`` positions always stay,
    the rest of the budget goes to the latest tokens.

    Args:
        budget: tokens kept (see :class:`~tokenwise.kv.base.Press`).
        sinks: leading positions always kept.

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs, keep_indices
        >>> k = torch.zeros(1, 1, 6, 4)
        >>> inp = ScoreInputs(k, k, torch.arange(6).view(1, 1, 6), None, None, 0.5, 0)
        >>> keep_indices(StreamingLLM(3, sinks=1).score(inp), 3).tolist()
        [[[0, 4, 5]]]
    """

    sinks: int = 4

    name = "streaming"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise TokenwiseError(f"sinks={self.sinks!r}: allowed a whole number >= 0")

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        pos = inputs.positions.float()
        return torch.where(inputs.positions < self.sinks, torch.full_like(pos, float("inf")), pos)
