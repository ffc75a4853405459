"""SCOPE: rewrite semantic chunks concisely, each at its own ratio, keywords preserved.

After SCOPE (generative prompt compression by chunk-wise rewriting). The text is split into
*semantic chunks*: runs of sentences, cut where the embedding similarity of two adjacent
sentences drops into the lowest ``split_quantile`` of the text's adjacent similarities (or a
chunk reaches ``max_chunk_sentences``). Every chunk gets its own ratio around the asked rate:
chunks that are *outliers* (far from the rest of the text in embedding space) or close to
the question are kept more, the others less, with the token-weighted mean still the rate.
Each chunk is then rewritten by a generator: a user function ``rewrite(chunk, ratio) -> str``
or a local causal LM (a built-in name, a directory or a LanguageModel) prompted through
:func:`tokenwise.generate`.

*Keywords* (numbers, capitalised names inside a sentence, force tokens, protected spans, the
question's content words) must survive. A rewrite that loses one, or that runs over the
chunk's budget, is replaced by the fallback: the chunk's own words, keywords first, then
content words, then function words, as many as fit the chunk's budget on the target
tokenizer. The built-in models are far too small to paraphrase, so with them nearly every
chunk takes the fallback; the result says how many did (``timings["fallbacks"]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tokenwise.compression import selection, words
from tokenwise.compression.base import Compressor
from tokenwise.compression.counting import TokenCounter
from tokenwise.compression.extractive import resolve_embedder, sentence_spans
from tokenwise.compression.layout import Layout, parse_input
from tokenwise.compression.request import CompressionRequest
from tokenwise.compression.result import CompressionResult
from tokenwise.errors import TokenwiseError

FUNCTION_WORDS = words.FUNCTION_WORDS
PROMPT = ("Rewrite the text in fewer words. Keep these words exactly: {keywords}.\n"
          "Text: {chunk}\nShorter:")


def semantic_chunks(vectors: np.ndarray, split_quantile: float,
                    max_sentences: int) -> list[tuple[int, int]]:
    """Sentence ranges ``[a, b)`` of the chunks, cut at the weakest adjacent similarities.

    Args:
        vectors: ``(S, D)`` unit sentence embeddings, in text order.
        split_quantile: cut where the adjacent similarity is at or below this quantile of
            all adjacent similarities (0: only ``max_sentences`` cuts).
        max_sentences: the most sentences in one chunk.

    Example:
        >>> v = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
        >>> semantic_chunks(v, 0.3, 10)
        [(0, 2), (2, 4)]
    """
    n = len(vectors)
    if n == 0:
        return []
    sims = np.einsum("ij,ij->i", vectors[:-1], vectors[1:])  # (S-1,) neighbour cosines
    cut_after = np.zeros(max(n - 1, 0), dtype=bool)
    if n > 2 and split_quantile > 0:
        limit = np.quantile(sims, split_quantile)
        cut_after = sims <= limit
        if cut_after.all():  # all alike: no boundary stands out
            cut_after[:] = False
    elif n == 2 and split_quantile > 0:
        cut_after = sims < 0.5
    out, start = [], 0
    for i in range(n):
        if i == n - 1 or cut_after[i] or i + 1 - start >= max_sentences:
            out.append((start, i + 1))
            start = i + 1
    return out


def chunk_ratios(rate: float, sizes: np.ndarray, importance: np.ndarray, weight: float,
                 floor: float = 0.05) -> np.ndarray:
    """One keep ratio per chunk: ``rate·(1 + weight·z)``, clipped to [floor, 1], mean = rate.

    ``z`` is the importance standardised over chunks; the token-weighted mean of the ratios is
    brought back to ``rate`` by a few rounds of rescaling the unclipped chunks.

    Example:
        >>> r = chunk_ratios(0.4, np.array([10, 10, 10]), np.array([0.0, 0.0, 3.0]), 0.5)
        >>> bool(r[2] > r[0]), round(float((r * 10).sum() / 30), 6)
        (True, 0.4)
    """
    sizes = sizes.astype(np.float64)
    std = importance.std()
    z = (importance - importance.mean()) / std if std > 1e-12 else np.zeros_like(importance)
    ratios = np.clip(rate * (1 + weight * z), floor, 1.0)
    goal = rate * sizes.sum()
    for _ in range(20):
        got = (ratios * sizes).sum()
        if abs(got - goal) <= 1e-9 * max(goal, 1):
            break
        free = (ratios > floor) & (ratios < 1.0) if got > goal else ratios < 1.0
        if not free.any():
            break
        fixed = (ratios * sizes)[~free].sum()
        scale = (goal - fixed) / max((ratios * sizes)[free].sum(), 1e-12)
        ratios[free] = np.clip(ratios[free] * scale, floor, 1.0)
    return ratios


class GenerativeCompressor(Compressor):
    """SCOPE-style generative compression.

    Args:
        rewriter: a function ``rewrite(chunk, ratio) -> str``; or a causal LM (a built-in
            name, a local directory, a LanguageModel) prompted with :data:`PROMPT`; or None
            (no generator: every chunk takes the keyword-preserving fallback).
        embedder: sentence embeddings for chunking and ratios (see
            :func:`tokenwise.compression.extractive.resolve_embedder`; default the PyPI MiniLM).
        split_quantile: chunk boundaries at adjacent similarities in this lowest quantile.
        max_chunk_sentences: the most sentences per chunk.
        outlier_weight: how far chunk ratios move with importance (0: one ratio for all).
        model: the same as ``rewriter`` (for ``get(method, model=...)``).

    Example:
        >>> emb = lambda ts: [[1.0, float("rain" in t)] for t in ts]
        >>> comp = GenerativeCompressor(lambda chunk, ratio: chunk.split(",")[0] + ".",
        ...                             embedder=emb)
        >>> comp.compress("Ann paid 40 dollars, as agreed.", rate=0.7).text
        'Ann paid 40 dollars.'
    """

    name = "generative"

    def __init__(self, rewriter: Any = None, *, embedder: Any = None,
                 split_quantile: float = 0.25, max_chunk_sentences: int = 6,
                 outlier_weight: float = 0.5, model: Any = None):
        if rewriter is not None and model is not None:
            raise TokenwiseError("give the generator once: rewriter= or model=")
        rewriter = rewriter if rewriter is not None else model
        if not (isinstance(split_quantile, (int, float)) and 0 <= split_quantile < 1):
            raise TokenwiseError(f"split_quantile={split_quantile!r}: allowed [0, 1)")
        if (isinstance(max_chunk_sentences, bool) or not isinstance(max_chunk_sentences, int)
                or max_chunk_sentences < 1):
            raise TokenwiseError(f"max_chunk_sentences={max_chunk_sentences!r}: must be an "
                                 "integer >= 1")
        if (isinstance(outlier_weight, bool) or not isinstance(outlier_weight, (int, float))
                or not math.isfinite(outlier_weight) or outlier_weight < 0):
            raise TokenwiseError(f"outlier_weight={outlier_weight!r}: must be a number >= 0")
        self.lm = None
        self.rewrite: Callable[[str, float], str] | None = None
        if rewriter is None:
            pass
        elif callable(rewriter) and not hasattr(rewriter, "hf_model"):
            self.rewrite = rewriter
        else:
            from tokenwise.compression.perplexity import load_causal_lm

            self.lm = load_causal_lm(rewriter)
        self.embedder = resolve_embedder(embedder)
        self.split_quantile = float(split_quantile)
        self.max_chunk_sentences = max_chunk_sentences
        self.outlier_weight = float(outlier_weight)

    def __repr__(self) -> str:
        gen = self.lm.name if self.lm is not None else (
            getattr(self.rewrite, "__name__", "function") if self.rewrite else None)
        return f"GenerativeCompressor(rewriter={gen!r}, embedder={self.embedder!r})"

    def check_request(self, request: CompressionRequest) -> None:
        """Refuse what has no meaning for a rewriter: ``threshold``, ``percentile="chunk"``
        and the context filter (they act on per-word scores)."""
        if request.budget.threshold is not None:
            raise TokenwiseError("generative compression needs rate= or target_tokens=, not "
                                 "threshold= (a rewrite has no per-word scores to cut)")
        if (request.percentile != "global" or request.context_filter
                or request.context_rate is not None):
            raise TokenwiseError("percentile='chunk' and the context filter select words; "
                                 "generative compression rewrites chunks instead")

    def run(self, text_or_messages: Any, request: CompressionRequest) -> CompressionResult:
        """Compress by rewriting chunks (numbers are keywords whatever ``keep_digits`` says)."""
        t_start = time.perf_counter()
        budget = request.budget
        question, phrases, protect = request.question, request.phrases, request.protect
        layout = Layout(parse_input(text_or_messages, request.roles),
                        TokenCounter.resolve(request.target_model))
        counter, texts = layout.counter, layout.texts
        comp_tokens = counter.count_each(texts)
        if layout.whole is None:
            tokens_before = layout.fixed_tokens + int(comp_tokens.sum())
        else:
            tokens_before = counter.count(layout.whole)
        rate_all = budget.rate if budget.rate is not None else min(
            1.0, budget.target_tokens / max(int(comp_tokens.sum()), 1))

        # Chunks of every text, embedded together.
        t_embed = time.perf_counter()
        chunks: list[tuple[int, int, int]] = []  # (text index, char start, char end)
        for j, text in enumerate(texts):
            spans = sentence_spans(text)
            if not spans:
                continue
            vecs = self.embedder.embed([text[a:b] for a, b in spans])
            for a, b in semantic_chunks(vecs, self.split_quantile, self.max_chunk_sentences):
                chunks.append((j, spans[a][0], spans[b - 1][1]))
        chunk_texts = [texts[j][a:b] for j, a, b in chunks]
        sizes = counter.count_each(chunk_texts)
        importance = self._importance(chunk_texts, question)
        ratios = chunk_ratios(rate_all, sizes, importance, self.outlier_weight)
        t_rewrite = time.perf_counter()

        # Rewrite each chunk, or fall back to its keywords and best words.
        q_words = words.question_words(question)
        outputs, fallbacks = [], 0
        word_rows = []
        for (j, a, _), chunk, ratio, size in zip(chunks, chunk_texts, ratios.tolist(),
                                                 sizes.tolist(), strict=True):
            ws, we = words.split_words(chunk)
            key = keywords(chunk, ws, we, phrases, protect, q_words)
            limit = max(1, math.ceil(ratio * size))
            key_words = list(dict.fromkeys(chunk[s:e] for s, e, k in
                                           zip(ws.tolist(), we.tolist(), key.tolist(),
                                               strict=True) if k))
            out = None
            if ratio >= 1.0:
                out, keep = chunk, np.ones(len(ws), dtype=bool)
            elif self.rewrite is not None or self.lm is not None:
                out = self._generate(chunk, ratio, key_words, limit)
                if out is not None and (counter.count(out) > limit
                                        or any(k not in out for k in key_words)):
                    out = None
                if out is not None:
                    present = {w.lower() for w in _word_strings(out)}
                    keep = np.fromiter((chunk[s:e].lower() in present
                                        for s, e in zip(ws.tolist(), we.tolist(), strict=True)),
                                       dtype=bool, count=len(ws))
            if out is None:
                fallbacks += 1
                keep = fallback_keep(chunk, ws, we, key, limit, counter)
                out = words.render(chunk, ws, we, keep)
            outputs.append(out)
            word_rows.append((j, a, ws + a, we + a, keep, key, ratio))
        t_join = time.perf_counter()

        rendered = []
        for j, text in enumerate(texts):
            runs = [(a, o) for (jj, a, _), o in zip(chunks, outputs, strict=True) if jj == j]
            pieces = []
            for k, (a, o) in enumerate(runs):
                if k and o:
                    gap = text[chunks_end(chunks, j, k - 1):a]
                    pieces.append("\n" if "\n" in gap else " ")
                pieces.append(o)
            rendered.append("".join(pieces).strip() if not request.keep_newlines
                            else "".join(pieces))
        text_out, parts = layout.assemble(rendered, np.ones(len(texts), dtype=bool))
        tokens_after = layout.count(text_out, parts)
        messages, contexts = layout.outputs(parts)

        def cat(k: int, dt: Any) -> np.ndarray:
            if not word_rows:
                return np.zeros(0, dtype=dt)
            return np.concatenate([r[k] for r in word_rows]).astype(dt)

        word_list = [texts[r[0]][s:e] for r in word_rows
                     for s, e in zip(r[2].tolist(), r[3].tolist(), strict=True)]
        seg_local = (np.concatenate([np.full(len(r[2]), r[0], np.int64) for r in word_rows])
                     if word_rows else np.zeros(0, np.int64))
        scores = (np.concatenate([np.full(len(r[2]), r[6], np.float32) for r in word_rows])
                  if word_rows else np.zeros(0, np.float32))
        t_end = time.perf_counter()
        return CompressionResult(
            text=text_out, words=word_list, keep=cat(4, bool), scores=scores,
            forced=cat(5, bool), segments=np.asarray(layout.compressed, dtype=np.int64)[seg_local]
            if len(seg_local) else seg_local,
            tokens_before=tokens_before, tokens_after=tokens_after, method=self.name,
            seconds=t_end - t_start,
            timings={"embed": t_rewrite - t_embed, "rewrite": t_join - t_rewrite,
                     "total": t_end - t_start, "chunks": float(len(chunks)),
                     "fallbacks": float(fallbacks)},
            target_tokenizer=counter.name, messages=messages, contexts=contexts,
        )

    def _importance(self, chunk_texts: list[str], question: str | None) -> np.ndarray:
        """Outlier score (distance from the other chunks' mean) plus question relevance."""
        n = len(chunk_texts)
        if n <= 1:
            return np.zeros(n)
        vecs = self.embedder.embed(chunk_texts).astype(np.float64)  # (C, D)
        total = vecs.sum(0)
        others = (total[None, :] - vecs) / (n - 1)  # (C, D) mean of the other chunks
        norm = np.linalg.norm(others, axis=1)
        outlier = 1.0 - np.einsum("ij,ij->i", vecs, others) / np.maximum(norm, 1e-12)
        if question and question.strip():
            q = self.embedder.embed([question.strip()])[0].astype(np.float64)
            outlier = outlier + vecs @ q
        return outlier

    def _generate(self, chunk: str, ratio: float, key_words: list[str],
                  limit: int) -> str | None:
        if self.rewrite is not None:
            out = self.rewrite(chunk, ratio)
            if not isinstance(out, str):
                raise TokenwiseError(f"rewrite(chunk, ratio) returned {type(out).__name__}; "
                                     "it must return the rewritten text (str)")
            return out.strip()
        import tokenwise

        assert self.lm is not None
        prompt = PROMPT.format(keywords=", ".join(key_words) or "-", chunk=chunk)
        room = self.lm.context_length - len(self.lm.encode(prompt, add_bos=True))
        if room < 2:
            return None  # the chunk does not fit the generator's context
        gen = tokenwise.generate(self.lm, prompt, max_new_tokens=min(limit + 4, room),
                                 stop="\n")
        return gen.text.strip()


def chunks_end(chunks: list[tuple[int, int, int]], j: int, k: int) -> int:
    """End character of the ``k``-th chunk of text ``j``."""
    return [c for c in chunks if c[0] == j][k][2]


def _word_strings(text: str) -> list[str]:
    s, e = words.split_words(text)
    return [text[a:b] for a, b in zip(s.tolist(), e.tolist(), strict=True)]


def keywords(text: str, starts: np.ndarray, ends: np.ndarray, phrases: tuple[str, ...] = (),
             protect: bool | Sequence[str] = True,
             question_words: set[str] | frozenset[str] = frozenset()) -> np.ndarray:
    """Words a rewrite must keep: numbers, names, force tokens, protected spans, question words.

    A name is a capitalised word that does not open a sentence.

    Example:
        >>> t = "The code of Tavoun is 917. Ask Ann."
        >>> k = keywords(t, *words.split_words(t))
        >>> [w for w, f in zip(_word_strings(t), k) if f]
        ['Tavoun', '917', 'Ann']
    """
    n = len(starts)
    word_list = [text[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    from tokenwise.compression.selective_context import sentence_units

    sent = sentence_units(text, starts, ends)
    opens = np.ones(n, dtype=bool)
    opens[1:] = sent[1:] != sent[:-1]
    out = np.fromiter((any(c.isdigit() for c in w) for w in word_list), dtype=bool, count=n)
    out |= np.fromiter((w[:1].isupper() for w in word_list), dtype=bool, count=n) & ~opens
    out |= np.fromiter((w.lower() in question_words for w in word_list), dtype=bool, count=n)
    if phrases:
        out |= words.match_phrases(text, starts, ends, phrases)
    if protect:
        kinds = None if protect is True else tuple(protect)
        out |= words.overlaps(starts, ends, words.protected_spans(text, kinds))
    return out


def fallback_keep(chunk: str, starts: np.ndarray, ends: np.ndarray, key: np.ndarray,
                  limit: int, counter: TokenCounter) -> np.ndarray:
    """Keywords, then content words, then function words, in text order, within ``limit``.

    If the keywords alone exceed the limit they are all kept anyway: keywords always survive.

    Example:
        >>> t = "The code of Tavoun is 917."
        >>> s, e = words.split_words(t)
        >>> keep = fallback_keep(t, s, e, keywords(t, s, e), 4, TokenCounter(len, "chars"))
        >>> words.render(t, s, e, keep)
        'Tavoun 917'
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=bool)
    lower = [chunk[a:b].lower() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]
    content = np.fromiter((w[:1].isalnum() and w not in FUNCTION_WORDS for w in lower),
                          dtype=bool, count=n)
    # Content words first, earlier before later; then function words and punctuation.
    scores = np.where(content, 2.0, 1.0) - np.arange(n) / (2.0 * n)
    cps = words.code_points(chunk)

    def count(mask: np.ndarray) -> int:
        return counter.count(words.render(chunk, starts, ends, mask, cps))

    if count(key) >= limit:
        return key.copy()
    weights = counter.count_each(lower)
    return selection.budget_keep(scores, key, weights, limit, count)
