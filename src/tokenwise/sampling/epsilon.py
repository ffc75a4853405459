"""Epsilon sampling: drop every token whose probability is below a fixed ``epsilon``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokenwise.sampling.base import Sampler, check_float, check_int, row_param, settle_param


def check_epsilon(name: str, value: object) -> float:
    """``value`` as an epsilon in (0, 1) (shared by Epsilon and Eta)."""
    return check_float(name, value, 0.0, 1.0, high_open=True)


def below_kth(logits32: Tensor, k: int) -> Tensor:
    """``(B, V)`` bool: True where a logit is strictly below the row's k-th largest.

    transformers' ``min_tokens_to_keep`` rule for epsilon and eta: a token tied with the
    k-th most likely one is kept too.

    Example:
        >>> below_kth(torch.tensor([[3.0, 1.0, 1.0, 0.0]]), 2).tolist()
        [[False, False, False, True]]
    """
    k = min(k, logits32.shape[-1])
    return logits32 < logits32.topk(k, dim=-1).values[:, -1:]


class Epsilon(Sampler):
    """Epsilon sampling (Hewitt et al., 2022, "Truncation Sampling as Language Model
    Desmoothing", Findings of EMNLP; arXiv 2210.15191): drop tokens with ``p < epsilon``.

    Same rule as transformers' ``EpsilonLogitsWarper``, ``min_tokens_to_keep`` included:
    the most likely tokens are kept, and so is every token tied with the last of them.

    Args:
        epsilon: probability cut-off, in (0, 1); one value or one per row. The paper
            suggests 3e-4 to 9e-4 for GPT-2-sized models.
        min_tokens_to_keep: keep at least this many of the most likely tokens (>= 1).

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
        >>> Epsilon(0.1)(probs.log()).isinf().tolist()
        [[False, False, False, True]]
        >>> Epsilon(0.6)(probs.log()).isinf().tolist()    # at least one token stays
        [[False, True, True, True]]
    """

    name = "epsilon"

    def __init__(self, epsilon: float | Sequence[float] | Tensor,
                 min_tokens_to_keep: int = 1) -> None:
        self.epsilon = settle_param("epsilon", epsilon, check_epsilon)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def params(self) -> dict:
        """The settings."""
        return {"epsilon": self.epsilon, "min_tokens_to_keep": self.min_tokens_to_keep}

    def drop_mask(self, logits32: Tensor) -> Tensor:
        """Drop tokens under ``epsilon`` (but not the ``min_tokens_to_keep`` most likely)."""
        eps = row_param("epsilon", self.epsilon, logits32.shape[0], logits32.device,
                        check_epsilon)  # (B, 1)
        empty = torch.isneginf(logits32).all(-1, keepdim=True)  # (B, 1): left as they are
        probs = logits32.masked_fill(empty, 0.0).softmax(-1)  # (B, V)
        return (probs < eps) & below_kth(logits32, self.min_tokens_to_keep)
