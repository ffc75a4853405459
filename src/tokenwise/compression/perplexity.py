"""LLMLingua and LongLLMLingua: keep the words a causal LM finds surprising.

Jiang et al., 2023, "LLMLingua: Compressing Prompts for Accelerated Inference of Large
Language Models" (arXiv 2310.05736) and "LongLLMLingua: Accelerating and Enhancing LLMs in
Long Context Scenarios via Prompt Compression" (arXiv 2310.06839); ref: microsoft/LLMLingua.

A word's score is the mean surprisal ``-log p(token | left context)`` of its tokens under any
local causal LM (the built-in ``tw-small`` by default). Three refinements of the papers:

- **Question-aware contrastive score** (LongLLMLingua): with a question, a token scores
  ``loss(t) - loss(t | question)``: how much more predictable the question makes it. The
  question goes before the text (the reference's ``condition_in_question="before"``).
- **Budget controller over documents**: given several contexts (a list of texts, or chat
  messages) and a rate or token target, documents are ranked (with a question: by the mean
  surprisal of the question appended to the document, lowest first, LongLLMLingua's ranking;
  without: by the document's own perplexity, highest first, LLMLingua's) and taken in that
  order until their tokens reach ``context_budget`` times the target; the words of the other
  documents score below every word of a taken one, so the token budget is spent on the best.
- **Iterative windowed re-scoring**: the text is read in windows of ``iterative_size`` tokens
  (200 by default, cut at word ends); each window is scored conditioned on what was kept
  of the windows before it, and its own kept words (the rate's share of its tokens, forced
  words first; or the words at or above ``threshold=``) become the context of the next.

The final choice of words is the shared one of :class:`SelectiveCompressor` (one global cut
that meets the rate on the target tokenizer), made on the scores above. Texts longer than
the model's context are read with overlapping windows, never truncated.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from tokenwise.compression import selection, words
from tokenwise.compression.base import SelectiveCompressor, WordScores
from tokenwise.compression.request import CompressionRequest
from tokenwise.errors import TokenwiseError
from tokenwise.models.adapters import adapt
from tokenwise.scoring import token_surprisal

__all__ = [
    "PerplexityCompressor",
    "fill_unscored",
    "load_causal_lm",
    "pool_words",
    "token_surprisal",
    "tokenize_spans",
    "word_token_ranges",
]

QUESTION_MODES = ("contrastive", "none")
TOKEN_TO_WORD = ("mean", "sum", "max")


def load_causal_lm(model: Any) -> Any:
    """A :class:`~tokenwise.models.LanguageModel` from a name, a directory, or itself.

    Example:
        >>> load_causal_lm("tw-small").name
        'tw-small'
    """
    from tokenwise.models import LanguageModel, load

    if isinstance(model, LanguageModel):
        return model
    if model is None:
        model = "tw-small"
    return load(model)


def tokenize_spans(lm: Any, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of ``text`` and their character spans (non-decreasing, special text as text).

    Example:
        >>> ids, s, e = tokenize_spans(load_causal_lm("tw-small"), "ab cd")
        >>> int(s[0]), int(e[-1])
        (0, 5)
    """
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                       split_special_tokens=True, verbose=False)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)  # (N,)
    off = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (N, 2)
    if len(off) != len(ids):
        raise TokenwiseError(f"the tokenizer of {lm.name!r} gives no character offsets; "
                             "a fast (tokenizer.json) tokenizer is needed")
    # Byte pieces of one character share its span; keep both edges monotone for searches.
    ends = np.maximum.accumulate(off[:, 1]) if len(off) else off[:, 1]
    starts = np.minimum(off[:, 0], ends)
    return ids, starts, ends


def word_token_ranges(tok_starts: np.ndarray, tok_ends: np.ndarray, w_starts: np.ndarray,
                      w_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each word ``[w_start, w_end)``, the tokens ``[lo, hi)`` that overlap it.

    A token spanning two words (``".\\n"``) counts for both; a word no token overlaps gets the
    token after it.

    Example:
        >>> word_token_ranges(np.array([0, 2, 5]), np.array([2, 5, 8]), np.array([0, 3]),
        ...                   np.array([4, 8]))
        (array([0, 1]), array([2, 3]))
    """
    n = len(tok_starts)
    lo = np.searchsorted(tok_ends, w_starts, side="right")  # (W,)
    hi = np.searchsorted(tok_starts, w_ends, side="left")  # (W,)
    lo = np.minimum(lo, max(n - 1, 0))
    hi = np.clip(np.maximum(hi, lo + 1), 0, n)
    return lo, hi


def fill_unscored(losses: np.ndarray) -> np.ndarray:
    """``losses`` with each unscored (NaN) token given the largest scored loss.

    :func:`~tokenwise.scoring.token_surprisal` leaves a text's first token NaN when the
    tokenizer puts no start token in front (SmolLM2, Qwen): nothing predicts it. Ranking it
    as the most informative token keeps it rather than dropping text no score spoke against.

    Args:
        losses: ``(N,)`` token losses, NaN where unscored.

    Example:
        >>> fill_unscored(np.array([np.nan, 1.0, 3.0]))
        array([3., 1., 3.])
    """
    missing = np.isnan(losses)
    if not missing.any():
        return losses
    scored = losses[~missing]
    return np.where(missing, scored.max() if len(scored) else 0.0, losses)


def pool_words(losses: np.ndarray, lo: np.ndarray, hi: np.ndarray, how: str) -> np.ndarray:
    """Pool token losses into word scores over the ranges ``[lo, hi)``.

    Example:
        >>> pool_words(np.array([1.0, 3.0, 5.0]), np.array([0, 2]), np.array([2, 3]), "mean")
        array([2., 5.])
    """
    if len(lo) == 0:
        return np.zeros(0, dtype=np.float64)
    if how == "max":
        return np.asarray([losses[a:b].max() for a, b in zip(lo.tolist(), hi.tolist(),
                                                             strict=True)])
    cs = np.concatenate([[0.0], np.cumsum(losses, dtype=np.float64)])  # (N+1,)
    total = cs[hi] - cs[lo]
    return total / (hi - lo) if how == "mean" else total


def _mean_scored(losses: np.ndarray) -> float:
    """Mean of the scored (not NaN) losses; 0 when none is scored."""
    scored = losses[~np.isnan(losses)]
    return float(scored.mean()) if len(scored) else 0.0


class PerplexityCompressor(SelectiveCompressor):
    """LLMLingua / LongLLMLingua over any local causal LM.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`, a built-in name, a local
            directory (default ``"tw-small"``), or a vLLM ``LLM`` (scored with its prompt
            logprobs, once :mod:`tokenwise.vllm` is imported).
        token_to_word: pool a word's token surprisals by ``"mean"``, ``"sum"`` or ``"max"``.
        question_mode: ``"contrastive"`` (with a question, score ``loss(t) -
            loss(t | question)``) or ``"none"`` (plain surprisal even with a question).
        rank_documents: with several contexts and a rate or target, spend the budget on the
            best-ranked documents (see the module docstring).
        context_budget: documents are taken until their tokens reach this multiple of the
            target (>= 1; LLMLingua adds a fixed 100 tokens instead, too much for short texts).
        iterative_size: tokens per re-scoring window (None: one pass over the whole text).
            At most half the model's context, so each window sees kept text before it.
        window, stride: the model's reading windows for long texts (see :func:`token_surprisal`).
        force_question_words: also keep the question's keywords wherever they occur (the
            shared pipeline's rule, :func:`tokenwise.compression.words.question_words`). Off
            by default: the contrastive score already uses the question, and forcing "code",
            a name, ... in every line can take much of the budget.
        progress: show a progress bar over texts.

    Example:
        >>> comp = PerplexityCompressor("tw-small")
        >>> r = comp.compress("The code of Tavoun is 917. The code of Brelix is 382.", rate=0.5,
        ...                   protect=False)
        >>> 0 < r.tokens_after <= r.tokens_before // 2 + 1
        True
    """

    name = "perplexity"

    def __init__(self, model: Any = "tw-small", *, token_to_word: str = "mean",
                 question_mode: str = "contrastive", rank_documents: bool = True,
                 context_budget: float = 1.5, iterative_size: int | None = 200,
                 window: int | None = None, stride: int | None = None,
                 force_question_words: bool = False, progress: bool = False):
        if token_to_word not in TOKEN_TO_WORD:
            raise TokenwiseError(f"token_to_word={token_to_word!r}: allowed {TOKEN_TO_WORD}")
        if question_mode not in QUESTION_MODES:
            raise TokenwiseError(f"question_mode={question_mode!r}: allowed {QUESTION_MODES}")
        if (isinstance(context_budget, bool) or not isinstance(context_budget, (int, float))
                or not math.isfinite(context_budget) or context_budget < 1):
            raise TokenwiseError(f"context_budget={context_budget!r}: must be a number >= 1 "
                                 "(documents are taken up to that multiple of the target)")
        if iterative_size is not None and (isinstance(iterative_size, bool)
                                           or not isinstance(iterative_size, int)
                                           or iterative_size < 1):
            raise TokenwiseError(f"iterative_size={iterative_size!r}: must be an integer >= 1 "
                                 "or None (one pass)")
        scorer = adapt(model)  # e.g. a vLLM LLM, once tokenwise.vllm is imported
        # a scorer of another engine reads its own prompt logprobs (token_surprisal's path
        # for a model without forward); anything else loads as a causal LM
        is_prompt_scorer = (callable(getattr(scorer, "prompt_logprobs", None))
                            and not hasattr(scorer, "forward"))
        self.lm = scorer if is_prompt_scorer else load_causal_lm(model)
        from tokenwise.scoring import check_window_args

        self.window, self.stride = check_window_args(window, stride, self.lm.context_length)
        self.token_to_word = token_to_word
        self.question_mode = question_mode
        self.rank_documents = rank_documents
        self.context_budget = float(context_budget)
        self.iterative_size = (None if iterative_size is None
                               else min(iterative_size, self.lm.context_length // 2))
        self.progress = progress
        self.force_question_words = force_question_words
        #: The document order of the most recent call (a diagnostic; nothing reads it back).
        self.last_document_order: list[int] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.lm.name!r}, question_mode={self.question_mode!r}, "
                f"iterative_size={self.iterative_size})")

    # -- scoring -----------------------------------------------------------------------------

    def score_words(self, texts: list[str], *, question: str | None = None) -> WordScores:
        """Surprisal-based keep score of every word of ``texts`` (higher = keep).

        Outside a compress call there is no budget: every document counts and each window
        is conditioned on the whole of the windows before it.

        Args:
            texts: the segments to score.
            question: with ``question_mode="contrastive"``, scores become contrastive and
                documents are ranked by how well each predicts the question.
        """
        return self._score(texts, question, None)

    def score_for(self, texts: list[str], request: CompressionRequest) -> WordScores:
        """:meth:`score_words` for one call: the budget picks the documents and, with the
        keep rules, each window's kept context."""
        return self._score(texts, request.question, request)

    def _score(self, texts: list[str], question: str | None,
               request: CompressionRequest | None) -> WordScores:
        t0 = time.perf_counter()
        q_ids: list[int] = []
        if question and question.strip() and self.question_mode == "contrastive":
            q_ids = self.lm.encode(question.strip() + "\n")
        seg_words = [words.split_words(t) for t in texts]
        toks = [tokenize_spans(self.lm, t) for t in texts]
        n_tokens = np.asarray([len(t[0]) for t in toks], dtype=np.int64)
        budget = request.budget if request is not None else None
        keep_rate = None
        if budget is not None and budget.rate is not None:
            keep_rate = budget.rate
        elif budget is not None and budget.target_tokens is not None:
            keep_rate = min(1.0, budget.target_tokens / max(int(n_tokens.sum()), 1))
        threshold = budget.threshold if budget is not None else None
        t1 = time.perf_counter()

        # Documents first: which ones the budget goes to.
        alive = np.ones(len(texts), dtype=bool)
        order = None
        if self.rank_documents and keep_rate is not None and len(texts) > 1:
            order = self._rank_documents(texts, toks, question)
            goal = keep_rate * self.context_budget * n_tokens.sum()
            taken, used = [], 0
            for d in order:
                taken.append(d)
                used += int(n_tokens[d])
                if used >= goal:
                    break
            alive[:] = False
            alive[taken] = True
        self.last_document_order = order
        t2 = time.perf_counter()

        from tqdm.auto import tqdm

        parts = []
        for j in tqdm(range(len(texts)), desc="perplexity", unit="text",
                      disable=not self.progress or len(texts) < 3):
            w_starts, w_ends = seg_words[j]
            ids, t_starts, t_ends = toks[j]
            lo, hi = word_token_ranges(t_starts, t_ends, w_starts, w_ends)
            if len(w_starts) == 0:
                parts.append(np.zeros(0, dtype=np.float64))
                continue
            if self.iterative_size is None or not alive[j]:
                scores = self._word_scores(ids, lo, hi, q_ids, prefix=[])
            else:
                forced = self._forced_words(texts[j], w_starts, w_ends, request,
                                            question if self.force_question_words else None)
                scores = self._iterative(ids, lo, hi, q_ids, forced, keep_rate, threshold)
            parts.append(scores)
        t3 = time.perf_counter()
        scores = np.concatenate(parts) if parts else np.zeros(0)
        seg = np.concatenate([np.full(len(seg_words[j][0]), j, dtype=np.int64)
                              for j in range(len(texts))])
        if not alive.all() and len(scores):
            # Words of documents left out rank below every word of a taken one.
            floor = scores[alive[seg]].min() if alive[seg].any() else 0.0
            scores = np.where(alive[seg], scores, floor - 1.0 - np.abs(scores))
        return WordScores(
            starts=np.concatenate([s for s, _ in seg_words]),
            ends=np.concatenate([e for _, e in seg_words]),
            segment=seg, scores=scores.astype(np.float32),
            timings={"tokenize": t1 - t0, "rank": t2 - t1, "model": t3 - t2},
        )

    def _word_scores(self, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     q_ids: list[int], prefix: list[int]) -> np.ndarray:
        plain = token_surprisal(self.lm, ids.tolist(), prefix, window=self.window,
                                stride=self.stride)
        if q_ids:
            cond = token_surprisal(self.lm, ids.tolist(), q_ids + prefix, window=self.window,
                                   stride=self.stride)
            plain = plain - cond
        return pool_words(fill_unscored(plain), lo, hi, self.token_to_word)

    @staticmethod
    def _forced_words(text: str, starts: np.ndarray, ends: np.ndarray,
                      request: CompressionRequest | None, question: str | None) -> np.ndarray:
        """The request's forced words of one text (none outside a call: no window is cut)."""
        if request is None:
            return np.zeros(len(starts), dtype=bool)
        word_list = [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
        return selection.forced_words([text], word_list, starts, ends,
                                      np.zeros(len(starts), np.int64), request.phrases,
                                      request.keep_digits, request.protect, question)

    def _iterative(self, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray, q_ids: list[int],
                   forced: np.ndarray, keep_rate: float | None,
                   threshold: float | None) -> np.ndarray:
        """Score windows in turn, each conditioned on the words kept from the ones before."""
        size = self.iterative_size
        assert size is not None
        n_words = len(lo)
        scores = np.zeros(n_words, dtype=np.float64)
        kept: list[int] = []  # token ids kept so far (the next window's context)
        room = self.lm.context_length - 1 - len(q_ids)  # tokens of context + window that fit
        w0 = 0
        while w0 < n_words:
            # The window: words whose tokens start within `size` tokens of this one's first.
            w1 = int(np.searchsorted(lo, lo[w0] + size, side="left"))
            w1 = max(w1, w0 + 1)
            t_lo, t_hi = int(lo[w0]), int(hi[w1 - 1])
            window_ids = ids[t_lo:t_hi]
            prefix = kept[max(0, len(kept) - max(room - len(window_ids), 0)):]
            scores[w0:w1] = self._word_scores(window_ids, lo[w0:w1] - t_lo, hi[w0:w1] - t_lo,
                                              q_ids, prefix)
            keep = self._window_keep(scores[w0:w1], forced[w0:w1], hi[w0:w1] - lo[w0:w1],
                                     keep_rate, threshold)
            taken = np.zeros(t_hi - t_lo, dtype=bool)
            for a, b in zip((lo[w0:w1][keep] - t_lo).tolist(), (hi[w0:w1][keep] - t_lo).tolist(),
                            strict=True):
                taken[a:b] = True
            kept.extend(window_ids[taken].tolist())
            w0 = w1
        return scores

    @staticmethod
    def _window_keep(scores: np.ndarray, forced: np.ndarray, sizes: np.ndarray,
                     keep_rate: float | None, threshold: float | None) -> np.ndarray:
        if threshold is not None:
            return forced | (scores >= threshold)
        if keep_rate is None:
            return np.ones(len(scores), dtype=bool)
        goal = keep_rate * sizes.sum()
        keep = forced.copy()
        used = sizes[keep].sum()
        for i in np.argsort(-scores, kind="stable").tolist():
            if used >= goal:
                break
            if not keep[i]:
                keep[i] = True
                used += sizes[i]
        return keep

    @torch.inference_mode()
    def _rank_documents(self, texts: list[str], toks: list[tuple[np.ndarray, ...]],
                        question: str | None) -> list[int]:
        """Document indices, best first."""
        if question and question.strip():
            # LongLLMLingua: how well each document predicts the question (lower is better).
            q_tail = self.lm.encode("\n" + question.strip())
            room = self.lm.context_length - 1 - len(q_tail)
            ppl = []
            for ids, _, _ in toks:
                doc = ids.tolist()[-room:] if room > 0 else []
                ppl.append(_mean_scored(token_surprisal(self.lm, q_tail, doc,
                                                        window=self.window,
                                                        stride=self.stride)))
            return [int(i) for i in np.argsort(np.asarray(ppl), kind="stable")]
        # LLMLingua without a question: the most perplexing documents carry the most.
        ppl = [_mean_scored(token_surprisal(self.lm, ids.tolist(), window=self.window,
                                            stride=self.stride)) if len(ids) else -np.inf
               for ids, _, _ in toks]
        return [int(i) for i in np.argsort(-np.asarray(ppl), kind="stable")]
