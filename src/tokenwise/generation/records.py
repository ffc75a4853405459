"""What generation returns: one record per generated token, and the finished generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TokenRecord:
    """One generated token and what the model thought when it chose it.

    The signals describe the model's own next-token distribution (raw logits, before any
    sampler), so they say how sure the model was, whatever the sampler then did.

    Attributes:
        id: the token id.
        text: its decoded text.
        logprob: log-probability of the token under the model (nats).
        entropy: entropy of the model's distribution at this step (nats).
        varentropy: variance of surprisal at this step.
        rank: 1 + the number of tokens the model found more likely (1 = its top choice).
        step: 0 for the first generated token.
        row: the prompt's index in the batch.
        model: the model that produced the token (entropy-adaptive decoding uses two).
        top_ids: the most likely tokens at this step, best first, as many as the decode loop
            was asked for (``top_logprobs``; empty when none).
        top_logprobs: their log-probabilities (nats), the same order.
    """

    id: int
    text: str
    logprob: float
    entropy: float
    varentropy: float
    rank: int
    step: int
    row: int = 0
    model: str = ""
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the top alternatives only when some were asked for."""
        out = dict(self.__dict__)
        if self.top_ids:
            out["top_ids"], out["top_logprobs"] = list(self.top_ids), list(self.top_logprobs)
        else:
            del out["top_ids"], out["top_logprobs"]
        return out


@dataclass
class Generation:
    """A finished generation for one prompt.

    Attributes:
        prompt: the prompt.
        text: the generated text (cut before a stop string when one was hit).
        tokens: one :class:`TokenRecord` per generated token.
        finish_reason: ``"stop"`` (a stop string), ``"eos"`` (end-of-text token) or
            ``"length"`` (``max_new_tokens`` reached).
        prompt_tokens: tokens in the prompt (BOS included).
        seed: the seed the sampling used (None for greedy).
        kv: with ``generate(..., kv=...)``, what the compressed or quantised cache held at
            the end (:func:`tokenwise.generation.kv_report.cache_report`); None otherwise.
    """

    prompt: str
    text: str
    tokens: list[TokenRecord] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_tokens: int = 0
    seed: int | None = None
    kv: dict[str, Any] | None = None

    @property
    def mean_entropy(self) -> float:
        """Mean entropy over the generated tokens (nats)."""
        return sum(t.entropy for t in self.tokens) / len(self.tokens) if self.tokens else 0.0

    def window_entropies(
        self, window: int, direction: Literal["leading", "trailing"] = "leading"
    ) -> torch.Tensor:
        """``(N,)`` float32 mean entropy over a window of generated tokens, one per token.

        :func:`tokenwise.signals.window_entropy` of the records' entropies (nats):
        ``"leading"`` (ARES's forward window) averages tokens ``i .. i+window-1``,
        ``"trailing"`` ``i-window+1 .. i``, fewer at the ends.

        Args:
            window: Window length in tokens, an integer ``>= 1``.
            direction: ``"leading"`` (the default) or ``"trailing"``.

        Example:
            >>> import tokenwise as tw
            >>> gen = tw.generate("tw-small", "5+3=", max_new_tokens=4)
            >>> gen.window_entropies(2).shape == (len(gen.tokens),)
            True
        """
        from tokenwise.signals import window_entropy

        return window_entropy(self._entropies(), window, direction)

    def high_window_entropy(
        self,
        window: int,
        threshold: float | None = None,
        percentile: float | None = None,
        running: bool = False,
        direction: Literal["leading", "trailing"] = "leading",
    ) -> torch.Tensor:
        """``(N,)`` bool, True at high-window-entropy (HWE) generated tokens.

        :func:`tokenwise.signals.high_window_entropy` of the records' entropies: the window
        entropy strictly above a fixed ``threshold`` (nats), or above the ``percentile`` of
        this generation's window entropies (``running=True``: of earlier tokens' only, as a
        decoder would see them; the first token is then never marked).

        Args:
            window: Window length in tokens, an integer ``>= 1``.
            threshold: Fixed threshold in nats; give exactly one of it and ``percentile``.
            percentile: Percentile in ``(0, 100)``, e.g. 80 for about the top 20%.
            running: With ``percentile``, compare each token with earlier tokens only.
            direction: ``"leading"`` (ARES's forward window, the default) or ``"trailing"``.

        Example:
            >>> import tokenwise as tw
            >>> gen = tw.generate("tw-small", "5+3=", max_new_tokens=4)
            >>> bool(gen.high_window_entropy(2, threshold=1e9).any())
            False
        """
        from tokenwise.signals import high_window_entropy

        return high_window_entropy(self._entropies(), window, threshold=threshold,
                                   percentile=percentile, running=running, direction=direction)

    def _entropies(self) -> torch.Tensor:
        import torch

        return torch.tensor([t.entropy for t in self.tokens], dtype=torch.float32)  # (N,)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"prompt": self.prompt, "text": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "seed": self.seed,
                "mean_entropy": self.mean_entropy, "kv": self.kv,
                "tokens": [t.as_dict() for t in self.tokens]}
