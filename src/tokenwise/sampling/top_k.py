"""Top-k: keep the k most likely tokens."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise.sampling.base import Sampler, check_int


class TopK(Sampler):
    """Keep the ``top_k`` highest logits of each row (ties at the boundary: all kept, as in
    transformers' ``TopKLogitsWarper``).

    Args:
        top_k: tokens to keep, >= 1 (more than the vocabulary keeps everything).
        min_tokens_to_keep: lower bound on kept tokens.

    Example:
        >>> TopK(2)(torch.tensor([[1.0, 3.0, 2.0, 0.0]])).tolist()
        [[-inf, 3.0, 2.0, -inf]]
    """

    name = "top_k"

    def __init__(self, top_k: int, min_tokens_to_keep: int = 1) -> None:
        self.top_k = check_int("top_k", top_k, 1)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def params(self) -> dict:
        """The settings."""
        return {"top_k": self.top_k, "min_tokens_to_keep": self.min_tokens_to_keep}

    def drop_mask(self, logits32: Tensor) -> Tensor:
        """Drop every token below the k-th largest logit."""
        k = min(max(self.top_k, self.min_tokens_to_keep), logits32.shape[-1])
        kth = torch.topk(logits32, k, dim=-1).values[..., -1:]  # (B, 1)
        return logits32 < kth
