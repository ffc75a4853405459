"""Random eviction: the floor every scoring press must beat."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.kv.base import Press, ScoreInputs

#: the largest seed (a layer's generator takes ``seed * 1000 + layer``)
MAX_SEED = 2**53


@dataclass
class RandomPress(Press):
    """Uniformly random scores from a seeded generator (a lower bound).

    Args:
        seed: the generator's seed; the same seed evicts the same tokens.

    Example:
        >>> import torch
        >>> from tokenwise.kv.base import ScoreInputs
        >>> k = torch.zeros(1, 1, 5, 2)
        >>> inp = ScoreInputs(k, k, torch.arange(5).view(1, 1, 5), None, None, 1.0, 0)
        >>> torch.equal(RandomPress(2, seed=1).score(inp), RandomPress(2, seed=1).score(inp))
        True
    """

    seed: int = 0

    name = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        # each layer seeds its generator with seed * 1000 + layer: keep that within int64
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) \
                or not 0 <= self.seed <= MAX_SEED:
            raise TokenwiseError(f"seed={self.seed!r}: allowed a whole number from 0 to 2**53")

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        # drawn on the CPU whatever the cache's device (the same tokens evicted on a GPU as
        # on the CPU); device= is explicit, so a default device set elsewhere
        # (torch.set_default_device("cuda")) cannot meet the CPU generator
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1000 + inputs.layer)
        scores = torch.rand(inputs.positions.shape, generator=gen, device="cpu")
        return scores.to(inputs.keys.device)
