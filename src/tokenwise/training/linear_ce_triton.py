"""Triton kernels for :func:`tokenwise.training.linear_cross_entropy` on CUDA.

Forward (``_lse_kernel``): each program owns a block of tokens and one slice of the vocabulary,
walks that slice tile by tile with an online log-sum-exp (and, if asked, the running
``sum exp(z - m) (z - m)`` that gives the entropy), and stores per-slice partial results; torch
merges the slices (a few values per token). When a filtered backward will follow, it also sums
every vocabulary column's logits over the tokens (one atomic add of a tile's column sums per
tile). Each token's target logit is a dot product of its own, in ``_target_logit_kernel``:
comparing a whole tile with the targets in the walk cost more registers than the products
(compiled for sm_90 it spilled at every tile size).

Backward. The gradient of the logits is split in two:

* off each token's target column, the softmax term ``d = p * a * s`` (``a`` the per-token weight
  of the softmax, ``s`` the softcap's factor ``1 - (z / softcap)^2``, 1 without one) is formed
  in registers, tile by tile;
* each token's target column, whole, ``(p_t * a - g) * s_t``, is applied outside the tiles in
  fp32 (a gather of classifier rows for grad_e, an ``index_add`` of embedding rows for grad_c,
  one entry per token for the bias), from the forward's target logit and lse. It is never cast
  to the inputs' dtype, so a confident token's small ``p_t - 1`` keeps its precision (formed in
  a tile, ``p_t * a`` would be rounded to bf16 before the ``- g``).

The filter therefore tests the actual gradient off the targets, upstream gradient and softcap's
chain rule included: a (token block, vocabulary tile) is skipped when every ``|d|`` in it is
below ``filter_eps * u`` for its token's upstream scale ``u = max(|a|, |g|)`` (the CPU recompute
path's relative rule). A target column never keeps a tile alive: on random-init logits at V =
256k the softmax term is negligible nearly everywhere else and nearly every tile is skipped.
The columns are walked in descending order of their summed logits from the forward, so the
columns whose softmax matters gather in few tiles (the reference sorts its vocabulary the same
way).

With a filter the backward runs two passes over the (token block, vocabulary tile) grid:

* ``_backward_kernel`` in pass C: recompute the tile's logits, form ``d``, store whether the
  tile is kept, and for a kept tile add ``d^T @ e`` into an fp32 buffer of grad_c rows and its
  column sums into the bias gradient (relaxed fp32 atomic adds: only the token blocks that keep
  a tile add into its rows);
* the same kernel in pass E: a program whose tile pass C skipped returns at once; a kept tile is
  recomputed and adds ``d @ c`` into an fp32 buffer of grad_e rows. No program adds into grad_e
  for a skipped tile, so on a trained model's softmax pass E costs a few percent of a product.

Without a filter (``filter_eps=None``: every tile is kept anyway) one pass adds into both
gradients, and grad_e is then accumulated in fp32 for all tokens at once (``M x D x 4`` bytes
beside the gradients, unless grad_e is fp32 and every token is valid: then in place).

Memory with a filter: the fp32 accumulators are bounded. grad_c is accumulated one vocabulary
slice at a time (at most ``GRAD_C_SLICE_BYTES``) and grad_e one token slice at a time (at most
``GRAD_E_SLICE_BYTES``; the two buffers never live at once), each cast into the returned
gradient, which has the inputs' dtype, before the next slice (an fp32 classifier's gradient is
accumulated in place). fp32 inputs use full-precision (``ieee``) dot products, not TF32;
bf16/fp16 tiles of ``d`` go into the products in the inputs' dtype with fp32 accumulation.

Tiles: on CUDA each kernel is autotuned (``triton.autotune``, keyed by vocabulary size, width
and a power-of-two bucket of the token count) over ``_SPECS``, for 16-bit, fp32 and mixed
operands apart (fp32 needs smaller tiles); pass E runs with the tiles pass C chose (they share
the keep map). Tuning compiles every candidate for each new combination of dtypes and options
(about a minute, once; tuned choices are cached on disk where Triton supports it);
``TOKENWISE_TRITON_AUTOTUNE=0`` (read at import) runs each list's first config instead.
Skipped and kept tiles are counted on the device (``TILE_STATS``; reading it waits for the
GPU).

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1`` set before
this module is imported, CPU tensors, ``impl="triton"``), which is how CI checks them, with
64 x 64 tiles; the interpreter cannot do bf16 dot products, so it is exercised with
fp32 and fp16 there. Speed and memory on a GPU: BENCHMARKS.md, "On a GPU: ours (Triton) vs
cut-cross-entropy".

Example:
    >>> from tokenwise.training import linear_ce_triton
    >>> isinstance(linear_ce_triton.available(), bool)
    True
"""

from __future__ import annotations

import inspect
import os
from typing import NamedTuple

import torch
from torch import Tensor

from tokenwise.training.counts import FILTER_STATS, DeviceCount

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["TILE_STATS", "Forward", "TileStats", "available", "backward", "interpreting",
           "lse_forward"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# largest fp32 buffers: one vocabulary slice of grad_c (when c is bf16/fp16) and one token slice
# of grad_e (see the module docstring); slices start at multiples of _ALIGN
GRAD_C_SLICE_BYTES = 32 * 1024 * 1024
GRAD_E_SLICE_BYTES = 32 * 1024 * 1024
# slice starts are multiples of this, so every config's BLOCK_B / BLOCK_V divides them
_ALIGN = 256
# target-column rows handled per torch call (bounds the fp32 temporaries to _TARGET_ROWS x D)
_TARGET_ROWS = 256
# tiles of the backward grid taken in groups of this many token blocks (L2 reuse of c's rows)
_GROUP_B = 8


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


class TileStats:
    """Tiles of the filtered Triton backward: how many were visited and how many kept.

    The counts stay on the device until read (reading waits for the GPU). A debugging and
    benchmarking aid, not thread-safe.

    Example:
        >>> stats = TileStats()
        >>> stats.tiles, stats.kept
        (0, 0)
    """

    def __init__(self) -> None:
        self.tiles = 0
        self._kept = DeviceCount()

    def reset(self) -> None:
        """Forget every count."""
        self.tiles = 0
        self._kept.reset()

    def add(self, tiles: int, kept: Tensor) -> None:
        """Count one backward's tiles (the kept ones as a 0-d device tensor)."""
        self.tiles += tiles
        self._kept.add(kept)

    @property
    def kept(self) -> int:
        """Tiles kept (formed and multiplied) so far."""
        return self._kept.value

    @property
    def skipped(self) -> int:
        """Tiles the filter skipped so far."""
        return self.tiles - self.kept


TILE_STATS = TileStats()


def _configs(specs: list[tuple[int, int, int, int, int]]) -> list:
    return [triton.Config({"BLOCK_B": b, "BLOCK_V": v, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for b, v, d, w, s in specs]


# (BLOCK_B, BLOCK_V, BLOCK_D, num_warps, num_stages) per kernel and per kind of operands:
# "16" (bf16/fp16, Hopper's wgmma), "fp32" (full-precision dots, plain mma, twice the registers
# per element) and "mixed" (e and c of different dtypes: fp32 dots on tiles cast in the kernel,
# the hungriest). Every candidate compiles for sm_90 without spilling registers with bias,
# softcap, a row map and the entropy on (checked with Triton's compiler and cuobjdump, no GPU
# needed: tests/training/test_linear_ce_triton_compile.py); every BLOCK_B / BLOCK_V divides
# _ALIGN. The first of a list runs when tuning is off (TOKENWISE_TRITON_AUTOTUNE=0); the
# interpreter runs _INTERPRETER_SPEC.
_SPECS = {
    ("forward", "16"): [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3),
                        (256, 64, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                        (64, 64, 32, 4, 3)],
    ("backward", "16"): [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (256, 64, 64, 8, 3),
                         (64, 256, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4),
                         (64, 64, 32, 4, 3)],
    ("forward", "fp32"): [(128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (32, 64, 32, 4, 3)],
    ("backward", "fp32"): [(64, 64, 32, 8, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3),
                           (64, 64, 32, 4, 2), (32, 64, 32, 4, 3)],
    ("forward", "mixed"): [(32, 64, 32, 8, 3)],
    ("backward", "mixed"): [(32, 64, 32, 8, 3)],
}
_INTERPRETER_SPEC = (64, 64, 32, 4, 3)
_TUNE = os.environ.get("TOKENWISE_TRITON_AUTOTUNE", "1") not in ("", "0")
_ALL_SPECS = [_INTERPRETER_SPEC, *(spec for specs in _SPECS.values() for spec in specs)]
_MIN_BLOCK_B = min(spec[0] for spec in _ALL_SPECS)
_MIN_BLOCK_V = min(spec[1] for spec in _ALL_SPECS)


if triton is not None:

    @triton.jit
    def _tanh(x):
        # 1 - 2 / (exp(2x) + 1) saturates cleanly to +-1 at both ends
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)

    @triton.jit
    def _row_tile(P, idx, row_mask, cols, col_mask, stride0, stride1,
                  DOT_PRECISION: tl.constexpr):
        # rows idx x columns cols of a row-major matrix, as the products take them: cast to
        # fp32 for fp32 dots (fp32 operands, or mixed ones cast tile by tile)
        x = tl.load(P + idx[:, None] * stride0 + cols[None, :] * stride1,
                    mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        if DOT_PRECISION == "ieee":
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _logits_tile(E, C, Bias, rows, cols, b_mask, v_mask, D, stride_e0, stride_e1,
                     stride_c0, stride_c1, softcap, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr,
                     BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
        offs_d = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d) < D
            e = _row_tile(E, rows, b_mask, d0 + offs_d, d_mask, stride_e0, stride_e1,
                          DOT_PRECISION)
            # c's tile loaded (D, V) directly, as the product wants it
            c = tl.load(C + cols[None, :] * stride_c0 + (d0 + offs_d)[:, None] * stride_c1,
                        mask=v_mask[None, :] & d_mask[:, None], other=0.0)
            if DOT_PRECISION == "ieee":
                c = c.to(tl.float32)
            acc = tl.dot(e, c, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(Bias + cols, mask=v_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:
            acc = softcap * _tanh(acc / softcap)
        return acc

    @triton.jit
    def _lse_kernel(E, C, Bias, Rows, Tgt, PartMax, PartSum, PartW, ColSum, M, V, D,
                    chunk_v, M_BIN, stride_e0, stride_e1, stride_c0, stride_c1, softcap,
                    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ROWS: tl.constexpr,
                    HAS_ENTROPY: tl.constexpr, HAS_COLSUM: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
        pid_b = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_mask = offs_b < M
        if HAS_ROWS:
            rows = tl.load(Rows + offs_b, mask=b_mask, other=0).to(tl.int64)
        else:
            rows = offs_b.to(tl.int64)  # row * stride can pass 2**31 on long batches
        tgt = tl.load(Tgt + offs_b, mask=b_mask, other=-1)  # int32
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
            if HAS_COLSUM:
                col = tl.sum(tl.where(b_mask[:, None], z, 0.0), 0)
                tl.atomic_add(ColSum + offs_v, col, mask=v_mask, sem="relaxed")
            # the sums leave each token's target column out (the caller adds it back from the
            # target logit), so 1 - p_t = exp(lse_off - lse) stays exact for a sure token
            off = v_mask[None, :] & ((v0 + tl.arange(0, BLOCK_V))[None, :] != tgt[:, None])
            z = tl.where(off, z, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(z, 1))
            # 0 on the first tile (run_max = -inf); a row with no column yet stays at 0
            rescale = tl.where(new_max == float("-inf"), 0.0, tl.exp(run_max - new_max))
            y = z - new_max[:, None]
            ex = tl.where(off, tl.exp(y), 0.0)
            if HAS_ENTROPY:
                delta = tl.where(run_max == float("-inf"), 0.0, run_max - new_max)
                wy = tl.where(off, ex * y, 0.0)
                run_w = rescale * (run_w + delta * run_sum) + tl.sum(wy, 1)
            run_sum = run_sum * rescale + tl.sum(ex, 1)
            run_max = new_max
        out = pid_s * M + offs_b
        tl.store(PartMax + out, run_max, mask=b_mask)
        tl.store(PartSum + out, run_sum, mask=b_mask)
        if HAS_ENTROPY:
            tl.store(PartW + out, run_w, mask=b_mask)

    @triton.jit
    def _target_logit_kernel(E, C, Bias, Rows, Tgt, Out, M, D, stride_e0, stride_e1, stride_c0,
                             stride_c1, softcap, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                             HAS_ROWS: tl.constexpr):
        # each token's own logit, apart from the tiles: a tile-wide comparison with the targets
        # costs the forward more registers than its products (it spilled on Hopper)
        offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_mask = offs_t < M
        if HAS_ROWS:
            rows = tl.load(Rows + offs_t, mask=t_mask, other=0).to(tl.int64)
        else:
            rows = offs_t.to(tl.int64)
        tgt = tl.load(Tgt + offs_t, mask=t_mask, other=0).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            mask = t_mask[:, None] & ((d0 + offs_d) < D)[None, :]
            e = tl.load(E + rows[:, None] * stride_e0 + (d0 + offs_d)[None, :] * stride_e1,
                        mask=mask, other=0.0).to(tl.float32)
            c = tl.load(C + tgt[:, None] * stride_c0 + (d0 + offs_d)[None, :] * stride_c1,
                        mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(e * c, 1)
        if HAS_BIAS:
            acc += tl.load(Bias + tgt, mask=t_mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            acc = softcap * _tanh(acc / softcap)
        tl.store(Out + offs_t, acc, mask=t_mask)

    @triton.jit
    def _backward_kernel(E, C, Bias, Rows, Lse, A, Thr, TgtPlace, Order, Keep, GradE, GradC,
                         GradB, M, n_cols, D, row0, col0, keep_stride, V_ALL, M_BIN,
                         stride_e0, stride_e1, stride_c0, stride_c1, softcap,
                         BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                         GROUP_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                         HAS_SOFTCAP: tl.constexpr, HAS_ROWS: tl.constexpr,
                         HAS_ORDER: tl.constexpr, WRITE_KEEP: tl.constexpr,
                         READ_KEEP: tl.constexpr, COMPUTE_DE: tl.constexpr,
                         COMPUTE_DC: tl.constexpr, DC_BY_COLUMN: tl.constexpr,
                         COMPUTE_DB: tl.constexpr, DOT_PRECISION: tl.constexpr):
        # tiles of this launch: tokens [row0, row0 + M) x columns [col0, col0 + n_cols) of the
        # (ordered) vocabulary; pointers Rows/Lse/A/Thr/TgtPlace/GradE start at row0, Order/GradC
        # (unless DC_BY_COLUMN)/GradB at col0. V_ALL and M_BIN are read by the tuner only (its
        # key). Programs go over GROUP_B token blocks first, then the next vocabulary tile, so
        # programs running together share c's rows in L2.
        pid = tl.program_id(0)
        n_b = tl.cdiv(M, BLOCK_B)
        n_v = tl.cdiv(n_cols, BLOCK_V)
        per_group = GROUP_B * n_v
        first_b = (pid // per_group) * GROUP_B
        size_b = tl.minimum(n_b - first_b, GROUP_B)
        pid_b = first_b + (pid % per_group) % size_b
        pid_v = (pid % per_group) // size_b
        keep_at = Keep + (row0 // BLOCK_B + pid_b) * keep_stride + col0 // BLOCK_V + pid_v
        if READ_KEEP:  # noqa: SIM102 - constexpr test outside, tensor test inside
            if tl.load(keep_at) == 0:
                return
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_mask = offs_b < M
        if HAS_ROWS:
            rows = tl.load(Rows + offs_b, mask=b_mask, other=0).to(tl.int64)
        else:
            rows = (row0 + offs_b).to(tl.int64)  # row * stride can pass 2**31
        local_v = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        v_mask = local_v < n_cols
        if HAS_ORDER:
            cols = tl.load(Order + local_v, mask=v_mask, other=0).to(tl.int64)
        else:
            cols = col0 + local_v
        z = _logits_tile(E, C, Bias, rows, cols, b_mask, v_mask, D, stride_e0, stride_e1,
                         stride_c0, stride_c1, softcap, BLOCK_B, BLOCK_V, BLOCK_D, HAS_BIAS,
                         HAS_SOFTCAP, DOT_PRECISION)
        lse = tl.load(Lse + offs_b, mask=b_mask, other=float("inf"))
        a = tl.load(A + offs_b, mask=b_mask, other=0.0)
        # the softmax term of dLoss/dlogit off each token's target column; the target column's
        # whole gradient is applied outside the tiles, in fp32
        tcol = tl.load(TgtPlace + offs_b, mask=b_mask, other=-1) - col0  # int32
        at_t = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V))[None, :] == tcol[:, None]
        d = tl.where(v_mask[None, :] & ~at_t, tl.exp(z - lse[:, None]), 0.0) * a[:, None]
        if HAS_SOFTCAP:
            zs = z / softcap
            d = d * (1.0 - zs * zs)
        if WRITE_KEEP:
            thr = tl.load(Thr + offs_b, mask=b_mask, other=0.0)
            big = (tl.abs(d) >= thr[:, None]) & (thr[:, None] > 0.0)
            keep = tl.max(tl.max(big.to(tl.int32), 1), 0)
            tl.store(keep_at, keep.to(tl.uint8))
            if keep == 0:
                return
        if DOT_PRECISION == "ieee":  # noqa: SIM108 - a plain if on a constexpr compiles everywhere
            d_in = d
        else:
            d_in = d.to(E.dtype.element_ty)
        offs_d = tl.arange(0, BLOCK_D)
        if COMPUTE_DB:
            tl.atomic_add(GradB + local_v, tl.sum(d, 0), mask=v_mask, sem="relaxed")
        if COMPUTE_DE:
            for d0 in range(0, D, BLOCK_D):
                d_mask = (d0 + offs_d) < D
                c = _row_tile(C, cols, v_mask, d0 + offs_d, d_mask, stride_c0, stride_c1,
                              DOT_PRECISION)
                part = tl.dot(d_in, c, input_precision=DOT_PRECISION)  # (BLOCK_B, BLOCK_D)
                tl.atomic_add(GradE + offs_b.to(tl.int64)[:, None] * D + (d0 + offs_d)[None, :],
                              part, mask=b_mask[:, None] & d_mask[None, :], sem="relaxed")
        if COMPUTE_DC:
            if DC_BY_COLUMN:  # noqa: SIM108 - a plain if on a constexpr compiles everywhere
                dc_rows = cols
            else:
                dc_rows = local_v
            d_t = tl.trans(d_in)
            for d0 in range(0, D, BLOCK_D):
                d_mask = (d0 + offs_d) < D
                e = _row_tile(E, rows, b_mask, d0 + offs_d, d_mask, stride_e0, stride_e1,
                              DOT_PRECISION)
                part = tl.dot(d_t, e, input_precision=DOT_PRECISION)  # (BLOCK_V, BLOCK_D)
                tl.atomic_add(GradC + dc_rows[:, None] * D + (d0 + offs_d)[None, :], part,
                              mask=v_mask[:, None] & d_mask[None, :], sem="relaxed")

    @triton.jit
    def _store_rows_kernel(Src, Dst, Index, n_rows, D, stride_dst, HAS_INDEX: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = (r < n_rows)[:, None] & (cols < D)[None, :]
        x = tl.load(Src + r.to(tl.int64)[:, None] * D + cols[None, :], mask=mask, other=0.0)
        if HAS_INDEX:
            at = tl.load(Index + r, mask=r < n_rows, other=0).to(tl.int64)
        else:
            at = r.to(tl.int64)
        tl.store(Dst + at[:, None] * stride_dst + cols[None, :], x.to(Dst.dtype.element_ty),
                 mask=mask)

    def _autotune(kernel, specs, key, reset):
        """A tuner over ``specs`` for ``kernel``, keyed by ``key``, zeroing ``reset`` between
        the runs it times (and before the real one)."""
        options = {}
        if "cache_results" in inspect.signature(triton.autotune).parameters:
            options["cache_results"] = True  # a tuned shape is not tuned again next process
        return triton.autotune(configs=_configs(specs), key=key, reset_to_zero=reset,
                               **options)(kernel)

    # per kernel: itself, the tuner's key and the accumulators it zeroes. The backward's key
    # is the whole vocabulary (V_ALL), the same for every slice of a call, so a call is tuned
    # at its first launch, before anything has been accumulated
    _KERNELS = {"forward": (_lse_kernel, (["V", "D", "M_BIN"], ["ColSum"])),
                "backward": (_backward_kernel, (["V_ALL", "D", "M_BIN"],
                                                ["GradE", "GradC", "GradB"]))}
    # one tuner per kernel and kind of operands; none under the interpreter or with tuning off
    _TUNERS = {} if interpreting() or not _TUNE else {
        (kind, operands): _autotune(_KERNELS[kind][0], specs, *_KERNELS[kind][1])
        for (kind, operands), specs in _SPECS.items()}


def _m_bin(m_rows: int) -> int:
    """Power-of-two bucket of the token count (the tuners' key)."""
    return max(256, 1 << max(0, m_rows - 1).bit_length())


def _chosen(kind: str, operands: str) -> dict:
    """Launch options: the tuner's last choice for ``kind`` ("forward"/"backward") and
    ``operands`` ("16"/"fp32"/"mixed"); without a tuner the interpreter's small tiles, else the
    list's first."""
    tuner = _TUNERS.get((kind, operands))
    if tuner is not None:
        cfg = tuner.best_config
        return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    b, v, d, w, s = _INTERPRETER_SPEC if interpreting() else _SPECS[(kind, operands)][0]
    return {"BLOCK_B": b, "BLOCK_V": v, "BLOCK_D": d, "num_warps": w, "num_stages": s}


def _operands(e2: Tensor, c: Tensor) -> tuple[str, str]:
    """The kind of operands ("16", "fp32" or "mixed") and the dot precision: ``"ieee"`` (fp32
    dots, the kernels cast each tile) for fp32 or mixed operands (e.g. fp32 activations with
    bf16 weights: no fp32 copy of either is made), else ``"tf32"`` (ignored for 16-bit
    operands, which go into the products as they are)."""
    if e2.dtype != c.dtype:
        return "mixed", "ieee"
    return ("fp32", "ieee") if e2.dtype == torch.float32 else ("16", "tf32")


def _split_count(m_rows: int, v_size: int, device: torch.device) -> int:
    """Vocabulary slices of the forward: enough programs to fill the GPU."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 8  # interpreter: a few slices are enough to exercise the merge
    return max(1, min(triton.cdiv(v_size, _ALIGN), triton.cdiv(target, triton.cdiv(m_rows, 128))))


def _slice_rows(budget: int, width: int, total: int) -> int:
    """Rows of an fp32 ``(rows, width)`` buffer within ``budget`` bytes: a multiple of
    ``_ALIGN``, at least one ``_ALIGN``, at most ``total`` rounded up."""
    rows = max(_ALIGN, budget // (4 * width) // _ALIGN * _ALIGN)
    return min(rows, triton.cdiv(total, _ALIGN) * _ALIGN)


class Forward(NamedTuple):
    """What :func:`lse_forward` returns, per valid token (fp32 ``(M,)``) unless said."""

    lse: Tensor  #: log-sum-exp of the logits
    target_logit: Tensor  #: the (softcapped) logit of the token's target
    entropy: Tensor | None  #: of the softmax, when asked
    column_sums: Tensor | None  #: ``(V,)`` logits summed over the tokens, when asked
    off_target_lse: Tensor  #: log-sum-exp of the logits off the target (``-inf`` for V = 1)


def lse_forward(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None, tgt: Tensor,
                softcap: float | None, want_entropy: bool, want_column_sums: bool = False
                ) -> Forward:
    """Per valid token: log-sum-exp, target logit, entropy, and the log-sum-exp off the target
    (``1 - p_t = exp(off_target_lse - lse)``, exact for a sure token); each vocabulary column's
    logits summed over the tokens (for the backward's column order).

    The walk over the vocabulary leaves each token's target column out and the target logit
    (its own small kernel) is added back: ``lse = logaddexp(off_target_lse, target_logit)``,
    so the loss ``lse - target_logit`` is never below 0 and the backward's target term does not
    subtract two computations of the same logit.

    Args:
        e2: embeddings ``(N, D)``.
        c: classifier ``(V, D)``.
        bias: ``(V,)`` or None.
        rows: int64 ``(M,)`` row of ``e2`` for each valid token, or None for ``range(N)``.
        tgt: int64 ``(M,)`` targets in ``[0, V)``.
        softcap: softcap value or None.
        want_entropy: also return the per-token entropy (else None).
        want_column_sums: also return the column sums (else None).

    Example:
        >>> # on CUDA tensors: out = lse_forward(e, c, None, None, t, None, False); out.lse
    """
    operands, precision = _operands(e2, c)
    bias = None if bias is None else bias.contiguous()  # the kernels read it with stride 1
    m_rows, v_size, d_size = tgt.numel(), c.shape[0], c.shape[1]
    device = e2.device
    target_logit = torch.empty(m_rows, dtype=torch.float32, device=device)
    col_sums = torch.zeros(v_size, dtype=torch.float32, device=device) \
        if want_column_sums else None
    if m_rows == 0:
        empty = target_logit.new_empty(0)
        return Forward(empty, target_logit, empty if want_entropy else None, col_sums, empty)
    n_split = _split_count(m_rows, v_size, device)
    chunk_v = triton.cdiv(triton.cdiv(v_size, n_split), _ALIGN) * _ALIGN
    n_split = triton.cdiv(v_size, chunk_v)
    part_max = torch.empty(n_split, m_rows, dtype=torch.float32, device=device)
    part_sum = torch.empty_like(part_max)
    part_w = torch.empty_like(part_max) if want_entropy else part_max
    # pointers the kernels do not read (HAS_BIAS / HAS_ROWS false) still need a tensor
    bias_arg, rows_arg = bias if bias is not None else c, rows if rows is not None else tgt
    strides = (e2.stride(0), e2.stride(1), c.stride(0), c.stride(1),
               float(softcap) if softcap is not None else 1.0)
    options = dict(HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
                   HAS_ROWS=rows is not None)
    args = (e2, c, bias_arg, rows_arg, tgt.to(torch.int32), part_max, part_sum, part_w,
            col_sums if col_sums is not None else part_max, m_rows, v_size, d_size, chunk_v,
            _m_bin(m_rows), *strides)
    flags = dict(**options, HAS_ENTROPY=want_entropy, HAS_COLSUM=col_sums is not None,
                 DOT_PRECISION=precision)
    _target_logit_kernel[(triton.cdiv(m_rows, 16),)](
        e2, c, bias_arg, rows_arg, tgt, target_logit, m_rows, d_size, *strides, BLOCK_T=16,
        BLOCK_D=128, **options)
    tuner = _TUNERS.get(("forward", operands))
    if tuner is None:
        opts = _chosen("forward", operands)
        _lse_kernel[(triton.cdiv(m_rows, opts["BLOCK_B"]), n_split)](*args, **flags, **opts)
    else:
        tuner[lambda meta: (triton.cdiv(m_rows, meta["BLOCK_B"]), n_split)](*args, **flags)
    # merge the vocabulary slices, then add the target column: (S, M) -> (M,), all relative to
    # top, the largest logit (a slice, or a row, with no column left has max -inf and sum 0)
    z_t = target_logit
    top = torch.maximum(part_max.amax(0), z_t)  # finite: the target logit is
    weight = (part_max - top).exp()  # (S, M), 0 where a slice had no column
    off_total = (weight * part_sum).sum(0)
    target_weight = (z_t - top).exp()
    total = off_total + target_weight
    log_total = total.log()
    lse = top + log_total
    off_lse = top + off_total.log()  # -inf when the target is the only column
    entropy = None
    if want_entropy:
        # sum of exp(z - top) (z - top) over the columns: each slice's from its own max
        shift = torch.where(part_max == float("-inf"), 0.0, part_max - top)
        w_total = (weight * (part_w + shift * part_sum)).sum(0)
        w_total = w_total + target_weight * (z_t - top)
        entropy = log_total - w_total / total
    return Forward(lse, target_logit, entropy, col_sums, off_lse)


def _add_rows(src: Tensor, idx: Tensor, coef: Tensor, out: Tensor,
              dest: Tensor | None = None) -> None:
    """``out[dest[k]] += coef[k] * src[idx[k]]`` (``out[k]`` without ``dest``) in fp32,
    ``_TARGET_ROWS`` rows at a time (so the fp32 temporaries stay small)."""
    for k0 in range(0, idx.numel(), _TARGET_ROWS):
        k1 = min(k0 + _TARGET_ROWS, idx.numel())
        part = src.index_select(0, idx[k0:k1]).float().mul_(coef[k0:k1, None])
        if dest is None:
            out[k0:k1] += part
        else:
            out.index_add_(0, dest[k0:k1], part)


def backward(e2: Tensor, c: Tensor, bias: Tensor | None, rows: Tensor | None, tgt: Tensor,
             lse: Tensor, a: Tensor, g: Tensor, softcap: float | None,
             filter_eps: float | None, need: tuple[bool, bool, bool],
             target_logit: Tensor | None = None, column_sums: Tensor | None = None,
             off_target_lse: Tensor | None = None
             ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``e2``, ``c``, ``bias`` of ``sum g * nll(+z-loss) + g_lse * lse``.

    grad_e comes back in ``e2``'s dtype, grad_c in ``c``'s, grad_bias in fp32 (all accumulated
    in fp32, slice by slice; see the module docstring).

    Args:
        e2, c, bias, rows, tgt: as in :func:`lse_forward`.
        lse: fp32 ``(M,)`` from the forward pass.
        a: fp32 ``(M,)`` weight of the softmax term per token.
        g: fp32 ``(M,)`` weight of the one-hot term per token (``dLoss/dz_t = p_t a - g``).
        softcap: softcap value or None.
        filter_eps: skip the tiles whose softmax term is everywhere below ``filter_eps`` times
            its token's ``max(|a|, |g|)``; None or 0 never skips.
        need: which of (e, c, bias) need a gradient.
        target_logit: fp32 ``(M,)`` (softcapped) target logits from the forward; each target
            column's gradient is formed from it outside the tiles.
        column_sums: fp32 ``(V,)`` from the forward; with a filter, the columns are walked in
            descending order of it (None: in vocabulary order).
        off_target_lse: fp32 ``(M,)`` from the forward (``1 - p_t = exp(off_target_lse -
            lse)``).

    Example:
        >>> # grad_e, grad_c, grad_b = backward(e, c, None, None, t, lse, a, g, None, 2e-4,
        >>> #                                   (True, True, False))
    """
    need_e, need_c, need_b = need
    operands, precision = _operands(e2, c)
    bias = None if bias is None else bias.contiguous()  # the kernels read it with stride 1
    m_rows, v_size, d_size = tgt.numel(), c.shape[0], c.shape[1]
    device = e2.device
    grad_e = torch.zeros(e2.shape, dtype=e2.dtype, device=device) if need_e else None
    grad_b = torch.zeros(v_size, dtype=torch.float32, device=device) if need_b else None
    if m_rows == 0 or not any(need):
        return grad_e, (torch.zeros_like(c) if need_c else None), grad_b
    # an fp32 classifier's gradient is accumulated in place; slices write every other one
    grad_c = (torch.zeros_like(c) if c.dtype == torch.float32 else torch.empty_like(c)) \
        if need_c else None
    if target_logit is None or off_target_lse is None:
        raise ValueError("backward needs the forward's target_logit and off_target_lse")
    filtered = bool(filter_eps) and filter_eps > 0
    a32, g32 = a.float().contiguous(), g.float().contiguous()
    lse32 = lse.float().contiguous()
    # each token's target column, whole, in fp32: (p_t a - g) = (a - g) - a (1 - p_t), with
    # 1 - p_t from the log-sum-exp off the target (exact for a sure token), times the
    # softcap's factor
    z_t = target_logit.float()
    target_term = (a32 - g32) - a32 * (off_target_lse.float() - lse32).exp()
    if softcap is not None:
        target_term = target_term * (1.0 - (z_t / softcap) ** 2)
    thr = (torch.maximum(a32.abs(), g32.abs()) * filter_eps).contiguous() if filtered else a32
    order = None
    if filtered and column_sums is not None:
        order = torch.argsort(column_sums, descending=True)
    # each target's place in the order the kernels walk the columns (int32: V < 2**31)
    place = tgt if order is None else torch.empty_like(order).scatter_(
        0, order, torch.arange(v_size, device=device))[tgt]
    place32 = place.to(torch.int32)
    scratch = torch.zeros(1, dtype=torch.float32, device=device)  # unused pointers
    keep = torch.zeros(triton.cdiv(m_rows, _MIN_BLOCK_B), triton.cdiv(v_size, _MIN_BLOCK_V),
                       dtype=torch.uint8, device=device) if filtered else scratch
    fused_e = need_e and not filtered
    direct_c = need_c and c.dtype == torch.float32
    direct_e = e2.dtype == torch.float32 and rows is None
    # grad_e in fp32 for the fused pass: every token at once
    e_acc = None
    if fused_e:
        e_acc = grad_e if direct_e else torch.zeros(m_rows, d_size, dtype=torch.float32,
                                                    device=device)
    # pointers the kernel does not read (by its flags) still need a tensor
    bias_arg = bias if bias is not None else scratch
    order_arg = order if order is not None else scratch
    flags = dict(GROUP_B=_GROUP_B, HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
                 HAS_ROWS=rows is not None, HAS_ORDER=order is not None,
                 DOT_PRECISION=precision)
    strides = (e2.stride(0), e2.stride(1), c.stride(0), c.stride(1),
               float(softcap) if softcap is not None else 1.0)
    m_bin = _m_bin(m_rows)

    # pass C (or the one fused pass), vocabulary slice by vocabulary slice
    do_c = need_c or need_b or filtered or fused_e
    if do_c:
        step = v_size if direct_c or not need_c else _slice_rows(GRAD_C_SLICE_BYTES, d_size,
                                                                 v_size)
        step = triton.cdiv(step, _ALIGN) * _ALIGN
        c_buf = None
        if need_c and not direct_c:
            c_buf = torch.empty(min(step, v_size), d_size, dtype=torch.float32, device=device)
        b_buf = torch.empty(min(step, v_size), dtype=torch.float32, device=device) \
            if need_b else None
        if need_c:  # target columns of grad_c: tokens sorted by their target's place
            by_place = torch.argsort(place)
            bounds = torch.arange(0, v_size + step, step, device=device).clamp_(max=v_size)
            cuts = torch.searchsorted(place[by_place], bounds).tolist()  # one host read
        for k, v0 in enumerate(range(0, v_size, step)):
            v1 = min(v0 + step, v_size)
            if c_buf is not None:
                c_buf.zero_()
            if b_buf is not None:
                b_buf.zero_()
            gc = grad_c if direct_c else (c_buf if c_buf is not None else scratch)
            args = (e2, c, bias_arg, rows if rows is not None else tgt, lse32, a32, thr,
                    place32, order_arg[v0:v1] if order is not None else scratch, keep,
                    e_acc if e_acc is not None else scratch, gc,
                    b_buf if b_buf is not None else scratch, m_rows, v1 - v0, d_size, 0, v0,
                    keep.shape[1] if filtered else 0, v_size, m_bin, *strides)
            modes = dict(WRITE_KEEP=filtered, READ_KEEP=False, COMPUTE_DE=fused_e,
                         COMPUTE_DC=need_c, DC_BY_COLUMN=direct_c, COMPUTE_DB=need_b)
            _launch(args, flags, modes, m_rows, v1 - v0, operands, tuned=True)
            # the target columns of the tokens whose target lies in this slice
            tok = by_place[cuts[k]:cuts[k + 1]] if need_c else None
            if tok is not None and tok.numel():
                dest = tgt.index_select(0, tok) if direct_c else place.index_select(0, tok) - v0
                _add_rows(e2, tok if rows is None else rows.index_select(0, tok),
                          target_term.index_select(0, tok), grad_c if direct_c else c_buf,
                          dest)
            if c_buf is not None:
                _store_rows(c_buf[: v1 - v0], grad_c if order is not None else grad_c[v0:v1],
                            order[v0:v1] if order is not None else None)
            if b_buf is not None:
                if order is None:
                    grad_b[v0:v1] += b_buf[: v1 - v0]
                else:
                    grad_b.index_add_(0, order[v0:v1], b_buf[: v1 - v0])
        if need_b:
            grad_b.index_add_(0, tgt, target_term)
        del c_buf, b_buf  # before pass E allocates its own buffer
    if filtered:
        opts = _chosen("backward", operands)
        n_tb = triton.cdiv(m_rows, opts["BLOCK_B"])
        n_vt = triton.cdiv(v_size, opts["BLOCK_V"])
        # the kernels index the map by the tiles they ran with (row stride: the smallest's)
        tile_keep = keep[:n_tb, :n_vt]
        span_b = torch.full((n_tb,), opts["BLOCK_B"], device=device)
        span_b[-1] = m_rows - (n_tb - 1) * opts["BLOCK_B"]
        span_v = torch.full((n_vt,), opts["BLOCK_V"], device=device)
        span_v[-1] = v_size - (n_vt - 1) * opts["BLOCK_V"]
        TILE_STATS.add(n_tb * n_vt, tile_keep.sum())
        FILTER_STATS.add(m_rows * v_size, (tile_keep * span_b[:, None] * span_v).sum())

    # pass E: grad_e from the kept tiles, token slice by token slice
    if need_e and filtered:
        step = m_rows if direct_e else _slice_rows(GRAD_E_SLICE_BYTES, d_size, m_rows)
        e_buf = None if direct_e else torch.empty(min(step, m_rows), d_size,
                                                  dtype=torch.float32, device=device)
        for t0 in range(0, m_rows, step):
            t1 = min(t0 + step, m_rows)
            buf = grad_e[t0:t1] if direct_e else e_buf[: t1 - t0].zero_()
            args = (e2, c, bias_arg, rows[t0:t1] if rows is not None else tgt, lse32[t0:t1],
                    a32[t0:t1], thr[t0:t1], place32[t0:t1], order_arg, keep, buf, scratch,
                    scratch, t1 - t0, v_size, d_size, t0, 0, keep.shape[1], v_size, m_bin,
                    *strides)
            modes = dict(WRITE_KEEP=False, READ_KEEP=True, COMPUTE_DE=True, COMPUTE_DC=False,
                         DC_BY_COLUMN=False, COMPUTE_DB=False)
            _launch(args, flags, modes, t1 - t0, v_size, operands, tuned=False)
            _add_rows(c, tgt[t0:t1], target_term[t0:t1], buf)
            if not direct_e:
                _store_rows(buf, grad_e[t0:t1] if rows is None else grad_e,
                            None if rows is None else rows[t0:t1])
    elif fused_e:
        _add_rows(c, tgt, target_term, e_acc)
        if not direct_e:
            _store_rows(e_acc, grad_e, rows)
    return grad_e, grad_c, grad_b


def _store_rows(src: Tensor, dst: Tensor, index: Tensor | None) -> None:
    """``dst[index[r]] = src[r]`` (``dst[r]`` without an index), cast to ``dst``'s dtype in
    the kernel, so no cast copy of the fp32 buffer is made."""
    n_rows, d_size = src.shape
    if n_rows == 0:
        return
    block_r, block_d = 32, 128
    _store_rows_kernel[(triton.cdiv(n_rows, block_r), triton.cdiv(d_size, block_d))](
        src, dst, index if index is not None else src, n_rows, d_size, dst.stride(0),
        HAS_INDEX=index is not None, BLOCK_R=block_r, BLOCK_D=block_d)


def _launch(args: tuple, flags: dict, modes: dict, n_rows: int, n_cols: int, operands: str,
            tuned: bool) -> None:
    """One launch of the backward kernel over ``n_rows`` tokens x ``n_cols`` columns: tuned
    (pass C and the fused pass) or with the tiles the tuner chose (pass E)."""
    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_B"]) * triton.cdiv(n_cols, meta["BLOCK_V"]),)

    tuner = _TUNERS.get(("backward", operands))
    if tuned and tuner is not None:
        tuner[grid](*args, **flags, **modes)
        return
    opts = _chosen("backward", operands)
    _backward_kernel[grid(opts)](*args, **flags, **modes, **opts)
