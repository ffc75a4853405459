"""Reading vLLM's logprobs: one position's entropy and varentropy, and each step's entries.

vLLM returns log-probabilities, not logits; only the full vocabulary gives a position's
entropy (top-k logprobs leave out the tail). :func:`token_stats` reduces one position,
:func:`position_entries` reads one step out of vLLM's flat or per-position containers, and
the batch helpers here serve :mod:`tokenwise.vllm.backend` and :mod:`tokenwise.vllm.server`.

Example:
    >>> import math
    >>> h, v = token_stats([math.log(0.5), math.log(0.5)])
    >>> round(h, 4), v
    (0.6931, 0.0)
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tokenwise.errors import TokenwiseError

__all__ = ["MASS_TOLERANCE", "position_entries", "token_stats"]

#: How far from 1 the probability mass of a full-vocabulary position may be (float32 sums).
MASS_TOLERANCE = 1e-4

_FULL_VOCAB_HINT = ("ask vLLM for the full vocabulary: SamplingParams(logprobs=-1) on an engine "
                    "started with LLM(..., max_logprobs=-1)")


def _rows_stats(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy and varentropy (nats) of each row of normalised log-probabilities ``(T, V)``."""
    p = np.exp(lp)  # (T, V)
    # p == 0 covers -inf (masked) entries, whose p * log p is 0 in the limit
    lp_safe = np.where(p > 0, lp, 0.0)  # (T, V)
    h = -(p * lp_safe).sum(-1)  # (T,)
    # centred form, as tokenwise.signals: E[(log p)^2] - H^2 cancels for peaked rows
    v = (p * (lp_safe + h[:, None]) ** 2).sum(-1)  # (T,)
    return np.maximum(h, 0.0), v


def _normalise_rows(values: np.ndarray, what: str, *, full_vocab_known: bool) -> np.ndarray:
    """Check rows of logprobs ``(T, V)`` and renormalise away float32 rounding."""
    if np.isnan(values).any() or np.isposinf(values).any():
        bad = "NaN" if np.isnan(values).any() else "+inf"
        raise TokenwiseError(f"{what} contain {bad}; allowed finite log-probabilities "
                             "or -inf for a token the engine masked")
    with np.errstate(divide="ignore"):
        top = values.max(-1, keepdims=True)  # (T, 1)
        if np.isneginf(top).any():
            raise TokenwiseError(f"{what}: a position where every log-probability is -inf "
                                 "has no distribution")
        lse = (top + np.log(np.exp(values - top).sum(-1, keepdims=True)))  # (T, 1)
    mass = np.exp(lse[:, 0])  # (T,)
    off = np.abs(mass - 1.0)
    if not full_vocab_known and (off > MASS_TOLERANCE).any():
        i = int(off.argmax())
        raise TokenwiseError(
            f"{what} hold probability mass {mass[i]:.6f} at position {i} over "
            f"{values.shape[-1]} entries: not a full-vocabulary distribution (top-k logprobs "
            f"cannot give the entropy, nor do logits); {_FULL_VOCAB_HINT}")
    if full_vocab_known and (off > 1e-2).any():
        i = int(off.argmax())
        raise TokenwiseError(
            f"{what} hold probability mass {mass[i]:.6f} at position {i}: these are not "
            "log-probabilities (an engine with logprobs_mode='raw_logits' or "
            "'processed_logits' returns logits; use a *_logprobs mode)")
    return values - lse


def _position_array(logprobs: Any, vocab_size: int | None) -> np.ndarray:
    """One position's logprobs as a float64 vector, checked for coverage of the vocabulary."""
    if isinstance(logprobs, Mapping):
        if not logprobs:
            raise TokenwiseError(f"logprobs is an empty mapping; {_FULL_VOCAB_HINT}")
        ids = []
        values = []
        for key, entry in logprobs.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral):
                raise TokenwiseError(f"logprobs key {key!r}: allowed an integer token id")
            value = getattr(entry, "logprob", entry)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TokenwiseError(f"logprobs[{key}] is {entry!r}: allowed a vLLM Logprob "
                                     "or a number")
            ids.append(int(key))
            values.append(float(value))
        if vocab_size is not None:
            if len(ids) != vocab_size:
                raise TokenwiseError(
                    f"logprobs hold {len(ids)} token ids for a vocabulary of {vocab_size}: not "
                    f"the full vocabulary, so no exact entropy; {_FULL_VOCAB_HINT}")
            bad = [i for i in ids if not 0 <= i < vocab_size]
            if bad:
                raise TokenwiseError(f"token id {bad[0]} is outside the vocabulary "
                                     f"0..{vocab_size - 1}")
        return np.asarray(values, dtype=np.float64)
    if isinstance(logprobs, torch.Tensor):
        arr = logprobs.detach().to("cpu", torch.float64).numpy()
    elif isinstance(logprobs, np.ndarray | Sequence) and not isinstance(logprobs, str | bytes):
        try:
            arr = np.asarray(logprobs, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TokenwiseError(f"logprobs could not be read as numbers: {exc}") from None
    else:
        raise TokenwiseError(f"logprobs is a {type(logprobs).__name__}: allowed a vLLM "
                             "dict[int, Logprob], a mapping id -> logprob, or a sequence, "
                             "array or tensor of floats (one per vocabulary entry)")
    if arr.ndim != 1 or arr.size == 0:
        raise TokenwiseError(f"logprobs must be one position's values, a non-empty 1-D "
                             f"sequence; got shape {arr.shape}")
    if vocab_size is not None and arr.size != vocab_size:
        raise TokenwiseError(f"{arr.size} logprobs for a vocabulary of {vocab_size}: give one "
                             "per vocabulary entry")
    return arr


def token_stats(logprobs: Any, *, vocab_size: int | None = None) -> tuple[float, float]:
    """Entropy and varentropy (nats, nats squared) of one position's full-vocabulary logprobs.

    The units and definitions are those of :mod:`tokenwise.signals` and
    :class:`~tokenwise.generation.TokenRecord`: ``H = -sum p log p`` and
    ``sum p (log p + H)^2``. Entries of ``-inf`` (tokens an engine masked) contribute 0.

    Only the full vocabulary gives these numbers: top-k logprobs leave out the tail, whose
    share of the entropy cannot be recovered, so a truncated input is refused rather than
    reduced. With ``vocab_size`` the entry count must equal it; without, the probabilities
    must sum to 1 within :data:`MASS_TOLERANCE` (a top-k that leaves out more mass is
    refused). Tiny float32 deviations of the sum from 1 are renormalised away.

    Args:
        logprobs: vLLM's ``dict[int, Logprob]`` for one position (e.g.
            ``output.logprobs[t]`` with ``logprobs=-1``), a mapping ``id -> float``, or a
            sequence / array / tensor of ``V`` log-probabilities.
        vocab_size: the model's vocabulary size, when known (a stricter check).

    Returns:
        ``(entropy, varentropy)`` as Python floats.

    Raises:
        TokenwiseError: an input that is not one position of full-vocabulary log-probabilities
            (too few entries, mass far from 1, NaN/+inf, wrong type or shape).

    Example:
        >>> import math
        >>> h, v = token_stats([math.log(0.25), math.log(0.75)])
        >>> round(h, 6), round(v, 6), round(0.25 * 0.75 * math.log(3) ** 2, 6)
        (0.562335, 0.226303, 0.226303)
        >>> token_stats({0: math.log(0.5), 1: math.log(0.5), 2: float("-inf")}, vocab_size=3)
        (0.6931471805599453, 0.0)
    """
    if vocab_size is not None and (isinstance(vocab_size, bool)
                                   or not isinstance(vocab_size, numbers.Integral)
                                   or vocab_size < 1):
        raise TokenwiseError(f"vocab_size={vocab_size!r}: allowed an integer >= 1 or None")
    arr = _position_array(logprobs, vocab_size)
    lp = _normalise_rows(arr[None], "logprobs", full_vocab_known=False)
    h, v = _rows_stats(lp)
    return float(h[0]), float(v[0])


def position_entries(logprobs: Any, t: int, vocab: int) -> tuple[Sequence[int], Sequence[float]]:
    """Step ``t``'s ``(ids, logprobs)`` from vLLM's per-position logprobs, each id once.

    vLLM's sampler writes the sampled token first, then its top-k (the whole vocabulary
    under ``logprobs=-1``), so a flat step of ``vocab + 1`` entries holds the sampled token
    twice and its first entry is dropped; dict steps (and flat ones vLLM rebuilt through
    dicts when merging streamed outputs) hold each id once already.

    Args:
        logprobs: a completion's ``logprobs`` (``FlatLogprobs`` or a list of dicts).
        t: the step.
        vocab: the vocabulary size (the full-vocabulary width of a step).

    Example:
        >>> from types import SimpleNamespace
        >>> flat = SimpleNamespace(start_indices=[0], end_indices=[3], token_ids=[1, 1, 0],
        ...                        logprobs=[-0.29, -0.29, -1.39])
        >>> position_entries(flat, 0, vocab=2)
        ([1, 0], [-0.29, -1.39])
    """
    if hasattr(logprobs, "start_indices") and hasattr(logprobs, "token_ids"):
        a, b = logprobs.start_indices[t], logprobs.end_indices[t]
        a = a + 1 if b - a == vocab + 1 else a
        return logprobs.token_ids[a:b], logprobs.logprobs[a:b]
    entry = logprobs[t]
    return list(entry.keys()), [lp.logprob for lp in entry.values()]


def _position_rows(logprobs: Any, n_tokens: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-vocabulary ``(T, V)`` logprobs and ids from vLLM's per-position containers."""
    rows = np.empty((n_tokens, vocab), dtype=np.float64)
    ids = np.empty((n_tokens, vocab), dtype=np.int64)
    for t in range(n_tokens):
        tok, val = position_entries(logprobs, t, vocab)
        if len(tok) != vocab:
            raise TokenwiseError(
                f"vLLM returned {len(tok)} logprobs at step {t} for a vocabulary of {vocab}; "
                f"{_FULL_VOCAB_HINT}")
        rows[t] = val
        ids[t] = tok
    return rows, ids

