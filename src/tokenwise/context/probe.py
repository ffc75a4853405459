"""Attention entropy of a model over a text: per layer, head and query position.

The weights come from an explicit softmax (transformers' ``eager`` attention, or the scaled
attention's eager path on an Entropy-ABF model) and are reduced to entropies by a hook as each
layer finishes, so only one layer's ``heads x T x T`` weights exist at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models.attention import explicit_softmax
from tokenwise.signals import attention_entropy


def _attention_modules(hf: Any) -> list[torch.nn.Module]:
    mods = [m for m in hf.modules()
            if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]
    return sorted(mods, key=lambda m: m.layer_idx)


@torch.inference_mode()
def attention_entropies(model: Any, ids: Sequence[int] | torch.Tensor,
                        base: float | None = None) -> torch.Tensor:
    """Entropy of every attention row of one sequence: ``(layers, heads, T)`` float32.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` (or a transformers causal LM).
        ids: the token ids of one sequence.
        base: None for nats, 2 for bits.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-reader")
        >>> attention_entropies(lm, lm.encode("Memo:", add_bos=True)).shape[:2]
        torch.Size([2, 8])
    """
    hf = getattr(model, "hf_model", model)
    ids_t = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    if ids_t.shape[1] == 0:
        raise TokenwiseError("ids: allowed a non-empty sequence of token ids")
    device = next(hf.parameters()).device
    mods = _attention_modules(hf)
    if not mods:
        raise TokenwiseError(f"{type(hf).__name__}: no attention modules with a layer_idx found")
    rows: dict[int, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise TokenwiseError(f"layer {module.layer_idx}: its attention returned no weights")
        rows[module.layer_idx] = attention_entropy(weights, base=base)[0].float().cpu()

    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        with explicit_softmax(hf):
            hf(input_ids=ids_t.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([rows[k] for k in sorted(rows)])


def entropy_by_position(model: Any, sequences: Sequence[Sequence[int]],
                        base: float | None = None) -> torch.Tensor:
    """Mean attention entropy over layers, heads and sequences, per position: ``(T,)``.

    Sequences of different lengths are averaged where they exist (position t over the
    sequences longer than t).

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`.
        sequences: token-id sequences.
        base: None for nats, 2 for bits.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-reader")
        >>> entropy_by_position(lm, [lm.encode("Memo: hi", add_bos=True)])[0].item()
        0.0
    """
    if not sequences:
        raise TokenwiseError("sequences: allowed one or more token-id sequences")
    longest = max(len(s) for s in sequences)
    total = torch.zeros(longest)
    count = torch.zeros(longest)
    for seq in sequences:
        h = attention_entropies(model, seq, base=base).mean(dim=(0, 1))  # (T,)
        total[: len(h)] += h
        count[: len(h)] += 1
    return total / count.clamp(min=1)
