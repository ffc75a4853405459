"""Pruning: zero the least important weights of the linear layers, unstructured or N:M.

- ``magnitude``: a weight's importance is ``|W_ij|``; unstructured pruning drops the
  smallest ``sparsity`` share of each layer (the layer-wise baseline of the Wanda paper).
- ``wanda`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"): importance
  is ``|W_ij| * ||X_j||_2``, the weight times the norm of its input feature over calibration
  tokens, compared within each output row. As in the paper the blocks are pruned in order
  and each block's inputs come from the already pruned blocks before it.

N:M (``"2:4"``) keeps the N most important of every M consecutive weights of a row (the
pattern sparse tensor cores run); its sparsity is ``1 - N/M``. The output head and the
embeddings are left dense unless ``include_head``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import torch

from tokenwise.errors import TokenwiseError
from tokenwise.evaluate.compressed import (
    Compressed,
    copy_model,
    layer_index,
    linear_layers,
    storage_bits,
    summarise,
)
from tokenwise.models import LanguageModel
from tokenwise.progress import progress_bar

METHODS = ("magnitude", "wanda")
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``: keep N of every M weights (0 < N < M); None stays None.

    Args:
        pattern: ``"N:M"`` or None (unstructured).

    Example:
        >>> parse_pattern("2:4")
        (2, 4)
    """
    if pattern is None:
        return None
    m = _PATTERN.match(str(pattern))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise TokenwiseError(f"pattern={pattern!r}: allowed 'N:M' with 0 < N < M "
                             "(e.g. '2:4', '4:8'), or none for unstructured pruning")
    return int(m.group(1)), int(m.group(2))


def check_sparsity(sparsity: float | None, pattern: tuple[int, int] | None) -> float:
    """The sparsity to prune to: as given (0 <= s < 1), or ``1 - N/M`` for an N:M pattern
    (a given sparsity must then equal it).

    Example:
        >>> check_sparsity(None, (2, 4)), check_sparsity(0.3, None)
        (0.5, 0.3)
    """
    if pattern is not None:
        implied = 1 - pattern[0] / pattern[1]
        if sparsity is not None and abs(float(sparsity) - implied) > 1e-9:
            raise TokenwiseError(f"sparsity={sparsity!r} does not match pattern "
                                 f"{pattern[0]}:{pattern[1]}, whose sparsity is {implied:g}; "
                                 "leave sparsity out or give that value")
        return implied
    if sparsity is None:
        raise TokenwiseError("give a sparsity (0 <= s < 1) or an N:M pattern")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not 0 <= float(sparsity) < 1:
        raise TokenwiseError(f"sparsity={sparsity!r}: allowed a number with 0 <= s < 1")
    return float(sparsity)


def prune_mask(scores: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None,
               per_row: bool) -> torch.Tensor:
    """Boolean mask of the weights to keep, from importance ``scores`` (out, in).

    Args:
        scores: importance of each weight, ``(out, in)``.
        sparsity: share to drop (unstructured).
        pattern: ``(N, M)``: keep the N highest of every M consecutive scores of a row.
        per_row: compare scores within each row (Wanda) instead of the whole matrix.

    Example:
        >>> prune_mask(torch.tensor([[1., 4., 3., 2.]]), 0.5, (2, 4), True).tolist()
        [[False, True, True, False]]
    """
    rows, cols = scores.shape  # (out, in)
    if pattern is not None:
        n, m = pattern
        if cols % m:
            raise TokenwiseError(f"pattern {n}:{m} needs input widths divisible by {m}; "
                                 f"a layer has {cols}")
        grouped = scores.reshape(rows, cols // m, m)  # (out, in/M, M)
        keep = torch.zeros_like(grouped, dtype=torch.bool)
        keep.scatter_(-1, grouped.topk(n, dim=-1).indices, True)
        return keep.reshape(rows, cols)
    if per_row:
        drop = round(sparsity * cols)
        order = scores.argsort(dim=-1, stable=True)[:, :drop]  # (out, drop)
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep.scatter_(-1, order, False)
        return keep
    drop = round(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[scores.flatten().argsort(stable=True)[:drop]] = False
    return keep.reshape(rows, cols)


class _StopForward(Exception):
    """Raised after the block being calibrated: the rest of the model is not needed."""


def _calibration_ids(model: LanguageModel, texts: Sequence[str], max_tokens: int
                     ) -> list[torch.Tensor]:
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise TokenwiseError("wanda needs calibration texts: a non-empty list of non-empty "
                             "strings (a few paragraphs of text like the model's inputs)")
    limit = min(max_tokens, model.context_length)
    return [torch.tensor([(list(model.start_ids) + model.encode(t))[:limit]]) for t in texts]


@torch.inference_mode()
def _input_norms(model: LanguageModel, group: list[tuple[str, torch.nn.Linear]],
                 calibration: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` of every input feature of each layer in ``group`` over the calibration
    tokens (a forward pass per text, stopped after the group's block)."""
    sums = {name: torch.zeros(mod.in_features, device=mod.weight.device) for name, mod in group}
    hooks = []
    for name, mod in group:
        def hook(_mod, args, _out, name=name):
            x = args[0].detach().float()
            sums[name] += x.reshape(-1, x.shape[-1]).pow(2).sum(0)
        hooks.append(mod.register_forward_hook(hook))
    idx = layer_index(group[0][0])
    if idx is not None:
        block_name = group[0][0][: group[0][0].index(f"layers.{idx}.") + len(f"layers.{idx}")]
        block = model.hf_model.get_submodule(block_name)

        def stop(*_args):
            raise _StopForward
        hooks.append(block.register_forward_hook(stop))
    try:
        for ids in calibration:
            with contextlib.suppress(_StopForward):
                model.hf_model(input_ids=ids.to(model.device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


def prune(model: LanguageModel, *, method: str = "magnitude", sparsity: float | None = None,
          pattern: str | None = None, calibration: Sequence[str] | None = None,
          calibration_tokens: int = 256, include_head: bool = False,
          progress: bool = False) -> Compressed:
    """A pruned copy of ``model`` (the original is not changed).

    Args:
        model: the model to prune.
        method: ``"magnitude"`` or ``"wanda"``.
        sparsity: share of each layer's weights to zero, 0 <= s < 1 (with ``pattern``:
            leave out, or give ``1 - N/M``).
        pattern: ``"N:M"`` semi-structured sparsity (e.g. ``"2:4"``), or None.
        calibration: texts whose activations Wanda weighs the weights by (needed for wanda).
        calibration_tokens: most tokens read of each calibration text.
        include_head: prune the output head too (it may be tied to the embeddings).
        progress: a progress bar over the layers on standard error.

    Returns:
        A :class:`~tokenwise.evaluate.compressed.Compressed` (``.model``, ``.info``,
        ``.save(dir)``).

    Example:
        >>> from tokenwise.models import load
        >>> out = prune(load("tw-small"), method="magnitude", pattern="2:4")
        >>> out.info["sparsity"]
        0.5
    """
    if method not in METHODS:
        raise TokenwiseError(f"method={method!r}: allowed {', '.join(METHODS)}")
    nm = parse_pattern(pattern)
    s = check_sparsity(sparsity, nm)
    if not isinstance(calibration_tokens, int) or calibration_tokens < 2:
        raise TokenwiseError(f"calibration_tokens={calibration_tokens!r}: must be an int >= 2")
    calib = _calibration_ids(model, calibration or (), calibration_tokens) \
        if method == "wanda" else []
    label = f"{pattern}" if nm else f"{s:g}"
    out = copy_model(model, f"{model.name}-{method}-{label}")
    layers = linear_layers(out.hf_model, include_head=include_head)
    if nm is not None:  # fail before any work when a layer cannot take the pattern
        bad = [n for n, m in layers if m.in_features % nm[1]]
        if bad:
            raise TokenwiseError(f"pattern {pattern!r} needs input widths divisible by "
                                 f"{nm[1]}; {bad[0]} has {dict(layers)[bad[0]].in_features}")
    groups: dict[int | None, list[tuple[str, torch.nn.Linear]]] = {}
    for name, mod in layers:
        groups.setdefault(layer_index(name), []).append((name, mod))
    order = sorted(k for k in groups if k is not None) + ([None] if None in groups else [])
    bits = 0
    bar = progress_bar(total=len(layers), desc=f"prune {method} {label}", unit="layer",
                       enabled=progress)
    for key in order:
        group = groups[key]
        norms = _input_norms(out, group, calib) if method == "wanda" else {}
        for name, mod in group:
            w = mod.weight.data  # (out, in)
            score = w.abs().float()
            if method == "wanda":
                score = score * norms[name][None, :]
            keep = prune_mask(score, s, nm, per_row=method == "wanda")
            w.mul_(keep.to(w.dtype))
            bits += storage_bits(w.numel(), kept=int(keep.sum()), pattern=nm)
            bar.update(1)
    bar.close()
    settings = {"method": f"prune-{method}", "sparsity": round(s, 6),
                "pattern": f"{nm[0]}:{nm[1]}" if nm else "unstructured",
                "include_head": include_head, "base_model": model.name}
    if method == "wanda":
        settings |= {"calibration_texts": len(calib),
                     "calibration_tokens": int(sum(c.shape[1] for c in calib))}
    return Compressed(out, summarise(out, layers, bits, settings))
