"""EMO: Earth Mover Distance Optimization for language models (Ren et al., 2023; ref DRSY/EMO).

Cross-entropy only rewards probability on the one target token; a wrong guess that means
almost the same thing costs as much as nonsense. EMO adds the expected transport cost of
moving the model's distribution ``q`` onto the target token, where the cost of a token
``i`` is ``1 - cos(ê_i, ê_y)`` under the output embedding ``ê`` frozen at the start of
training:

    emo = Σ_i q_i (1 - cos(ê_i, ê_y)) = 1 - (q @ Ê) · ê_y

The right-hand form costs one ``(N, V) @ (V, D)`` product and never builds the ``(V, V)``
cost matrix. The published recipe mixes EMO with MLE per token, scaling EMO to the size of
the MLE term without letting the scale carry gradient:

    loss = 0.5 · (mle + (mle / emo).detach() · emo)

Everything is computed in float32 (float64 stays float64), whatever the logits' dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenwise.errors import TokenwiseError

__all__ = ["emo_distance", "emo_loss", "frozen_embedding"]

_REDUCTIONS = ("mean", "sum", "none")
#: keeps the MLE/EMO ratio finite when the model already puts all its mass on the target
#: (the reference adds the same 1e-10).
_RATIO_EPS = 1e-10


def frozen_embedding(model: torch.nn.Module) -> Tensor:
    """A detached float32 copy of ``model``'s output embedding, the EMO cost's ``Ê``.

    Take it once, before training starts: EMO measures distances in the embedding space
    the model had then, not in one that drifts with every step.

    Args:
        model: a Hugging Face causal LM (anything with ``get_output_embeddings()``).

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> e = frozen_embedding(lm.hf_model)
        >>> e.shape, e.requires_grad
        (torch.Size([1024, 128]), False)
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), Tensor):
        raise TokenwiseError(
            f"{type(model).__name__} has no output embedding (get_output_embeddings() returned "
            f"{type(head).__name__}); pass the (vocab, hidden) matrix to emo_loss yourself"
        )
    return head.weight.detach().float().clone()


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check(logits: Tensor, targets: Tensor, embedding: Tensor, ignore_index: int,
           reduction: str) -> None:
    for name, value in (("logits", logits), ("targets", targets), ("embedding", embedding)):
        if not isinstance(value, Tensor):
            raise TokenwiseError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not logits.is_floating_point():
        raise TokenwiseError(f"logits must be a float tensor, got {logits.dtype}")
    if not embedding.is_floating_point():
        raise TokenwiseError(f"embedding must be a float tensor, got {embedding.dtype}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TokenwiseError(f"targets must be an integer tensor of token ids, got {targets.dtype}")
    if logits.dim() < 1 or logits.shape[:-1] != targets.shape:
        raise TokenwiseError(
            f"logits (..., V) and targets (...) disagree: logits {tuple(logits.shape)}, "
            f"targets {tuple(targets.shape)}"
        )
    vocab = logits.shape[-1]
    if embedding.dim() != 2 or embedding.shape[0] != vocab:
        raise TokenwiseError(
            f"embedding must be (V, D) with V = {vocab} (the logits' width); got "
            f"{tuple(embedding.shape)}"
        )
    if reduction not in _REDUCTIONS:
        raise TokenwiseError(f"reduction={reduction!r}: allowed {', '.join(_REDUCTIONS)}")
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        first = int(targets[bad].flatten()[0])
        raise TokenwiseError(
            f"target {first} is out of range: allowed 0..{vocab - 1} or ignore_index "
            f"({ignore_index})"
        )


def emo_distance(logits: Tensor, targets: Tensor, embedding: Tensor,
                 ignore_index: int = -100) -> Tensor:
    """Per-token EMO distance ``Σ_i q_i (1 - cos(ê_i, ê_y))`` (0 at ignored targets).

    Args:
        logits: ``(..., V)`` float logits.
        targets: ``(...)`` token ids, ``ignore_index`` where no loss is wanted.
        embedding: ``(V, D)`` output embedding; detached here (it is a fixed cost).
        ignore_index: target value that marks a position without loss.

    Returns:
        ``(...)`` distances in ``[0, 2]``, float32 (float64 for float64 logits).

    Example:
        >>> e = torch.eye(3)                     # orthogonal tokens: cost 1 off the target
        >>> emo_distance(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([0]), e)
        tensor([0.6667])
    """
    _check(logits, targets, embedding, ignore_index, "none")
    valid = targets != ignore_index  # (...)
    safe = torch.where(valid, targets, torch.zeros_like(targets))  # (...)
    q = torch.softmax(logits.to(_compute_dtype(logits)), dim=-1)  # (..., V)
    return _distance(q, safe, embedding).masked_fill(~valid, 0.0)


def _distance(q: Tensor, safe_targets: Tensor, embedding: Tensor) -> Tensor:
    unit = F.normalize(embedding.detach().to(q.dtype), dim=-1)  # (V, D)
    expected = q @ unit  # (..., D): E_q[ê], so the (V, V) cost matrix is never built
    return 1.0 - (expected * unit[safe_targets]).sum(-1)  # (...)


def emo_loss(
    logits: Tensor,
    targets: Tensor,
    embedding: Tensor,
    ignore_index: int = -100,
    reduction: Literal["mean", "sum", "none"] = "mean",
    mix_mle: bool = True,
) -> Tensor:
    """EMO loss, by default mixed with MLE as in the reference recipe.

    Per token: ``0.5·(mle + (mle/emo).detach()·emo)`` with ``mix_mle``, else ``emo`` alone
    (see :func:`emo_distance`). The targets are aligned with the logits (no shift here).

    Args:
        logits: ``(..., V)`` float logits (any float dtype; computed in float32).
        targets: ``(...)`` token ids, ``ignore_index`` where no loss is wanted.
        embedding: ``(V, D)`` output embedding frozen at the start of training (see
            :func:`frozen_embedding`); it never receives gradient.
        ignore_index: target value that marks a position without loss.
        reduction: ``"mean"`` over non-ignored tokens (0 when there are none, still
            differentiable), ``"sum"``, or ``"none"`` (per token, 0 at ignored ones).
        mix_mle: mix with cross-entropy as the reference does; False gives pure EMO.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> logits = torch.randn(4, 10, requires_grad=True)
        >>> loss = emo_loss(logits, torch.tensor([1, 2, -100, 9]), torch.randn(10, 8))
        >>> loss.backward(); logits.grad[2].abs().sum().item()   # ignored row: no gradient
        0.0
    """
    _check(logits, targets, embedding, ignore_index, reduction)
    dtype = _compute_dtype(logits)
    valid = targets != ignore_index  # (...)
    safe = torch.where(valid, targets, torch.zeros_like(targets))  # (...)
    logp = torch.log_softmax(logits.to(dtype), dim=-1)  # (..., V)
    emo = _distance(logp.exp(), safe, embedding)  # (...)
    if mix_mle:
        mle = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...)
        scale = (mle / (emo + _RATIO_EPS)).detach()
        per_token = 0.5 * (mle + scale * emo)
    else:
        per_token = emo
    per_token = per_token.masked_fill(~valid, 0.0)
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)
