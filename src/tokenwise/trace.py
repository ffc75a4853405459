"""`TokenTrace`: what `tokenwise.score` learns about every token of a text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TokenTrace:
    """Per-token signals of one text under one model.

    Every token of the text has one row. Token ``i`` was predicted from the tokens before it
    (and the model's BOS token, when it has one); ``context_lengths[i]`` says how many tokens
    of left context the prediction saw, which is less than ``i`` only for texts longer than
    the scoring window.

    Attributes:
        text: the scored text.
        model: the model's name.
        token_ids: ``(T,)`` int64 ids of the text's tokens.
        pieces: the text piece of each token (``"".join(pieces)`` is the text, up to
            characters split across byte-level tokens).
        offsets: ``(start, end)`` character span of each token in ``text``.
        logprobs: ``(T,)`` float32, log-probability of each actual token (natural log).
        entropies: ``(T,)`` float32, entropy of the predicted distribution (nats).
        varentropies: ``(T,)`` float32, variance of surprisal under that distribution.
        top_ids: ``(T, k)`` int64, the k most likely tokens at each position.
        top_logprobs: ``(T, k)`` float32, their log-probabilities.
        top_pieces: the decoded text of ``top_ids``.
        context_lengths: ``(T,)`` int64, tokens of left context each prediction saw.
        window: the window (tokens) the model was run with.
        stride: new tokens scored per window after the first.

    Example:
        >>> import tokenwise as tw
        >>> trace = tw.score("tw-small", "Q: Where was Dalvin Orsk born?")
        >>> len(trace) == len(trace.pieces)
        True
    """

    text: str
    model: str
    token_ids: torch.Tensor
    pieces: list[str]
    offsets: list[tuple[int, int]]
    logprobs: torch.Tensor
    entropies: torch.Tensor
    varentropies: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    top_pieces: list[list[str]]
    context_lengths: torch.Tensor
    window: int
    stride: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def surprisals(self) -> torch.Tensor:
        """``(T,)`` surprisal ``-log p`` of each actual token, in nats."""
        return -self.logprobs

    @property
    def mean_entropy(self) -> float:
        """Mean predictive entropy over the text's tokens, in nats."""
        return float(self.entropies.mean()) if len(self) else 0.0

    @property
    def perplexity(self) -> float:
        """``exp`` of the mean surprisal of the text's tokens."""
        return math.exp(float(self.surprisals.mean())) if len(self) else 1.0

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per token (JSON-ready).

        Example:
            >>> import tokenwise as tw
            >>> tw.score("tw-small", "hello")[0:1].rows()[0]["piece"]
            'hello'
        """
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "index": i,
                    "id": int(self.token_ids[i]),
                    "piece": self.pieces[i],
                    "offset": list(self.offsets[i]),
                    "logprob": float(self.logprobs[i]),
                    "surprisal": float(-self.logprobs[i]),
                    "entropy": float(self.entropies[i]),
                    "varentropy": float(self.varentropies[i]),
                    "context": int(self.context_lengths[i]),
                    "top": [
                        {"id": int(t), "piece": p, "logprob": float(lp)}
                        for t, p, lp in zip(
                            self.top_ids[i].tolist(),
                            self.top_pieces[i],
                            self.top_logprobs[i].tolist(),
                            strict=True,
                        )
                    ],
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The whole trace as a JSON-ready dict: summary fields plus ``tokens`` rows."""
        return {
            "model": self.model,
            "text": self.text,
            "n_tokens": len(self),
            "window": self.window,
            "stride": self.stride,
            "mean_entropy": self.mean_entropy,
            "perplexity": self.perplexity,
            "units": "nats",
            **({"meta": self.meta} if self.meta else {}),
            "tokens": self.rows(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The trace as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def __getitem__(self, item: slice) -> TokenTrace:
        """A trace of a contiguous slice of tokens (``trace[10:20]``)."""
        if not isinstance(item, slice):
            raise TypeError("TokenTrace supports slicing only, e.g. trace[3:8]; use rows()[i]")
        idx = range(len(self))[item]
        sl = slice(idx.start, idx.stop, idx.step)
        return TokenTrace(
            text=self.text,
            model=self.model,
            token_ids=self.token_ids[sl],
            pieces=self.pieces[sl],
            offsets=self.offsets[sl],
            logprobs=self.logprobs[sl],
            entropies=self.entropies[sl],
            varentropies=self.varentropies[sl],
            top_ids=self.top_ids[sl],
            top_logprobs=self.top_logprobs[sl],
            top_pieces=self.top_pieces[sl],
            context_lengths=self.context_lengths[sl],
            window=self.window,
            stride=self.stride,
            meta=dict(self.meta),
        )
