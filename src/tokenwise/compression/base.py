"""The compressor interface and the shared pipeline of word-selecting compressors.

Every compressor takes one :class:`~tokenwise.compression.request.CompressionRequest` (the
budget, the keep rules, the roles, the percentile mode and the context filter, checked once
when it is made) and implements :meth:`Compressor.run`; :meth:`Compressor.compress` also
accepts the request's fields as keywords. Nothing of a call is stored on the compressor, so
one (cached, shared) compressor may serve several threads at once.

A compressor that *selects* words (LLMLingua-2, perplexity methods, extractive ones)
subclasses :class:`SelectiveCompressor` and implements one method, :meth:`score_words`:
texts in, word spans and keep scores out. Everything else is shared here: forcing words
(force tokens, digits, protected structure, question words); the context-level filter; the
keep rule (per-chunk percentile, global token budget, or threshold). Reading the input into
segments, rendering kept words and counting the output on the target model's tokenizer live
in :mod:`tokenwise.compression.layout`. A compressor that rewrites text instead subclasses
:class:`Compressor` and may reuse the layout.
"""

from __future__ import annotations

import contextvars
import functools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tokenwise.compression import selection
from tokenwise.compression.counting import TokenCounter
from tokenwise.compression.layout import Layout, Prompt, WordSpans, parse_input
from tokenwise.compression.request import (
    DEFAULT_ROLES,
    PERCENTILE_MODES,
    Budget,
    CompressionRequest,
    check_budget,
    check_force_tokens,
    check_question,
)
from tokenwise.compression.result import CompressionResult
from tokenwise.errors import TokenwiseError

__all__ = [
    "DEFAULT_ROLES",
    "PERCENTILE_MODES",
    "Budget",
    "CompressionRequest",
    "Compressor",
    "Prompt",
    "SelectiveCompressor",
    "WordScores",
    "check_budget",
    "check_force_tokens",
    "check_question",
    "parse_input",
]

#: The read-ahead of the call in progress in this thread: (compressor, start function).
_READ_AHEAD: contextvars.ContextVar[tuple[Any, Callable[[], None]] | None] = (
    contextvars.ContextVar("tokenwise_compression_read_ahead", default=None))


@dataclass
class WordScores:
    """What :meth:`SelectiveCompressor.score_words` returns, one entry per word.

    Attributes:
        starts, ends: ``(W,)`` character spans into the word's own text.
        segment: ``(W,)`` index of that text in the list given to ``score_words``.
        scores: ``(W,)`` float32 keep scores, higher = more worth keeping.
        groups: ``(W,)`` non-decreasing unit ids for ``percentile="chunk"`` (the model's
            chunks), or None when the method has no chunks.
        timings: seconds per stage.
    """

    starts: np.ndarray
    ends: np.ndarray
    segment: np.ndarray
    scores: np.ndarray
    groups: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def join(cls, starts: list[np.ndarray], ends: list[np.ndarray], segment: list[np.ndarray],
             scores: list[np.ndarray], groups: list[np.ndarray] | None = None,
             timings: dict[str, float] | None = None) -> WordScores:
        """Concatenate per-text arrays (scores as float32); no texts: empty, no timings."""
        if not starts:
            z = np.zeros(0, dtype=np.int64)
            return cls(z, z.copy(), z.copy(), np.zeros(0, np.float32))
        return cls(
            starts=np.concatenate(starts), ends=np.concatenate(ends),
            segment=np.concatenate(segment),
            scores=np.concatenate(scores).astype(np.float32),
            groups=np.concatenate(groups) if groups is not None else None,
            timings=timings if timings is not None else {},
        )


class Compressor(ABC):
    """A prompt compressor. Subclasses set :attr:`name` and implement :meth:`run`.

    Example:
        >>> from tokenwise.compression import get
        >>> comp = get("token_classifier")
        >>> req = CompressionRequest(rate=0.5, protect=False)
        >>> comp.compress("The code of Tavoun is 917.", req).text == comp.compress(
        ...     "The code of Tavoun is 917.", rate=0.5, protect=False).text
        True
    """

    name: ClassVar[str] = ""

    def compress(self, text_or_messages: Any, request: CompressionRequest | None = None,
                 **fields: Any) -> CompressionResult:
        """Compress a text, contexts or chat messages.

        Args:
            text_or_messages: see :func:`tokenwise.compression.compress`.
            request: the call's settings; or None and give them as keywords.
            **fields: the fields of :class:`CompressionRequest` (the keywords of
                :func:`tokenwise.compression.compress` other than ``method``, ``model``
                and the method's options), when no request is given.
        """
        if request is None:
            request = self.make_request(**fields)
        elif fields:
            raise TokenwiseError(f"give a CompressionRequest or its fields as keywords, not "
                                 f"both (got the request and {sorted(fields)})")
        self.check_request(request)
        return self.run(text_or_messages, request)

    def make_request(self, **fields: Any) -> CompressionRequest:
        """The checked request for this method from keywords (a method may fill in defaults).

        Example:
            >>> from tokenwise.compression import get
            >>> get("token_classifier").make_request(rate=0.5).budget.rate
            0.5
        """
        return CompressionRequest(**fields)

    def check_request(self, request: CompressionRequest) -> None:
        """Raise if this method cannot honour ``request`` (default: every request is fine)."""
        return None

    @abstractmethod
    def run(self, text_or_messages: Any, request: CompressionRequest) -> CompressionResult:
        """Compress with a request already checked (:meth:`compress` checks, then calls it)."""


class SelectiveCompressor(Compressor):
    """A compressor that keeps a subset of the words, chosen by a per-word score.

    Subclasses implement :meth:`score_words`; they may override :meth:`score_for` (to read
    the request's budget or keep rules while scoring), :meth:`check_force_tokens` (to reject
    force tokens their tokenizer cannot represent) and :meth:`finish`, and set
    :attr:`forced_score` (the score a forced word counts with in the per-chunk percentile)
    and :attr:`threshold_range`.
    """

    forced_score: ClassVar[float] = math.inf
    #: keep the question's keywords (:func:`words.question_words`) wherever they occur.
    #: Off by default: a keyword found in every line (the "code" of "What is the code of
    #: X?" in a memo of codes) would take the budget. Subclasses take it as an option.
    force_question_words: bool = False
    threshold_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)
    #: True when :meth:`score_words` calls :meth:`read_ahead` itself, once its own
    #: tokenizing is done (so the two tokenizers do not compete for the CPU).
    defer_read_ahead: ClassVar[bool] = False

    def read_ahead(self) -> None:
        """Let the target tokenizer start reading the input in the background (idempotent).

        Methods with ``defer_read_ahead = True`` call it from :meth:`score_words` just before
        their model runs; it does nothing outside :meth:`compress`.
        """
        current = _READ_AHEAD.get()
        if current is not None and current[0] is self:
            current[1]()

    @abstractmethod
    def score_words(self, texts: list[str], *, question: str | None = None) -> WordScores:
        """Split ``texts`` into words and score each (higher = keep)."""

    def score_for(self, texts: list[str], request: CompressionRequest) -> WordScores:
        """Score the words of ``texts`` for one call (default: :meth:`score_words`).

        Args:
            texts: the compressible segments.
            request: the call's settings (a method whose scores depend on the budget or
                the keep rules reads them here).
        """
        return self.score_words(texts, question=request.question)

    def check_force_tokens(self, force_tokens: tuple[str, ...]) -> None:
        """Raise if a force token cannot be represented (default: all can)."""

    def check_request(self, request: CompressionRequest) -> None:
        """Refuse a threshold outside :attr:`threshold_range` or an unusable force token."""
        lo, hi = self.threshold_range
        threshold = request.budget.threshold
        if threshold is not None and not lo <= threshold <= hi:
            raise TokenwiseError(
                f"threshold={request.threshold!r} is outside [{lo}, {hi}], the range of "
                f"{self.name}'s scores"
            )
        self.check_force_tokens(request.phrases)

    def finish(self, result: CompressionResult, scored: WordScores, layout: Layout,
               request: CompressionRequest) -> CompressionResult:
        """A method's last word on the result of one call (default: the result as is)."""
        return result

    def run(self, text_or_messages: Any, request: CompressionRequest) -> CompressionResult:
        """Score the words, choose which to keep, and render the output."""
        t_start = time.perf_counter()
        prompt = parse_input(text_or_messages, request.roles,
                             split_paragraphs=request.context_filter)
        layout = Layout(prompt, TokenCounter.resolve(request.target_model))
        in_context = request.budget.threshold is None and request.percentile != "chunk"
        scored, whole_count, token_starts = self._score_reading_ahead(
            layout, request, offsets=layout.single and in_context)
        t_post = time.perf_counter()
        spans = WordSpans(layout.texts, scored.starts, scored.ends, scored.segment,
                          request.keep_newlines)
        forced = selection.forced_words(
            layout.texts, spans.words, spans.starts, spans.ends, spans.segment, request.phrases,
            request.keep_digits, request.protect,
            request.question if self.force_question_words else None)
        scores = scored.scores.astype(np.float32, copy=False)
        tokens_before = layout.tokens_before(whole_count)
        keep, alive_seg = self._choose(layout, spans, scored, scores, forced, request,
                                       tokens_before, token_starts if in_context else None)
        t_count = time.perf_counter()
        text, parts = layout.assemble(spans.render(keep), alive_seg)
        tokens_after = layout.count(text, parts)
        t_end = time.perf_counter()

        timings = dict(scored.timings)
        timings["select"] = t_count - t_post
        timings["count"] = t_end - t_count
        timings["total"] = t_end - t_start
        messages, contexts = layout.outputs(parts)
        seg = spans.segment
        result = CompressionResult(
            text=text, words=spans.words, keep=keep, scores=scores, forced=forced,
            segments=np.asarray(layout.compressed, dtype=np.int64)[seg] if len(seg)
            else seg.copy(),
            tokens_before=tokens_before, tokens_after=tokens_after, method=self.name,
            seconds=t_end - t_start, timings=timings, target_tokenizer=layout.counter.name,
            messages=messages, contexts=contexts,
            kept_segments=layout.segment_alive(alive_seg) if request.context_filter else None,
            starts=spans.starts, ends=spans.ends, segment_texts=list(prompt.texts),
        )
        return self.finish(result, scored, layout, request)

    # -- the steps of run() ----------------------------------------------------------------

    def _score_reading_ahead(self, layout: Layout, request: CompressionRequest,
                             offsets: bool) -> tuple[WordScores, int, list[np.ndarray] | None]:
        """The scores, with the input's count (and token offsets) read meanwhile."""
        # The target tokenizer reads the input while the method's model runs (tokenizers and
        # torch both release the GIL): its count, and its token offsets for the budget.
        # (Not when the method reads with the very same tokenizer object: one Rust tokenizer
        # must not be borrowed from two threads.)
        job = functools.partial(_read_ahead, layout.counter, layout.whole, layout.texts,
                                offsets)
        if getattr(self, "tokenizer", None) is layout.counter.tokenizer:
            scored = self.score_for(layout.texts, request)
            return (scored, *job())
        with ThreadPoolExecutor(max_workers=1) as pool:
            future: list[Any] = []

            def start() -> None:
                if not future:
                    future.append(pool.submit(job))

            token = _READ_AHEAD.set((self, start))
            try:
                if not self.defer_read_ahead:
                    start()
                scored = self.score_for(layout.texts, request)
                start()
                whole_count, token_starts = future[0].result()
            finally:
                _READ_AHEAD.reset(token)
        return scored, whole_count, token_starts

    def _choose(self, layout: Layout, spans: WordSpans, scored: WordScores, scores: np.ndarray,
                forced: np.ndarray, request: CompressionRequest, tokens_before: int,
                token_starts: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """The keep mask ``(W,)`` and which compressed segments survive ``(T,)``."""
        budget = request.budget
        seg = spans.segment
        comp_before = tokens_before - layout.fixed_tokens
        # Context-level filter: drop whole segments whose mean score is low.
        alive_seg = np.ones(len(spans.texts), dtype=bool)
        if request.context_filter and len(spans.texts) > 1:
            alive_seg = self._context_filter(scores, seg, len(spans.texts), budget,
                                             comp_before, request.context_rate)
        alive = alive_seg[seg]
        if budget.threshold is not None:
            return alive & selection.threshold_keep(scores, forced, budget.threshold), alive_seg

        def count_mask(keep: np.ndarray) -> int:
            return layout.count(*layout.assemble(spans.render(keep), alive_seg))

        if request.percentile == "chunk":
            if scored.groups is None:
                raise TokenwiseError(f"percentile='chunk' needs a chunked method; {self.name} "
                                     "has no chunks (use percentile='global')")
            chunk_rate = budget.rate
            if budget.target_tokens is not None:
                reserved = ((count_mask(alive) - layout.fixed_tokens) if not alive.all()
                            else comp_before)
                chunk_rate = min(budget.target_tokens / max(reserved, 1), 1.0)
            eff = np.where(forced, np.float32(self.forced_score), scores)
            # The reference weighs each word counted on its own (distinct words once).
            weights = _distinct_word_counts(layout.counter, spans.words)
            return alive & selection.chunk_percentile_keep(eff, weights, scored.groups,
                                                           chunk_rate), alive_seg
        if budget.rate == 1.0:
            return alive.copy(), alive_seg
        target = budget.target_tokens
        if target is None:
            target = layout.fixed_tokens + max(1, round(budget.rate * comp_before))
        # In context, so that the estimate of a kept set is close to its count.
        weights = layout.counter.per_word(spans.texts, spans.starts, spans.ends, seg,
                                          token_starts)
        if weights is None:
            weights = _distinct_word_counts(layout.counter, spans.words)
        # Only the words of surviving segments compete for the budget.
        idx = np.flatnonzero(alive)

        def count_sub(sub_keep: np.ndarray) -> int:
            full = np.zeros(len(scores), dtype=bool)
            full[idx] = sub_keep
            return count_mask(full)

        sub = selection.budget_keep(scores[idx], forced[idx], weights[idx], target, count_sub,
                                    full_count=tokens_before if alive.all() else None)
        keep = np.zeros(len(scores), dtype=bool)
        keep[idx] = sub
        return keep, alive_seg

    @staticmethod
    def _context_filter(scores: np.ndarray, seg: np.ndarray, n_seg: int, budget: Budget,
                        comp_before: int, context_rate: float | None) -> np.ndarray:
        if context_rate is None:
            if budget.rate is not None:
                context_rate = (budget.rate + 1.0) / 2
            else:
                context_rate = min(budget.target_tokens * 2 / max(comp_before, 1), 1.0)
        sums = np.bincount(seg, weights=scores.astype(np.float64), minlength=n_seg)
        counts = np.bincount(seg, minlength=n_seg)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)  # (S,)
        cut = np.percentile(means[counts > 0], int(100 * (1 - context_rate)))
        return means >= cut


def _distinct_word_counts(counter: TokenCounter, word_list: list[str]) -> np.ndarray:
    # Count each distinct word once, in one batched tokenizer call.
    distinct = list(dict.fromkeys(word_list))
    index = {w: i for i, w in enumerate(distinct)}
    inverse = np.fromiter(map(index.__getitem__, word_list), dtype=np.int64,
                          count=len(word_list))
    counts = counter.count_each(distinct)
    return counts[inverse] if len(word_list) else counts


def _read_ahead(counter: TokenCounter, whole: str | None, texts: list[str],
                offsets: bool) -> tuple[int, list[np.ndarray] | None]:
    """The whole input's count and, for a single text, its token offsets (one encoding)."""
    if offsets:
        starts = counter.token_starts(texts)
        if starts is not None:
            return sum(len(s) for s in starts), starts
    return (counter.count(whole) if whole is not None else 0), None
