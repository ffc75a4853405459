"""Token counts on the *target* model's tokenizer (the model that reads the compressed text).

Budgets (``rate``, ``target_tokens``) are about what the reader pays for, so they are
counted with the reader's tokenizer: a :class:`~tokenwise.models.LanguageModel`, a local
tokenizer directory, any Hugging Face tokenizer object, or, by default, the built-in
models' tokenizer. Never a hard-coded GPT tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.models.protocols import Codec

DEFAULT_TARGET = "tw-large"


class TokenCounter:
    """Counts tokens of texts with one tokenizer, special tokens excluded.

    Args:
        tokenizer: a Hugging Face tokenizer (anything callable as ``tok(texts,
            add_special_tokens=False)`` returning ``input_ids``), or a function ``str -> int``.
        name: a short name for reports.

    Example:
        >>> counter = TokenCounter.resolve(None)
        >>> counter.count("12+7=19")
        7
        >>> counter.count_each(["ab", "", "12"]).tolist()
        [1, 0, 2]
    """

    def __init__(self, tokenizer: Any, name: str):
        self.tokenizer = tokenizer
        self.name = name
        self._is_function = not hasattr(tokenizer, "encode") and callable(tokenizer)
        # The Rust tokenizer itself, when it can be called bare (no truncation or padding
        # configured): it skips the per-text Python conversion of the transformers wrapper.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        usable = (backend is not None and hasattr(backend, "encode_batch_fast")
                  and backend.truncation is None and backend.padding is None)
        self._backend = backend if usable else None

    def __repr__(self) -> str:
        return f"TokenCounter({self.name!r})"

    def count(self, text: str) -> int:
        """Tokens in ``text``."""
        if self._is_function:
            return int(self.tokenizer(text))
        if not text:
            return 0
        if self._backend is not None:
            return len(self._backend.encode_batch_fast([text], add_special_tokens=False)[0])
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return len(ids)

    def count_each(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens in each text, as an ``int64`` array (one batched tokenizer call)."""
        if self._is_function:
            return np.asarray([int(self.tokenizer(t)) for t in texts], dtype=np.int64)
        if len(texts) == 0:
            return np.zeros(0, dtype=np.int64)
        if self._backend is not None:
            encs = self._backend.encode_batch_fast(list(texts), add_special_tokens=False)
            return np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(texts))
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))

    def token_starts(self, texts: Sequence[str]) -> list[np.ndarray] | None:
        """Start offset of every token of each text (None for a counting function).

        Example:
            >>> TokenCounter.resolve(None).token_starts(["ab 12"])[0].tolist()
            [0, 2, 3, 4]
        """
        if self._is_function:
            return None
        if self._backend is not None:
            offsets = [e.offsets for e in self._backend.encode_batch(
                list(texts), add_special_tokens=False)]
        else:
            offsets = self.tokenizer(list(texts), add_special_tokens=False,
                                     return_offsets_mapping=True,
                                     verbose=False)["offset_mapping"]
        return [np.asarray(o, dtype=np.int64).reshape(-1, 2)[:, 0] for o in offsets]

    def per_word(self, texts: Sequence[str], starts: np.ndarray, ends: np.ndarray,
                 segment: np.ndarray,
                 token_starts: list[np.ndarray] | None = None) -> np.ndarray | None:
        """Tokens of each text attributed to its words, in context (None for a function).

        A token belongs to the word its first character falls in, or to the next word when
        it starts in the gap before it (a leading space), so the weights of all words sum
        to the text's count.

        Args:
            texts: the texts.
            starts, ends: ``(W,)`` word spans, sorted within each text.
            segment: ``(W,)`` which text each word is in (non-decreasing).
            token_starts: :meth:`token_starts` of ``texts``, when already computed.

        Example:
            >>> c = TokenCounter.resolve(None)
            >>> c.per_word(["ab 12"], np.array([0, 3]), np.array([2, 5]), np.array([0, 0]))
            array([1, 3])
        """
        if token_starts is None:
            token_starts = self.token_starts(texts)
        if token_starts is None:
            return None
        weights = np.zeros(len(starts), dtype=np.int64)
        bounds = np.searchsorted(segment, np.arange(len(texts) + 1))
        for j, tok_start in enumerate(token_starts):
            lo, hi = bounds[j], bounds[j + 1]
            if hi == lo or len(tok_start) == 0:
                continue
            owner = np.minimum(np.searchsorted(ends[lo:hi], tok_start, side="right"),
                               hi - lo - 1)  # (T,)
            weights[lo:hi] = np.bincount(owner, minlength=hi - lo)
        return weights

    @classmethod
    def resolve(cls, target: Any) -> TokenCounter:
        """A counter for ``target``.

        Args:
            target: None (the built-in models' tokenizer), a :class:`TokenCounter`, a
                ``LanguageModel`` or any other :class:`~tokenwise.models.protocols.Codec`, a
                built-in model name, a local directory with tokenizer
                files, a tokenizer object, or a function ``str -> int``.

        Example:
            >>> TokenCounter.resolve("tw-small").name
            'tw-small'
        """
        if isinstance(target, TokenCounter):
            return target
        if target is None:
            return _cached_dir_counter(DEFAULT_TARGET)
        if isinstance(target, (str, os.PathLike)):
            return _cached_dir_counter(os.fspath(target))
        if isinstance(target, Codec):  # a LanguageModel, the vLLM server's ServedModel, ...
            return cls(target.tokenizer, target.name)
        if hasattr(target, "encode") and callable(target):
            return cls(target, getattr(target, "name_or_path", "") or type(target).__name__)
        if callable(target):
            return cls(target, getattr(target, "__name__", "function"))
        raise TokenwiseError(
            f"target_model={target!r}: give a LanguageModel, a built-in model name, a local "
            "tokenizer directory, a Hugging Face tokenizer or a function str -> int"
        )


@lru_cache(maxsize=8)
def _cached_dir_counter(path_or_name: str) -> TokenCounter:
    from transformers import AutoTokenizer

    from tokenwise.models import resolve

    name, path = resolve(path_or_name)
    if not _has_tokenizer_files(path):
        raise TokenwiseError(
            f"target_model={path_or_name!r}: {str(path)!r} has no tokenizer files "
            "(tokenizer.json, tokenizer_config.json, vocab.txt, ...)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return TokenCounter(tokenizer, name)


def _has_tokenizer_files(path: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
             "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
    return any((path / n).is_file() for n in names)

