"""Where a model keeps its RoPE: the config's ``rope_parameters`` and the rotary modules.

Every method of :mod:`tokenwise.context` only edits ``config.rope_parameters`` (the settings
transformers 5 reads, saves in config.json and validates) and then rebuilds the model's rotary
modules through their public constructors, so ``inv_freq`` follows the new settings.
"""

from __future__ import annotations

from typing import Any

import torch

from tokenwise.errors import TokenwiseError

#: layer types whose attention is windowed: they never see a distance beyond their window,
#: so an extension leaves their RoPE alone (Gemma 3: window 512, 5 of 6 layers).
SLIDING_TYPES = ("sliding_attention", "chunked_attention")


def rope_dicts(config: Any, name: str = "model") -> dict[str | None, dict[str, Any]]:
    """The RoPE parameter dicts an extension edits, by layer type (None: one global dict).

    Args:
        config: a transformers config.
        name: the model's name, for the error.

    Raises:
        TokenwiseError: the model has no rotary position embedding (e.g. GPT-2's learned
            positions), so there is nothing to extend.

    Example:
        >>> from types import SimpleNamespace
        >>> cfg = SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1e4})
        >>> list(rope_dicts(cfg))
        [None]
    """
    params = getattr(config, "rope_parameters", None)
    if not params:
        raise TokenwiseError(
            f"model {name!r} ({getattr(config, 'model_type', '?')}) has no rotary position "
            "embedding (config.rope_parameters is empty): context extension by RoPE applies "
            "only to RoPE models (Llama, Gemma, Qwen, Mistral, ...)"
        )
    nested = {k: v for k, v in params.items() if isinstance(v, dict)}
    if not nested:
        return {None: params}
    out = {k: v for k, v in nested.items() if k not in SLIDING_TYPES}
    if not out:
        raise TokenwiseError(f"model {name!r}: every RoPE layer type is windowed "
                             f"({sorted(nested)}); nothing to extend")
    return out


def rotary_dim(config: Any, params: dict[str, Any]) -> int:
    """Rotated dimensions per head (``head_dim`` times ``partial_rotary_factor``).

    Example:
        >>> from types import SimpleNamespace
        >>> rotary_dim(SimpleNamespace(head_dim=64), {"partial_rotary_factor": 0.5})
        32
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim * params.get("partial_rotary_factor", 1.0))


def rebuild_rotary(hf_model: torch.nn.Module) -> int:
    """Re-create every rotary-embedding module from the (edited) config; returns how many.

    The rotary modules compute ``inv_freq`` once, at construction, from
    ``config.rope_parameters``; constructing them again is the public way to apply new
    settings (no private function is patched).

    Args:
        hf_model: a transformers causal LM.

    Example:
        >>> from tokenwise.models import load
        >>> rebuild_rotary(load("tw-small").hf_model)
        1
    """
    count = 0
    for parent in list(hf_model.modules()):
        for child_name, child in list(parent.named_children()):
            if not type(child).__name__.endswith("RotaryEmbedding"):
                continue
            config = getattr(child, "config", None)
            if config is None:
                continue
            buffers = list(child.buffers())
            fresh = type(child)(config)  # constructors differ (Gemma 3 takes a device, Llama not)
            if buffers:
                fresh = fresh.to(buffers[0].device)
            setattr(parent, child_name, fresh)
            count += 1
    return count
