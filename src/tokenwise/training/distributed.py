"""The fused linear cross-entropy on torch.distributed: data parallel and vocabulary parallel.

**Data parallel (DDP, FSDP2).** :func:`~tokenwise.training.linear_ce.linear_cross_entropy` is an
ordinary ``torch.autograd.Function``, and :func:`tokenwise.training.patch.patch` computes the
loss inside a call of ``lm_head``, so both run unchanged under
``DistributedDataParallel`` and under ``torch.distributed.fsdp.fully_shard`` (the head may be
sharded on its own: its parameters are gathered around the loss as around a plain forward).
Patch the bare model first, then wrap it. One thing is easy to get wrong: DDP and FSDP
*average* gradients over ranks, so a per-rank token mean weights ranks with few targets as
much as ranks with many. :func:`ddp_num_items` gives the ``num_items_in_batch`` that turns the
average into the exact token mean of the whole global batch.

**Vocabulary parallel.** :func:`vocab_parallel_linear_cross_entropy` takes a classifier whose
rows are split over the ranks of a process group (rank ``r`` holds rows
``[vocab_start_r, vocab_start_r + V_r)``), as in Megatron-style tensor parallelism. Each rank
computes the fused loss of its shard with ``return_lse=True`` (nothing ``[N, V]`` is built),
the shard log-sum-exps are combined by a log-sum-exp over ranks, and the target logit comes
from the rank that owns the target. Only ``N`` floats per rank cross the wire, twice.

Collectives and autograd. The loss is *replicated*: every rank ends with the same value and
calls ``backward`` on it with the same upstream gradient. Under that convention the gradient
of an ``all_gather`` is the caller's own slice and the gradient of an ``all_reduce`` is the
identity: no communication in backward except one ``all_reduce`` of ``grad_e``, because each
rank's ``grad_e`` holds only its shard's part (see ``reduce_e_grad``).
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

from tokenwise.errors import TokenwiseError
from tokenwise.training.linear_ce import linear_cross_entropy

__all__ = ["ddp_num_items", "vocab_parallel_linear_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------
# Collectives with autograd, for a replicated loss


class _AllGather(Function):
    """``(n,)`` on each rank -> ``(world, n)`` on every rank; backward keeps the own row."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)  # (world, n)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        # Every rank holds the same loss, so every rank's upstream gradient is the same; the
        # gradient for this rank's input is its own row, with no communication.
        return grad[ctx.rank], None


class _AllReduceSum(Function):
    """Sum over ranks; backward is the identity (replicated loss)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _SumGradOverRanks(Function):
    """Identity forward; backward sums the gradient over ranks (each rank saw one shard)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


# ---------------------------------------------------------------------------------------------
# Vocabulary parallel


def _shard_layout(vocab_start: int, rows: int, device: torch.device, group: Any) -> int:
    """Check that the shards tile ``[0, V)`` without gaps or overlaps; return ``V``."""
    mine = torch.tensor([vocab_start, rows], dtype=torch.long, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    layout = sorted((int(p[0]), int(p[1]), r) for r, p in enumerate(parts))
    expected = 0
    for start, size, rank in layout:
        if start != expected:
            raise TokenwiseError(
                f"classifier shards must tile [0, V) without gaps or overlaps; got (rank, "
                f"vocab_start, rows) = {[(r, s, n) for s, n, r in layout]}: rank {rank} starts "
                f"at {start}, expected {expected}")
        expected = start + size
    return expected


def vocab_parallel_linear_cross_entropy(
    e: Tensor,
    c_shard: Tensor,
    targets: Tensor,
    vocab_start: int,
    group: Any = None,
    *,
    bias_shard: Tensor | None = None,
    ignore_index: int = -100,
    softcap: float | None = None,
    reduction: Literal["mean", "sum", "none"] = "mean",
    shift: bool | int = 0,
    z_loss: float | None = None,
    return_lse: bool = False,
    filter_eps: float | str | None = "auto",
    reduce_e_grad: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Cross-entropy of ``e @ c.T`` when the rows of ``c`` are split over the ranks of ``group``.

    Equals ``linear_cross_entropy(e, c_full, targets, ...)`` with ``c_full`` the concatenation
    of the shards by ``vocab_start``; never builds logits, not even a shard's.

    What the caller must do: call it on every rank of ``group`` with the same ``e``, ``targets``
    and options (``e`` replicated, as after a tensor-parallel layer's gather), and use the
    returned loss the same way on every rank (it is replicated). Then ``c_shard.grad`` and
    ``bias_shard.grad`` are this shard's rows of the full gradient. With ``reduce_e_grad=True``
    (default) ``e.grad`` is the full gradient on every rank (its parts are summed over ranks in
    backward), right when the layers below are replicated. If ``e`` comes out of your own
    "copy to tensor-parallel region" whose backward already sums over ranks, pass
    ``reduce_e_grad=False``: ``e.grad`` is then only this shard's part.

    Args:
        e: embeddings ``(..., D)``, identical on every rank.
        c_shard: this rank's classifier rows ``(V_r, D)``, ``V_r >= 1``.
        targets: global class ids ``(...)`` (or ``(..., T)`` with ``shift``), each in
            ``[0, V)`` or ``ignore_index``; identical on every rank.
        vocab_start: the global id of ``c_shard``'s first row; the shards must tile ``[0, V)``.
        group: the process group the vocabulary is split over (default: the world).
        bias_shard: this rank's slice of the classifier bias, ``(V_r,)``.
        ignore_index: targets that carry no loss.
        softcap: logits become ``softcap * tanh(logits / softcap)``.
        reduction: ``"mean"`` over non-ignored targets (0 if there are none), ``"sum"``,
            ``"none"`` (per position, 0 at ignored ones).
        shift: ``k > 0`` pairs ``e[..., t, :]`` with ``targets[..., t + k]``.
        z_loss: coefficient ``zc``; adds ``zc * lse^2`` per token (``lse`` over the full
            vocabulary).
        return_lse: also return the full-vocabulary log-sum-exp per position (0 at ignored).
        filter_eps: passed to the per-shard fused loss.
        reduce_e_grad: sum ``e``'s gradient over ranks in backward (see above).

    Returns:
        The loss (fp32, fp64 for fp64 inputs), and the log-sum-exp with ``return_lse``.

    Example:
        >>> import os, tempfile, torch, torch.distributed as dist
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> e, c = torch.randn(5, 4), torch.randn(9, 4)
        >>> y = torch.tensor([0, 8, -100, 3, 5])
        >>> loss = vocab_parallel_linear_cross_entropy(e, c, y, vocab_start=0)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(e @ c.T, y))
        True
        >>> dist.destroy_process_group()
    """
    if not dist.is_available() or not dist.is_initialized():
        raise TokenwiseError("vocab_parallel_linear_cross_entropy needs an initialised "
                             "torch.distributed process group (dist.init_process_group)")
    for name, t in (("e", e), ("c_shard", c_shard)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TokenwiseError(f"{name} must be a float tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
    if c_shard.ndim != 2 or c_shard.shape[0] < 1 or c_shard.shape[1] != e.shape[-1]:
        raise TokenwiseError(f"c_shard must have shape (V_r >= 1, D={e.shape[-1]}), got "
                             f"{tuple(c_shard.shape)}")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.is_complex():
        raise TokenwiseError(f"targets must be an integer tensor, got "
                             f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, numbers.Integral) \
            or vocab_start < 0:
        raise TokenwiseError(f"vocab_start must be an integer >= 0, got {vocab_start!r}")
    if reduction not in _REDUCTIONS:
        raise TokenwiseError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if bias_shard is not None and tuple(bias_shard.shape) != (c_shard.shape[0],):
        raise TokenwiseError(f"bias_shard must have shape ({c_shard.shape[0]},), got "
                             f"{tuple(bias_shard.shape)}")
    k = int(shift)
    if k < 0 or (k > 0 and (targets.ndim == 0 or k >= targets.shape[-1])):
        raise TokenwiseError(f"shift must be in [0, T) for targets of shape "
                             f"{tuple(targets.shape)}, got {shift!r}")
    if k:
        e, targets = e[..., :-k, :], targets[..., k:]
    if tuple(targets.shape) != tuple(e.shape[:-1]):
        raise TokenwiseError(f"targets must have shape {tuple(e.shape[:-1])} (e without its "
                             f"last axis, after shift={k}), got {tuple(targets.shape)}")

    vocab = _shard_layout(int(vocab_start), c_shard.shape[0], e.device, group)
    flat_targets = targets.reshape(-1).to(e.device)  # (n,)
    valid = flat_targets != ignore_index  # (n,)
    bad = valid & ((flat_targets < 0) | (flat_targets >= vocab))
    if bool(bad.any()):
        raise TokenwiseError(f"targets must be in [0, {vocab}) or ignore_index={ignore_index}; "
                             f"got {flat_targets[bad][:5].tolist()}")

    flat_e = e.reshape(-1, e.shape[-1])  # (n, D)
    if reduce_e_grad and flat_e.requires_grad:
        flat_e = _SumGradOverRanks.apply(flat_e, group)
    e_valid, t_valid = flat_e[valid], flat_targets[valid]  # (m, D), (m,)
    owned = (t_valid >= vocab_start) & (t_valid < vocab_start + c_shard.shape[0])  # (m,)
    # Rows whose target lives elsewhere get local target 0: only their lse is used below.
    local_t = torch.where(owned, t_valid - vocab_start, torch.zeros_like(t_valid))  # (m,)
    local_loss, local_lse = linear_cross_entropy(
        e_valid, c_shard, local_t, bias=bias_shard, ignore_index=-1, softcap=softcap,
        reduction="none", return_lse=True, filter_eps=filter_eps)  # (m,), (m,)
    # local_loss = local_lse - z_target, so the owning rank recovers its target logit
    target_logit = _AllReduceSum.apply((local_lse - local_loss) * owned, group)  # (m,)
    lse = torch.logsumexp(_AllGather.apply(local_lse, group), dim=0)  # (m,)
    per_token = lse - target_logit  # (m,)
    if z_loss:
        per_token = per_token + z_loss * lse.square()

    if reduction == "none":
        loss = per_token.new_zeros(flat_targets.shape).masked_scatter(valid, per_token)
        loss = loss.reshape(targets.shape)
    else:
        loss = per_token.sum()
        if reduction == "mean":
            loss = loss / valid.sum().clamp(min=1)
    if return_lse:
        full_lse = lse.new_zeros(flat_targets.shape).masked_scatter(valid, lse)
        return loss, full_lse.reshape(targets.shape)
    return loss


# ---------------------------------------------------------------------------------------------
# Data parallel


def ddp_num_items(
    labels: Tensor,
    *,
    ignore_index: int = -100,
    shifted: bool = True,
    group: Any = None,
) -> Tensor:
    """``num_items_in_batch`` that makes DDP/FSDP gradient averaging an exact global token mean.

    DDP averages gradients over the ``W`` ranks. With ``num_items_in_batch = M / W``, where
    ``M`` is the number of counted targets summed over all ranks (and over the micro-batches of
    one optimizer step, if you pass their labels stacked), each rank's loss is
    ``W * sum_r / M`` and the average is ``sum / M``: the mean over every target of the step,
    whatever each rank holds.

    Args:
        labels: this rank's labels ``(..., T)`` as given to the model.
        ignore_index: labels that carry no loss.
        shifted: count as the causal-LM loss does (the first position of each row predicts
            nothing); False counts every label.
        group: the data-parallel process group (default: the world).

    Returns:
        A float 0-d tensor, the same on every rank.

    Example:
        >>> import os, tempfile, torch, torch.distributed as dist
        >>> store = os.path.join(tempfile.mkdtemp(), "store")
        >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        >>> ddp_num_items(torch.tensor([[5, 6, -100, 7]]))
        tensor(2.)
        >>> dist.destroy_process_group()
    """
    if not dist.is_available() or not dist.is_initialized():
        raise TokenwiseError("ddp_num_items needs an initialised torch.distributed process group")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.ndim < 1:
        raise TokenwiseError(f"labels must be an integer tensor (..., T), got "
                             f"{getattr(labels, 'dtype', type(labels).__name__)}")
    counted = labels[..., 1:] if shifted else labels
    count = (counted != ignore_index).sum().to(torch.float64)
    dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
    return (count / dist.get_world_size(group)).float()
