"""Top-p (nucleus): keep the smallest set of likely tokens whose mass reaches p."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokenwise.sampling.base import Sampler, check_float, check_int, row_param, settle_param


def _check_p(name: str, value: object) -> float:
    return check_float(name, value, 0.0, 1.0)


class TopP(Sampler):
    """Nucleus sampling (Holtzman et al., 2020): keep the most likely tokens until their
    probability mass reaches ``top_p``.

    The rule is transformers' ``TopPLogitsWarper`` exactly: sort ascending, drop tokens
    whose cumulative mass is ``<= 1 - top_p``, so the token that crosses the threshold is
    kept.

    Args:
        top_p: mass to keep, in (0, 1]; one value or one per row.
        min_tokens_to_keep: lower bound on kept tokens.

    Example:
        >>> TopP(0.7)(torch.log(torch.tensor([[0.5, 0.3, 0.2]]))).isinf().tolist()
        [[False, False, True]]
    """

    name = "top_p"

    def __init__(self, top_p: float | Sequence[float] | Tensor = 0.9,
                 min_tokens_to_keep: int = 1) -> None:
        self.top_p = settle_param("top_p", top_p, _check_p)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def params(self) -> dict:
        """The settings."""
        return {"top_p": self.top_p, "min_tokens_to_keep": self.min_tokens_to_keep}

    def drop_mask(self, logits32: Tensor) -> Tensor:
        """Drop the low tail whose mass is at most ``1 - top_p``."""
        p = row_param("top_p", self.top_p, logits32.shape[0], logits32.device, _check_p)
        sorted_logits, order = torch.sort(logits32, descending=False, dim=-1)  # (B, V)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)  # (B, V) ascending mass
        drop_sorted = cumulative <= (1 - p)
        return drop_sorted.scatter(-1, order, drop_sorted)
