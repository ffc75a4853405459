"""Per-token signals computed from logits: log-probabilities, entropy, surprisal, varentropy.

Every function here is a pure tensor function: it never modifies its inputs, has no state and
depends only on :mod:`torch` and :mod:`math`.

Conventions shared by all functions:

* **Masking.** A logit of ``-inf`` marks a token that cannot be produced (top-k/top-p filtering,
  grammar constraints, a padded vocabulary). Its probability is exactly 0 and it contributes
  exactly 0 to entropy and varentropy; it never turns a result into NaN. A row in which *every*
  logit is ``-inf`` has no distribution at all; such a row gets log-probabilities of ``-inf``
  everywhere, entropy 0 and varentropy 0, and any token chosen from it has surprisal ``+inf``.
* **Bad logits.** NaN or ``+inf`` logits have no meaningful distribution, so rather than
  return NaN every logits function raises :class:`~tokenwise.errors.TokenwiseError` naming the
  first bad row. The check reuses a per-row maximum (one read of the logits, one value per row
  kept), which is cheap next to the softmax itself.
* **Precision.** ``float16``/``bfloat16`` (and integer) logits are computed in ``float32``;
  ``float64`` stays ``float64``. Results are ``float32`` (``float64`` for ``float64`` input).
* **Units.** Natural logarithms (nats) by default; ``base=2`` gives bits. Any finite base
  ``> 0`` and ``!= 1`` is allowed. Varentropy, a variance, is in squared units.
* **Gradients.** :func:`log_probs`, :func:`entropy`, :func:`varentropy`, :func:`surprisal` and
  :func:`rolling_mean` are differentiable, with finite (zero) gradients at masked logits.
  :func:`token_stats` is for scoring and does not track gradients.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError

__all__ = [
    "TokenStats",
    "attention_entropy",
    "entropy",
    "high_window_entropy",
    "log_probs",
    "rolling_mean",
    "surprisal",
    "token_stats",
    "varentropy",
    "window_entropy",
]

_NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _check_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TokenwiseError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise TokenwiseError(f"{name} must be real-valued, got dtype {value.dtype}")
    return value


def _check_int(value: object, name: str, minimum: int) -> int:
    # bool is an int subclass, but `window=True` is a mistake, not a window of 1
    if isinstance(value, bool):
        raise TokenwiseError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)  # accepts int and numpy integers, rejects 2.0 and "2"
    except TypeError:
        raise TokenwiseError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise TokenwiseError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _check_mask(mask: object, shape: torch.Size, of: str) -> Tensor:
    mask = _check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TokenwiseError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != shape:
        raise TokenwiseError(f"mask must have {of} shape {tuple(shape)}, got {tuple(mask.shape)}")
    return mask


def _check_dim(dim: object, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TokenwiseError(f"dim must be an integer, got {dim!r}")
    if ndim == 0:
        raise TokenwiseError("expected a tensor with at least one dimension, got a 0-d tensor")
    if not -ndim <= dim < ndim:
        raise TokenwiseError(
            f"dim {dim} is out of range for a tensor with {ndim} dimension(s) "
            f"(allowed: {-ndim}..{ndim - 1})"
        )
    return dim % ndim


def _log_base(base: object) -> float | None:
    """ln(base), or None for natural units."""
    if base is None:
        return None
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TokenwiseError(f"base must be a number > 0 and != 1 (e.g. 2 for bits), got {base!r}")
    value = float(base)
    if not (math.isfinite(value) and value > 0 and value != 1):
        raise TokenwiseError(
            f"base must be a finite number > 0 and != 1 (e.g. 2 for bits), got {base!r}"
        )
    return math.log(value)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_logits(logits: object, dim: int) -> tuple[Tensor, int]:
    logits = _check_tensor(logits, "logits")
    dim = _check_dim(dim, logits.ndim)
    if logits.shape[dim] == 0:
        raise TokenwiseError(
            f"logits have an empty vocabulary dimension (shape {tuple(logits.shape)}, dim {dim})"
        )
    return logits, dim


def _raise_bad_rows(row_max: Tensor, dim: int, row_offset: int = 0) -> None:
    """Raise for the first row whose maximum is NaN or +inf (row_max keeps `dim` as size 1)."""
    bad = torch.isnan(row_max) | torch.isposinf(row_max)
    position = bad.nonzero()[0].tolist()
    kind = "NaN" if math.isnan(row_max[tuple(position)].item()) else "+inf"
    del position[dim]
    if position:
        position[0] += row_offset
    raise TokenwiseError(
        f"logits contain {kind} in the row at index {tuple(position)}; logits must be finite, "
        "or -inf for a masked token"
    )


def _log_softmax(logits: Tensor, dim: int, row_offset: int = 0) -> Tensor:
    """Validated log-softmax in the compute dtype; fully masked rows become all -inf."""
    ctype = _compute_dtype(logits.dtype)
    if not logits.is_floating_point():
        logits = logits.to(ctype)
    # one per-row maximum serves both the NaN/+inf check and the fully-masked check
    row_max = logits.detach().amax(dim=dim, keepdim=True)  # (..., 1, ...)
    all_masked = torch.isneginf(row_max)  # (..., 1, ...)
    bad = torch.isnan(row_max) | torch.isposinf(row_max)  # (..., 1, ...)
    # a single host sync for both flags
    any_bad, any_all_masked = torch.stack([bad.any(), all_masked.any()]).tolist()
    if any_bad:
        _raise_bad_rows(row_max, dim, row_offset)
    if not any_all_masked:
        # dtype= lets torch upcast half inputs inside the kernel instead of copying them first
        return torch.log_softmax(logits, dim, dtype=ctype)
    # log_softmax of an all -inf row is NaN (-inf - -inf); give it zeros, then mask it back
    safe = torch.where(all_masked, 0, logits)  # (..., V, ...)
    return torch.log_softmax(safe, dim, dtype=ctype).masked_fill(all_masked, _NEG_INF)


def _entropy_parts(lp: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """(p, log p with masked entries set to 0, H with `dim` kept)."""
    p = lp.exp()
    # p == 0 covers -inf (masked) and underflowed entries, whose p * log p is 0 in the limit;
    # zeroing log p first (not the product) also keeps the gradient free of 0 * inf
    lp_safe = torch.where(p > 0, lp, 0.0)
    h = 0.0 - (p * lp_safe).sum(dim, keepdim=True)  # 0 - s rather than -s: no -0.0
    return p, lp_safe, h


def _check_token_ids(
    token_ids: object, batch_shape: torch.Size, vocab_size: int, device: torch.device
) -> Tensor:
    if not isinstance(token_ids, Tensor):
        try:
            token_ids = torch.as_tensor(token_ids)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TokenwiseError(
                f"token_ids must be a tensor of integer ids, got {type(token_ids).__name__}"
            ) from exc
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TokenwiseError(f"token_ids must have an integer dtype, got {token_ids.dtype}")
    if token_ids.shape != batch_shape:
        raise TokenwiseError(
            f"token_ids must have shape {tuple(batch_shape)} (the logits' shape without the "
            f"vocabulary dimension), got {tuple(token_ids.shape)}"
        )
    token_ids = token_ids.to(device=device, dtype=torch.int64)
    out_of_range = (token_ids < 0) | (token_ids >= vocab_size)
    if out_of_range.any():
        bad = token_ids[out_of_range][0].item()
        raise TokenwiseError(
            f"token id {bad} is out of range for vocabulary size {vocab_size} "
            f"(allowed: 0..{vocab_size - 1})"
        )
    return token_ids


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def log_probs(logits: Tensor, dim: int = -1) -> Tensor:
    """Log-softmax of ``logits`` along ``dim``, computed in float32 (float64 stays float64).

    Args:
        logits: Real tensor of unnormalised scores; ``-inf`` marks a masked token.
        dim: The vocabulary dimension.

    Returns:
        Tensor of ``logits``' shape: ``log p``, ``-inf`` at masked tokens. A row in which every
        logit is ``-inf`` is ``-inf`` throughout.

    Raises:
        TokenwiseError: If a logit is NaN or ``+inf``, ``dim`` is out of range or the
            vocabulary dimension is empty.

    Example:
        >>> import torch
        >>> log_probs(torch.tensor([0.0, 0.0, float("-inf")]))
        tensor([-0.6931, -0.6931,    -inf])
    """
    logits, dim = _check_logits(logits, dim)
    return _log_softmax(logits, dim)


def entropy(logits: Tensor, dim: int = -1, base: float | None = None) -> Tensor:
    """Shannon entropy ``H = -sum p log p`` of the distribution ``softmax(logits)``.

    Masked (``-inf``) logits contribute exactly 0. A row in which every logit is ``-inf`` has
    entropy 0 (there is nothing left to be uncertain about).

    Args:
        logits: Real tensor of unnormalised scores; ``-inf`` marks a masked token.
        dim: The vocabulary dimension, which is reduced away.
        base: Logarithm base; ``None`` for nats, ``2`` for bits.

    Returns:
        Tensor of ``logits``' shape without ``dim``; float32 (float64 for float64 logits).

    Raises:
        TokenwiseError: For NaN or ``+inf`` logits, a bad ``dim`` or a bad ``base``.

    Example:
        >>> import torch
        >>> entropy(torch.zeros(4))  # uniform over 4 tokens: ln 4 nats
        tensor(1.3863)
        >>> entropy(torch.tensor([[0.0, 0.0, float("-inf")], [5.0, float("-inf"), 1.0]]), base=2)
        tensor([1.0000, 0.1300])
    """
    ln_base = _log_base(base)
    logits, dim = _check_logits(logits, dim)
    lp = _log_softmax(logits, dim)  # (..., V, ...)
    h = _entropy_parts(lp, dim)[2].squeeze(dim)
    return h if ln_base is None else h / ln_base


def surprisal(logits: Tensor, token_ids: Tensor, base: float | None = None) -> Tensor:
    """Surprisal ``-log p[token]`` of the chosen tokens; the vocabulary is the last dimension.

    A chosen token whose logit is ``-inf`` (masked, impossible) has surprisal ``+inf``; so does
    any token of a row in which every logit is ``-inf``.

    Args:
        logits: Tensor of shape ``(..., V)``.
        token_ids: Integer tensor of shape ``(...)`` (``logits.shape[:-1]``), ids in ``[0, V)``.
        base: Logarithm base; ``None`` for nats, ``2`` for bits.

    Returns:
        Tensor of shape ``logits.shape[:-1]``; float32 (float64 for float64 logits).

    Raises:
        TokenwiseError: For NaN or ``+inf`` logits, mismatched shapes, non-integer or
            out-of-range ids, or a bad ``base``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, float("-inf"), 0.0, 0.0]])
        >>> surprisal(logits, torch.tensor([2, 1]), base=2)
        tensor([2., inf])
    """
    ln_base = _log_base(base)
    logits, _ = _check_logits(logits, -1)
    token_ids = _check_token_ids(token_ids, logits.shape[:-1], logits.shape[-1], logits.device)
    ctype = _compute_dtype(logits.dtype)
    values = logits.to(ctype)  # (..., V)
    chosen = values.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # (...)
    # cross-entropy form lse - x[token]: needs one value per row, not a full log-softmax;
    # logsumexp is NaN for a row with NaN, +inf for one with +inf, -inf for an all -inf row
    lse = torch.logsumexp(values, dim=-1)  # (...)
    all_masked = torch.isneginf(lse)  # (...)
    any_bad, any_all_masked = torch.stack(
        [(torch.isnan(lse) | torch.isposinf(lse)).any(), all_masked.any()]
    ).tolist()
    if any_bad:
        _raise_bad_rows(lse.unsqueeze(-1), lse.ndim)
    if any_all_masked:
        # -inf - -inf would be NaN (in the value, and in logsumexp's gradient): zeros instead
        # give lse 0 there, so any token of such a row gets surprisal 0 - (-inf) = +inf
        safe = torch.where(all_masked.unsqueeze(-1), 0.0, values)  # (..., V)
        lse = torch.logsumexp(safe, dim=-1).masked_fill(all_masked, 0.0)  # (...)
    s = lse - chosen
    return s if ln_base is None else s / ln_base


def varentropy(logits: Tensor, dim: int = -1, base: float | None = None) -> Tensor:
    """Varentropy ``sum p (log p + H)^2``: the variance of the surprisal under ``p``.

    Masked (``-inf``) logits contribute exactly 0; a fully masked row has varentropy 0.
    A uniform distribution (over its unmasked support) has varentropy 0.

    Args:
        logits: Real tensor of unnormalised scores; ``-inf`` marks a masked token.
        dim: The vocabulary dimension, which is reduced away.
        base: Logarithm base. Values are then in units of ``(log base)^2``, i.e. the nat result
            divided by ``ln(base)^2``.

    Returns:
        Tensor of ``logits``' shape without ``dim``; float32 (float64 for float64 logits).

    Raises:
        TokenwiseError: For NaN or ``+inf`` logits, a bad ``dim`` or a bad ``base``.

    Example:
        >>> import torch, math
        >>> p = torch.tensor([0.25, 0.75])  # surprisal ln 4 or ln(4/3), each with its p
        >>> varentropy(p.log(), base=2)  # 0.25 * 0.75 * log2(3)^2
        tensor(0.4710)
        >>> varentropy(torch.zeros(3, 5))
        tensor([0., 0., 0.])
    """
    ln_base = _log_base(base)
    logits, dim = _check_logits(logits, dim)
    lp = _log_softmax(logits, dim)  # (..., V, ...)
    p, lp_safe, h = _entropy_parts(lp, dim)
    # centred form: E[(log p)^2] - H^2 would cancel catastrophically for peaked distributions
    v = (p * (lp_safe + h).square()).sum(dim)
    return v if ln_base is None else v / (ln_base * ln_base)


def rolling_mean(
    x: Tensor,
    window: int,
    dim: int = -1,
    direction: Literal["trailing", "leading"] = "trailing",
    mask: Tensor | None = None,
) -> Tensor:
    """Mean of ``x`` over a window of ``window`` consecutive positions along ``dim``.

    ``"trailing"``: position ``t`` averages ``x[max(0, t-w+1) .. t]``, the last ``w`` values,
    fewer at the start (EAD's rolling entropy). ``"leading"``: position ``t`` averages
    ``x[t .. min(T-1, t+w-1)]``, the next ``w`` values, fewer at the end (ARES's
    high-window entropy). Computed from float64 prefix sums, so the cost does not depend on
    ``window``; the absolute error is about ``1e-16`` times the largest prefix sum.

    ``+inf``/``-inf`` values are allowed and make every window that contains them ``+inf``/
    ``-inf`` (e.g. surprisal of a masked token).

    Args:
        x: Tensor of values (any real or integer dtype).
        window: Window length, an integer ``>= 1``; it may exceed the length of ``dim``.
        dim: The dimension to slide along.
        direction: ``"trailing"`` or ``"leading"``.
        mask: Optional bool tensor of ``x``'s shape; ``False`` entries are ignored, so each
            mean is over the valid entries in the window. A window with no valid entry gives 0.

    Returns:
        Tensor of ``x``'s shape, in ``x``'s float dtype (float32 for integer or bool ``x``).

    Raises:
        TokenwiseError: For a bad ``window``, ``direction``, ``dim`` or ``mask``, a NaN among
            the valid values, or a window holding both ``+inf`` and ``-inf`` (no mean).

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> rolling_mean(x, 2)
        tensor([1.0000, 1.5000, 2.5000, 3.5000])
        >>> rolling_mean(x, 2, direction="leading")
        tensor([1.5000, 2.5000, 3.5000, 4.0000])
        >>> rolling_mean(x, 2, mask=torch.tensor([True, False, True, True]))
        tensor([1.0000, 1.0000, 3.0000, 3.5000])
    """
    x = _check_tensor(x, "x")
    window = _check_int(window, "window", 1)
    if direction not in ("trailing", "leading"):
        raise TokenwiseError(f"direction must be 'trailing' or 'leading', got {direction!r}")
    dim = _check_dim(dim, x.ndim)
    if mask is not None:
        mask = _check_mask(mask, x.shape, "x's")
    out_dtype = x.dtype if x.is_floating_point() else torch.float32

    # work along the last dim; float64 keeps prefix-sum differences accurate over long texts
    values = x.to(torch.float64).movedim(dim, -1)  # (..., T)
    valid = None if mask is None else mask.to(x.device).movedim(dim, -1)  # (..., T)
    if valid is not None:
        values = torch.where(valid, values, 0.0)  # masked entries, even inf/NaN, are ignored
    length = values.shape[-1]

    positions = torch.arange(length, device=x.device)  # (T,)
    if direction == "trailing":
        lo, hi = (positions - window + 1).clamp_min(0), positions + 1
    else:
        lo, hi = positions, (positions + window).clamp_max(length)

    def window_sum(v: Tensor) -> Tensor:
        prefix = torch.nn.functional.pad(v.cumsum(-1), (1, 0))  # (..., T+1), prefix[i] = sum v[:i]
        return prefix[..., hi] - prefix[..., lo]  # (..., T)

    finite = torch.isfinite(values)  # (..., T)
    has_nonfinite = not bool(finite.all())
    if has_nonfinite:
        if torch.isnan(values).any():
            raise TokenwiseError(
                "x contains NaN at a valid position; mask it out or replace it before averaging"
            )
        # inf - inf in the prefix sums would poison every later window: count infinities apart
        n_pos = window_sum(torch.isposinf(values).to(torch.float64))  # (..., T)
        n_neg = window_sum(torch.isneginf(values).to(torch.float64))  # (..., T)
        both = (n_pos > 0) & (n_neg > 0)
        if both.any():
            where = both.nonzero()[0].tolist()
            raise TokenwiseError(
                f"the window at position {where[-1]} (along dim {dim}) holds both +inf and -inf, "
                "so its mean is undefined"
            )
        values = torch.where(finite, values, 0.0)

    sums = window_sum(values)  # (..., T)
    # counts are small integers, so they are exact in float64; (T,) broadcasts without a mask
    counts = (
        (hi - lo).to(torch.float64)  # (T,)
        if valid is None
        else window_sum(valid.to(torch.float64))  # (..., T)
    )
    mean = torch.where(counts > 0, sums / counts.clamp_min(1.0), 0.0)  # (..., T)
    if has_nonfinite:
        mean = torch.where(n_pos > 0, math.inf, mean)
        mean = torch.where(n_neg > 0, -math.inf, mean)
    return mean.movedim(-1, dim).to(out_dtype)


def window_entropy(
    entropies: Tensor,
    window: int,
    direction: Literal["leading", "trailing"] = "leading",
    dim: int = -1,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean of per-token entropies over a sliding window: ARES's window entropy.

    ARES (*Multimodal Adaptive Reasoning via Difficulty-Aware Token-Level Entropy Shaping*)
    averages token entropies over a window that looks *forward*, so ``"leading"`` is the
    default: position ``t`` averages ``entropies[t .. min(T-1, t+w-1)]``, the next ``w``
    values with ``t`` itself first, fewer at the end. (ARES's code averages the ``w`` tokens
    *after* ``t``, ``t+1 .. t+w``, and skips positions without a full window; its value at
    ``t`` is this one at ``t + 1``.) ``"trailing"`` averages ``entropies[max(0, t-w+1) .. t]``
    instead, known as soon as token ``t`` is. This is :func:`rolling_mean` with the
    direction defaulting to ``"leading"``; take the entropies from the full distribution
    (:func:`entropy`, :func:`token_stats`), not from a truncated top-k.

    Args:
        entropies: Per-token entropies (any real dtype), e.g. ``(T,)`` or ``(B, T)``.
        window: Window length, an integer ``>= 1`` (it may exceed the sequence length).
        direction: ``"leading"`` (ARES, the default) or ``"trailing"``.
        dim: The token dimension.
        mask: Optional bool tensor of ``entropies``' shape; ``False`` entries (padding) are
            left out of every window, so each mean is over the valid entries in its window;
            a window with none gives 0.

    Returns:
        Tensor of ``entropies``' shape, in its float dtype (float32 for integer input).

    Raises:
        TokenwiseError: For a bad ``window``, ``direction``, ``dim`` or ``mask``, or a NaN at a
            valid position.

    Example:
        >>> import torch
        >>> h = torch.tensor([0.0, 0.0, 3.0, 1.0])
        >>> window_entropy(h, 2)
        tensor([0.0000, 1.5000, 2.0000, 1.0000])
        >>> window_entropy(h, 2, direction="trailing")
        tensor([0.0000, 0.0000, 1.5000, 2.0000])
    """
    entropies = _check_tensor(entropies, "entropies")
    if mask is not None:
        mask = _check_mask(mask, entropies.shape, "the entropies'")
    return rolling_mean(entropies, window, dim=dim, direction=direction, mask=mask)


def _check_real(value: object, name: str, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TokenwiseError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _lerp(low: float, high: float, weight: float) -> float:
    """torch.lerp's formula (numpy's too), so both percentile paths round alike."""
    return low + weight * (high - low) if weight < 0.5 else high - (high - low) * (1 - weight)


def _row_percentiles(values: Tensor, valid: Tensor, q: float) -> Tensor:
    """Per-row linear-interpolation percentile (numpy's default) of the valid values.

    ``values`` and ``valid`` are ``(N, T)``; returns ``(N,)`` float64, meaningless (but
    finite or NaN, never used) for a row with no valid value.
    """
    ordered = torch.where(valid, values, math.inf).sort(dim=-1).values  # (N, T)
    counts = valid.sum(-1)  # (N,)
    position = (q / 100) * (counts - 1).clamp_min(0).to(torch.float64)  # (N,)
    low = position.floor()
    weight = position - low  # (N,)
    low_index = low.long().clamp(0, max(values.shape[-1] - 1, 0))
    high_index = torch.minimum(low_index + 1, (counts - 1).clamp_min(0))
    low_value = ordered.gather(-1, low_index[:, None]).squeeze(-1)  # (N,)
    high_value = ordered.gather(-1, high_index[:, None]).squeeze(-1)  # (N,)
    return torch.lerp(low_value, high_value, weight)


def _running_flags(values: Tensor, valid: Tensor, q: float) -> Tensor:
    """Flags of values above the percentile of the valid values at earlier positions.

    Exact order statistics from one sorted list per row (``bisect.insort``), on the CPU.
    """
    import bisect

    flags = torch.zeros(values.shape, dtype=torch.bool)  # (N, T)
    for row, (row_values, row_valid) in enumerate(
        zip(values.cpu().tolist(), valid.cpu().tolist(), strict=True)
    ):
        history: list[float] = []
        for t, (value, ok) in enumerate(zip(row_values, row_valid, strict=True)):
            if not ok:
                continue
            if history:
                position = (q / 100) * (len(history) - 1)
                low = math.floor(position)
                high = min(low + 1, len(history) - 1)
                if value > _lerp(history[low], history[high], position - low):
                    flags[row, t] = True
            bisect.insort(history, value)
    return flags


def high_window_entropy(
    entropies: Tensor,
    window: int,
    *,
    threshold: float | None = None,
    percentile: float | None = None,
    running: bool = False,
    direction: Literal["leading", "trailing"] = "leading",
    mask: Tensor | None = None,
) -> Tensor:
    """Mark high-window-entropy (HWE) tokens: window entropy strictly above a threshold.

    ARES's signal for reasoning-critical moments: a single token's entropy is noisy, the
    mean over a window (:func:`window_entropy`, along the last dimension) is not. Entropy
    alone decides; no word list gates the tokens. The threshold is one of:

    * ``threshold``: a fixed value in the entropies' units (nats from :func:`entropy`).
    * ``percentile=p``: the ``p``-th percentile (linear interpolation, as ``numpy.percentile``)
      of the window entropies of the same sequence (each row of a batch on its own, padded
      positions left out); ``p=80`` marks about the top 20%.
    * ``percentile=p, running=True``: at position ``t``, the ``p``-th percentile of the window
      entropies of the valid positions *before* ``t`` only. The rule for the start: a
      position with no valid position before it (the first of each row) has no history and
      is never marked. Causal: a flag never depends on a later position's window entropy,
      so with ``direction="trailing"`` the flag of token ``t`` is final as soon as token
      ``t`` exists; with ``"leading"`` it is final once token ``t + window - 1`` exists.

    "Above" is strict (ARES's code uses ``>=``), so a constant sequence marks nothing, nor
    does one of length 1 under a percentile. Padded (``mask`` False) positions are never
    marked and never count towards a percentile. Comparisons are made in float64.

    Args:
        entropies: Per-token entropies ``(..., T)``; leading dimensions are a batch.
        window: Window length, an integer ``>= 1``.
        threshold: Fixed threshold; give exactly one of ``threshold`` and ``percentile``.
        percentile: Percentile in the open interval ``(0, 100)``.
        running: With ``percentile``, use only earlier positions (see above).
        direction: ``"leading"`` (ARES's forward window, the default) or ``"trailing"``.
        mask: Optional bool tensor of ``entropies``' shape, False at padding.

    Returns:
        Bool tensor of ``entropies``' shape, True at HWE tokens.

    Raises:
        TokenwiseError: Neither or both of ``threshold`` and ``percentile``, a non-finite
            ``threshold``, a ``percentile`` outside ``(0, 100)``, ``running`` without
            ``percentile``, a bad ``window``, ``direction`` or ``mask``, or a non-finite
            entropy at a valid position.

    Example:
        >>> import torch
        >>> h = torch.tensor([0.1, 0.2, 2.0, 2.2, 0.1, 0.3])
        >>> high_window_entropy(h, 2, threshold=1.0)
        tensor([False,  True,  True,  True, False, False])
        >>> high_window_entropy(h, 2, percentile=80)
        tensor([False, False,  True, False, False, False])
        >>> high_window_entropy(h, 2, percentile=50, running=True)
        tensor([False,  True,  True,  True, False, False])
    """
    entropies = _check_tensor(entropies, "entropies")
    if (threshold is None) == (percentile is None):
        raise TokenwiseError(
            "give exactly one of threshold (a fixed window entropy, e.g. threshold=1.5) and "
            f"percentile (e.g. percentile=80); got threshold={threshold!r}, "
            f"percentile={percentile!r}"
        )
    if not isinstance(running, bool):
        raise TokenwiseError(f"running must be True or False, got {running!r}")
    if threshold is not None:
        threshold = _check_real(threshold, "threshold", "a finite number")
        if not math.isfinite(threshold):
            raise TokenwiseError(f"threshold must be a finite number, got {threshold!r}")
        if running:
            raise TokenwiseError(
                "running=True computes a running percentile: give percentile=P instead of "
                f"threshold={threshold!r}, or drop running"
            )
    else:
        percentile = _check_real(percentile, "percentile", "a number in (0, 100), e.g. 80")
        if not 0 < percentile < 100:
            raise TokenwiseError(
                f"percentile must be in the open interval (0, 100), e.g. 80, got {percentile!r}"
            )
    _check_dim(-1, entropies.ndim)  # a 0-d tensor has no token dimension
    valid = (
        torch.ones(entropies.shape, dtype=torch.bool, device=entropies.device)
        if mask is None
        else _check_mask(mask, entropies.shape, "the entropies'").to(entropies.device)
    )
    values = entropies.detach().to(torch.float64)  # flags have no gradient
    bad = valid & ~torch.isfinite(values)
    if bool(bad.any()):
        where = tuple(bad.nonzero()[0].tolist())
        raise TokenwiseError(
            f"entropies[{', '.join(map(str, where))}] is {values[where].item()!r}; entropies "
            "must be finite at valid positions (mask padding out)"
        )
    means = window_entropy(values, window, direction, mask=valid)
    if threshold is not None:
        return (means > threshold) & valid
    assert percentile is not None
    shape = entropies.shape
    if means.numel() == 0:
        return torch.zeros(shape, dtype=torch.bool, device=entropies.device)
    flat_means = means.reshape(-1, shape[-1])  # (N, T)
    flat_valid = valid.reshape(-1, shape[-1])  # (N, T)
    if running:
        flags = _running_flags(flat_means, flat_valid, percentile).to(entropies.device)
    else:
        limits = _row_percentiles(flat_means, flat_valid, percentile)  # (N,)
        flags = (flat_means > limits[:, None]) & flat_valid
    return flags.reshape(shape)


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of a scored text, as returned by :func:`token_stats`.

    Attributes:
        logprobs: ``log p[token]`` of each chosen token, float32 ``(N,)``; ``-inf`` when the
            token was masked. Surprisal is ``-logprobs``.
        entropies: Entropy in nats, float32 ``(N,)``.
        varentropies: Varentropy in nats squared, float32 ``(N,)``.
        top_ids: The ``k`` most likely token ids per position, most likely first, int64
            ``(N, k)``. Among tied log-probabilities the order (and at the k-th place the
            choice) is arbitrary, as with :func:`torch.topk`.
        top_logprobs: Their log-probabilities, float32 ``(N, k)``.
    """

    logprobs: Tensor
    entropies: Tensor
    varentropies: Tensor
    top_ids: Tensor
    top_logprobs: Tensor


# Logits per token_stats chunk when chunk_size is None. On the CPU a chunk is read about ten
# times (log-softmax, top-k, exp, two weighted sums): 4 MiB keeps those passes in the cache
# (SmolLM2's V = 49k: 21 rows; Gemma 3's 262k: 4 rows), where 64-row chunks (12-64 MiB)
# spill to memory. On a GPU larger chunks mean fewer kernel launches.
_CHUNK_LOGITS_CPU = 2**20
_CHUNK_LOGITS_OTHER = 2**24
# entries per block in _topk_rows (fastest of 32..512 at V = 49k and 262k on a CPU)
_TOPK_BLOCK = 128


def _topk_rows(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``values.topk(k, dim=1)`` (values and ids), by way of blocks when a row is long.

    The k largest entries of a row lie in the k blocks of ``_TOPK_BLOCK`` entries whose
    maxima are largest: every entry of any other block is at most its block's maximum, so at
    most each of those k maxima, which are k entries elsewhere. So a per-block maximum (a
    fast reduction) and a top-k over k blocks replace a top-k over the whole row, about 3x
    faster at V = 49k and 262k on a CPU. The values are the same; among tied values the
    ids may differ, as torch.topk leaves their order unspecified too.
    """
    n_rows, vocab = values.shape
    if k * _TOPK_BLOCK * 8 > vocab:
        return values.topk(k, dim=1)
    blocks = vocab // _TOPK_BLOCK
    main = values[:, :blocks * _TOPK_BLOCK].view(n_rows, blocks, _TOPK_BLOCK)  # (C, q, B)
    # ascending block order keeps the candidates in vocabulary order
    chosen = main.amax(2).topk(k, dim=1).indices.sort(dim=1).values  # (C, k)
    offsets = torch.arange(_TOPK_BLOCK, device=values.device)  # (B,)
    candidates = main.gather(1, chosen[:, :, None].expand(n_rows, k, _TOPK_BLOCK))
    candidates = candidates.reshape(n_rows, k * _TOPK_BLOCK)  # (C, k * B)
    candidate_ids = (chosen[:, :, None] * _TOPK_BLOCK + offsets).reshape(n_rows, -1)
    if blocks * _TOPK_BLOCK < vocab:  # the ragged tail is always a candidate
        tail = torch.arange(blocks * _TOPK_BLOCK, vocab, device=values.device)  # (R,)
        candidates = torch.cat([candidates, values[:, blocks * _TOPK_BLOCK:]], 1)
        candidate_ids = torch.cat([candidate_ids, tail.expand(n_rows, -1)], 1)
    top_values, where = candidates.topk(k, dim=1)  # (C, k)
    return top_values, candidate_ids.gather(1, where)


def _chunk_stats(
    logits: Tensor, token_ids: Tensor, top_k: int, outs: tuple[Tensor, ...], start: int, *,
    checked: bool
) -> None:
    """:func:`token_stats` of rows ``start..start + len(logits)``, written into ``outs``.

    ``checked=False`` assumes finite logits (the caller redoes any row whose entropy or
    varentropy comes out non-finite); ``checked=True`` raises for NaN/+inf and gives masked
    tokens 0 in entropy and varentropy.
    """
    out_logprobs, out_entropies, out_varentropies, out_top_ids, out_top_logprobs = outs
    stop = start + logits.shape[0]
    if checked:
        lp = _log_softmax(logits, 1, row_offset=start)  # (C, V)
    else:
        ctype = _compute_dtype(logits.dtype)
        lp = torch.log_softmax(logits if logits.is_floating_point() else logits.to(ctype), 1,
                               dtype=ctype)  # (C, V)
    out_logprobs[start:stop] = lp.gather(1, token_ids[:, None]).squeeze(1)
    if top_k:
        top_values, top_indices = _topk_rows(lp, top_k)  # (C, k)
        out_top_logprobs[start:stop] = top_values
        out_top_ids[start:stop] = top_indices
    # the same arithmetic as entropy()/varentropy(), but in place on this chunk's buffers:
    # nothing here needs autograd, and it keeps the peak at a few (C, V) tensors
    p = lp.exp()  # (C, V)
    if checked:
        lp.masked_fill_(p == 0, 0.0)  # masked/underflowed tokens contribute 0, not 0 * -inf
    h = 0.0 - (p * lp).sum(1, keepdim=True)  # (C, 1)
    out_entropies[start:stop] = h.squeeze(1)
    out_varentropies[start:stop] = (p * lp.add_(h).square_()).sum(1)


@torch.no_grad()
def token_stats(
    logits: Tensor, token_ids: Tensor, top_k: int = 5, chunk_size: int | None = None
) -> TokenStats:
    """Log-prob of each chosen token, entropy, varentropy and the top-k, in one pass.

    Rows are processed ``chunk_size`` at a time, so besides the input and the outputs only a
    few ``chunk_size x V`` buffers are alive at once, whatever ``N`` is. Results do not depend
    on ``chunk_size``. Gradients are not tracked.

    A fully masked row (every logit ``-inf``) gets logprob ``-inf``, entropy 0, varentropy 0
    and top log-probabilities of ``-inf`` (its top ids are then arbitrary).

    Args:
        logits: Tensor of shape ``(N, V)``; ``-inf`` marks a masked token.
        token_ids: Integer tensor of shape ``(N,)``, ids in ``[0, V)``.
        top_k: How many most likely tokens to keep per row, ``0 <= top_k <= V``.
        chunk_size: Rows per chunk, an integer ``>= 1``; None (the default) sizes chunks to
            the vocabulary: about 2**20 logits (4 MiB of float32) per chunk on the CPU, so
            the several passes over a chunk stay in cache, and 2**24 on other devices.

    Returns:
        A :class:`TokenStats` on ``logits``' device.

    Raises:
        TokenwiseError: For logits that are not 2-D, NaN or ``+inf`` logits, bad ids, or a bad
            ``top_k`` or ``chunk_size``.

    Example:
        >>> import torch
        >>> stats = token_stats(torch.tensor([[0.0, 0.0, 0.0, 0.0]]), torch.tensor([3]), top_k=1)
        >>> stats.logprobs, stats.entropies, stats.varentropies
        (tensor([-1.3863]), tensor([1.3863]), tensor([0.]))
        >>> stats.top_logprobs.shape
        torch.Size([1, 1])
    """
    logits = _check_tensor(logits, "logits")
    if logits.ndim != 2:
        raise TokenwiseError(
            f"token_stats needs logits of shape (N, V), got shape {tuple(logits.shape)}"
        )
    n_rows, vocab = logits.shape
    if vocab == 0:
        raise TokenwiseError(f"logits have an empty vocabulary dimension (shape {(n_rows, 0)})")
    token_ids = _check_token_ids(token_ids, logits.shape[:-1], vocab, logits.device)
    top_k = _check_int(top_k, "top_k", 0)
    if top_k > vocab:
        raise TokenwiseError(f"top_k must be <= the vocabulary size {vocab}, got {top_k}")
    device = logits.device
    if chunk_size is None:
        per_chunk = _CHUNK_LOGITS_CPU if device.type == "cpu" else _CHUNK_LOGITS_OTHER
        chunk_size = max(1, per_chunk // vocab)
    chunk_size = _check_int(chunk_size, "chunk_size", 1)

    out_logprobs = torch.empty(n_rows, dtype=torch.float32, device=device)  # (N,)
    out_entropies = torch.empty(n_rows, dtype=torch.float32, device=device)  # (N,)
    out_varentropies = torch.empty(n_rows, dtype=torch.float32, device=device)  # (N,)
    out_top_ids = torch.empty(n_rows, top_k, dtype=torch.int64, device=device)  # (N, k)
    out_top_logprobs = torch.empty(n_rows, top_k, dtype=torch.float32, device=device)  # (N, k)
    outs = (out_logprobs, out_entropies, out_varentropies, out_top_ids, out_top_logprobs)

    # First every chunk on the fast path: no checks, no masking. A row whose logits are all
    # finite gets there exactly what the checked path gives it. Any other row (a masked -inf
    # logit makes 0 * -inf, NaN and +inf spread through the log-softmax) ends with a
    # non-finite entropy or varentropy, and its chunk is redone on the checked path below,
    # which raises for NaN/+inf and gives masked tokens 0. One host sync per call.
    for start in range(0, n_rows, chunk_size):
        stop = min(start + chunk_size, n_rows)
        _chunk_stats(logits[start:stop], token_ids[start:stop], top_k, outs, start, checked=False)
    redo = ~(torch.isfinite(out_entropies) & torch.isfinite(out_varentropies))  # (N,)
    if bool(redo.any()):
        starts = sorted({row // chunk_size * chunk_size for row in redo.nonzero()[:, 0].tolist()})
        for start in starts:  # in order, so the first bad row is the one named
            stop = min(start + chunk_size, n_rows)
            _chunk_stats(logits[start:stop], token_ids[start:stop], top_k, outs, start,
                         checked=True)

    return TokenStats(
        logprobs=out_logprobs,
        entropies=out_entropies,
        varentropies=out_varentropies,
        top_ids=out_top_ids,
        top_logprobs=out_top_logprobs,
    )


def attention_entropy(
    attention: Tensor | tuple[Tensor, ...] | list[Tensor],
    attention_mask: Tensor | None = None,
    base: float | None = None,
    from_logits: bool = False,
) -> Tensor:
    """Entropy of each attention row: per (layer,) batch, head and query position.

    Entropy-ABF's signal: a row's entropy grows like ``log(keys seen)`` past the trained
    window unless logits are scaled.

    Args:
        attention: attention weights ``(B, H, T, S)`` (rows sum to 1, as transformers returns
            them), or a tuple/list of such per layer (stacked to ``(L, B, H, T, S)``), or, with
            ``from_logits=True``, pre-softmax scores with ``-inf`` at masked keys.
        attention_mask: optional ``(B, S)`` mask, 1 for real tokens and 0 for padding: padded
            keys contribute 0, and when ``S == T`` rows of padded queries are 0.
        base: ``None`` for nats, ``2`` for bits.
        from_logits: read ``attention`` as scores and apply the softmax here.

    Returns:
        float32 tensor of ``attention``'s shape without the key dimension (float64 in,
        float64 out). Masked keys (probability 0, or ``-inf`` scores) contribute exactly 0.

    Raises:
        TokenwiseError: NaN, negative or greater-than-1 weights; a mask that does not match
            the batch and key dimensions; a bad ``base``.

    Example:
        >>> import torch
        >>> w = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # (B=1, H=1, T=2, S=2), causal
        >>> attention_entropy(w)
        tensor([[[0.0000, 0.6931]]])
        >>> attention_entropy(w, base=2)[0, 0, 1]
        tensor(1.)
    """
    ln_base = _log_base(base)
    if isinstance(attention, (tuple, list)):
        if not attention:
            raise TokenwiseError("attention: allowed a tensor or a non-empty tuple of tensors")
        attention = torch.stack([_check_tensor(a, "attention") for a in attention])
    attention = _check_tensor(attention, "attention")
    if attention.dim() < 2:
        raise TokenwiseError(f"attention must have a query and a key dimension; got shape "
                             f"{tuple(attention.shape)}")
    key_mask = None
    if attention_mask is not None:
        attention_mask = _check_tensor(attention_mask, "attention_mask")
        if attention_mask.dim() != 2 or attention.dim() < 4 \
                or attention_mask.shape[0] != attention.shape[-4] \
                or attention_mask.shape[1] != attention.shape[-1]:
            raise TokenwiseError(
                f"attention_mask of shape {tuple(attention_mask.shape)} does not match attention "
                f"{tuple(attention.shape)}; allowed (batch, keys) with attention (..., batch, "
                "heads, queries, keys)")
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    if from_logits:
        scores = attention.to(_compute_dtype(attention.dtype))
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, float("-inf"))
        h = entropy(scores, dim=-1)
    else:
        probs = attention.to(_compute_dtype(attention.dtype))
        bad = ~torch.isfinite(probs) | (probs < 0) | (probs > 1 + 1e-3)
        if bool(bad.any()):
            where = tuple(bad.nonzero()[0].tolist())
            raise TokenwiseError(f"attention weight at {where} is {probs[where].item()!r}; "
                                 "allowed probabilities in [0, 1] (pass from_logits=True for "
                                 "pre-softmax scores)")
        if key_mask is not None:
            probs = probs.masked_fill(~key_mask, 0.0)
        h = torch.special.entr(probs).sum(dim=-1)  # entr(0) = 0: masked keys add nothing
    if attention_mask is not None and attention_mask.shape[1] == h.shape[-1]:
        h = h.masked_fill(~attention_mask.bool()[:, None, :], 0.0)
    return h if ln_base is None else h / ln_base
