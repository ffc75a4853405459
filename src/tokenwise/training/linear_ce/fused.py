"""Gradient in forward (``grad_in_forward``): for a scalar loss, the gradients of the whole
rows of logits of each token block, computed in the forward pass itself (three matrix products,
no recomputation), over the gathered vocabulary columns the filter keeps.
"""

from __future__ import annotations

import math

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
    scratch = e2.new_empty(bn * max(bv, blocks._GATHER_COLUMNS), dtype=acc)
    d_size = c.shape[1]
    # bounded buffers for the filtered path: gathered gradient columns and classifier rows
    gather_d = e2.new_empty(0 if eps is None else bn * blocks._GATHER_COLUMNS, dtype=acc)
    gather_c = e2.new_empty(0 if eps is None else blocks._GATHER_COLUMNS * d_size, dtype=acc)
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
        if cols is not None and cols.numel() <= blocks._GATHER_MAX_FRACTION * v_size:
            _FILTER_STATS.add(nb * v_size, nb * cols.numel())
            pos = _target_positions(cols, tgt_b)
            rows_b = None if rows is None else rows[i0:i1]
            grad_e_b = None if grad_e is None or rows is not None else grad_e[i0:i1]
            for k0 in range(0, cols.numel(), blocks._GATHER_COLUMNS):
                k1 = min(k0 + blocks._GATHER_COLUMNS, cols.numel())
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
