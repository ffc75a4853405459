"""An entropy/varentropy regime sampler in the spirit of entropix, decided per row."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise import signals
from tokenwise.sampling.base import Sampler, apply_drop, check_float, check_int, check_logits

REGIMES = ("confident", "exploring", "branching", "lost", "default")


class EntropyRegime(Sampler):
    """Choose how to sample from the model's own uncertainty, row by row (entropix-style).

    Each row's entropy ``H`` and varentropy ``V`` (nats, from the incoming logits) put it in
    one regime:

    - ``confident`` (``H < h_low`` and ``V < v_low``): keep only the top token (greedy).
    - ``exploring`` (``H > h_high``, ``V < v_low``): uniformly unsure: flatten with
      ``explore_temperature`` over the ``explore_k`` most likely tokens.
    - ``branching`` (``H < h_high``, ``V > v_high``): a few strong candidates among noise:
      keep the ``branch_k`` most likely at temperature 1.
    - ``lost`` (``H > h_high`` and ``V > v_high``): resample wide: ``lost_temperature`` with
      min-p ``lost_min_p``.
    - ``default``: temperature 1 with min-p ``default_min_p``.

    Unlike the entropix reference code, decisions are per row (never averaged over the
    batch), randomness comes fresh from the engine's per-row generator at every step, and
    the thresholds the method uses are the only state. The reference's "insert a clarifying
    token" action needs a model-specific token and is not done. :meth:`regimes` tells which
    regime each row falls in.

    Args:
        h_low, h_high: entropy thresholds (nats), ``0 < h_low <= h_high``.
        v_low, v_high: varentropy thresholds, ``0 < v_low <= v_high``.
        explore_temperature, explore_k: the exploring regime's settings.
        branch_k: the branching regime's width.
        lost_temperature, lost_min_p: the lost regime's settings.
        default_min_p: the default regime's min-p.

    Example:
        >>> sharp = torch.tensor([[8.0, 0.0, 0.0, 0.0]])
        >>> EntropyRegime().regimes(sharp), EntropyRegime()(sharp).isinf().tolist()
        (['confident'], [[False, True, True, True]])
    """

    name = "entropy_regime"

    def __init__(self, h_low: float = 0.5, h_high: float = 2.5, v_low: float = 1.0,
                 v_high: float = 4.0, explore_temperature: float = 1.3, explore_k: int = 40,
                 branch_k: int = 5, lost_temperature: float = 1.5, lost_min_p: float = 0.05,
                 default_min_p: float = 0.05) -> None:
        inf = float("inf")
        self.h_low = check_float("h_low", h_low, 0.0, inf, high_open=True)
        self.h_high = check_float("h_high", h_high, self.h_low, inf, low_open=False,
                                  high_open=True)
        self.v_low = check_float("v_low", v_low, 0.0, inf, high_open=True)
        self.v_high = check_float("v_high", v_high, self.v_low, inf, low_open=False,
                                  high_open=True)
        self.explore_temperature = check_float("explore_temperature", explore_temperature,
                                               0.0, inf, high_open=True)
        self.explore_k = check_int("explore_k", explore_k, 1)
        self.branch_k = check_int("branch_k", branch_k, 1)
        self.lost_temperature = check_float("lost_temperature", lost_temperature, 0.0, inf,
                                            high_open=True)
        self.lost_min_p = check_float("lost_min_p", lost_min_p, 0.0, 1.0, low_open=False)
        self.default_min_p = check_float("default_min_p", default_min_p, 0.0, 1.0,
                                         low_open=False)

    def params(self) -> dict:
        """The settings."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def _codes(self, logits32: Tensor) -> Tensor:
        h = signals.entropy(logits32)  # (B,)
        v = signals.varentropy(logits32)  # (B,)
        code = torch.full_like(h, 4, dtype=torch.long)  # default
        code[(h > self.h_high) & (v > self.v_high)] = 3  # lost
        code[(h < self.h_high) & (v > self.v_high)] = 2  # branching
        code[(h > self.h_high) & (v < self.v_low)] = 1  # exploring
        code[(h < self.h_low) & (v < self.v_low)] = 0  # confident
        return code

    def regimes(self, logits: Tensor) -> list[str]:
        """The regime of each row.

        Args:
            logits: ``(B, V)``.
        """
        return [REGIMES[c] for c in self._codes(check_logits(logits).float()).tolist()]

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        z = logits.float()  # (B, V)
        code = self._codes(z)[:, None]  # (B, 1)
        vocab = z.shape[-1]
        rank = z.argsort(-1, descending=True).argsort(-1)  # (B, V) 0 = most likely
        probs = z.softmax(-1)
        top = probs.max(-1, keepdim=True).values
        drop = torch.where(code == 0, rank >= 1,
               torch.where(code == 1, rank >= min(self.explore_k, vocab),
               torch.where(code == 2, rank >= min(self.branch_k, vocab),
               torch.where(code == 3, probs < self.lost_min_p * top,
                           probs < self.default_min_p * top))))
        drop = (drop & (rank >= 1)) | torch.isneginf(z)  # the top token always stays
        temperature = torch.where(code == 1, self.explore_temperature,
                                  torch.where(code == 3, self.lost_temperature, 1.0))
        scaled = (z / temperature).to(logits.dtype)
        return apply_drop(scaled, drop)
