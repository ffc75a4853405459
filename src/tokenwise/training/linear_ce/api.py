"""The public function: argument checks, valid tokens and shift, the choice of implementation,
and the per-position outputs scattered back to the targets' shape.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Literal

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.training.linear_ce.autograd import _LinearCrossEntropy
from tokenwise.training.linear_ce.blocks import _Config

IGNORE_INDEX = -100
_REDUCTIONS = ("mean", "sum", "none")
_IMPLS = ("auto", "torch", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
