"""`CompressionResult`: what every compressor returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CompressionResult:
    """A compressed prompt with the per-word decisions behind it.

    Attributes:
        text: the compressed text (for a list of contexts, the kept contexts joined by a
            blank line; for chat messages, their contents joined the same way).
        words: every word of the compressible input, in order.
        keep: ``(W,)`` bool, which words survive.
        scores: ``(W,)`` float32, the method's keep score per word (LLMLingua-2: the keep
            probability), before forcing.
        forced: ``(W,)`` bool, words kept regardless of score (force tokens, digits,
            protected spans, question words).
        segments: ``(W,)`` int, the input segment (message, context or paragraph) of each word.
        tokens_before: tokens of the input on the target tokenizer.
        tokens_after: tokens of the output on the target tokenizer.
        method: the compressor's name.
        seconds: wall time of the whole call.
        timings: seconds per stage (e.g. ``model``, ``postprocess``, ``count``).
        target_tokenizer: the name of the tokenizer that counted.
        messages: the compressed chat messages, when the input was messages.
        contexts: the compressed contexts, when the input was a list of texts.
        kept_segments: which segments survived the context-level filter (all when unused).
        starts, ends: ``(W,)`` character spans of the words in their segment's text.
        segment_texts: the text of every segment (index with ``segments``).

    Example:
        >>> r = CompressionResult("a c", ["a", "b", "c"], np.array([1, 0, 1], bool),
        ...                       np.array([.9, .1, .8], np.float32), np.zeros(3, bool),
        ...                       np.zeros(3, int), 3, 2, "demo", 0.0)
        >>> r.kept_words, round(r.rate, 3)
        (['a', 'c'], 0.667)
    """

    text: str
    words: list[str]
    keep: np.ndarray
    scores: np.ndarray
    forced: np.ndarray
    segments: np.ndarray
    tokens_before: int
    tokens_after: int
    method: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    target_tokenizer: str = ""
    messages: list[dict[str, Any]] | None = None
    contexts: list[str] | None = None
    kept_segments: list[bool] | None = None
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None
    segment_texts: list[str] | None = None

    @property
    def rate(self) -> float:
        """Tokens after / tokens before (1.0 for an input of no tokens)."""
        return self.tokens_after / self.tokens_before if self.tokens_before else 1.0

    @property
    def ratio(self) -> float:
        """Compression ratio, tokens before / after (inf when nothing is left)."""
        return self.tokens_before / self.tokens_after if self.tokens_after else float("inf")

    @property
    def kept_words(self) -> list[str]:
        """The words that survive, in order."""
        return [w for w, k in zip(self.words, self.keep.tolist(), strict=True) if k]

    def pieces(self) -> list[tuple[int, str, bool | None]]:
        """The input as ``(segment, piece, kept)`` runs: words with their decision, and the
        text between them with ``None``; concatenated per segment they give the input back.

        Example:
            >>> r = CompressionResult("a", ["a", "b"], np.array([1, 0], bool),
            ...                       np.zeros(2, np.float32), np.zeros(2, bool),
            ...                       np.zeros(2, int), 2, 1, "demo", 0.0,
            ...                       starts=np.array([0, 2]), ends=np.array([1, 3]),
            ...                       segment_texts=["a b."])
            >>> r.pieces()
            [(0, 'a', True), (0, ' ', None), (0, 'b', False), (0, '.', None)]
        """
        if self.starts is None or self.ends is None or self.segment_texts is None:
            raise ValueError("this result carries no word spans")
        out: list[tuple[int, str, bool | None]] = []
        prev_g, pos = -1, 0
        for i, (g, a, b) in enumerate(zip(self.segments.tolist(), self.starts.tolist(),
                                          self.ends.tolist(), strict=True)):
            if g != prev_g:
                if prev_g >= 0 and pos < len(self.segment_texts[prev_g]):
                    out.append((prev_g, self.segment_texts[prev_g][pos:], None))
                prev_g, pos = g, 0
            text = self.segment_texts[g]
            if a > pos:
                out.append((g, text[pos:a], None))
            out.append((g, text[a:b], bool(self.keep[i])))
            pos = b
        if prev_g >= 0 and pos < len(self.segment_texts[prev_g]):
            out.append((prev_g, self.segment_texts[prev_g][pos:], None))
        return out

    def to_dict(self, per_word: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (per-word lists only with ``per_word``)."""
        out: dict[str, Any] = {
            "text": self.text,
            "method": self.method,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "rate": self.rate,
            "target_tokenizer": self.target_tokenizer,
            "seconds": self.seconds,
            "timings": dict(self.timings),
        }
        if self.messages is not None:
            out["messages"] = self.messages
        if self.contexts is not None:
            out["contexts"] = self.contexts
        if self.kept_segments is not None:
            out["kept_segments"] = list(self.kept_segments)
        if per_word:
            out["words"] = [
                {"word": w, "keep": bool(k), "score": float(s), "forced": bool(f),
                 "segment": int(g)}
                for w, k, s, f, g in zip(self.words, self.keep.tolist(), self.scores.tolist(),
                                         self.forced.tolist(), self.segments.tolist(),
                                         strict=True)
            ]
        return out

    def to_json(self, per_word: bool = True) -> str:
        """:meth:`to_dict` as a JSON string (non-ASCII kept as is)."""
        return json.dumps(self.to_dict(per_word), ensure_ascii=False)
