"""Tile backward: recompute each (vocabulary, token) block's logits, turn them into
``dLoss/dlogit`` in place, and skip a tile where every entry is negligible.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise.training.linear_ce.blocks import (
    _FILTER_STATS,
    _block_logits,
    _Config,
    _default_blocks,
    _take_rows,
    _target_hits,
)


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
