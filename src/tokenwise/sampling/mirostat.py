"""Mirostat v2: keep the surprise of the generated text near a target, by feedback."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, apply_drop, as_f32, check_float, check_logits

_LN2 = math.log(2.0)


class MirostatV2(Sampler):
    """Mirostat v2 (Basu et al., 2021, "Mirostat: A Neural Text Decoding Algorithm that
    Directly Controls Perplexity"; the v2 form llama.cpp ships).

    Each row keeps a threshold ``mu`` (bits, starting at ``2 * tau``): tokens whose
    surprise ``-log2 p`` exceeds ``mu`` are dropped (the most likely token always stays).
    After a token is chosen, :meth:`observe` moves ``mu`` by ``-eta * (s - tau)``, where
    ``s`` is the chosen token's surprise under the kept, renormalised distribution, so the
    text's surprise is steered towards ``tau``. This sampler has state: the engine
    (``tokenwise.generate``) and :meth:`as_hf` call :meth:`observe` for you; call
    :meth:`reset` before reusing it on another batch.

    Args:
        tau: target surprise in bits (> 0; llama.cpp's default 5.0).
        eta: learning rate of ``mu`` (> 0; default 0.1).

    Example:
        >>> s = MirostatV2(tau=1.0, eta=0.5)
        >>> out = s(torch.log(torch.tensor([[0.7, 0.2, 0.1]])))
        >>> out.isinf().tolist()            # mu = 2 bits: surprise 0.5, 2.3, 3.3
        [[False, True, True]]
        >>> s.observe(torch.tensor([0])); round(float(s.mu[0]), 3)   # 2 - 0.5 * (0 - 1)
        2.5
    """

    name = "mirostat_v2"

    def __init__(self, tau: float = 5.0, eta: float = 0.1) -> None:
        self.tau = check_float("tau", tau, 0.0, float("inf"), high_open=True)
        self.eta = check_float("eta", eta, 0.0, float("inf"), high_open=True)
        self.mu: Tensor | None = None
        self._kept_logp: Tensor | None = None

    def params(self) -> dict:
        """The settings."""
        return {"tau": self.tau, "eta": self.eta}

    def reset(self) -> None:
        """Forget ``mu`` (start a new generation)."""
        self.mu, self._kept_logp = None, None

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        batch = logits.shape[0]
        if self.mu is None or self.mu.shape[0] != batch:
            self.mu = torch.full((batch,), as_f32(2 * self.tau), device=logits.device)
        logp = logits.float().log_softmax(-1)  # (B, V)
        surprise = -logp / _LN2  # bits
        drop = surprise > self.mu[:, None]
        drop.scatter_(-1, logits.float().argmax(-1, keepdim=True), False)
        drop |= torch.isneginf(logits)
        kept = logp.masked_fill(drop, float("-inf"))
        self._kept_logp = kept.log_softmax(-1)  # (B, V) renormalised over the kept tokens
        return apply_drop(logits, drop)

    def observe(self, chosen: Tensor) -> None:
        """Update ``mu`` from the chosen tokens of the last call (``(B,)`` ids)."""
        if self._kept_logp is None or self.mu is None:
            raise TokenwiseError("MirostatV2.observe() before the sampler saw any logits")
        chosen = torch.as_tensor(chosen, device=self.mu.device).reshape(-1)
        if chosen.shape[0] != self.mu.shape[0]:
            raise TokenwiseError(f"{chosen.shape[0]} chosen tokens for a batch of "
                                 f"{self.mu.shape[0]} rows")
        s = -self._kept_logp.gather(-1, chosen[:, None])[:, 0] / _LN2  # (B,) bits
        # a token outside the kept set
        s = torch.nan_to_num(s, posinf=as_f32(2 * self.tau))
        self.mu = self.mu - self.eta * (s - self.tau)
