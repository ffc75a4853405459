"""Presence, frequency and repetition penalties: push down tokens the text already holds."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_float, check_int, check_logits

#: OpenAI's range for ``presence_penalty`` and ``frequency_penalty``.
PENALTY_LIMIT = 2.0


def _check_additive(name: str, value: object) -> float:
    return check_float(name, value, -PENALTY_LIMIT, PENALTY_LIMIT, low_open=False)


#: the repetition penalty's range: any logit of a real model stays finite when divided or
#: multiplied by a value in it.
MIN_REPETITION_PENALTY = 1e-6
MAX_REPETITION_PENALTY = 1e6


class Penalties(Sampler):
    """OpenAI's presence and frequency penalties and vLLM's repetition penalty, in vLLM's
    order (repetition first, then frequency, then presence).

    With ``c[t]`` the times token ``t`` was generated so far in the row (the prompt does not
    count, as in OpenAI's definition and vLLM)::

        logits[t] -= frequency_penalty * c[t] + presence_penalty * (c[t] > 0)

    The repetition penalty (Keskar et al., 2019, CTRL, in vLLM's and transformers' form)
    reads every token seen in the row, prompt and generated ones (as vLLM does): such a
    token's logit is divided by ``repetition_penalty`` when positive and multiplied by it
    when negative, so ``> 1`` discourages repeats and ``< 1`` encourages them. Nothing is
    dropped; masked (``-inf``) tokens stay masked.

    This sampler has state, the row's history: :meth:`observe` counts each chosen token and
    :meth:`observe_prompt` takes each row's prompt ids. ``tokenwise.generate``, the server
    and ``as_hf()`` (alone or inside a :class:`~tokenwise.sampling.Chain`) tell it both; used
    by hand, tell it yourself and call :meth:`reset` before another batch.

    Args:
        presence_penalty: subtracted once from every token generated before, in [-2, 2]
            (0 = off).
        frequency_penalty: subtracted per earlier occurrence, in [-2, 2] (0 = off).
        repetition_penalty: divisor of seen tokens' positive logits and multiplier of their
            negative ones, in [1e-6, 1e6] (1 = off; values farther from 1 would overflow
            float32 logits).

    Example:
        >>> p = Penalties(presence_penalty=0.5, frequency_penalty=0.25)
        >>> logits = torch.tensor([[1.0, 2.0, 3.0]])
        >>> _ = p(logits); p.observe(torch.tensor([2])); _ = p(logits)
        >>> p.observe(torch.tensor([2])); p(logits).tolist()     # 3 - 0.5 - 2 * 0.25
        [[1.0, 2.0, 2.0]]
        >>> r = Penalties(repetition_penalty=2.0)
        >>> r.observe_prompt([[0, 1]]); r(torch.tensor([[-1.0, 2.0, 3.0]])).tolist()
        [[-2.0, 1.0, 3.0]]
    """

    name = "penalties"

    def __init__(self, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 repetition_penalty: float = 1.0) -> None:
        self.presence_penalty = _check_additive("presence_penalty", presence_penalty)
        self.frequency_penalty = _check_additive("frequency_penalty", frequency_penalty)
        # Bounded so that dividing or multiplying any float32 logit stays finite (a penalty
        # of 1e-300 would turn logits into inf and the distribution into NaN).
        self.repetition_penalty = check_float("repetition_penalty", repetition_penalty,
                                              MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY,
                                              low_open=False)
        self.reset()

    def params(self) -> dict:
        """The settings."""
        return {"presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty,
                "repetition_penalty": self.repetition_penalty}

    def reset(self) -> None:
        """Forget the history (start of a new generation)."""
        self._prompt_ids: list[list[int]] | None = None
        self._counts: Tensor | None = None  # (B, V) float32: times generated
        self._in_prompt: Tensor | None = None  # (B, V) bool
        self._generated = False

    def observe_prompt(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Each row's prompt token ids (read by the repetition penalty only).

        Args:
            prompt_ids: one list of ids per row, in row order.
        """
        if self._generated:
            raise TokenwiseError("Penalties.observe_prompt() after generated tokens were "
                                 "observed; call reset() before a new generation")
        if isinstance(prompt_ids, Tensor):
            prompt_ids = prompt_ids.tolist()
        rows = []
        for r, row in enumerate(prompt_ids):
            if isinstance(row, Tensor):
                row = row.tolist()
            rows.append([check_int(f"prompt_ids[{r}][{i}]", t, 0) for i, t in enumerate(row)])
        self._prompt_ids, self._counts, self._in_prompt = rows, None, None

    def _history(self, batch: int, vocab: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(counts, in_prompt)`` for a ``(batch, vocab)`` call, made on first use."""
        if self._counts is not None and self._counts.shape != (batch, vocab):
            if self._generated:
                raise TokenwiseError(
                    f"Penalties holds the history of {self._counts.shape[0]} row(s) over "
                    f"{self._counts.shape[1]} tokens and got logits of shape "
                    f"{(batch, vocab)}; call reset() before another batch")
            self._counts = None
        if self._counts is None:
            in_prompt = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
            if self._prompt_ids is not None:
                if len(self._prompt_ids) != batch:
                    raise TokenwiseError(f"Penalties was given {len(self._prompt_ids)} prompt(s) "
                                         f"for a batch of {batch} rows")
                for r, row in enumerate(self._prompt_ids):
                    if row and max(row) >= vocab:
                        raise TokenwiseError(f"prompt token id {max(row)} of row {r} is not in "
                                             f"this vocabulary of {vocab} tokens")
                    in_prompt[r, torch.tensor(row, dtype=torch.long, device=device)] = True
            self._in_prompt = in_prompt
            self._counts = torch.zeros(batch, vocab, dtype=torch.float32, device=device)
        assert self._in_prompt is not None
        if self._counts.device != device:
            self._counts, self._in_prompt = self._counts.to(device), self._in_prompt.to(device)
        return self._counts, self._in_prompt

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        counts, in_prompt = self._history(*logits.shape, logits.device)  # (B, V) each
        x = logits.float().clone()  # float32 whatever the input: fp16 = its float32 copy
        if self.repetition_penalty != 1.0:
            seen = in_prompt | (counts > 0)
            scaled = torch.where(x > 0, x / self.repetition_penalty,
                                 x * self.repetition_penalty)
            x = torch.where(seen, scaled, x)
        if self.frequency_penalty:
            x = x - self.frequency_penalty * counts
        if self.presence_penalty:
            x = x - self.presence_penalty * (counts > 0)
        return x.to(logits.dtype)

    def observe(self, chosen: Tensor) -> None:
        """Count the chosen tokens of the last call (``(B,)`` ids)."""
        if self._counts is None:
            raise TokenwiseError("Penalties.observe() before the sampler saw any logits")
        chosen = torch.as_tensor(chosen, device=self._counts.device).reshape(-1).long()
        batch, vocab = self._counts.shape
        if chosen.shape[0] != batch:
            raise TokenwiseError(f"{chosen.shape[0]} chosen tokens for a batch of {batch} rows")
        if bool(((chosen < 0) | (chosen >= vocab)).any()):
            raise TokenwiseError(f"chosen ids {chosen.tolist()}: allowed 0 to {vocab - 1}")
        self._counts[torch.arange(batch, device=chosen.device), chosen] += 1
        self._generated = True
