"""Min-p: drop tokens less likely than ``min_p`` times the most likely one."""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (used in the doctest)
from torch import Tensor

from tokenwise.sampling.base import Sampler, check_float, check_int, row_param, settle_param


def _check_min_p(name: str, value: object) -> float:
    return check_float(name, value, 0.0, 1.0, low_open=False)


class MinP(Sampler):
    """Min-p sampling (Nguyen et al., 2024): drop ``p < min_p * max p``.

    The threshold scales with the model's confidence: a peaked distribution keeps few
    tokens, a flat one many. Same rule as transformers' ``MinPLogitsWarper``.

    Args:
        min_p: in [0, 1]; one value or one per row (0 keeps everything).
        min_tokens_to_keep: lower bound on kept tokens.

    Example:
        >>> MinP(0.5)(torch.log(torch.tensor([[0.5, 0.3, 0.2]]))).isinf().tolist()
        [[False, False, True]]
    """

    name = "min_p"

    def __init__(self, min_p: float | Sequence[float] | Tensor = 0.05,
                 min_tokens_to_keep: int = 1) -> None:
        self.min_p = settle_param("min_p", min_p, _check_min_p)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def params(self) -> dict:
        """The settings."""
        return {"min_p": self.min_p, "min_tokens_to_keep": self.min_tokens_to_keep}

    def drop_mask(self, logits32: Tensor) -> Tensor:
        """Drop tokens under the scaled threshold."""
        m = row_param("min_p", self.min_p, logits32.shape[0], logits32.device, _check_min_p)
        probs = logits32.softmax(-1)  # (B, V)
        return probs < m * probs.max(-1, keepdim=True).values
