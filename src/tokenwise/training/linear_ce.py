"""Fused linear cross-entropy: the loss of ``e @ c.T`` without the ``[N, V]`` logits.

Cut Cross-Entropy (Wijmans et al., 2025; ref: apple/ml-cross-entropy, PyPI
``cut-cross-entropy``). The cross-entropy of a classifier ``c`` (``[V, D]``) on embeddings ``e``
(``[N, D]``) is ``lse(e·c^T) - e·c_y``. A plain implementation keeps the ``[N, V]`` logits, their
softmax and their gradient alive, which for a large vocabulary is the biggest tensor of a whole
training step. Here the logits only ever exist one block at a time:

* **Forward** walks vocabulary blocks (outer) and token blocks (inner), merging each block's
  log-sum-exp into a running one, and picks each token's target logit out of the block that holds
  it. Only ``lse`` (one value per token) is kept for backward.
* **Backward** recomputes each block's logits and turns them into ``d = dLoss/dlogit`` in
  place (``softmax - onehot`` times the per-token upstream gradient, plus the lse's upstream
  gradient and the z-loss term, times the softcap's chain rule), then adds ``d @ c_v`` to
  ``grad_e`` and ``d^T @ e_b`` to ``grad_c``. Filtering compares ``|d|`` with ``filter_eps``
  times each token's upstream scale ``u = max(|a|, |g|)`` (``g``: the loss's upstream gradient,
  ``a``: the softmax's coefficient, see :func:`_logits_to_grad`): for a mean/sum loss that is
  the reference's ``|softmax - onehot| < eps`` (with the softcap's factor included), and with
  per-token or lse gradients it is the same relative test on the actual gradient, so skipping is
  as safe as there. With an fp32/fp64 classifier the backward holds whole rows of a token block
  (like the single-pass mode below) and drops the vocabulary *columns* where the block's every
  entry is negligible, running the two gradient products over the gathered survivors (when the
  first two token blocks show nothing worth filtering, as on a near-uniform softmax, the rest of
  the tokens go through the tile loop, whose taller products are faster); with a low-precision
  classifier (which keeps a per-block fp32 ``grad_c``) it walks tiles and skips a tile where
  every entry is negligible. The logits recompute and the forward stay dense, so at most two of
  the path's four matrix products shrink.
* **Gradient in forward** (``grad_in_forward``): when the loss is a scalar (``"mean"``/``"sum"``)
  and no ``lse`` is returned, the upstream gradient is a single number, so the gradients can be
  computed in the forward pass itself from whole rows of logits (a few rows at a time) and only
  scaled in backward. That is three matrix products instead of four (no recomputation). The
  price: the gradients (``grad_e``, ``grad_c`` in fp32) live from forward to backward, and
  backward can run only once. Filtering here is per vocabulary *column* of each token block: the
  columns where every ``|softmax - onehot|`` is below ``filter_eps`` are dropped and the two
  gradient products run over the gathered survivors only (when few enough survive to pay for the
  gathers). On a trained model's sharp softmax most columns are negligible; on a freshly
  initialised model's near-uniform one nothing is, and the dense products run.

All accumulation is in fp32 (fp64 for fp64 inputs); gradients come back in the inputs' dtypes.
On CUDA with Triton installed, :mod:`tokenwise.training.linear_ce_triton` provides the block
loops as kernels (same arithmetic); elsewhere the loops run as torch operations.

Example:
    >>> import torch
    >>> from tokenwise.training import linear_cross_entropy
    >>> _ = torch.manual_seed(0)
    >>> e = torch.randn(6, 8, requires_grad=True)
    >>> c = torch.randn(11, 8, requires_grad=True)
    >>> y = torch.tensor([1, 4, -100, 0, 10, 3])
    >>> loss = linear_cross_entropy(e, c, y)
    >>> plain = torch.nn.functional.cross_entropy(e @ c.T, y)
    >>> torch.allclose(loss, plain)
    True
    >>> loss.backward()
    >>> e.grad.shape, c.grad.shape
    (torch.Size([6, 8]), torch.Size([11, 8]))
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

__all__ = ["linear_cross_entropy", "resolve_filter_eps"]

IGNORE_INDEX = -100
_REDUCTIONS = ("mean", "sum", "none")
_IMPLS = ("auto", "torch", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Each transient logits block holds about this many elements (16 MiB in fp32): big enough for
# efficient matrix products, small next to the gradients themselves.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class _Config:
    """The static settings of one call, shared by forward and backward."""

    softcap: float | None
    z_loss: float
    reduction: str
    filter_eps: float | None
    return_entropy: bool
    grad_in_forward: bool
    block_n: int | None
    block_v: int | None
    acc: torch.dtype  # accumulation dtype: fp32, or fp64 when an input is fp64


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _check_float_tensor(value: object, name: str, ndim: int | None = None) -> Tensor:
    if not isinstance(value, Tensor):
        raise TokenwiseError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TokenwiseError(
            f"{name} must be a float16, bfloat16, float32 or float64 tensor, got {value.dtype}"
        )
    if ndim is not None and value.ndim != ndim:
        raise TokenwiseError(
            f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}"
        )
    return value


def _check_positive_block(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TokenwiseError(f"{name} must be a positive integer or None, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TokenwiseError(f"{name} must be a positive integer or None, got {value!r}") from None
    if number < 1:
        raise TokenwiseError(f"{name} must be a positive integer or None, got {value!r}")
    return number


def _check_optional_float(value: object, name: str, *, positive: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TokenwiseError(f"{name} must be a number or None, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        allowed = "> 0" if positive else ">= 0"
        raise TokenwiseError(f"{name} must be a finite number {allowed} or None, got {value!r}")
    return number


def resolve_filter_eps(filter_eps: object, dtype: torch.dtype) -> float | None:
    """The gradient-filter threshold for inputs of ``dtype``.

    Args:
        filter_eps: ``"auto"`` (``finfo(dtype).eps / 32``, the reference's rule), a float ``>= 0``,
            or ``None`` (no filtering).
        dtype: the dtype of the embeddings.

    Example:
        >>> import torch
        >>> resolve_filter_eps("auto", torch.bfloat16)
        0.000244140625
    """
    if filter_eps is None:
        return None
    if isinstance(filter_eps, str):
        if filter_eps == "auto":
            return torch.finfo(dtype).eps / 32
        raise TokenwiseError(f"filter_eps must be 'auto', a float >= 0 or None, got {filter_eps!r}")
    return _check_optional_float(filter_eps, "filter_eps", positive=False)


def _check_shift(shift: object, targets: Tensor) -> int:
    if isinstance(shift, bool):
        shift = int(shift)
    try:
        number = operator.index(shift)
    except TypeError:
        raise TokenwiseError(f"shift must be an integer or a bool, got {shift!r}") from None
    if number == 0:
        return 0
    if targets.ndim == 0:
        raise TokenwiseError(
            "shift needs targets with a time axis (shape (..., T)), got a 0-d tensor")
    length = targets.shape[-1]
    if not 0 <= number < length:
        raise TokenwiseError(
            f"shift must be in [0, T) = [0, {length}) for targets of shape "
            f"{tuple(targets.shape)}, got {number}"
        )
    return number


# --------------------------------------------------------------------------------------------
# block helpers shared by the torch loops
# --------------------------------------------------------------------------------------------


def _take_rows(e2: Tensor, rows: Tensor | None, i0: int, i1: int, acc: torch.dtype) -> Tensor:
    """Embeddings of valid tokens ``i0:i1`` in ``acc`` dtype (a view when nothing is gathered)."""
    block = e2[i0:i1] if rows is None else e2.index_select(0, rows[i0:i1])  # (nb, D)
    return block.to(acc)


def _finish_logits(z: Tensor, bias_v: Tensor | None, softcap: float | None) -> None:
    """Bias then softcap, in place: ``z = softcap * tanh((e·c + b) / softcap)``."""
    if bias_v is not None:
        z.add_(bias_v)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)


def _block_logits(buf: Tensor, e_b: Tensor, c_v: Tensor, bias_v: Tensor | None,
                  softcap: float | None) -> Tensor:
    """Finished logits ``e_b · c_vᵀ`` of one (token, vocabulary) block, written into ``buf``."""
    z = buf[: e_b.shape[0] * c_v.shape[0]].view(e_b.shape[0], c_v.shape[0])  # (nb, vb)
    torch.mm(e_b, c_v.T, out=z)
    _finish_logits(z, bias_v, softcap)
    return z


def _target_hits(tgt_b: Tensor, v0: int, v1: int) -> tuple[Tensor, Tensor]:
    """Rows of this token block whose target lies in vocabulary block ``v0:v1``, and its column."""
    hit = (tgt_b >= v0) & (tgt_b < v1)
    r = hit.nonzero().squeeze(1)  # (h,)
    return r, tgt_b[r] - v0


def _logits_to_grad(z: Tensor, lse_b: Tensor, r: Tensor, col: Tensor, a_b: Tensor,
                    g_b: Tensor, softcap: float | None, filter_eps: float | None,
                    scratch: Tensor, u_b: Tensor | None = None) -> bool:
    """Turn a block of logits into ``dLoss/d(pre-softcap logits)`` in place.

    With ``p = softmax`` and ``q = p - onehot``, the gradient of ``g * (nll + zc * lse^2) +
    g_lse * lse`` is ``p * a - onehot * g`` where ``a = g * (1 + 2 zc lse) + g_lse``; the softcap
    multiplies it by ``1 - (z / softcap)^2``. With a filter, ``a_b``/``g_b`` come divided by each
    row's upstream scale ``u_b`` (see :func:`_upstream_scale`): the block is formed in those
    units, and when every entry is below ``filter_eps`` there the function returns False (block
    left undefined); otherwise the rows are multiplied back by ``u_b``.
    """
    if softcap is not None:
        factor = scratch[: z.numel()].view_as(z)  # (nb, vb)
        torch.mul(z, 1.0 / softcap, out=factor)
        factor.square_().neg_().add_(1.0)
    z.sub_(lse_b[:, None]).exp_()  # p, (nb, vb)
    has_hits = r.numel() > 0
    if filter_eps:
        z.mul_(a_b[:, None])
        if has_hits:
            z.index_put_((r, col), -g_b[r], accumulate=True)
        if softcap is not None:
            z.mul_(factor)
        lo, hi = torch.aminmax(z)
        if max(-float(lo), float(hi)) < filter_eps:
            return False
        if u_b is not None:
            z.mul_(u_b[:, None])
        return True
    if has_hits:
        z.index_put_((r, col), z.new_full((1,), -1.0), accumulate=True)  # q = p - onehot
    z.mul_(a_b[:, None])
    if has_hits:
        # q * a = p * a - onehot * a; the onehot term must carry g, so add back (a - g) there
        z.index_put_((r, col), (a_b - g_b)[r], accumulate=True)
    if softcap is not None:
        z.mul_(factor)
    return True


def _upstream_scale(a: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each token's upstream scale ``u = max(|a|, |g|)`` and ``a / u``, ``g / u``.

    The recompute path's filter compares ``|dLoss/dlogit| / u`` with ``filter_eps``. For a
    mean/sum loss without an lse gradient or z-loss, ``u`` is the loss's own per-token weight
    and the test is the reference's ``|softmax - onehot| < eps`` (times the softcap's factor);
    with per-token upstream gradients (``reduction="none"``) and a gradient on the lse it is
    the same relative test on the actual gradient, row by row, so a token whose upstream
    gradient is small keeps its own relative accuracy. Rows with ``u = 0`` have an all-zero
    gradient (and count as negligible).
    """
    u = torch.maximum(a.abs(), g.abs())  # (M,)
    safe = torch.where(u > 0, u, torch.ones_like(u))
    return u, a / safe, g / safe


def _default_blocks(n: int, v: int, cfg: _Config, fused: bool) -> tuple[int, int]:
    if fused:
        # whole rows of logits per token block; the vocabulary sub-block only sets the size of
        # the elementwise/GEMM pieces within it
        # taller blocks amortise re-reading all of c per block (3 passes: logits, grad_e,
        # grad_c); 32 MiB of fp32 rows is about 1/8 of the gradients at V=65536
        bn = cfg.block_n or max(8, min(1024, 2 * _BLOCK_ELEMENTS // max(v, 1)))
        bv = cfg.block_v or 4096
    else:
        bv = cfg.block_v or 2048
        bn = cfg.block_n or max(16, _BLOCK_ELEMENTS // bv)
    return max(1, min(bn, max(n, 1))), max(1, min(bv, v))


# --------------------------------------------------------------------------------------------
# the torch loops
# --------------------------------------------------------------------------------------------


def _torch_lse_forward(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None,
                       tgt: Tensor, cfg: _Config) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per valid token: log-sum-exp, target logit and (optionally) entropy, in ``cfg.acc``."""
    m_rows, v_size, acc = tgt.numel(), c.shape[0], cfg.acc
    bn, bv = _default_blocks(m_rows, v_size, cfg, fused=False)
    run_max = e2.new_empty(m_rows, dtype=acc)  # (M,)
    run_sum = e2.new_empty(m_rows, dtype=acc)  # (M,) sum of exp(z - run_max)
    run_wsum = e2.new_empty(m_rows, dtype=acc) if cfg.return_entropy else None  # (M,)
    target_logit = e2.new_zeros(m_rows, dtype=acc)  # (M,)
    buf = e2.new_empty(bn * bv, dtype=acc)
    scratch = e2.new_empty(bn * bv, dtype=acc) if cfg.return_entropy else None
    for v0 in range(0, v_size, bv):
        v1 = min(v0 + bv, v_size)
        c_v = c[v0:v1].to(acc)  # (vb, D)
        bias_v = None if bias is None else bias[v0:v1].to(acc)
        for i0 in range(0, m_rows, bn):
            i1 = min(i0 + bn, m_rows)
            e_b = _take_rows(e2, rows, i0, i1, acc)  # (nb, D)
            z = _block_logits(buf, e_b, c_v, bias_v, cfg.softcap)  # (nb, vb)
            r, col = _target_hits(tgt[i0:i1], v0, v1)
            if r.numel():
                target_logit[i0 + r] = z[r, col]
            old_max = run_max[i0:i1]
            new_max = z.amax(1) if v0 == 0 else torch.maximum(old_max, z.amax(1))  # (nb,)
            z.sub_(new_max[:, None])  # y = z - new_max
            if scratch is not None:
                ex = scratch[: z.numel()].view_as(z)
                torch.exp(z, out=ex)
                block_sum = ex.sum(1)
                block_wsum = ex.mul_(z).sum(1)  # sum exp(y) * y
            else:
                block_sum = z.exp_().sum(1)
                block_wsum = None
            if v0 == 0:
                run_sum[i0:i1] = block_sum
                if run_wsum is not None:
                    run_wsum[i0:i1] = block_wsum
            else:
                delta = old_max - new_max  # (nb,) <= 0
                rescale = delta.exp()
                if run_wsum is not None:
                    # re-centre sum exp(z - m) * (z - m) on the new maximum before adding
                    run_wsum[i0:i1] = rescale * (run_wsum[i0:i1] + delta * run_sum[i0:i1]) \
                        + block_wsum
                run_sum[i0:i1] = rescale * run_sum[i0:i1] + block_sum
            run_max[i0:i1] = new_max
    log_sum = run_sum.log()
    lse = run_max + log_sum
    entropy = None if run_wsum is None else (log_sum - run_wsum / run_sum)
    return lse, target_logit, entropy


def _torch_backward(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None,
                    tgt: Tensor, lse: Tensor, a: Tensor, g: Tensor, cfg: _Config,
                    need: tuple[bool, bool, bool], start: int = 0,
                    grads: tuple[Tensor | None, Tensor | None, Tensor | None] | None = None
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients by recomputing each block (vocabulary outer, tokens inner).

    ``start``/``grads``: only tokens ``start:`` are visited, adding into ``grads`` (zeros in the
    accumulation dtype, ``c`` in it too) -- how :func:`_torch_backward_columns` hands over the
    rest of the tokens when nothing can be filtered.
    """
    need_e, need_c, need_b = need
    m_rows, v_size, acc = tgt.numel(), c.shape[0], cfg.acc
    bn, bv = _default_blocks(m_rows - start, v_size, cfg, fused=False)
    if grads is not None:
        grad_e, grad_c, grad_b = grads
    else:
        grad_e = e2.new_zeros(e2.shape, dtype=acc) if need_e else None  # (N, D)
        # an fp32 c accumulates straight into its gradient; a low-precision one per block only
        grad_c = (c.new_zeros(c.shape) if c.dtype == acc else c.new_empty(c.shape)) \
            if need_c else None
        grad_b = c.new_zeros(v_size, dtype=acc) if need_b else None  # (V,)
    buf = e2.new_empty(bn * bv, dtype=acc)
    scratch = e2.new_empty(bn * bv, dtype=acc) if cfg.softcap is not None else buf[:0]
    eps = cfg.filter_eps or None  # a threshold of 0 never skips anything
    u = None
    if eps is not None:
        u, a, g = _upstream_scale(a, g)
    for v0 in range(0, v_size, bv):
        v1 = min(v0 + bv, v_size)
        c_v = c[v0:v1].to(acc)  # (vb, D)
        bias_v = None if bias is None else bias[v0:v1].to(acc)
        gc_v = None
        if grad_c is not None:
            gc_v = grad_c[v0:v1] if c.dtype == acc else c_v.new_zeros(c_v.shape)  # (vb, D)
        for i0 in range(start, m_rows, bn):
            i1 = min(i0 + bn, m_rows)
            e_b = _take_rows(e2, rows, i0, i1, acc)  # (nb, D)
            z = _block_logits(buf, e_b, c_v, bias_v, cfg.softcap)  # (nb, vb)
            r, col = _target_hits(tgt[i0:i1], v0, v1)
            if not _logits_to_grad(z, lse[i0:i1], r, col, a[i0:i1], g[i0:i1], cfg.softcap,
                                   eps, scratch, None if u is None else u[i0:i1]):
                _FILTER_STATS.add(z.numel(), 0)
                continue
            _FILTER_STATS.add(z.numel(), z.numel())
            if grad_e is not None:
                if rows is None:
                    grad_e[i0:i1].addmm_(z, c_v)
                else:
                    grad_e.index_add_(0, rows[i0:i1], z @ c_v)
            if gc_v is not None:
                gc_v.addmm_(z.T, e_b)
            if grad_b is not None:
                grad_b[v0:v1] += z.sum(0)
        if gc_v is not None and c.dtype != acc:
            grad_c[v0:v1].copy_(gc_v)
    return grad_e, grad_c, grad_b


class _FilterStats:
    """How much gradient work the filter left: entries (token x vocabulary) of the gradient
    blocks that were formed and multiplied, out of all entries of the blocks visited.

    A debugging aid (tests read it to check that filtering really skips work); not thread-safe.
    """

    def __init__(self) -> None:
        self.total = 0
        self.kept = 0

    def reset(self) -> None:
        self.total = self.kept = 0

    def add(self, total: int, kept: int) -> None:
        self.total += total
        self.kept += kept


_FILTER_STATS = _FilterStats()
# Gather only the surviving columns when at most this fraction of the vocabulary survives; above
# it the gathers (classifier rows, grad_c rows read and written back) cost more than the products
# they save. Measured on a 2-core CPU at N=1024, D=1024, V=65536, 128-row blocks: with every
# column gathered the backward costs ~1.1x the dense one; break-even near 0.83 of the columns.
_GATHER_MAX_FRACTION = 0.8
# Surviving columns are processed this many at a time, so the gathered classifier rows (reused for
# the grad_c product) stay at 8 MiB in fp32 at D=1024.
_GATHER_COLUMNS = 2048
# The recompute path's column filter looks at this many token blocks before deciding whether
# filtering pays (see _torch_backward_columns).
_PROBE_BLOCKS = 2


def _kept_columns(logp: Tensor, tgt_b: Tensor, logp_t: Tensor, log_eps: float,
                  log1m_eps: float) -> Tensor:
    """Vocabulary columns of a block of log-probabilities holding some ``|p - onehot| >= eps``.

    That is ``p >= eps`` off the target and ``p <= 1 - eps`` at it. ``logp_t``: each row's target
    log-probability. The targets are masked out of the column maxima for the first test (and
    written back), so a confident target does not keep its column alive.
    """
    arange_b = torch.arange(logp.shape[0], device=logp.device)
    logp[arange_b, tgt_b] = float("-inf")
    keep = logp.amax(0) >= log_eps  # (V,)
    logp[arange_b, tgt_b] = logp_t
    keep[tgt_b[logp_t <= log1m_eps]] = True
    return keep.nonzero().squeeze(1)  # (k,) sorted


def _grad_piece(piece: Tensor, lse_b: Tensor, a_col: float | Tensor, r: Tensor, col: Tensor,
                scale: float, softcap: float | None, scratch: Tensor) -> None:
    """Log-probabilities -> ``d = p * a - onehot * g`` in place (times the softcap's factor).

    ``r``/``col``: rows whose target lies in this piece and the target's column within it.
    """
    factor = None
    if softcap is not None:
        factor = scratch[: piece.numel()].view_as(piece)  # (nb, w)
        torch.add(piece, lse_b[:, None], out=factor)  # the softcapped logit
        factor.mul_(1.0 / softcap).square_().neg_().add_(1.0)
    piece.exp_().mul_(a_col)
    if r.numel():
        piece.index_put_((r, col), piece.new_full((1,), -scale), accumulate=True)
    if factor is not None:
        piece.mul_(factor)


def _gathered_products(d: Tensor, idx: Tensor, e_b: Tensor, rows_b: Tensor | None,
                       grad_e_b: Tensor | None, grad_e: Tensor | None, grad_c: Tensor | None,
                       grad_b: Tensor | None, c: Tensor, c_acc: Tensor | None,
                       rows_c: Tensor) -> None:
    """Add one token block's gradient ``d`` (``nb x kc``), known at vocabulary columns ``idx``
    only, to ``grad_e``, ``grad_c`` and ``grad_b``.

    ``rows_c`` (``kc x D``) is scratch: first the gathered classifier rows, then ``grad_c``'s rows
    (updated and written back: ``index_add_`` is several times slower). ``grad_e_b`` is this
    block's slice of ``grad_e`` when its tokens are consecutive rows (``rows_b`` None).
    """
    if c_acc is not None:
        torch.index_select(c_acc, 0, idx, out=rows_c)
    else:
        rows_c.copy_(c.index_select(0, idx))
    if grad_e is not None:
        if grad_e_b is not None:
            grad_e_b.addmm_(d, rows_c)
        else:
            grad_e.index_add_(0, rows_b, d @ rows_c)
    if grad_c is not None:
        torch.index_select(grad_c, 0, idx, out=rows_c).addmm_(d.T, e_b)
        grad_c.index_copy_(0, idx, rows_c)
    if grad_b is not None:
        grad_b.index_add_(0, idx, d.sum(0))


def _target_positions(cols: Tensor, tgt_b: Tensor) -> Tensor:
    """Each target's place among the sorted kept columns; ``len(cols)`` where it was dropped."""
    pos = torch.searchsorted(cols, tgt_b)  # (nb,)
    found = cols[pos.clamp(max=max(cols.numel() - 1, 0))] == tgt_b if cols.numel() \
        else torch.zeros_like(tgt_b, dtype=torch.bool)
    return torch.where(found, pos, cols.numel())


def _torch_fused(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None, tgt: Tensor,
                 cfg: _Config, need: tuple[bool, bool, bool]
                 ) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor | None]]:
    """Loss statistics and the gradients of a scalar loss (upstream gradient 1) in one pass.

    Each token block holds its whole rows of logits (``block_n x V``), so a row-local in-place
    log-softmax (cache-friendly, one kernel) gives the log-probabilities before the gradient is
    formed, and nothing is recomputed. With a filter, the vocabulary columns holding some
    ``|p - onehot| >= eps`` in this block are found; if at most ``_GATHER_MAX_FRACTION`` of them
    survive, the gradient is formed and multiplied over the gathered survivors only, a bounded
    ``_GATHER_COLUMNS`` at a time (the rest count as zero, the reference's meaning of a filtered
    entry); otherwise over the whole rows.
    """
    need_e, need_c, need_b = need
    m_rows, v_size, acc = tgt.numel(), c.shape[0], cfg.acc
    bn, bv = _default_blocks(m_rows, v_size, cfg, fused=True)
    scale = 1.0 / max(m_rows, 1) if cfg.reduction == "mean" else 1.0
    eps = cfg.filter_eps or None  # a threshold of 0 never skips anything
    log_eps = math.log(eps) if eps else float("-inf")
    log1m_eps = math.log1p(-eps) if eps and eps < 1 else float("-inf")
    grad_e = e2.new_zeros(e2.shape, dtype=acc) if need_e else None  # (N, D)
    grad_c = c.new_zeros(c.shape, dtype=acc) if need_c else None  # (V, D)
    grad_b = c.new_zeros(v_size, dtype=acc) if need_b else None  # (V,)
    lse = e2.new_empty(m_rows, dtype=acc)  # (M,)
    target_logit = e2.new_empty(m_rows, dtype=acc)  # (M,)
    entropy = e2.new_empty(m_rows, dtype=acc) if cfg.return_entropy else None
    flat = e2.new_empty(bn * v_size, dtype=acc)  # one token block's rows of logits
    scratch = e2.new_empty(bn * max(bv, _GATHER_COLUMNS), dtype=acc)
    d_size = c.shape[1]
    # bounded buffers for the filtered path: gathered gradient columns and classifier rows
    gather_d = e2.new_empty(0 if eps is None else bn * _GATHER_COLUMNS, dtype=acc)
    gather_c = e2.new_empty(0 if eps is None else _GATHER_COLUMNS * d_size, dtype=acc)
    c_acc = c if c.dtype == acc else None  # a low-precision c is cast piece by piece
    bias_acc = None if bias is None else bias.to(acc)  # (V,)
    spans = [(v0, min(v0 + bv, v_size)) for v0 in range(0, v_size, bv)]

    def c_rows(v0: int, v1: int) -> Tensor:
        return c[v0:v1] if c_acc is not None else c[v0:v1].to(acc)  # (vb, D)

    for i0 in range(0, m_rows, bn):
        i1 = min(i0 + bn, m_rows)
        nb = i1 - i0
        e_b = _take_rows(e2, rows, i0, i1, acc)  # (nb, D)
        tgt_b = tgt[i0:i1]
        z = flat[: nb * v_size].view(nb, v_size)  # (nb, V)
        if c_acc is not None:
            if bias_acc is None:
                torch.mm(e_b, c_acc.T, out=z)
            else:
                torch.addmm(bias_acc, e_b, c_acc.T, out=z)
        else:
            for v0, v1 in spans:
                z[:, v0:v1] = e_b @ c_rows(v0, v1).T
            if bias_acc is not None:
                z.add_(bias_acc)
        _finish_logits(z, None, cfg.softcap)
        arange_b = torch.arange(nb, device=z.device)
        target_logit[i0:i1] = z[arange_b, tgt_b]
        # in place: z becomes log p; the kernel reads each row fully before writing it
        torch.ops.aten._log_softmax.out(z, 1, False, out=z)
        logp_t = z[arange_b, tgt_b]  # (nb,)
        lse_b = target_logit[i0:i1] - logp_t  # (nb,)
        lse[i0:i1] = lse_b
        if entropy is not None:
            ent_b = lse_b.new_zeros(nb)
            for v0, v1 in spans:
                piece = scratch[: nb * (v1 - v0)].view(nb, v1 - v0)
                torch.exp(z[:, v0:v1], out=piece)
                ent_b -= piece.mul_(z[:, v0:v1]).sum(1)
            entropy[i0:i1] = ent_b
        if not (need_e or need_c or need_b):
            continue
        # d = p * a - onehot * g with g = scale and a = g (1 + 2 zc lse)
        a_col = scale if not cfg.z_loss else (scale * (1.0 + 2.0 * cfg.z_loss * lse_b))[:, None]
        cols = None if eps is None else _kept_columns(z, tgt_b, logp_t, log_eps, log1m_eps)
        if cols is not None and cols.numel() <= _GATHER_MAX_FRACTION * v_size:
            _FILTER_STATS.add(nb * v_size, nb * cols.numel())
            pos = _target_positions(cols, tgt_b)
            rows_b = None if rows is None else rows[i0:i1]
            grad_e_b = None if grad_e is None or rows is not None else grad_e[i0:i1]
            for k0 in range(0, cols.numel(), _GATHER_COLUMNS):
                k1 = min(k0 + _GATHER_COLUMNS, cols.numel())
                idx = cols[k0:k1]  # (kc,)
                d = torch.index_select(z, 1, idx, out=gather_d[: nb * (k1 - k0)].view(nb, -1))
                r = ((pos >= k0) & (pos < k1)).nonzero().squeeze(1)
                _grad_piece(d, lse_b, a_col, r, pos[r] - k0, scale, cfg.softcap, scratch)
                rows_c = gather_c[: (k1 - k0) * d_size].view(k1 - k0, d_size)  # (kc, D)
                _gathered_products(d, idx, e_b, rows_b, grad_e_b, grad_e, grad_c, grad_b, c,
                                   c_acc, rows_c)
            continue
        _FILTER_STATS.add(nb * v_size, nb * v_size)
        for u0, u1 in [(0, v_size)] if cfg.softcap is None else spans:
            # the softcap's factor needs the logit, so go piece by piece through a small buffer
            r, col = _target_hits(tgt_b, u0, u1)
            _grad_piece(z[:, u0:u1], lse_b, a_col, r, col, scale, cfg.softcap, scratch)
        if grad_e is not None:
            if rows is None:
                grad_e[i0:i1].addmm_(z, c_rows(0, v_size))
            else:
                grad_e.index_add_(0, rows[i0:i1], z @ c_rows(0, v_size))
        if grad_c is not None:
            grad_c.addmm_(z.T, e_b)
        if grad_b is not None:
            grad_b += z.sum(0)
    return lse, target_logit, entropy, [grad_e, grad_c, grad_b]


def _torch_backward_columns(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None,
                            tgt: Tensor, lse: Tensor, a: Tensor, g: Tensor, cfg: _Config,
                            need: tuple[bool, bool, bool]
                            ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Recompute-path gradients with column filtering (``c`` in the accumulation dtype).

    Token blocks (outer) hold whole rows of logits, as in :func:`_torch_fused`: recomputed one
    vocabulary piece at a time, each piece turned at once into the gradient in units of each
    row's upstream scale (:func:`_upstream_scale`) and its column maxima taken. The vocabulary
    columns where every entry of the block is below ``filter_eps`` in those units are dropped,
    and the two gradient products run over the gathered survivors when at most
    ``_GATHER_MAX_FRACTION`` of the columns survive (otherwise over the whole rows). The dropped
    entries count as zero. When the first ``_PROBE_BLOCKS`` blocks together keep more than that
    fraction (a near-uniform softmax: nothing to gain), the remaining tokens go to the tile loop
    of :func:`_torch_backward`, whose taller products are faster than whole-row ones.
    """
    need_e, need_c, need_b = need
    m_rows, v_size, acc = tgt.numel(), c.shape[0], cfg.acc
    bn, bv = _default_blocks(m_rows, v_size, cfg, fused=True)
    eps = cfg.filter_eps
    u, a_n, g_n = _upstream_scale(a, g)  # (M,) each
    d_size = c.shape[1]
    grad_e = e2.new_zeros(e2.shape, dtype=acc) if need_e else None  # (N, D)
    grad_c = c.new_zeros(c.shape, dtype=acc) if need_c else None  # (V, D)
    grad_b = c.new_zeros(v_size, dtype=acc) if need_b else None  # (V,)
    flat = e2.new_empty(bn * v_size, dtype=acc)  # one token block's rows of gradient
    piece_buf = e2.new_empty(bn * bv, dtype=acc)  # one vocabulary piece, cache-sized
    scratch = e2.new_empty(bn * bv if cfg.softcap is not None else 0, dtype=acc)
    gather_d = e2.new_empty(bn * _GATHER_COLUMNS, dtype=acc)
    gather_c = e2.new_empty(_GATHER_COLUMNS * d_size, dtype=acc)
    hi = e2.new_empty(v_size, dtype=acc)  # (V,) column maxima of the normalised gradient
    lo = e2.new_empty(v_size, dtype=acc)  # (V,) column minima
    bias_acc = None if bias is None else bias.to(acc)  # (V,)
    spans = [(v0, min(v0 + bv, v_size)) for v0 in range(0, v_size, bv)]
    seen = kept_total = 0
    z = piece = factor = d = rows_c = None  # views of the buffers, dropped with them below
    for i0 in range(0, m_rows, bn):
        if seen == _PROBE_BLOCKS and kept_total > _GATHER_MAX_FRACTION * v_size * i0:
            # free this path's buffers before the tile loop allocates its own
            del flat, piece_buf, scratch, gather_d, gather_c, z, piece, factor, d, rows_c
            return _torch_backward(e2, c, bias, rows, tgt, lse, a, g, cfg, need, start=i0,
                                   grads=(grad_e, grad_c, grad_b))
        seen += 1
        i1 = min(i0 + bn, m_rows)
        nb = i1 - i0
        e_b = _take_rows(e2, rows, i0, i1, acc)  # (nb, D)
        tgt_b, lse_b, u_b = tgt[i0:i1], lse[i0:i1], u[i0:i1]
        a_b, g_b = a_n[i0:i1, None], g_n[i0:i1]
        z = flat[: nb * v_size].view(nb, v_size)  # (nb, V)
        for u0, u1 in spans:
            piece = piece_buf[: nb * (u1 - u0)].view(nb, u1 - u0)
            torch.mm(e_b, c[u0:u1].T, out=piece)
            if bias_acc is not None:
                piece.add_(bias_acc[u0:u1])
            factor = None
            if cfg.softcap is not None:
                _finish_logits(piece, None, cfg.softcap)
                factor = scratch[: piece.numel()].view_as(piece)  # (nb, w)
                torch.mul(piece, 1.0 / cfg.softcap, out=factor)
                factor.square_().neg_().add_(1.0)
            piece.sub_(lse_b[:, None]).exp_().mul_(a_b)
            r, col = _target_hits(tgt_b, u0, u1)
            if r.numel():
                piece.index_put_((r, col), -g_b[r], accumulate=True)
            if factor is not None:
                piece.mul_(factor)
            # the piece is now dLoss/dlogit / u, row by row
            torch.amax(piece, 0, out=hi[u0:u1])
            torch.amin(piece, 0, out=lo[u0:u1])
            z[:, u0:u1] = piece
        cols = ((hi >= eps) | (lo <= -eps)).nonzero().squeeze(1)  # (k,) sorted
        rows_b = None if rows is None else rows[i0:i1]
        grad_e_b = None if grad_e is None or rows is not None else grad_e[i0:i1]
        if cols.numel() <= _GATHER_MAX_FRACTION * v_size:
            kept_total += cols.numel() * nb
            _FILTER_STATS.add(nb * v_size, nb * cols.numel())
            for k0 in range(0, cols.numel(), _GATHER_COLUMNS):
                k1 = min(k0 + _GATHER_COLUMNS, cols.numel())
                idx = cols[k0:k1]  # (kc,)
                d = torch.index_select(z, 1, idx, out=gather_d[: nb * (k1 - k0)].view(nb, -1))
                d.mul_(u_b[:, None])
                rows_c = gather_c[: (k1 - k0) * d_size].view(k1 - k0, d_size)  # (kc, D)
                _gathered_products(d, idx, e_b, rows_b, grad_e_b, grad_e, grad_c, grad_b, c, c,
                                   rows_c)
            continue
        kept_total += v_size * nb
        _FILTER_STATS.add(nb * v_size, nb * v_size)
        z.mul_(u_b[:, None])
        if grad_e_b is not None:
            grad_e_b.addmm_(z, c)
        elif grad_e is not None:
            grad_e.index_add_(0, rows_b, z @ c)
        if grad_c is not None:
            grad_c.addmm_(z.T, e_b)
        if grad_b is not None:
            grad_b += z.sum(0)
    return grad_e, grad_c, grad_b


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------


class _LinearCrossEntropy(torch.autograd.Function):
    """Valid tokens only: returns (loss, lse [M], entropy [M] or empty)."""

    @staticmethod
    def forward(ctx, e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None,
                tgt: Tensor, cfg: _Config, backend: str) -> tuple[Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        need = (bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]),
                bias is not None and bool(ctx.needs_input_grad[2]))
        fused = cfg.grad_in_forward and any(need)
        if fused:
            lse, target_logit, entropy, grads = _torch_fused(e2, c, bias, rows, tgt, cfg, need)
            ctx.fused_grads = grads
        elif backend == "triton":
            from tokenwise.training import linear_ce_triton

            lse, target_logit, entropy = linear_ce_triton.lse_forward(
                e2, c, bias, rows, tgt, cfg.softcap, cfg.return_entropy)
        else:
            lse, target_logit, entropy = _torch_lse_forward(e2, c, bias, rows, tgt, cfg)
        nll = lse - target_logit  # (M,)
        if cfg.z_loss:
            nll = nll + cfg.z_loss * lse.square()
        if cfg.reduction == "none":
            loss = nll
        else:
            loss = nll.sum()
            if cfg.reduction == "mean":
                loss = loss / max(tgt.numel(), 1)
        if entropy is None:
            entropy = lse.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        ctx.cfg, ctx.backend, ctx.fused, ctx.need = cfg, backend, fused, need
        ctx.bias_dtype = None if bias is None else bias.dtype
        if not fused:
            ctx.save_for_backward(e2, c, bias, rows, tgt, lse)
        ctx.dtypes = (e2.dtype, c.dtype)
        return loss, lse, entropy

    @staticmethod
    def backward(ctx, g_loss: Tensor | None, g_lse: Tensor | None, _g_entropy: Tensor | None):
        cfg: _Config = ctx.cfg
        e_dtype, c_dtype = ctx.dtypes
        if ctx.fused:
            grads = ctx.fused_grads
            if grads is None:
                raise RuntimeError(
                    "linear_cross_entropy computed its gradients in forward "
                    "(grad_in_forward), so backward can run only once; pass "
                    "grad_in_forward=False to backpropagate through it more than once")
            ctx.fused_grads = None  # hand the buffers to autograd without a copy
            if g_loss is None:
                return None, None, None, None, None, None, None
            # one host read of a scalar; skipping the multiply saves a pass over grad_c
            factor = float(g_loss)
            out = []
            for grad, dtype in zip(grads, (e_dtype, c_dtype, ctx.bias_dtype), strict=True):
                if grad is not None:
                    if factor != 1.0:
                        grad.mul_(factor)
                    grad = grad.to(dtype)
                out.append(grad)
            return out[0], out[1], out[2], None, None, None, None

        e2, c, bias, rows, tgt, lse = ctx.saved_tensors
        m_rows = tgt.numel()
        if m_rows == 0 or (g_loss is None and g_lse is None):
            zeros = [None if not n else torch.zeros_like(t)
                     for n, t in zip(ctx.need, (e2, c, bias), strict=True)]
            return zeros[0], zeros[1], zeros[2], None, None, None, None
        if g_loss is None:
            g = lse.new_zeros(m_rows)
        elif cfg.reduction == "none":
            g = g_loss.to(cfg.acc)
        else:
            scale = 1.0 / m_rows if cfg.reduction == "mean" else 1.0
            g = (g_loss.to(cfg.acc) * scale).expand(m_rows)
        a = g * (1.0 + 2.0 * cfg.z_loss * lse) if cfg.z_loss else g
        if g_lse is not None:
            a = a + g_lse.to(cfg.acc)
        if ctx.backend == "triton":
            from tokenwise.training import linear_ce_triton

            grad_e, grad_c, grad_b = linear_ce_triton.backward(
                e2, c, bias, rows, tgt, lse, a.contiguous(), g.contiguous(), cfg.softcap,
                cfg.filter_eps, ctx.need)
        elif cfg.filter_eps and c.dtype == cfg.acc:
            # column filtering needs whole rows per token block and a full-size grad_c in the
            # accumulation dtype, which a low-precision c would make twice its gradient's size
            grad_e, grad_c, grad_b = _torch_backward_columns(e2, c, bias, rows, tgt, lse, a, g,
                                                             cfg, ctx.need)
        else:
            grad_e, grad_c, grad_b = _torch_backward(e2, c, bias, rows, tgt, lse, a, g, cfg,
                                                     ctx.need)
        grad_e = None if grad_e is None else grad_e.to(e_dtype)
        grad_c = None if grad_c is None else grad_c.to(c_dtype)
        grad_b = None if grad_b is None else grad_b.to(ctx.bias_dtype)
        return grad_e, grad_c, grad_b, None, None, None, None


def _triton_usable(tensors: list[Tensor], *, explicit: bool) -> bool:
    """Whether the Triton kernels take these tensors: CUDA (or, when asked for explicitly,
    CPU tensors under Triton's interpreter) and fp16/bf16/fp32."""
    if not explicit and not all(t.is_cuda for t in tensors):
        return False
    try:
        from tokenwise.training import linear_ce_triton
    except ImportError:
        return False
    return linear_ce_triton.supports(*tensors)


def _scatter_valid(values: Tensor, out_idx: Tensor | None, out_shape: torch.Size) -> Tensor:
    """Per-valid-token values back at their positions, 0 at ignored ones (differentiable)."""
    if out_idx is None:
        return values.view(out_shape)
    full = values.new_zeros(math.prod(out_shape))
    return full.index_put((out_idx,), values).view(out_shape)


def linear_cross_entropy(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    shift: bool | int = 0,
    return_lse: bool = False,
    z_loss: float | None = None,
    filter_eps: float | str | None = "auto",
    return_entropy: bool = False,
    grad_in_forward: bool | None = None,
    block_n: int | None = None,
    block_v: int | None = None,
    impl: Literal["auto", "torch", "triton"] = "auto",
) -> Tensor | tuple[Tensor, ...]:
    """Cross-entropy of ``softcap(e @ c.T + bias)`` against ``targets``, never building the logits.

    Same meaning as ``cut_cross_entropy.linear_cross_entropy`` (the loss equals
    ``F.cross_entropy((e @ c.T + bias).float(), targets, ignore_index=..., reduction=...)``),
    plus z-loss, per-token entropy and a CPU-friendly single-pass mode.

    Args:
        e: embeddings, shape ``(..., D)``; float16, bfloat16, float32 or float64.
        c: classifier, shape ``(V, D)``.
        targets: integer class ids, shape ``(...)`` = ``e.shape[:-1]``; each in ``[0, V)`` or
            equal to ``ignore_index``.
        bias: optional classifier bias, shape ``(V,)``, added before the softcap.
        ignore_index: targets with this value contribute nothing (loss, lse and entropy 0 there).
        softcap: if given, logits become ``softcap * tanh(logits / softcap)`` (Gemma 2 style).
        reduction: ``"mean"`` over non-ignored tokens, ``"sum"``, or ``"none"`` (per position,
            shape of ``targets``, or ``(..., T - shift)`` with ``shift``). With every token
            ignored, ``"mean"`` gives 0 (not NaN, unlike ``F.cross_entropy``) and zero gradients.
        shift: ``k > 0`` pairs ``e[..., t, :]`` with ``targets[..., t + k]`` (next-token
            prediction for ``k = 1``; ``True`` means 1); must be in ``[0, T)``.
        return_lse: also return the per-position log-sum-exp (0 at ignored positions). It is
            differentiable: a gradient on it flows into ``e``, ``c`` and ``bias`` (used by a
            vocabulary-parallel loss that combines shard log-sum-exps, and for z-loss terms
            built outside).
        z_loss: coefficient ``zc``; adds ``zc * lse^2`` to each token's loss before reduction.
        filter_eps: skip the gradient entries of a vocabulary column of a token block where
            every ``|softmax - onehot|`` is below this (with ``grad_in_forward``); in the
            recompute path, where every ``|dLoss/dlogit|`` is below this times the token's
            upstream gradient scale (per-token and lse gradients and the softcap's derivative
            included; columns for an fp32/fp64 classifier, tiles otherwise and on Triton, which
            tests ``|softmax - onehot|``). ``"auto"`` is ``finfo(e.dtype).eps / 32`` as in the
            reference; ``None`` or 0 never skips.
        return_entropy: also return the per-position entropy (nats) of the (softcapped)
            softmax, 0 at ignored positions. It carries no gradient.
        grad_in_forward: compute the gradients during forward (no recomputation; needs a scalar
            loss and ``return_lse=False``; the torch implementation only; backward then runs once).
            ``None`` chooses it when that applies, the classifier is fp32/fp64 and the Triton
            path is not in use.
        block_n: tokens per block (``None``: about 16 MiB of fp32 logits per block; 32 MiB of
            whole rows with ``grad_in_forward``).
        block_v: vocabulary entries per block (``None``: a default for the implementation).
        impl: ``"triton"`` (CUDA kernels), ``"torch"`` (block loops of torch ops, any device) or
            ``"auto"`` (Triton when every tensor is on CUDA, not fp64, and Triton imports).

    Returns:
        The loss (fp32; fp64 for fp64 inputs); with ``return_lse`` and/or ``return_entropy``, a
        tuple ``(loss, lse)``, ``(loss, entropy)`` or ``(loss, lse, entropy)``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> e = torch.randn(2, 5, 8)          # (batch, time, D)
        >>> c = torch.randn(13, 8)
        >>> ids = torch.randint(0, 13, (2, 5))
        >>> loss, lse = linear_cross_entropy(e, c, ids, shift=1, reduction="none",
        ...                                  return_lse=True)
        >>> loss.shape, lse.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
        >>> plain = torch.nn.functional.cross_entropy(
        ...     (e[:, :-1] @ c.T).flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        >>> torch.allclose(loss.flatten(), plain, atol=1e-5)
        True
    """
    e = _check_float_tensor(e, "e")
    c = _check_float_tensor(c, "c", ndim=2)
    if e.ndim < 1:
        raise TokenwiseError("e must have shape (..., D), got a 0-d tensor")
    if not isinstance(targets, Tensor):
        raise TokenwiseError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TokenwiseError(f"targets must have an integer dtype, got {targets.dtype}")
    if bias is not None:
        bias = _check_float_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != c.shape[0]:
            raise TokenwiseError(
                f"bias must have shape (V,) = ({c.shape[0]},) like c's rows, got "
                f"{tuple(bias.shape)}")
    if e.shape[-1] != c.shape[1]:
        raise TokenwiseError(
            f"e's last dimension must equal c's (D): e {tuple(e.shape)} vs c {tuple(c.shape)}")
    if tuple(e.shape[:-1]) != tuple(targets.shape):
        raise TokenwiseError(
            f"targets must have shape e.shape[:-1] = {tuple(e.shape[:-1])}, got "
            f"{tuple(targets.shape)}")
    devices = {t.device for t in (e, c, targets) + (() if bias is None else (bias,))}
    if len(devices) > 1:
        raise TokenwiseError(f"e, c, targets and bias must be on one device, got {devices}")
    if reduction not in _REDUCTIONS:
        raise TokenwiseError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if impl not in _IMPLS:
        raise TokenwiseError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TokenwiseError(f"ignore_index must be an integer, got {ignore_index!r}")
    shift = _check_shift(shift, targets)
    softcap = _check_optional_float(softcap, "softcap", positive=True)
    z_coef = _check_optional_float(z_loss, "z_loss", positive=False) or 0.0
    eps = resolve_filter_eps(filter_eps, e.dtype)
    block_n = _check_positive_block(block_n, "block_n")
    block_v = _check_positive_block(block_v, "block_v")
    if grad_in_forward not in (None, True, False):
        raise TokenwiseError(
            f"grad_in_forward must be True, False or None, got {grad_in_forward!r}")

    floats = [e, c] + ([] if bias is None else [bias])
    if impl == "triton" and not _triton_usable(floats, explicit=True):
        raise TokenwiseError(
            "impl='triton' needs an importable triton, CUDA tensors (or CPU tensors with "
            "TRITON_INTERPRET=1) and float16/bfloat16/float32 inputs; got "
            f"{e.device} tensors of dtypes {sorted({str(t.dtype) for t in floats})}")
    backend = "triton" if impl == "triton" or (
        impl == "auto" and _triton_usable(floats, explicit=False)) else "torch"
    fusable = reduction != "none" and not return_lse
    if grad_in_forward:
        if not fusable:
            raise TokenwiseError(
                "grad_in_forward=True needs reduction 'mean' or 'sum' and return_lse=False "
                f"(got reduction={reduction!r}, return_lse={return_lse}); a per-token or lse "
                "gradient is only known in backward")
        if impl == "triton":
            raise TokenwiseError("grad_in_forward=True runs the torch implementation; "
                                 "use impl='torch' or 'auto' with it")
        backend = "torch"
    acc = torch.float64 if torch.float64 in {e.dtype, c.dtype, getattr(bias, "dtype", None)} \
        else torch.float32
    use_fused = bool(grad_in_forward) if grad_in_forward is not None else (
        fusable and backend == "torch" and c.dtype == acc)

    # valid tokens: positions whose (shifted) target is not ignored
    batch_shape = targets.shape
    d_size, v_size = c.shape[1], c.shape[0]
    if shift:
        length = batch_shape[-1]
        shifted = targets[..., shift:]  # (..., T - shift)
        positions = torch.arange(targets.numel(), device=targets.device).view(batch_shape)
        e_rows = positions[..., : length - shift]  # flat row of e for each output position
    else:
        shifted = targets
        e_rows = None
    out_shape = shifted.shape
    valid = shifted != ignore_index
    flat_valid = valid.reshape(-1)
    tgt = shifted.reshape(-1)[flat_valid].long()  # (M,)
    if tgt.numel():
        bad = (tgt < 0) | (tgt >= v_size)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise TokenwiseError(
                f"targets must be in [0, V) = [0, {v_size}) or equal ignore_index="
                f"{ignore_index}; got {int(tgt[first])}")
    all_valid = bool(flat_valid.all())
    out_idx = None if all_valid else flat_valid.nonzero().squeeze(1)
    # row of e2 for each valid token; None means "row i is token i" (no gather needed)
    rows = e_rows.reshape(-1)[flat_valid] if e_rows is not None else out_idx

    cfg = _Config(softcap=softcap, z_loss=z_coef, reduction=reduction, filter_eps=eps,
                  return_entropy=return_entropy, grad_in_forward=use_fused, block_n=block_n,
                  block_v=block_v, acc=acc)
    e2 = e.reshape(-1, d_size)  # (N, D)
    loss, lse, entropy = _LinearCrossEntropy.apply(e2, c, bias, rows, tgt, cfg, backend)
    if reduction == "none":
        loss = _scatter_valid(loss, out_idx, out_shape)
    extra: list[Tensor] = []
    if return_lse:
        extra.append(_scatter_valid(lse, out_idx, out_shape))
    if return_entropy:
        extra.append(_scatter_valid(entropy, out_idx, out_shape).detach())
    return (loss, *extra) if extra else loss
