"""Triton kernels for :func:`tokenwise.training.linear_cross_entropy` on CUDA.

Two kernels, the same arithmetic as the torch loops in :mod:`tokenwise.training.linear_ce`:

* ``_lse_kernel``: each program owns a block of tokens and one slice of the vocabulary, walks
  that slice block by block with an online log-sum-exp (and, if asked, the running
  ``sum exp(z - m) (z - m)`` that gives the entropy), and stores per-slice partial results;
  torch merges the slices (a few values per token). The target logit is stored by the one
  program whose block holds it.
* ``_backward_kernel``: each program owns one (token block, vocabulary block) tile, recomputes
  its logits, forms ``d = p * a - onehot * g`` (softcap chain rule included), returns early when
  every ``|p - onehot|`` is below ``filter_eps``, and adds ``d @ c_v`` to ``grad_e`` and
  ``d^T @ e_b`` to ``grad_c`` with fp32 atomic adds.

The logits never exist outside registers. Gradients accumulate in fp32 (the reference's
default accumulates in bf16 instead). For a low-precision classifier a full fp32 grad_c would
be twice the gradient's own size (2.2 GiB at V=256k, D=2304), so the backward walks the
vocabulary in slices: each slice's fp32 grad_c is accumulated in one reused buffer of at most
``GRAD_C_SLICE_BYTES`` and cast into the returned bf16/fp16 gradient before the next slice.
fp32 inputs use full-precision (``ieee``) dot products, not TF32.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before
this module is imported, CPU tensors, ``impl="triton"``), which is how CI checks them; the
interpreter cannot do bf16 dot products, so it is exercised with fp32 and fp16 there.

Example:
    >>> from tokenwise.training import linear_ce_triton
    >>> isinstance(linear_ce_triton.available(), bool)
    True
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["available", "backward", "interpreting", "lse_forward"]

# tile sizes (powers of two, >= 16 for tl.dot); chosen for A100/H100-class GPUs, not tuned here
FWD_BLOCK_B, FWD_BLOCK_V, FWD_BLOCK_D = 64, 128, 64
BWD_BLOCK_B, BWD_BLOCK_V, BWD_BLOCK_D = 64, 64, 64
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# largest fp32 buffer for one vocabulary slice of grad_c when c is bf16/fp16 (see above)
GRAD_C_SLICE_BYTES = 128 * 1024 * 1024


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether the kernels can run: Triton imports, and CUDA or the interpreter is there."""
    return triton is not None and (torch.cuda.is_available() or interpreting())


def supports(*tensors: Tensor) -> bool:
    """Whether these tensors can go through the kernels (device and dtype)."""
    if not available():
        return False
    on_device = all(t.is_cuda for t in tensors) or (
        interpreting() and all(t.device.type == "cpu" for t in tensors))
    return on_device and all(t.dtype in _DTYPES for t in tensors if t.is_floating_point())


if triton is not None:

    @triton.jit
    def _tanh(x):
        # 1 - 2 / (exp(2x) + 1) saturates cleanly to +-1 at both ends
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)

    @triton.jit
    def _logits_tile(E, C, Bias, rows, offs_v, b_mask, v_mask, D, stride_e0, stride_e1,
                     stride_c0, stride_c1, softcap, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr,
                     BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
        offs_d = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d) < D
            e = tl.load(E + rows[:, None] * stride_e0 + (d0 + offs_d)[None, :] * stride_e1,
                        mask=b_mask[:, None] & d_mask[None, :], other=0.0)
            c = tl.load(C + offs_v[None, :] * stride_c0 + (d0 + offs_d)[:, None] * stride_c1,
                        mask=v_mask[None, :] & d_mask[:, None], other=0.0)
            acc = tl.dot(e, c, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(Bias + offs_v, mask=v_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:
            acc = softcap * _tanh(acc / softcap)
        return acc

    @triton.jit
    def _lse_kernel(E, C, Bias, Rows, Tgt, PartMax, PartSum, PartW, TgtLogit, M, V, D, chunk_v,
                    stride_e0, stride_e1, stride_c0, stride_c1, softcap,
                    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ROWS: tl.constexpr,
                    HAS_ENTROPY: tl.constexpr, DOT_PRECISION: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_mask = offs_b < M
        if HAS_ROWS:
            rows = tl.load(Rows + offs_b, mask=b_mask, other=0).to(tl.int64)
        else:
            rows = offs_b.to(tl.int64)  # row * stride can pass 2**31 on long batches
        tgt = tl.load(Tgt + offs_b, mask=b_mask, other=-1)
        run_max = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros((BLOCK_B,), dtype=tl.float32)
        run_w = tl.zeros((BLOCK_B,), dtype=tl.float32)
        v_start = pid_s * chunk_v
        v_stop = tl.minimum(v_start + chunk_v, V)
        for v0 in range(v_start, v_stop, BLOCK_V):
            offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
            v_mask = offs_v < v_stop
            z = _logits_tile(E, C, Bias, rows, offs_v, b_mask, v_mask, D, stride_e0, stride_e1,
                             stride_c0, stride_c1, softcap, BLOCK_B, BLOCK_V, BLOCK_D, HAS_BIAS,
                             HAS_SOFTCAP, DOT_PRECISION)
            is_t = (offs_v[None, :] == tgt[:, None]) & v_mask[None, :]
            t_logit = tl.sum(tl.where(is_t, z, 0.0), 1)
            has_t = tl.sum(is_t.to(tl.int32), 1) > 0
            tl.store(TgtLogit + offs_b, t_logit, mask=b_mask & has_t)
            z = tl.where(v_mask[None, :], z, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(z, 1))
            rescale = tl.exp(run_max - new_max)  # 0 on the first block (run_max = -inf)
            y = z - new_max[:, None]
            ex = tl.exp(y)  # 0 at masked columns
            if HAS_ENTROPY:
                delta = tl.where(run_max == float("-inf"), 0.0, run_max - new_max)
                wy = tl.where(v_mask[None, :], ex * y, 0.0)
                run_w = rescale * (run_w + delta * run_sum) + tl.sum(wy, 1)
            run_sum = run_sum * rescale + tl.sum(ex, 1)
            run_max = new_max
        out = pid_s * M + offs_b
        tl.store(PartMax + out, run_max, mask=b_mask)
        tl.store(PartSum + out, run_sum, mask=b_mask)
        if HAS_ENTROPY:
            tl.store(PartW + out, run_w, mask=b_mask)

    @triton.jit
    def _backward_kernel(E, C, Bias, Rows, Tgt, Lse, A, G, GradE, GradC, GradB, M, V, D,
                         stride_e0, stride_e1, stride_c0, stride_c1, softcap, filter_eps,
                         BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                         HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                         HAS_ROWS: tl.constexpr, HAS_FILTER: tl.constexpr,
                         COMPUTE_DE: tl.constexpr, COMPUTE_DC: tl.constexpr,
                         COMPUTE_DB: tl.constexpr, DOT_PRECISION: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_v = tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_mask = offs_b < M
        if HAS_ROWS:
            rows = tl.load(Rows + offs_b, mask=b_mask, other=0).to(tl.int64)
        else:
            rows = offs_b.to(tl.int64)  # row * stride can pass 2**31 on long batches
        offs_v = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        v_mask = offs_v < V
        z = _logits_tile(E, C, Bias, rows, offs_v, b_mask, v_mask, D, stride_e0, stride_e1,
                         stride_c0, stride_c1, softcap, BLOCK_B, BLOCK_V, BLOCK_D, HAS_BIAS,
                         HAS_SOFTCAP, DOT_PRECISION)
        lse = tl.load(Lse + offs_b, mask=b_mask, other=float("inf"))
        tgt = tl.load(Tgt + offs_b, mask=b_mask, other=-1)
        p = tl.where(v_mask[None, :], tl.exp(z - lse[:, None]), 0.0)
        is_t = offs_v[None, :] == tgt[:, None]
        q = p - is_t.to(tl.float32)
        if HAS_FILTER:  # noqa: SIM102 - constexpr test outside, tensor test inside
            if tl.max(tl.max(tl.abs(q), 1), 0) < filter_eps:
                return
        a = tl.load(A + offs_b, mask=b_mask, other=0.0)
        g = tl.load(G + offs_b, mask=b_mask, other=0.0)
        d = q * a[:, None] + tl.where(is_t, (a - g)[:, None], 0.0)
        if HAS_SOFTCAP:
            zs = z / softcap
            d = d * (1.0 - zs * zs)
        if COMPUTE_DB:
            tl.atomic_add(GradB + offs_v, tl.sum(d, 0), mask=v_mask)
        d_in = d.to(E.dtype.element_ty)
        offs_d = tl.arange(0, BLOCK_D)
        if COMPUTE_DE:
            for d0 in range(0, D, BLOCK_D):
                d_mask = (d0 + offs_d) < D
                c = tl.load(C + offs_v[:, None] * stride_c0 + (d0 + offs_d)[None, :] * stride_c1,
                            mask=v_mask[:, None] & d_mask[None, :], other=0.0)
                part = tl.dot(d_in, c, input_precision=DOT_PRECISION)  # (BLOCK_B, BLOCK_D)
                tl.atomic_add(GradE + rows[:, None] * D + (d0 + offs_d)[None, :], part,
                              mask=b_mask[:, None] & d_mask[None, :])
        if COMPUTE_DC:
            d_t = tl.trans(d_in)
            for d0 in range(0, D, BLOCK_D):
                d_mask = (d0 + offs_d) < D
                e = tl.load(E + rows[:, None] * stride_e0 + (d0 + offs_d)[None, :] * stride_e1,
                            mask=b_mask[:, None] & d_mask[None, :], other=0.0)
                part = tl.dot(d_t, e, input_precision=DOT_PRECISION)  # (BLOCK_V, BLOCK_D)
                tl.atomic_add(GradC + offs_v[:, None] * D + (d0 + offs_d)[None, :], part,
                              mask=v_mask[:, None] & d_mask[None, :])


def _common_dtype(e2: Tensor, c: Tensor) -> tuple[Tensor, Tensor, str]:
    """Operands with one dtype for tl.dot, and the dot precision to use."""
    if e2.dtype != c.dtype:  # mixed inputs (e.g. fp32 activations, bf16 weights): fp32 dots
        e2, c = e2.float(), c.float()
    return e2, c, "ieee" if e2.dtype == torch.float32 else "tf32"


def _split_count(n_row_blocks: int, v_size: int, device: torch.device) -> int:
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 8  # interpreter: a few slices are enough to exercise the merge
    return max(1, min(triton.cdiv(v_size, FWD_BLOCK_V), triton.cdiv(target, n_row_blocks)))


def lse_forward(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None, tgt: Tensor,
                softcap: float | None, want_entropy: bool
                ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per valid token: log-sum-exp, target logit, and entropy (or None), all fp32 ``(M,)``.

    Args:
        e2: embeddings ``(N, D)``.
        c: classifier ``(V, D)``.
        bias: ``(V,)`` or None.
        rows: int64 ``(M,)`` row of ``e2`` for each valid token, or None for ``range(N)``.
        tgt: int64 ``(M,)`` targets in ``[0, V)``.
        softcap: softcap value or None.
        want_entropy: also return the per-token entropy.
    """
    e2, c, precision = _common_dtype(e2, c)
    bias = None if bias is None else bias.contiguous()  # the kernels read it with stride 1
    m_rows, v_size, d_size = tgt.numel(), c.shape[0], c.shape[1]
    device = e2.device
    target_logit = torch.zeros(m_rows, dtype=torch.float32, device=device)
    if m_rows == 0:
        empty = target_logit.new_empty(0)
        return empty, target_logit, empty if want_entropy else None
    n_row_blocks = triton.cdiv(m_rows, FWD_BLOCK_B)
    n_split = _split_count(n_row_blocks, v_size, device)
    chunk_v = triton.cdiv(triton.cdiv(v_size, n_split), FWD_BLOCK_V) * FWD_BLOCK_V
    n_split = triton.cdiv(v_size, chunk_v)
    part_max = torch.empty(n_split, m_rows, dtype=torch.float32, device=device)
    part_sum = torch.empty_like(part_max)
    part_w = torch.empty_like(part_max) if want_entropy else part_max
    _lse_kernel[(n_row_blocks, n_split)](
        e2, c, bias if bias is not None else c, rows if rows is not None else tgt, tgt,
        part_max, part_sum, part_w, target_logit, m_rows, v_size, d_size, chunk_v,
        e2.stride(0), e2.stride(1), c.stride(0), c.stride(1),
        float(softcap) if softcap is not None else 1.0,
        BLOCK_B=FWD_BLOCK_B, BLOCK_V=FWD_BLOCK_V, BLOCK_D=FWD_BLOCK_D,
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None, HAS_ROWS=rows is not None,
        HAS_ENTROPY=want_entropy, DOT_PRECISION=precision)
    # merge the vocabulary slices: (S, M) -> (M,)
    top = part_max.amax(0)  # (M,)
    weight = (part_max - top).exp()  # (S, M)
    total = (weight * part_sum).sum(0)
    log_total = total.log()
    lse = top + log_total
    entropy = None
    if want_entropy:
        w_total = (weight * (part_w + (part_max - top) * part_sum)).sum(0)
        entropy = log_total - w_total / total
    return lse, target_logit, entropy


def backward(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None, tgt: Tensor,
             lse: Tensor, a: Tensor, g: Tensor, softcap: float | None,
             filter_eps: float | None, need: tuple[bool, bool, bool]
             ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``e2``, ``c``, ``bias`` of ``sum g * nll(+z-loss) + g_lse * lse``.

    grad_e and grad_bias come back in fp32; grad_c in fp32 when ``c`` is fp32, else already in
    ``c``'s dtype (accumulated in fp32 slice by slice, see the module docstring).

    Args:
        e2, c, bias, rows, tgt: as in :func:`lse_forward`.
        lse: fp32 ``(M,)`` from the forward pass.
        a: fp32 ``(M,)`` weight of the softmax term per token.
        g: fp32 ``(M,)`` weight of the one-hot term per token.
        softcap: softcap value or None.
        filter_eps: skip tiles whose ``|p - onehot|`` is everywhere below this; None never skips.
        need: which of (e, c, bias) need a gradient.
    """
    need_e, need_c, need_b = need
    e_in, c_in, precision = _common_dtype(e2, c)
    bias = None if bias is None else bias.contiguous()  # the kernel reads it with stride 1
    m_rows, v_size, d_size = tgt.numel(), c.shape[0], c.shape[1]
    device = e2.device
    sliced = need_c and c.dtype != torch.float32
    grad_e = torch.zeros(e2.shape, dtype=torch.float32, device=device) if need_e else None
    grad_b = torch.zeros(v_size, dtype=torch.float32, device=device) if need_b else None
    if m_rows == 0 or not any(need):
        grad_c = (torch.zeros(c.shape, dtype=c.dtype if sliced else torch.float32,
                              device=device) if need_c else None)
        return grad_e, grad_c, grad_b
    # sliced: every slice is written below, so no zero fill of the whole gradient
    grad_c = (torch.empty(c.shape, dtype=c.dtype, device=device) if sliced else
              torch.zeros(c.shape, dtype=torch.float32, device=device) if need_c else None)
    if sliced:  # rows of grad_c per slice: a multiple of the tile, within the buffer budget
        per_row = 4 * d_size
        step = max(BWD_BLOCK_V, GRAD_C_SLICE_BYTES // per_row // BWD_BLOCK_V * BWD_BLOCK_V)
        step = min(step, triton.cdiv(v_size, BWD_BLOCK_V) * BWD_BLOCK_V)
        buffer = torch.empty(step, d_size, dtype=torch.float32, device=device)
    else:
        step, buffer = v_size, grad_c
    dummy = lse
    lse32, a32, g32 = lse.float().contiguous(), a.float().contiguous(), g.float().contiguous()
    for v0 in range(0, v_size, step):
        v1 = min(v0 + step, v_size)
        c_part = c_in[v0:v1]
        gc_part = None
        if need_c:
            gc_part = buffer[: v1 - v0]
            if sliced:
                gc_part.zero_()
        # targets outside the slice match no column in it (their one-hot term is elsewhere)
        tgt_part = tgt if v0 == 0 else tgt - v0
        _backward_kernel[(triton.cdiv(m_rows, BWD_BLOCK_B), triton.cdiv(v1 - v0, BWD_BLOCK_V))](
            e_in, c_part, bias[v0:v1] if bias is not None else c_part,
            rows if rows is not None else tgt, tgt_part, lse32, a32, g32,
            grad_e if grad_e is not None else dummy, gc_part if gc_part is not None else dummy,
            grad_b[v0:v1] if grad_b is not None else dummy, m_rows, v1 - v0, d_size,
            e_in.stride(0), e_in.stride(1), c_part.stride(0), c_part.stride(1),
            float(softcap) if softcap is not None else 1.0,
            float(filter_eps) if filter_eps is not None else 0.0,
            BLOCK_B=BWD_BLOCK_B, BLOCK_V=BWD_BLOCK_V, BLOCK_D=BWD_BLOCK_D,
            HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
            HAS_ROWS=rows is not None, HAS_FILTER=filter_eps is not None and filter_eps > 0,
            COMPUTE_DE=need_e, COMPUTE_DC=need_c, COMPUTE_DB=need_b, DOT_PRECISION=precision)
        if sliced:
            grad_c[v0:v1].copy_(gc_part)
    return grad_e, grad_c, grad_b
