"""The compressor interface and the shared pipeline of word-selecting compressors.

A compressor that *selects* words (LLMLingua-2, perplexity methods, extractive ones)
subclasses :class:`SelectiveCompressor` and implements one method, :meth:`score_words`:
texts in, word spans and keep scores out. Everything else is shared here: reading text,
contexts or chat messages; checking the budget; forcing words (force tokens, digits,
protected structure, question words); the context-level filter; the keep rule (per-chunk
percentile, global token budget, or threshold); joining the kept words; counting tokens on
the target model's tokenizer. A compressor that rewrites text instead subclasses
:class:`Compressor` and may reuse :func:`parse_input` and :func:`check_budget`.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tokenwise.compression import selection, words
from tokenwise.compression.counting import TokenCounter
from tokenwise.compression.result import CompressionResult
from tokenwise.errors import TokenwiseError

#: Message roles compressed by default; system and tool messages are left alone.
DEFAULT_ROLES = ("user", "assistant")
PERCENTILE_MODES = ("global", "chunk")
_SEPARATOR = "\n\n"
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n\s*")
_DIGIT_RE = re.compile(r"\d")


@dataclass
class Budget:
    """How much to keep: exactly one of a rate, a token target, or a score threshold."""

    rate: float | None = None
    target_tokens: int | None = None
    threshold: float | None = None


@dataclass
class Prompt:
    """The input split into segments (a text, its paragraphs, contexts, or messages).

    Attributes:
        kind: ``"text"``, ``"contexts"`` or ``"messages"``.
        texts: every segment's text.
        compressible: which segments may be compressed (system/tool messages may not).
        source: the input as given (the text, the list of contexts, or the messages).
        split: True when a text was split into paragraphs.
    """

    kind: str
    texts: list[str]
    compressible: list[bool]
    source: Any
    split: bool = False


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


def check_budget(rate: Any = None, target_tokens: Any = None,
                 threshold: Any = None) -> Budget:
    """Check that exactly one budget is given and that it is in range.

    Example:
        >>> check_budget(rate=0.5).rate
        0.5
        >>> check_budget(rate=1.5)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: rate=1.5 is outside (0, 1]; ...
    """
    given = {k: v for k, v in (("rate", rate), ("target_tokens", target_tokens),
                               ("threshold", threshold)) if v is not None}
    if len(given) != 1:
        got = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none"
        raise TokenwiseError(
            f"give exactly one of rate= (fraction of tokens kept, in (0, 1]), target_tokens= "
            f"(tokens to keep, > 0) or threshold= (keep words scoring at least it); got {got}"
        )
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0 < rate <= 1):
            raise TokenwiseError(
                f"rate={rate!r} is outside (0, 1]; it is the fraction of tokens to keep"
            )
        return Budget(rate=float(rate))
    if target_tokens is not None:
        if (isinstance(target_tokens, bool) or not isinstance(target_tokens, (int, np.integer))
                or target_tokens <= 0):
            raise TokenwiseError(
                f"target_tokens={target_tokens!r}: must be a whole number of tokens > 0"
            )
        return Budget(target_tokens=int(target_tokens))
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)):
        raise TokenwiseError(f"threshold={threshold!r}: must be a finite number")
    return Budget(threshold=float(threshold))


def parse_input(text_or_messages: Any, roles: Sequence[str] = DEFAULT_ROLES,
                split_paragraphs: bool = False) -> Prompt:
    """Turn a text, a list of texts (contexts) or chat messages into segments.

    Args:
        text_or_messages: a string; a list of strings (contexts, compressed as separate
            documents); or a list of ``{"role": ..., "content": str}`` messages.
        roles: the message roles that may be compressed.
        split_paragraphs: split a single text at blank lines (for the context filter).

    Example:
        >>> p = parse_input([{"role": "system", "content": "Be brief."},
        ...                  {"role": "user", "content": "Tell me."}])
        >>> p.kind, p.compressible
        ('messages', [False, True])
    """
    if isinstance(text_or_messages, str):
        if not text_or_messages.strip():
            raise TokenwiseError("the text to compress is empty (or only whitespace)")
        if split_paragraphs:
            parts = [p for p in _PARAGRAPH_RE.split(text_or_messages.strip()) if p.strip()]
            return Prompt("text", parts, [True] * len(parts), text_or_messages,
                          split=len(parts) > 1)
        return Prompt("text", [text_or_messages], [True], text_or_messages)
    if not isinstance(text_or_messages, (list, tuple)) or not text_or_messages:
        raise TokenwiseError(
            f"cannot compress {type(text_or_messages).__name__} {text_or_messages!r:.60}: give a "
            "non-empty string, a list of strings, or a list of {'role', 'content'} messages"
        )
    items = list(text_or_messages)
    if all(isinstance(x, str) for x in items):
        if not any(x.strip() for x in items):
            raise TokenwiseError("every context to compress is empty")
        return Prompt("contexts", items, [bool(x.strip()) for x in items], items)
    if isinstance(roles, str):
        roles = (roles,)
    role_set = set(roles)
    texts, compressible = [], []
    for i, msg in enumerate(items):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise TokenwiseError(
                f"message {i} is {msg!r:.80}; chat messages are dicts with 'role' and 'content' "
                "(or give a list of strings)"
            )
        content = msg["content"]
        if not isinstance(content, str):
            raise TokenwiseError(
                f"message {i} has content of type {type(content).__name__}; only string "
                "contents can be compressed (join multi-part contents first)"
            )
        texts.append(content)
        compressible.append(msg["role"] in role_set and bool(content.strip()))
    if not any(compressible):
        raise TokenwiseError(
            f"no message to compress: none with role in {sorted(role_set)} has text "
            f"(roles present: {sorted({m['role'] for m in items})}); pass roles=... to choose"
        )
    return Prompt("messages", texts, compressible, items)


def check_question(question: Any) -> None:
    """Raise unless ``question`` is None or a string."""
    if question is not None and not isinstance(question, str):
        raise TokenwiseError(f"question={question!r} must be a string")


def check_force_tokens(force_tokens: Any) -> tuple[tuple[str, ...], bool]:
    """Validate force tokens; returns them without line breaks, and whether ``"\\n"`` was one.

    Line breaks are never dropped between kept words (see :func:`words.render`); asking to
    force ``"\\n"`` additionally keeps every line break, even between dropped words.

    Example:
        >>> check_force_tokens(["?", "\\n"])
        (('?',), True)
    """
    if isinstance(force_tokens, str):
        force_tokens = (force_tokens,)
    out, newline = [], False
    for tok in force_tokens:
        if not isinstance(tok, str):
            raise TokenwiseError(f"force token {tok!r} is a {type(tok).__name__}; give strings")
        if tok in ("\n", "\r\n"):
            newline = True
        elif not tok.strip():
            raise TokenwiseError(
                f"force token {tok!r} is empty or only whitespace; it would not tokenize into "
                "a word (line breaks: force '\\n')"
            )
        else:
            out.append(tok)
    return tuple(dict.fromkeys(out)), newline


class Compressor(ABC):
    """A prompt compressor. Subclasses set :attr:`name` and implement :meth:`compress`."""

    name: ClassVar[str] = ""

    @abstractmethod
    def compress(self, text_or_messages: Any, **kwargs: Any) -> CompressionResult:
        """Compress a text, contexts or chat messages (see :func:`compress`)."""


class SelectiveCompressor(Compressor):
    """A compressor that keeps a subset of the words, chosen by a per-word score.

    Subclasses implement :meth:`score_words`; they may override :meth:`check_force_tokens`
    (to reject force tokens their tokenizer cannot represent) and set
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

    @property
    def _local(self) -> threading.local:
        # Per-thread state of the call in progress (compress may run in several threads).
        local = self.__dict__.get("_thread_state")
        if local is None:
            local = self.__dict__.setdefault("_thread_state", threading.local())
        return local

    def read_ahead(self) -> None:
        """Let the target tokenizer start reading the input in the background (idempotent).

        Methods with ``defer_read_ahead = True`` call it from :meth:`score_words` just before
        their model runs; it does nothing outside :meth:`compress`.
        """
        start = getattr(self._local, "start", None)
        if start is not None:
            start()

    @abstractmethod
    def score_words(self, texts: list[str], *, question: str | None = None) -> WordScores:
        """Split ``texts`` into words and score each (higher = keep)."""

    def check_force_tokens(self, force_tokens: tuple[str, ...]) -> None:
        """Raise if a force token cannot be represented (default: all can)."""

    def compress(
        self,
        text_or_messages: Any,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        threshold: float | None = None,
        question: str | None = None,
        force_tokens: Sequence[str] = (),
        keep_digits: bool = False,
        protect: bool | Sequence[str] = True,
        target_model: Any = None,
        roles: Sequence[str] = DEFAULT_ROLES,
        percentile: str = "global",
        context_filter: bool = False,
        context_rate: float | None = None,
    ) -> CompressionResult:
        """Compress; the arguments are those of :func:`tokenwise.compression.compress`."""
        t_start = time.perf_counter()
        budget = check_budget(rate, target_tokens, threshold)
        lo, hi = self.threshold_range
        if budget.threshold is not None and not lo <= budget.threshold <= hi:
            raise TokenwiseError(
                f"threshold={threshold!r} is outside [{lo}, {hi}], the range of "
                f"{self.name}'s scores"
            )
        if percentile not in PERCENTILE_MODES:
            raise TokenwiseError(f"percentile={percentile!r}: allowed {PERCENTILE_MODES}")
        if context_filter and budget.threshold is not None and context_rate is None:
            raise TokenwiseError("context_filter with threshold= needs context_rate= as well")
        if context_rate is not None and not (0 < context_rate <= 1):
            raise TokenwiseError(f"context_rate={context_rate!r} is outside (0, 1]")
        check_question(question)
        forced_phrases, keep_newlines = check_force_tokens(force_tokens)
        self.check_force_tokens(forced_phrases)
        prompt = parse_input(text_or_messages, roles, split_paragraphs=context_filter)
        counter = TokenCounter.resolve(target_model)

        comp = [i for i, c in enumerate(prompt.compressible) if c]
        texts = [prompt.texts[i] for i in comp]
        if prompt.kind == "messages":
            whole = None
        elif prompt.kind == "contexts":
            whole = _SEPARATOR.join(prompt.texts)
        else:
            whole = prompt.source
        single = prompt.kind == "text" and not prompt.split
        in_context = budget.threshold is None and percentile != "chunk"
        # The target tokenizer reads the input while the method's model runs (tokenizers and
        # torch both release the GIL): its count, and its token offsets for the budget.
        # (Not when the method reads with the very same tokenizer object: one Rust tokenizer
        # must not be borrowed from two threads.)
        job = functools.partial(_read_ahead, counter, whole, texts, single and in_context)
        if getattr(self, "tokenizer", None) is counter.tokenizer:
            scored = self.score_words(texts, question=question)
            whole_count, token_starts = job()
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                state = self._local

                def start() -> None:
                    if getattr(state, "future", None) is None:
                        state.future = pool.submit(job)

                state.start = start
                if not self.defer_read_ahead:
                    self.read_ahead()
                try:
                    scored = self.score_words(texts, question=question)
                    self.read_ahead()
                    whole_count, token_starts = state.future.result()
                finally:
                    state.__dict__.clear()
        t_post = time.perf_counter()
        starts, ends, seg = scored.starts, scored.ends, scored.segment
        word_list = [texts[g][a:b] for g, a, b in zip(seg.tolist(), starts.tolist(),
                                                      ends.tolist(), strict=True)]
        forced = self._forced(texts, word_list, starts, ends, seg, forced_phrases, keep_digits,
                              protect, question if self.force_question_words else None)
        scores = scored.scores.astype(np.float32, copy=False)
        cps = [words.code_points(t) for t in texts]
        bounds = np.searchsorted(seg, np.arange(len(texts) + 1))  # word range of each text

        def render_all(keep: np.ndarray) -> list[str]:
            return [
                self._render(texts[j], starts[bounds[j]:bounds[j + 1]],
                             ends[bounds[j]:bounds[j + 1]], keep[bounds[j]:bounds[j + 1]],
                             cps[j], keep_newlines)
                for j in range(len(texts))
            ]

        def assemble(rendered: list[str], alive: np.ndarray) -> tuple[str, list[str]]:
            out = list(prompt.texts)
            for j, i in enumerate(comp):
                out[i] = rendered[j]
            if prompt.kind == "messages":
                return _SEPARATOR.join(t for t in out if t), out
            alive_flags = self._segment_alive(prompt, comp, alive)
            kept = [t for t, ok in zip(out, alive_flags, strict=True) if ok]
            if prompt.kind == "text" and not prompt.split:
                return kept[0] if kept else "", kept
            return _SEPARATOR.join(t for t in kept if t), kept

        fixed = [t for t, c in zip(prompt.texts, prompt.compressible, strict=True) if not c]
        fixed_tokens = int(counter.count_each(fixed).sum()) if prompt.kind == "messages" else 0

        def count_output(text: str, parts: list[str]) -> int:
            if prompt.kind == "messages":
                return fixed_tokens + int(counter.count_each(
                    [parts[i] for i in comp]).sum())
            return counter.count(text)

        weights = None
        if in_context and token_starts is not None:
            weights = counter.per_word(texts, starts, ends, seg, token_starts)
        tokens_before = whole_count if whole is not None else count_output("", prompt.texts)
        if budget.threshold is None and percentile == "chunk":
            # The reference weighs each word counted on its own (distinct words once).
            weights = _word_weights(counter, word_list)
        elif budget.threshold is None and weights is None:
            # In context, so that the estimate of a kept set is close to its count.
            weights = counter.per_word(texts, starts, ends, seg)
            if weights is None:
                weights = _word_weights(counter, word_list)
        comp_before = tokens_before - fixed_tokens

        # Context-level filter: drop whole segments whose mean score is low.
        alive_seg = np.ones(len(texts), dtype=bool)
        if context_filter and len(texts) > 1:
            alive_seg = self._context_filter(scores, seg, len(texts), budget, comp_before,
                                             context_rate)
        alive = alive_seg[seg]

        eff = np.where(forced, np.float32(self.forced_score), scores)

        def count_mask(keep: np.ndarray) -> int:
            rendered = render_all(keep)
            return count_output(*assemble(rendered, alive_seg))

        if budget.threshold is not None:
            keep = alive & selection.threshold_keep(scores, forced, budget.threshold)
        elif percentile == "chunk":
            if scored.groups is None:
                raise TokenwiseError(f"percentile='chunk' needs a chunked method; {self.name} "
                                     "has no chunks (use percentile='global')")
            chunk_rate = budget.rate
            if budget.target_tokens is not None:
                reserved = (count_mask(alive) - fixed_tokens) if not alive.all() else comp_before
                chunk_rate = min(budget.target_tokens / max(reserved, 1), 1.0)
            keep = alive & selection.chunk_percentile_keep(eff, weights, scored.groups,
                                                           chunk_rate)
        else:
            target = budget.target_tokens
            if target is None:
                target = fixed_tokens + max(1, round(budget.rate * comp_before))
            if budget.rate == 1.0:
                keep = alive.copy()
            else:
                idx = np.flatnonzero(alive)
                sub_forced = forced[idx]

                def count_sub(sub_keep: np.ndarray) -> int:
                    full = np.zeros(len(scores), dtype=bool)
                    full[idx] = sub_keep
                    return count_mask(full)

                sub = selection.budget_keep(scores[idx], sub_forced, weights[idx], target,
                                            count_sub,
                                            full_count=tokens_before if alive.all() else None)
                keep = np.zeros(len(scores), dtype=bool)
                keep[idx] = sub
        t_count = time.perf_counter()
        rendered = render_all(keep)
        text, parts = assemble(rendered, alive_seg)
        tokens_after = count_output(text, parts)
        t_end = time.perf_counter()

        timings = dict(scored.timings)
        timings["select"] = t_count - t_post
        timings["count"] = t_end - t_count
        timings["total"] = t_end - t_start
        messages = contexts = None
        if prompt.kind == "messages":
            messages = [{**m, "content": c} for m, c in zip(prompt.source, parts, strict=True)]
        elif prompt.kind == "contexts":
            contexts = parts
        kept_segments = None
        if context_filter:
            kept_segments = self._segment_alive(prompt, comp, alive_seg)
        return CompressionResult(
            text=text, words=word_list, keep=keep, scores=scores, forced=forced,
            segments=np.asarray(comp, dtype=np.int64)[seg] if len(seg) else seg.copy(),
            tokens_before=tokens_before, tokens_after=tokens_after, method=self.name,
            seconds=t_end - t_start, timings=timings, target_tokenizer=counter.name,
            messages=messages, contexts=contexts, kept_segments=kept_segments,
            starts=starts, ends=ends, segment_texts=list(prompt.texts),
        )

    # -- pieces subclasses may reuse -------------------------------------------------------

    @staticmethod
    def _render(text: str, starts: np.ndarray, ends: np.ndarray, keep: np.ndarray,
                cps: np.ndarray, keep_newlines: bool) -> str:
        if not keep_newlines:
            return words.render(text, starts, ends, keep, cps)
        # Forcing "\n" keeps every line: render each line's kept words on their own.
        out, pos = [], 0
        line_ends = [m.start() for m in re.finditer("\n", text)] + [len(text)]
        for end in line_ends:
            lo = np.searchsorted(starts, pos, side="left")
            hi = np.searchsorted(starts, end, side="left")
            out.append(words.render(text, starts[lo:hi], ends[lo:hi], keep[lo:hi], cps))
            pos = end + 1
        return "\n".join(out)

    @staticmethod
    def _segment_alive(prompt: Prompt, comp: list[int], alive_seg: np.ndarray) -> list[bool]:
        ok = [True] * len(prompt.texts)
        for j, i in enumerate(comp):
            ok[i] = bool(alive_seg[j])
        return ok

    @staticmethod
    def _forced(texts: list[str], word_list: list[str], starts: np.ndarray, ends: np.ndarray,
                seg: np.ndarray, phrases: tuple[str, ...], keep_digits: bool,
                protect: bool | Sequence[str], question: str | None) -> np.ndarray:
        forced = np.zeros(len(word_list), dtype=bool)
        if keep_digits:
            forced |= np.fromiter((_DIGIT_RE.search(w) is not None for w in word_list),
                                  dtype=bool, count=len(word_list))
        if question:
            qwords = words.question_words(question)
            forced |= np.fromiter((w.lower() in qwords for w in word_list), dtype=bool,
                                  count=len(word_list))
        if phrases or protect:
            kinds = None if protect is True else tuple(protect) if protect else ()
            bounds = np.searchsorted(seg, np.arange(len(texts) + 1))
            for j, text in enumerate(texts):
                lo, hi = bounds[j], bounds[j + 1]
                if hi == lo:
                    continue
                s, e = starts[lo:hi], ends[lo:hi]
                if phrases:
                    forced[lo:hi] |= words.match_phrases(text, s, e, phrases)
                if kinds is None or kinds:
                    spans = words.protected_spans(text, kinds)
                    forced[lo:hi] |= words.overlaps(s, e, spans)
        return forced

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


def _word_weights(counter: TokenCounter, word_list: list[str]) -> np.ndarray:
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
