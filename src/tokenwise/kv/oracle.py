"""Oracle: keep given positions (the answer's span, known from the testbed) - an upper bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import Press, ScoreInputs


@dataclass
class Oracle(Press):
    """Keeps the positions in ``keep`` first, then the most recent tokens.

    Args:
        budget: tokens kept; the oracle needs ``len(keep)`` or more to keep all of them.
        keep: true positions to keep (e.g. the needle line's tokens).

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs, keep_indices
        >>> k = torch.zeros(1, 1, 6, 2)
        >>> inp = ScoreInputs(k, k, torch.arange(6).view(1, 1, 6), None, None, 1.0, 0)
        >>> keep_indices(Oracle(3, keep=[1, 2]).score(inp), 3).tolist()
        [[[1, 2, 5]]]
    """

    keep: Sequence[int] = field(default_factory=tuple)

    name = "oracle"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.keep, (str, bytes)) or not isinstance(self.keep, Sequence):
            raise TokenwiseError(f"keep={self.keep!r}: allowed a list of positions >= 0")
        bad = [p for p in self.keep if isinstance(p, bool) or not isinstance(p, int) or p < 0]
        if bad:
            raise TokenwiseError(f"keep={list(self.keep)!r}: allowed positions >= 0 "
                                 f"(bad: {bad[:3]})")
        self.keep = tuple(int(p) for p in self.keep)

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        pos = inputs.positions
        wanted = torch.tensor(self.keep, dtype=pos.dtype, device=pos.device)
        hit = torch.isin(pos, wanted)
        # recency breaks ties, so the remaining budget holds the latest tokens (the question);
        # a hit is lifted above every position (not by 1e9, which float32 scores round to
        # steps of 64, tying hits whose order topk then breaks differently on CPU and CUDA)
        return (pos + hit * (pos.max() + 1)).float()
