"""Which words to keep, given their scores: per-chunk percentile, global budget, threshold.

Three rules, all vectorised over words, and the words every rule keeps:

- :func:`forced_words` marks the words kept whatever their score (force tokens, digits,
  protected structure, the question's keywords).

- :func:`chunk_percentile_keep` is LLMLingua-2's rule: inside each chunk, keep the words
  above the ``int(100·(1-rate)+1)``-th percentile of the token-weighted scores. It does not
  meet the rate (each chunk, and each word's token count, shifts it).
- :func:`budget_keep` meets a token budget on the target tokenizer: it searches, over the
  words sorted by score, the longest prefix whose *rendered, re-tokenized* text fits.
- :func:`threshold_keep` keeps every word scoring at least ``t``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from tokenwise.compression import words
from tokenwise.errors import TokenwiseError

_DIGIT_RE = re.compile(r"\d")


def forced_words(texts: list[str], word_list: list[str], starts: np.ndarray, ends: np.ndarray,
                 segment: np.ndarray, phrases: tuple[str, ...] = (), keep_digits: bool = False,
                 protect: bool | Sequence[str] = True, question: str | None = None
                 ) -> np.ndarray:
    """Which words are kept whatever their score.

    Args:
        texts: the texts the words are in.
        word_list: ``(W,)`` the words' strings.
        starts, ends: ``(W,)`` their character spans in their own text.
        segment: ``(W,)`` index into ``texts``, non-decreasing.
        phrases: force tokens (whole words or runs of them), line breaks excluded.
        keep_digits: every word containing a digit.
        protect: structured spans (True: every kind of
            :data:`~tokenwise.compression.words.PROTECTED_PATTERNS`, False, or some kinds).
        question: force its keywords (:func:`~tokenwise.compression.words.question_words`).

    Example:
        >>> t = "The code 917 of Brelix"
        >>> s, e = words.split_words(t)
        >>> w = [t[a:b] for a, b in zip(s, e)]
        >>> forced_words([t], w, s, e, np.zeros(5, int), keep_digits=True, protect=False,
        ...              question="Which code?").tolist()
        [False, True, True, False, False]
    """
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
        bounds = np.searchsorted(segment, np.arange(len(texts) + 1))
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


def reference_percentile(rate: float) -> int:
    """The percentile LLMLingua-2 thresholds at for ``rate`` (its float arithmetic kept).

    Example:
        >>> reference_percentile(0.33), reference_percentile(0.5), reference_percentile(0.7)
        (68, 51, 31)
    """
    reduce_rate = max(0.0, 1 - rate)
    return int(100 * reduce_rate + 1)


def chunk_percentile_keep(scores: np.ndarray, weights: np.ndarray, groups: np.ndarray,
                          rate: float) -> np.ndarray:
    """LLMLingua-2's keep rule, one percentile per chunk.

    Args:
        scores: ``(W,)`` keep scores, forced words already raised to 1.0.
        weights: ``(W,)`` target-tokenizer tokens per word (each score counts that often).
        groups: ``(W,)`` chunk index per word, non-decreasing.
        rate: kept fraction asked for, in (0, 1].

    Example:
        >>> s = np.array([.1, .9, .5, .2, .8], np.float32)
        >>> chunk_percentile_keep(s, np.ones(5, int), np.array([0, 0, 0, 1, 1]), 0.5).tolist()
        [False, True, False, False, True]
    """
    keep = np.zeros(len(scores), dtype=bool)
    if rate >= 1.0:
        keep[:] = True
        return keep
    q = reference_percentile(rate)
    bounds = np.flatnonzero(np.diff(groups)) + 1
    for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(scores)], strict=True):
        s = scores[lo:hi]
        repeated = np.repeat(s, weights[lo:hi])
        if repeated.size == 0:  # every word of the chunk is zero tokens long
            repeated = s
        if repeated.size == 0:
            continue
        threshold = np.percentile(repeated, q)
        keep[lo:hi] = (s > threshold) | ((threshold == 1.0) & (s == threshold))
    return keep


def threshold_keep(scores: np.ndarray, forced: np.ndarray, threshold: float) -> np.ndarray:
    """Keep forced words and every word scoring at least ``threshold``.

    Example:
        >>> threshold_keep(np.array([.2, .6, .4]), np.array([1, 0, 0], bool), .5).tolist()
        [True, True, False]
    """
    return forced | (scores >= threshold)


def budget_keep(scores: np.ndarray, forced: np.ndarray, weights: np.ndarray, target: int,
                count: Callable[[np.ndarray], int], tolerance: float = 0.01,
                full_count: int | None = None) -> np.ndarray:
    """The most words, taken in score order, whose rendered text fits ``target`` tokens.

    False-position steps on the cumulative per-word token counts, calibrated by exact
    counts of the rendered text (joining can keep line breaks or merge tokens), close in
    until the count is within ``tolerance / 5`` of the target (or one word from it), so only
    a handful of texts are tokenized. If the result is still more than ``tolerance`` below
    the target (a few long words straddle it), lower-scored words that still fit are added.

    Args:
        scores: ``(W,)`` keep scores, higher first.
        forced: ``(W,)`` words kept whatever their score.
        weights: ``(W,)`` estimated tokens per word.
        target: the token budget of the whole output.
        count: exact token count of the output for a keep mask.
        tolerance: how far below ``target`` is close enough before the fill-up pass.
        full_count: the count with every word kept, when already known (the input's).

    Raises:
        TokenwiseError: when the forced words alone exceed the budget.

    Example:
        >>> w = np.ones(6, int)
        >>> k = budget_keep(np.arange(6.0), np.zeros(6, bool), w, 4, lambda m: int(m.sum()))
        >>> k.tolist()
        [False, False, True, True, True, True]
    """
    free = np.flatnonzero(~forced)
    order = free[np.argsort(-scores[free], kind="stable")]  # (F,) best first
    rank = np.full(len(scores), len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    cache: dict[int, int] = {}

    def mask(k: int) -> np.ndarray:
        return forced | (rank < k)

    def exact(k: int) -> int:
        if k not in cache:
            cache[k] = int(count(mask(k)))
        return cache[k]

    n = len(order)
    if full_count is not None:
        cache[n] = int(full_count)
    if exact(n) <= target:
        return mask(n)
    if exact(0) > target:
        raise TokenwiseError(
            f"target of {target} tokens cannot be met: the forced words (force_tokens, "
            f"keep_digits, protected spans, question words) alone take {exact(0)} tokens; "
            "raise the budget or pass protect=False / fewer force tokens"
        )
    cum = np.concatenate([[0], np.cumsum(weights[order])]).astype(np.float64)  # (F+1,)
    lo, hi = 0, n  # invariant: exact(lo) <= target < exact(hi)
    close = target - max(1.0, tolerance * target / 5)  # near enough to stop searching
    # Illinois false position on the cumulative estimate: interpolate the exact counts at
    # the bracket's ends (so joins the estimate misses, such as kept line breaks, are learnt
    # from measurements), halving a stale end's weight so neither end gets stuck.
    f_lo, f_hi = float(exact(lo) - target), float(exact(hi) - target)
    side = 0
    for _ in range(16):
        if hi - lo <= 1 or exact(lo) >= close:
            break
        goal = cum[lo] + (-f_lo) / (f_hi - f_lo) * (cum[hi] - cum[lo])
        k = int(np.searchsorted(cum, goal, side="right") - 1)
        if not lo < k < hi:
            k = (lo + hi) // 2
        f_k = float(exact(k) - target)
        if f_k <= 0:
            lo, f_lo = k, f_k
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = k, f_k
            if side == 1:
                f_lo /= 2
            side = 1
    while hi - lo > 1 and exact(lo) < close:
        mid = (lo + hi) // 2
        if exact(mid) <= target:
            lo = mid
        else:
            hi = mid
    keep = mask(lo)
    total = exact(lo)
    if total < (1 - tolerance) * target:
        # Long words at the boundary: top up with lower-scored words that still fit, trying
        # (in score order) only those whose estimate fits the gap.
        tried = 0
        for i in order[lo:].tolist():
            # A word can cost a token less than its estimate where it joins two kept runs.
            if keep[i] or weights[i] > target - total + 1:
                continue
            trial = keep.copy()
            trial[i] = True
            c = int(count(trial))
            tried += 1
            if c <= target:
                keep, total = trial, c
                if total >= (1 - tolerance) * target:
                    break
            if tried >= 64:
                break
    return keep
