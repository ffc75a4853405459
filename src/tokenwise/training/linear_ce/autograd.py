"""The autograd Function: forward picks the loop (lse forward, gradient in forward, or Triton)
and reduces the loss; backward forms the upstream gradients and picks the backward (column,
tile or Triton).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenwise.training.linear_ce.blocks import _Config
from tokenwise.training.linear_ce.column_backward import _torch_backward_columns
from tokenwise.training.linear_ce.forward import _torch_lse_forward
from tokenwise.training.linear_ce.fused import _torch_fused
from tokenwise.training.linear_ce.tile_backward import _torch_backward


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

            # the filtered backward walks the columns in the order of their summed logits
            out = linear_ce_triton.lse_forward(
                e2, c, bias, rows, tgt, cfg.softcap, cfg.return_entropy,
                want_column_sums=any(need) and bool(cfg.filter_eps))
            lse, target_logit, entropy = out.lse, out.target_logit, out.entropy
            ctx.triton_extra = (target_logit, out.column_sums, out.off_target_lse)
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

            target_logit, col_sums, off_lse = ctx.triton_extra
            grad_e, grad_c, grad_b = linear_ce_triton.backward(
                e2, c, bias, rows, tgt, lse, a.contiguous(), g.contiguous(), cfg.softcap,
                cfg.filter_eps, ctx.need, target_logit=target_logit, column_sums=col_sums,
                off_target_lse=off_lse)
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
