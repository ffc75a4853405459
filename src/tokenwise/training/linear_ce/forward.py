"""Forward: each valid token's log-sum-exp, target logit and (optionally) entropy, walking
vocabulary blocks (outer) and token blocks (inner) and merging each block's log-sum-exp into a
running one. Only ``lse`` is kept for backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise.training.linear_ce.blocks import (
    _block_logits,
    _Config,
    _default_blocks,
    _take_rows,
    _target_hits,
)


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
