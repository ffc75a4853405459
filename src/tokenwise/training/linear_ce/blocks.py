"""What the torch loops of the fused linear cross-entropy share: the call's settings, block
sizes, the block helpers (gather embeddings, finish logits, find targets), the gathered-column
gradient products, and the filter's work counter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenwise.training.counts import FILTER_STATS

# Each transient logits block holds about this many elements (16 MiB in fp32): big enough for
# efficient matrix products, small next to the gradients themselves.
_BLOCK_ELEMENTS = 1 << 22
# Gather only the surviving columns when at most this fraction of the vocabulary survives; above
# it the gathers (classifier rows, grad_c rows read and written back) cost more than the products
# they save. Measured on a 2-core CPU at N=1024, D=1024, V=65536, 128-row blocks: with every
# column gathered the backward costs ~1.1x the dense one; break-even near 0.83 of the columns.
_GATHER_MAX_FRACTION = 0.8
# Surviving columns are processed this many at a time, so the gathered classifier rows (reused for
# the grad_c product) stay at 8 MiB in fp32 at D=1024.
_GATHER_COLUMNS = 2048
# (fused.py and column_backward.py read both as ``blocks._GATHER_...`` at call time, so one value
# governs the two paths.)


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


# the counter lives below this package so the Triton kernels can add to it too
_FILTER_STATS = FILTER_STATS
