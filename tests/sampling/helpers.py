"""Random batched logits shared by the sampler tests."""

from __future__ import annotations

import torch


def random_logits(batch: int = 6, vocab: int = 200, seed: int = 0, masked: float = 0.0,
                  scale: float = 3.0) -> torch.Tensor:
    """Seeded ``(batch, vocab)`` logits, a share ``masked`` of them set to -inf."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen) * scale
    if masked:
        drop = torch.rand(batch, vocab, generator=gen) < masked
        drop[:, 0] = False  # every row keeps a finite token
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
