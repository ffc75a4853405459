"""Column backward: recompute whole rows of logits per token block, drop the vocabulary columns
where the block's every gradient entry is negligible, and run the two gradient products over
the gathered survivors; hand the rest of the tokens to the tile loop when nothing filters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise.training.linear_ce import blocks
from tokenwise.training.linear_ce.blocks import (
    _FILTER_STATS,
    _Config,
    _default_blocks,
    _finish_logits,
    _gathered_products,
    _take_rows,
    _target_hits,
)
from tokenwise.training.linear_ce.tile_backward import _torch_backward, _upstream_scale

# The recompute path's column filter looks at this many token blocks before deciding whether
# filtering pays (see _torch_backward_columns).
_PROBE_BLOCKS = 2


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
    gather_d = e2.new_empty(bn * blocks._GATHER_COLUMNS, dtype=acc)
    gather_c = e2.new_empty(blocks._GATHER_COLUMNS * d_size, dtype=acc)
    hi = e2.new_empty(v_size, dtype=acc)  # (V,) column maxima of the normalised gradient
    lo = e2.new_empty(v_size, dtype=acc)  # (V,) column minima
    bias_acc = None if bias is None else bias.to(acc)  # (V,)
    spans = [(v0, min(v0 + bv, v_size)) for v0 in range(0, v_size, bv)]
    seen = kept_total = 0
    z = piece = factor = d = rows_c = None  # views of the buffers, dropped with them below
    for i0 in range(0, m_rows, bn):
        if seen == _PROBE_BLOCKS and kept_total > blocks._GATHER_MAX_FRACTION * v_size * i0:
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
        if cols.numel() <= blocks._GATHER_MAX_FRACTION * v_size:
            kept_total += cols.numel() * nb
            _FILTER_STATS.add(nb * v_size, nb * cols.numel())
            for k0 in range(0, cols.numel(), blocks._GATHER_COLUMNS):
                k1 = min(k0 + blocks._GATHER_COLUMNS, cols.numel())
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
