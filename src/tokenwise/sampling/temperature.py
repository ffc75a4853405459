"""Temperature: divide the logits by T (the only sampler that changes kept values)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokenwise.sampling.base import (
    Sampler,
    check_float,
    check_logits,
    row_param,
    settle_param,
)


def _check_temperature(name: str, value: object) -> float:
    return check_float(name, value, 0.0, float("inf"), low_open=False, high_open=True)


class Temperature(Sampler):
    """Scale logits by ``1 / temperature``; ``temperature=0`` means greedy.

    ``T < 1`` sharpens the distribution, ``T > 1`` flattens it. ``T = 0`` keeps only the
    most likely token (its logit unchanged, every other one ``-inf``), so sampling after it
    is greedy decoding. Masked (``-inf``) entries stay ``-inf``.

    Args:
        temperature: ``T >= 0``, one value or one per row.

    Example:
        >>> Temperature(2.0)(torch.tensor([[2.0, 4.0]])).tolist()
        [[1.0, 2.0]]
        >>> Temperature(0)(torch.tensor([[2.0, 4.0]])).tolist()
        [[-inf, 4.0]]
    """

    name = "temperature"

    def __init__(self, temperature: float | Sequence[float] | Tensor = 1.0) -> None:
        self.temperature = settle_param("temperature", temperature, _check_temperature)

    def params(self) -> dict:
        """The settings."""
        return {"temperature": self.temperature}

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        t = row_param("temperature", self.temperature, logits.shape[0], logits.device,
                      _check_temperature)  # (B, 1)
        greedy = t == 0  # (B, 1)
        x, divisor = logits.float(), torch.where(greedy, 1.0, t)
        scaled = x / divisor  # (B, V)
        # Past float32's range (T near 0, or huge) the quotient overflows to +inf, or a masked
        # -inf over an infinite T is NaN: such rows are shifted by their max first (the
        # softmax is the same), so every value is <= 0, and masked entries stay -inf.
        broken = (torch.isnan(scaled) | torch.isposinf(scaled)).any(-1, keepdim=True)
        if bool(broken.any()):
            shifted = (x - x.amax(-1, keepdim=True)) / divisor
            shifted = torch.where(torch.isneginf(x), x, shifted)
            scaled = torch.where(broken, shifted, scaled)
        scaled = scaled.to(logits.dtype)
        if bool(greedy.any()):
            best = logits.float().argmax(-1, keepdim=True)  # (B, 1)
            only_best = torch.full_like(logits, float("-inf")).scatter(
                -1, best, logits.gather(-1, best))
            scaled = torch.where(greedy, only_best, scaled)
        return scaled
