"""`Chain`: samplers applied one after another, in the order given."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_logits


class Chain(Sampler):
    """Apply samplers left to right; the order is yours and is part of the result.

    Engines disagree on the order: transformers applies temperature first, llama.cpp last
    (``top_k; typical; top_p; min_p; temperature``), vLLM in between. Temperature changes
    which tokens a later probability threshold keeps, so ``Chain([Temperature(0.7),
    TopP(0.9)])`` and ``Chain([TopP(0.9), Temperature(0.7)])`` differ: write the one you mean.
    Each step sees the previous step's output (dropped tokens stay ``-inf``).

    Args:
        samplers: the steps, applied in this order (at least one).

    Example:
        >>> import torch
        >>> from tokenwise.sampling import MinP, Temperature, TopK
        >>> chain = Chain([TopK(3), MinP(0.2), Temperature(0.5)])
        >>> chain(torch.tensor([[3.0, 2.0, 1.0, 0.0]])).tolist()
        [[6.0, 4.0, -inf, -inf]]
    """

    name = "chain"

    def __init__(self, samplers: Sequence[Sampler]) -> None:
        steps = list(samplers)
        if not steps:
            raise TokenwiseError("Chain needs at least one sampler; got an empty list")
        bad = [s for s in steps if not isinstance(s, Sampler)]
        if bad:
            raise TokenwiseError(f"Chain takes tokenwise samplers; got {bad[0]!r}")
        self.samplers = steps

    def params(self) -> dict:
        """The steps' names and settings, in order."""
        return {"samplers": [{"name": s.name, **s.params()} for s in self.samplers]}

    def __repr__(self) -> str:
        return f"Chain([{', '.join(repr(s) for s in self.samplers)}])"

    def observe(self, chosen: Tensor) -> None:
        """Pass the chosen tokens to every step (stateful samplers need them)."""
        for sampler in self.samplers:
            sampler.observe(chosen)

    def observe_prompt(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Pass each row's prompt ids to every step (the history readers keep them)."""
        for sampler in self.samplers:
            sampler.observe_prompt(prompt_ids)

    def reset(self) -> None:
        """Reset every step."""
        for sampler in self.samplers:
            sampler.reset()

    def __call__(self, logits: Tensor) -> Tensor:
        out = check_logits(logits)
        for sampler in self.samplers:
            out = sampler(out)
        return out
