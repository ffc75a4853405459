"""ssToken: train only on the response tokens worth learning (ref: jianke0604/ssToken).

Each response token gets two scores, and only the best ``ceil(rho · n)`` of a sequence's
``n`` response tokens keep their label:

* **retrospective excess loss**, ``REL = loss_history - loss_current``: how much better the
  model being trained predicts the token than a history model (the model before
  fine-tuning, or an earlier checkpoint) does, min-max normalised within the sequence;
* **attention to the prompt**: the attention mass the token, as a query in the last layer
  (heads averaged), puts on prompt positions; already in ``[0, 1]``, so not normalised.

``score = gamma · REL_norm + (1 - gamma) · attention_mass``. Defaults ``rho = 0.6``,
``gamma = 0.5``. The token at position ``i`` is the label predicted from position ``i - 1``;
its losses are aligned with ``i`` and its attention row is row ``i``, as in the reference.

Two traps of the reference that this module avoids: it counts every ``-100`` label as
prompt (padding and ignored response tokens included; here the prompt is the real,
unlabelled positions, or an explicit mask), and it takes ``ceil(rho · n)`` in floating point
(``ceil(0.7 · 10) = 8``; here it is 7).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.models.attention import explicit_softmax

__all__ = ["select_tokens", "sstoken_mask", "token_losses"]


def token_losses(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Per-token cross-entropy aligned with the label positions.

    ``out[b, i] = -log p(labels[b, i] | logits[b, i - 1])``; 0 at position 0 (nothing
    predicts it) and wherever the label is ``ignore_index``.

    Args:
        logits: ``(B, T, V)`` float logits of a causal LM.
        labels: ``(B, T)`` token ids, ``ignore_index`` where there is no target.
        ignore_index: label value without a target.

    Example:
        >>> logits = torch.zeros(1, 3, 4)          # uniform over 4 tokens
        >>> token_losses(logits, torch.tensor([[2, 1, -100]]))
        tensor([[0.0000, 1.3863, 0.0000]])
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise TokenwiseError(
            f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    target = labels[:, 1:]  # (B, T-1)
    valid = target != ignore_index
    vocab = logits.shape[-1]
    bad = valid & ((target < 0) | (target >= vocab))
    if bool(bad.any()):
        raise TokenwiseError(
            f"label {int(target[bad][0])} is out of range: allowed 0..{vocab - 1} or "
            f"ignore_index ({ignore_index})"
        )
    pred = logits[:, :-1].float()  # (B, T-1, V)
    loss = F.cross_entropy(pred.transpose(1, 2), torch.where(valid, target, 0),
                           reduction="none")  # (B, T-1)
    loss = loss.masked_fill(~valid, 0.0)
    return F.pad(loss, (1, 0))  # (B, T): position 0 has no prediction


def _check_fraction(name: str, value: float, low_open: bool) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0)
    if not ok:
        allowed = "0 < x <= 1" if low_open else "0 <= x <= 1"
        raise TokenwiseError(f"{name}={value!r}: allowed {allowed}")


def sstoken_mask(
    labels: Tensor,
    current_loss: Tensor,
    history_loss: Tensor,
    attention: Tensor,
    *,
    rho: float = 0.6,
    gamma: float = 0.5,
    attention_mask: Tensor | None = None,
    prompt_mask: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Which response tokens ssToken keeps: a ``(B, T)`` bool mask (False off the response).

    Args:
        labels: ``(B, T)`` labels; response tokens are real positions ``i >= 1`` whose label
            is not ``ignore_index``.
        current_loss: ``(B, T)`` per-token loss of the model being trained
            (see :func:`token_losses`).
        history_loss: ``(B, T)`` per-token loss of the history model, same alignment.
        attention: last-layer attention, ``(B, T, T)`` or ``(B, H, T, T)`` (heads averaged
            here); row ``i`` is token ``i`` as the query.
        rho: share of each sequence's response tokens to keep (``ceil(rho · n)``).
        gamma: weight of the loss term; ``1 - gamma`` weighs the attention term.
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for padding (default all real).
        prompt_mask: ``(B, T)`` True at prompt positions (default: real positions whose
            label is ``ignore_index``).
        ignore_index: label value without a target.

    Example:
        >>> labels = torch.tensor([[-100, -100, 5, 6, 7]])
        >>> cur = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
        >>> hist = torch.tensor([[0.0, 0.0, 3.0, 1.0, 2.0]])      # REL: 2, 0, 1
        >>> attn = torch.full((1, 5, 5), 0.2)
        >>> sstoken_mask(labels, cur, hist, attn, rho=0.5).int()
        tensor([[0, 0, 1, 0, 1]], dtype=torch.int32)
    """
    _check_fraction("rho", rho, low_open=True)
    _check_fraction("gamma", gamma, low_open=False)
    if labels.dim() != 2:
        raise TokenwiseError(f"labels must be (B, T); got shape {tuple(labels.shape)}")
    batch, length = labels.shape
    for name, value in (("current_loss", current_loss), ("history_loss", history_loss),
                        ("attention_mask", attention_mask), ("prompt_mask", prompt_mask)):
        if value is not None and value.shape != labels.shape:
            raise TokenwiseError(
                f"{name} must match labels {tuple(labels.shape)}; got {tuple(value.shape)}"
            )
    if attention.dim() == 4:
        attention = attention.float().mean(1)  # (B, T, T): heads averaged
    if attention.shape != (batch, length, length):
        raise TokenwiseError(
            f"attention must be (B, T, T) or (B, H, T, T) with B={batch}, T={length}; got "
            f"{tuple(attention.shape)}"
        )
    real = (torch.ones_like(labels, dtype=torch.bool) if attention_mask is None
            else attention_mask.bool())
    labelled = labels != ignore_index
    response = real & labelled
    response[:, 0] = False  # position 0 is never predicted
    prompt = (real & ~labelled) if prompt_mask is None else (prompt_mask.bool() & real)

    rel = (history_loss.float() - current_loss.float()).masked_fill(~response, 0.0)  # (B, T)
    lo = rel.masked_fill(~response, math.inf).amin(-1, keepdim=True)  # (B, 1)
    hi = rel.masked_fill(~response, -math.inf).amax(-1, keepdim=True)
    span = hi - lo
    # a sequence whose REL is flat (or has one token) ranks by attention alone
    rel_norm = torch.where(span > 0, (rel - lo) / span.clamp(min=1e-30), torch.zeros_like(rel))
    to_prompt = (attention.float() * prompt[:, None, :]).sum(-1)  # (B, T)
    score = gamma * rel_norm + (1.0 - gamma) * to_prompt
    score = score.masked_fill(~response, -math.inf)

    n = response.sum(-1)  # (B,)
    # ceil(rho * n) without float noise: ceil(0.7 * 10) must be 7, not 8
    keep_count = torch.ceil(rho * n.double() - 1e-9).long().clamp(min=0)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices  # (B, T)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(length, device=labels.device).expand(batch, length))
    return response & (rank < keep_count[:, None])


def _unwrap(model: Any) -> torch.nn.Module:
    return getattr(model, "hf_model", model)


@torch.no_grad()
def select_tokens(
    model: Any,
    history_model: Any,
    input_ids: Tensor,
    labels: Tensor,
    attention_mask: Tensor | None = None,
    *,
    rho: float = 0.6,
    gamma: float = 0.5,
    prompt_mask: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """Labels for one ssToken training step: unselected response tokens become ``ignore_index``.

    Runs the model being trained (with its last layer's attention) and the history model
    once each, without gradients; then train on the returned labels with any loss.

    Args:
        model: the model being trained (a Hugging Face causal LM or a ``LanguageModel``).
        history_model: the history model; same tokenizer and vocabulary.
        input_ids: ``(B, T)`` token ids.
        labels: ``(B, T)`` labels aligned with ``input_ids`` (HF convention; the model
            shifts them), ``ignore_index`` on the prompt and padding.
        attention_mask: ``(B, T)`` 1 for real tokens, 0 for padding.
        rho: share of each sequence's response tokens to keep.
        gamma: weight of the loss term against the attention term.
        prompt_mask: ``(B, T)`` True at prompt positions (default: real unlabelled ones).
        ignore_index: label value without a target.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> prompt = lm.encode("Q: Where was Trather Shai born?\\nA:", add_bos=True)
        >>> answer = lm.encode(" the city of Duzal")
        >>> ids = torch.tensor([prompt + answer])
        >>> labels = torch.tensor([[-100] * len(prompt) + answer])
        >>> new = select_tokens(lm, lm, ids, labels)
        >>> int((new != -100).sum()) == math.ceil(0.6 * len(answer))
        True
    """
    net, hist = _unwrap(model), _unwrap(history_model)
    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        raise TokenwiseError(
            f"input_ids and labels must both be (B, T); got {tuple(input_ids.shape)} and "
            f"{tuple(labels.shape)}"
        )
    device = next(net.parameters()).device
    ids, lab = input_ids.to(device), labels.to(device)
    mask = None if attention_mask is None else attention_mask.to(device)
    with explicit_softmax(net):
        out = net(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
    attentions = getattr(out, "attentions", None)
    if not attentions or attentions[-1] is None:
        raise TokenwiseError(
            f"{type(net).__name__} returned no attention weights; ssToken needs "
            "output_attentions=True under eager attention"
        )
    hist_device = next(hist.parameters()).device
    hist_logits = hist(input_ids=ids.to(hist_device),
                       attention_mask=None if mask is None else mask.to(hist_device),
                       use_cache=False).logits
    if hist_logits.shape[-1] != out.logits.shape[-1]:
        raise TokenwiseError(
            f"history model has {hist_logits.shape[-1]} logits per token, the model "
            f"{out.logits.shape[-1]}; both must share one tokenizer and vocabulary"
        )
    current = token_losses(out.logits, lab, ignore_index)  # (B, T)
    history = token_losses(hist_logits.to(device), lab, ignore_index)  # (B, T)
    keep = sstoken_mask(lab, current, history, attentions[-1], rho=rho, gamma=gamma,
                        attention_mask=mask,
                        prompt_mask=None if prompt_mask is None else prompt_mask.to(device),
                        ignore_index=ignore_index)
    response = (lab != ignore_index)
    response[:, 0] = False
    dropped = response & ~keep
    return lab.masked_fill(dropped, ignore_index).to(labels.device)
