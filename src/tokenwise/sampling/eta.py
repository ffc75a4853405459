"""Eta sampling: an entropy-dependent cut-off, ``min(epsilon, sqrt(epsilon) * exp(-H))``."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise.sampling.base import row_param
from tokenwise.sampling.epsilon import Epsilon, below_kth, check_epsilon


class Eta(Epsilon):
    """Eta sampling (Hewitt et al., 2022, "Truncation Sampling as Language Model
    Desmoothing", Findings of EMNLP; arXiv 2210.15191): drop tokens with
    ``p < eta = min(epsilon, sqrt(epsilon) * exp(-H))``, ``H`` the entropy in nats.

    A flat (high-entropy) distribution gets a lower cut-off, so it keeps more of its tail.
    Same rule as transformers' ``EtaLogitsWarper``, ``min_tokens_to_keep`` included: the
    most likely tokens are kept, and so is every token tied with the last of them.

    Args:
        epsilon: in (0, 1); one value or one per row. The paper suggests 3e-4 to 2e-3
            (transformers: 3e-4 to 4e-3, by model size).
        min_tokens_to_keep: keep at least this many of the most likely tokens (>= 1).

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])   # H = 1.14, eta = 0.175
        >>> Eta(0.3)(probs.log()).isinf().tolist()
        [[False, False, True, True]]
    """

    name = "eta"  # same arguments as Epsilon; only the threshold differs

    def drop_mask(self, logits32: Tensor) -> Tensor:
        """Drop tokens under eta (but not the ``min_tokens_to_keep`` most likely)."""
        eps = row_param("epsilon", self.epsilon, logits32.shape[0], logits32.device,
                        check_epsilon)  # (B, 1)
        empty = torch.isneginf(logits32).all(-1, keepdim=True)  # (B, 1): left as they are
        z = logits32.masked_fill(empty, 0.0)
        # Entropy as torch.distributions.Categorical computes it (as transformers does):
        # clamping log p at the most negative float makes 0 * log 0 = 0, never NaN.
        log_p = z - z.logsumexp(-1, keepdim=True)
        log_p_safe = log_p.clamp(min=torch.finfo(log_p.dtype).min)
        ent = -(log_p_safe * log_p.softmax(-1)).sum(-1, keepdim=True)  # (B, 1)
        eta = torch.minimum(eps, eps.sqrt() * torch.exp(-ent))  # (B, 1)
        probs = z.softmax(-1)  # (B, V)
        return (probs < eta) & below_kth(logits32, self.min_tokens_to_keep)
