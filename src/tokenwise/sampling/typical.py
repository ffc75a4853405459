"""Locally typical sampling: keep the tokens whose surprisal is closest to the entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokenwise.sampling.base import (
    Sampler,
    check_float,
    check_int,
    row_param,
    settle_param,
)


def _check_mass(name: str, value: object) -> float:
    return check_float(name, value, 0.0, 1.0)


class Typical(Sampler):
    """Locally typical sampling (Meister et al., 2022, "Locally Typical Sampling", TACL;
    arXiv 2202.00666).

    Tokens are ranked by ``|-log p - H|``, the distance of their surprisal from the entropy
    ``H`` of the distribution, most typical first; the shortest prefix of that ranking whose
    probability mass reaches ``mass`` is kept. The rule is transformers'
    ``TypicalLogitsWarper`` exactly: the token at which the cumulative mass reaches ``mass``
    is kept, and so is every token exactly as typical as it (ties are kept together).
    ``mass=1`` keeps every token.

    ``min_tokens_to_keep`` counts in typicality order, as in transformers and llama.cpp: the
    ``min_tokens_to_keep`` most *typical* tokens are kept, not the most likely ones. So the
    most likely token can be dropped (that is the method: a very confident token in a
    high-entropy distribution is atypical). This is the one sampler here that overrides the
    package's "keep the most likely tokens" rule; it still keeps at least
    ``min_tokens_to_keep`` tokens (or every finite one, if fewer). One difference from
    transformers: tokens exactly as typical as the ``min_tokens_to_keep``-th are all kept
    (transformers keeps whichever its sort happens to put first).

    Args:
        mass: probability mass to keep, in (0, 1]; one value or one per row.
        min_tokens_to_keep: keep at least this many of the most typical tokens (>= 1).

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])   # H = 1.14 nats
        >>> Typical(0.5)(probs.log()).isinf().tolist()        # 0.3 is the most typical
        [[False, False, True, True]]
        >>> Typical(0.2)(probs.log()).isinf().tolist()        # the mode can be dropped
        [[True, False, True, True]]
    """

    name = "typical"
    keeps_most_likely = False  # drop_mask keeps the min_tokens_to_keep most *typical* tokens

    def __init__(self, mass: float | Sequence[float] | Tensor = 0.95,
                 min_tokens_to_keep: int = 1) -> None:
        self.mass = settle_param("mass", mass, _check_mass)
        self.min_tokens_to_keep = check_int("min_tokens_to_keep", min_tokens_to_keep, 1)

    def params(self) -> dict:
        """The settings."""
        return {"mass": self.mass, "min_tokens_to_keep": self.min_tokens_to_keep}

    def drop_mask(self, logits32: Tensor) -> Tensor:
        """Drop tokens past the typical set, keeping the ``min_tokens_to_keep`` most typical."""
        batch, vocab = logits32.shape
        mass = row_param("mass", self.mass, batch, logits32.device, _check_mass)  # (B, 1)
        # Rows that are entirely -inf are scored as uniform (the caller leaves them as they are).
        empty = torch.isneginf(logits32).all(-1, keepdim=True)  # (B, 1)
        z = logits32.masked_fill(empty, 0.0)
        log_p = torch.log_softmax(z, dim=-1)  # (B, V)
        p = log_p.exp()
        # 0 * log 0 = 0: -inf tokens add nothing to the entropy.
        ent = -torch.where(p > 0, p * log_p, 0.0).sum(-1, keepdim=True)  # (B, 1)
        distance = (-log_p - ent).abs()  # (B, V); +inf for -inf tokens, which sort last
        sorted_distance, order = torch.sort(distance, dim=-1, stable=True)
        cumulative = z.gather(-1, order).softmax(-1).cumsum(-1)  # (B, V)
        # Index of the first token at which the mass reaches `mass` (transformers' last_ind).
        last = (cumulative < mass).sum(-1, keepdim=True)  # (B, 1)
        # ... and at least the `min_tokens_to_keep` most typical; ties with the last one kept
        # stay too, so the kept set never depends on how the sort orders equal distances.
        last = last.clamp(min=min(self.min_tokens_to_keep, vocab) - 1, max=vocab - 1)
        drop_sorted = sorted_distance > sorted_distance.gather(-1, last)
        drop_sorted &= mass < 1.0  # mass = 1 keeps everything, whatever the rounding
        return drop_sorted.scatter(-1, order, drop_sorted)
