"""`TokenTrace`: what `tokenwise.score` learns about every token of a text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tokenwise.errors import TokenwiseError


@dataclass
class TokenTrace:
    """Per-token signals of one text under one model.

    Every token of the text has one row, except a first token nothing predicts. Token ``i``
    was predicted from the tokens before it and the start ids the model's tokenizer puts in
    front of a text (tw-small's and Gemma's BOS). A tokenizer that puts none there (SmolLM2,
    Qwen, GPT-2) leaves the text's first token without a prediction: then ``unscored`` is 1,
    the rows start at the second token, and the first token's text belongs to the first
    row's piece (as a gap before a token does), so ``"".join(pieces) == text`` still holds.
    ``context_lengths[i]`` counts the input tokens the prediction saw: ``i + 1`` (start ids
    or the unscored first token included) while the text fits in the first window, at least
    ``window - stride + 1`` after that.

    Attributes:
        text: the scored text.
        model: the model's name.
        token_ids: ``(T,)`` int64 ids of the text's tokens.
        pieces: the text piece of each token; ``"".join(pieces) == text``. A character split
            over several byte-level tokens belongs to the first of them (the others have an
            empty piece).
        offsets: ``(start, end)`` character span of each piece in ``text``
            (``text[start:end] == pieces[i]``); ``(-1, -1)`` for tokenizers without offsets.
        logprobs: ``(T,)`` float32, log-probability of each actual token (natural log).
        entropies: ``(T,)`` float32, entropy of the predicted distribution (nats).
        varentropies: ``(T,)`` float32, variance of surprisal under that distribution.
        top_ids: ``(T, k)`` int64, the k most likely tokens at each position.
        top_logprobs: ``(T, k)`` float32, their log-probabilities.
        top_pieces: the decoded text of ``top_ids``.
        context_lengths: ``(T,)`` int64, tokens of left context each prediction saw.
        window: the window (tokens) the model was run with.
        stride: new tokens scored per window after the first.
        meta: extra facts to carry (saved in the JSON when not empty).
        unscored: tokens at the start of the text with no prediction and no row (0, or 1
            where the tokenizer puts no start token in front of a text); their text is in
            ``pieces[0]``.

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
    unscored: int = 0

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

    def window_entropies(
        self, window: int, direction: Literal["leading", "trailing"] = "leading"
    ) -> torch.Tensor:
        """``(T,)`` mean entropy over a window of tokens, one value per token (nats).

        :func:`tokenwise.signals.window_entropy` of :attr:`entropies`: ``"leading"`` (ARES's
        forward window) averages tokens ``i .. i+window-1``, ``"trailing"`` ``i-window+1 .. i``,
        fewer at the ends.

        Args:
            window: Window length in tokens, an integer ``>= 1``.
            direction: ``"leading"`` (the default) or ``"trailing"``.

        Example:
            >>> import torch, tokenwise as tw
            >>> trace = tw.score("tw-small", "7+5=12")
            >>> whole = trace.window_entropies(len(trace))  # position 0 sees every token
            >>> bool(torch.isclose(whole[0], trace.entropies.mean()))
            True
        """
        from tokenwise.signals import window_entropy

        return window_entropy(self.entropies, window, direction)

    def high_window_entropy(
        self,
        window: int,
        threshold: float | None = None,
        percentile: float | None = None,
        running: bool = False,
        direction: Literal["leading", "trailing"] = "leading",
    ) -> torch.Tensor:
        """``(T,)`` bool, True at high-window-entropy (HWE) tokens of this text.

        :func:`tokenwise.signals.high_window_entropy` of :attr:`entropies`: the window entropy
        strictly above a fixed ``threshold`` (nats), or above the ``percentile`` of this
        text's window entropies (``running=True``: of the earlier tokens' only; the first
        token is then never marked).

        Args:
            window: Window length in tokens, an integer ``>= 1``.
            threshold: Fixed threshold in nats; give exactly one of it and ``percentile``.
            percentile: Percentile in ``(0, 100)``, e.g. 80 for about the top 20%.
            running: With ``percentile``, compare each token with earlier tokens only.
            direction: ``"leading"`` (ARES's forward window, the default) or ``"trailing"``.

        Example:
            >>> import tokenwise as tw
            >>> trace = tw.score("tw-small", "Q: Where was Dalvin Orsk born?")
            >>> flags = trace.high_window_entropy(4, percentile=80)
            >>> len(flags) == len(trace) and 0 < int(flags.sum()) <= len(trace) // 5 + 1
            True
        """
        from tokenwise.signals import high_window_entropy

        return high_window_entropy(self.entropies, window, threshold=threshold,
                                   percentile=percentile, running=running, direction=direction)

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per token (JSON-ready).

        Example:
            >>> import tokenwise as tw
            >>> tw.score("tw-small", "7+5=12").rows()[0]["piece"]
            '7'
        """
        # One .tolist() per field: indexing tensors element by element costs ~15 us a value.
        ids, logprobs = self.token_ids.tolist(), self.logprobs.tolist()
        entropies, varentropies = self.entropies.tolist(), self.varentropies.tolist()
        contexts, top_ids, top_lps = (self.context_lengths.tolist(), self.top_ids.tolist(),
                                      self.top_logprobs.tolist())
        return [
            {
                "index": i,
                "id": ids[i],
                "piece": self.pieces[i],
                "offset": list(self.offsets[i]),
                "logprob": logprobs[i],
                "surprisal": -logprobs[i],
                "entropy": entropies[i],
                "varentropy": varentropies[i],
                "context": contexts[i],
                "top": [
                    {"id": t, "piece": p, "logprob": lp}
                    for t, p, lp in zip(top_ids[i], self.top_pieces[i], top_lps[i], strict=True)
                ],
            }
            for i in range(len(self))
        ]

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
            **({"unscored_tokens": self.unscored} if self.unscored else {}),
            **({"meta": self.meta} if self.meta else {}),
            "tokens": self.rows(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The trace as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def __getitem__(self, item: slice) -> TokenTrace:
        """A trace of a contiguous slice of tokens (``trace[10:20]``)."""
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TokenwiseError(
                f"TokenTrace[{item!r}]: only contiguous slices such as trace[3:8] are allowed; "
                "use rows()[i] for one token"
            )
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
            # the unscored tokens' text is in the first row's piece: it stays with that row
            unscored=self.unscored if idx.start == 0 and len(idx) else 0,
        )
