"""SnapKV: the attention of an observation window of the last queries, pooled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import Press, ScoreInputs, check_positive, pool_scores


@dataclass
class SnapKV(Press):
    """SnapKV (Li et al., 2024): the mean attention that the last ``window`` queries pay each
    token, average-pooled over ``kernel`` neighbours; the window's own tokens are kept.

    Question-aware when the window holds the question (the prompt ends with it, the default
    in :func:`tokenwise.generate`); question-agnostic when the context is compressed before
    the question is read (``question_aware=False`` with :func:`tokenwise.kv.prefill`'s
    ``question``), as a cache reused across questions must be.

    The window's queries are recomputed from the layer's input with the model's own query
    projection and RoPE, so the model keeps its attention implementation (SDPA included).

    Args:
        budget: tokens kept.
        window: trailing queries that vote.
        kernel: pooling width (1: none).
        question_aware: compress after the question is read (True) or before (False).

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs
        >>> k = torch.randn(1, 1, 6, 8)
        >>> inp = ScoreInputs(k, k, torch.arange(6).view(1, 1, 6), k[:, :, -2:],
        ...                   torch.tensor([4, 5]), 8 ** -0.5, 0)
        >>> SnapKV(3, window=2).score(inp)[0, 0, -2:].tolist()
        [inf, inf]
    """

    window: int = 16
    kernel: int = 5
    question_aware: bool = True

    name = "snapkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.window = check_positive("window", self.window)
        self.kernel = check_positive("kernel", self.kernel)
        if not isinstance(self.question_aware, bool):
            raise TokenwiseError(f"question_aware={self.question_aware!r}: allowed True or False")

    def queries_needed(self) -> int | None:
        return self.window

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        attn = inputs.attention()  # (B, H_kv, W, S)
        scores = pool_scores(attn.mean(2), self.kernel)
        assert inputs.query_positions is not None
        first_window = inputs.query_positions.min().to(inputs.positions.device)
        in_window = inputs.positions >= first_window
        return torch.where(in_window, torch.full_like(scores, float("inf")), scores)
