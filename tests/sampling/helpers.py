"""Random batched logits shared by the sampler tests."""

from __future__ import annotations

import math

import torch
from hypothesis import settings


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


INF = math.inf
#: hypothesis settings shared by the sampler property tests
SETTINGS = settings(max_examples=40, deadline=None, database=None)
SCALES = torch.tensor([0.3, 1.0, 2.0, 3.0, 5.0, 10.0])[:, None]  # flat ... peaked rows


def make_logits(seed: int, vocab: int = 64, masked: float = 0.0,
                ties: bool = False) -> torch.Tensor:
    """Six seeded rows from flat to peaked; ``ties``: small integers (many equal logits).

    Every row keeps its first token finite: transformers' warpers fail on fully masked rows.
    """
    gen = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(-3, 3, (len(SCALES), vocab), generator=gen).float()
    else:
        x = torch.randn(len(SCALES), vocab, generator=gen) * SCALES
    if masked:
        drop = torch.rand(x.shape, generator=gen) < masked
        drop[:, 0] = False
        x = x.masked_fill(drop, -INF)
    return x
