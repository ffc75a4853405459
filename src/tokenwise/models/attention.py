"""Entropy-ABF's attention (see :mod:`tokenwise.context.entropy_abf`): queries scaled by
``lambda = max(1, log_L(pos + 1))`` past the trained length L, then SDPA.

It lives with the models, not in ``tokenwise.context``, because a model saved after
``tokenwise.context.extend(..., method="entropy_abf")`` names this attention in its config:
:func:`tokenwise.models.load` registers it with transformers before loading such a model.
Settings come from ``module.config.tokenwise_context`` (saved with the config).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from tokenwise.errors import TokenwiseError

#: the name the scaled attention is registered under in transformers.
ATTENTION_NAME = "tokenwise_entropy_abf"


def query_scale(positions: torch.Tensor, trained_length: int) -> torch.Tensor:
    """``max(1, log_L(pos + 1))`` per position (float32), L the trained length.

    Args:
        positions: integer positions, any shape.
        trained_length: L, the length the model was trained at.

    Example:
        >>> query_scale(torch.tensor([0, 255, 1023]), 256).tolist()
        [1.0, 1.0, 1.25]
    """
    lam = torch.log(positions.float() + 1.0) / math.log(trained_length)
    return lam.clamp(min=1.0)


def _eager(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, scaling: float | None,
           softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    # An explicit softmax so the weights can be returned (SDPA never returns them).
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: each KV head serves n_rep query heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # (B, H, T, S)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    t, s = scores.shape[-2:]
    if attention_mask is None:  # SDPA's mask is skipped when plain causal: rebuild it
        allowed = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(s - t)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    elif attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :s], torch.finfo(scores.dtype).min)
    else:
        scores = scores + attention_mask[..., :s]
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, H, D)
    return out, weights


def scaled_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function registered as :data:`ATTENTION_NAME` (transformers' signature).

    Queries ``(B, H, T, D)`` are multiplied by :func:`query_scale` of their positions (from
    ``position_ids``) in every layer past ``skip_layers`` that is not windowed; settings come
    from ``module.config.tokenwise_context``. Without Entropy-ABF settings it is plain
    attention.

    Example:
        >>> from tokenwise.models import load
        >>> from tokenwise.context import extend
        >>> lm = extend(load("tw-reader"), 1024, method="entropy_abf")
        >>> lm.config._attn_implementation
        'tokenwise_entropy_abf'
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    settings = getattr(module.config, "tokenwise_context", None) or {}
    layer = getattr(module, "layer_idx", 0) or 0
    # Gemma 3 keeps the window on the module; Mistral passes it to the attention function
    windowed = (getattr(module, "sliding_window", None) is not None
                or kwargs.get("sliding_window") is not None)
    if settings.get("scale_queries") and layer >= settings.get("skip_layers", 0) and not windowed:
        positions = kwargs.get("position_ids")
        if positions is None:  # keys hold the past too: queries are the last T of them
            t, s = query.shape[-2], key.shape[-2]
            positions = torch.arange(s - t, s, device=query.device)[None]
        lam = query_scale(positions, int(settings["original_length"]))  # (B, T)
        query = query * lam[:, None, :, None].to(query.dtype)
    # SDPA takes no logit softcapping (Gemma 2): the explicit softmax applies it
    if settings.get("inner_attention", "sdpa") == "eager" or kwargs.get("softcap") is not None:
        return _eager(module, query, key, value, attention_mask, scaling, kwargs.get("softcap"))
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask,
                                           scaling=scaling, dropout=dropout, **kwargs)


def scales_queries(config: dict[str, Any]) -> bool:
    """Whether a saved ``config.json`` (as a dict) asks for this attention: an Entropy-ABF
    extension records itself under ``tokenwise_context``. transformers drops the config's
    ``attn_implementation`` when it loads a model, so a model loaded and saved again keeps
    only this record; :func:`tokenwise.models.load` reads it.

    Example:
        >>> scales_queries({"tokenwise_context": {"method": "entropy_abf", "scale_queries": True}})
        True
        >>> scales_queries({"attn_implementation": "sdpa"})
        False
    """
    record = config.get("tokenwise_context")
    return isinstance(record, dict) and bool(record.get("scale_queries"))


def register() -> str:
    """Register the scaled attention (and SDPA's mask for it) with transformers; idempotent.

    Example:
        >>> register()
        'tokenwise_entropy_abf'
    """
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, scaled_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


@contextlib.contextmanager
def explicit_softmax(model: Any) -> Iterator[None]:
    """For the block, attention through an explicit softmax, the only kind that returns its
    weights (``output_attentions``): an Entropy-ABF model keeps its query scaling and only
    switches its inner attention; any other model goes to transformers' ``eager``.

    Args:
        model: a transformers model (one already eager, or with no config, is left alone).

    Example:
        >>> from tokenwise.models import load
        >>> hf = load("tw-small").hf_model
        >>> with explicit_softmax(hf):
        ...     hf.config._attn_implementation
        'eager'
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    settings = getattr(config, "tokenwise_context", None)
    if before == ATTENTION_NAME and settings is not None:
        inner = settings.get("inner_attention", "sdpa")
        settings["inner_attention"] = "eager"
        try:
            yield
        finally:
            settings["inner_attention"] = inner
        return
    if before in (None, "eager"):
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise TokenwiseError(
            f"{type(model).__name__} uses {before!r} attention, which returns no attention "
            "weights; load it with attn_implementation='eager'")
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)
