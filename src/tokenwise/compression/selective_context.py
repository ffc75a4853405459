"""Selective Context: drop the phrases or sentences that carry the least self-information.

Li et al., 2023, "Compressing Context to Enhance Inference Efficiency of Large Language
Models" (arXiv 2310.06201; ref: liyucheng09/Selective_Context). Each token's
self-information ``-log p(token | left context)`` comes from a causal LM; a *lexical unit*
(a phrase or a sentence) scores the mean self-information of its tokens, and the units with
the lowest scores are dropped first, whole.

Differences from the reference, on purpose: texts longer than the model's context are read
with overlapping windows (the reference raises past 1,024 tokens); phrases come from a
spaCy-free rule (a phrase ends at punctuation and at a line break, and a new one starts at a
function word: "of", "the", "which", ...), so no parser is needed and other languages still
split at punctuation; and the kept amount is a token budget on the target tokenizer (the
shared :class:`SelectiveCompressor` cut) rather than a percentile of units. Each word carries
its unit's score, so units are dropped whole except the one the budget cuts through.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from tokenwise.compression import words
from tokenwise.compression.base import SelectiveCompressor, WordScores
from tokenwise.compression.perplexity import (
    fill_unscored,
    load_causal_lm,
    pool_words,
    tokenize_spans,
    word_token_ranges,
)
from tokenwise.errors import TokenwiseError
from tokenwise.scoring import token_surprisal

UNITS = ("phrase", "sentence", "word")
_SENTENCE_END = re.compile(r"^(?:[.!?。！？…]+|\.\.\.)$")
_PUNCT = re.compile(r"^[^\w\s]+$", re.UNICODE)
#: words that start a new phrase (shared with the question-word rule).
FUNCTION_WORDS = words.FUNCTION_WORDS


def sentence_units(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sentence id of every word: a sentence ends after ``. ! ? 。`` or at a line break.

    Args:
        text: the text the spans index.
        starts, ends: its word spans (:func:`tokenwise.compression.words.split_words`).

    Example:
        >>> t = "One two. Three?\\nFour"
        >>> sentence_units(t, *words.split_words(t)).tolist()
        [0, 0, 0, 1, 1, 2]
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    word_list = [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    ends_sentence = np.fromiter((_SENTENCE_END.match(w) is not None for w in word_list),
                                dtype=bool, count=n)
    newline_before = _newline_gaps(text, starts, ends)
    new = np.zeros(n, dtype=bool)
    new[1:] = ends_sentence[:-1] | newline_before[1:]
    return np.cumsum(new)


def phrase_units(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Phrase id of every word: split at punctuation, line breaks and before function words.

    Punctuation stays with the phrase before it.

    Example:
        >>> t = "The code of Tavoun is 917, said the clerk."
        >>> phrase_units(t, *words.split_words(t)).tolist()
        [0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4]
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    word_list = [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    punct = np.fromiter((_PUNCT.match(w) is not None for w in word_list), dtype=bool, count=n)
    function = np.fromiter((w.lower() in FUNCTION_WORDS for w in word_list), dtype=bool,
                           count=n)
    newline_before = _newline_gaps(text, starts, ends)
    new = np.zeros(n, dtype=bool)
    # A function word opens a phrase unless the word before it opened one too ("of the").
    new[1:] = (punct[:-1] & ~punct[1:]) | newline_before[1:] | (function[1:] & ~function[:-1])
    return np.cumsum(new)


def _newline_gaps(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether a line break lies between each word and the one before it."""
    cps = words.code_points(text)
    nl_before = np.concatenate([[0], np.cumsum(cps == 10)])  # (L+1,)
    out = np.zeros(len(starts), dtype=bool)
    out[1:] = nl_before[starts[1:]] > nl_before[ends[:-1]]
    return out


class SelectiveContextCompressor(SelectiveCompressor):
    """Selective Context over any local causal LM.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`, a built-in name or a local
            directory (default ``"tw-small"``).
        unit: ``"phrase"`` (the paper's best), ``"sentence"`` or ``"word"``.
        window, stride: the model's reading windows for long texts.
        force_question_words: with ``question=``, keep the question's keywords wherever
            they occur (function words and wh-words excepted). Off by default: Selective
            Context's score does not read the question, and a keyword found in every line
            would take the budget.

    Example:
        >>> comp = SelectiveContextCompressor("tw-small", unit="sentence")
        >>> r = comp.compress("The code of Tavoun is 917. The code of Brelix is 382.",
        ...                   rate=0.5, protect=False)
        >>> r.text in ("The code of Tavoun is 917.", "The code of Brelix is 382.")
        True
    """

    name = "selective_context"

    def __init__(self, model: Any = "tw-small", *, unit: str = "phrase",
                 window: int | None = None, stride: int | None = None,
                 force_question_words: bool = False):
        if unit not in UNITS:
            raise TokenwiseError(f"unit={unit!r}: allowed {UNITS}")
        self.lm = load_causal_lm(model)
        from tokenwise.scoring import check_window_args

        self.window, self.stride = check_window_args(window, stride, self.lm.context_length)
        self.unit = unit
        self.force_question_words = bool(force_question_words)

    def __repr__(self) -> str:
        return f"SelectiveContextCompressor({self.lm.name!r}, unit={self.unit!r})"

    def score_words(self, texts: list[str], *, question: str | None = None) -> WordScores:
        """Every word's unit self-information, mean nats per token (higher = keep).

        Args:
            texts: the segments to score (each read on its own, whole).
            question: unused (Selective Context is not question-aware; the caller forces
                the question's keywords with ``force_question_words=True``).
        """
        import time

        t0 = time.perf_counter()
        all_starts, all_ends, all_seg, all_scores = [], [], [], []
        for j, text in enumerate(texts):
            starts, ends = words.split_words(text)
            if len(starts) == 0:
                continue
            ids, t_starts, t_ends = tokenize_spans(self.lm, text)
            info = fill_unscored(token_surprisal(self.lm, ids.tolist(), window=self.window,
                                                 stride=self.stride))  # (N,)
            lo, hi = word_token_ranges(t_starts, t_ends, starts, ends)
            if self.unit == "word":
                scores = pool_words(info, lo, hi, "mean")
            else:
                unit_of = (phrase_units if self.unit == "phrase" else sentence_units)(
                    text, starts, ends)
                firsts = np.flatnonzero(np.diff(unit_of, prepend=-1))  # first word per unit
                u_lo = lo[firsts]
                u_hi = np.maximum.reduceat(hi, firsts)
                scores = pool_words(info, u_lo, u_hi, "mean")[unit_of]
            all_starts.append(starts)
            all_ends.append(ends)
            all_seg.append(np.full(len(starts), j, dtype=np.int64))
            all_scores.append(scores)
        return WordScores.join(all_starts, all_ends, all_seg, all_scores,
                               timings={"model": time.perf_counter() - t0})
