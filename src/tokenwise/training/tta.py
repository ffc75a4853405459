"""Test-time adaptation by entropy minimisation, with the "wisdom of crowds" filter.

TENT (Wang et al., ICLR 2021) adapts a trained classifier to shifted test data without
labels: on each test batch it takes a gradient step that lowers the mean entropy of its own
predictions, updating only the affine parameters of the normalisation layers. Entropy
minimisation also rewards confident mistakes, and over a long stream it can drift into them.

Lee et al. (ICCV 2023, "Towards open-set test-time adaptation utilizing the wisdom of crowds
in entropy minimization") keep a frozen copy of the original model and filter each batch:
with ``c = argmax p0(x)`` the original model's class, a sample is used only while the
adapted model is at least as sure of ``c`` as the original, ``p_theta(c|x) >= p0(c|x)``.
The many samples whose confidence rises (the crowd) carry the adaptation; a sample whose
confidence drops is likely going wrong and is left out of the loss.

:class:`EntropyMinimization` does both: ``crowd_filter=True`` (default) is the filtered
method, ``crowd_filter=False`` is plain TENT (:func:`tent`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from tokenwise import signals
from tokenwise.errors import TokenwiseError

__all__ = ["EntropyMinimization", "is_norm_layer", "norm_parameters", "tent"]


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (LayerNorm, BatchNorm, GroupNorm, RMSNorm).

    Model libraries define their own RMSNorm classes (``LlamaRMSNorm``, ``T5LayerNorm``), so
    class names ending in ``Norm``/``RMSNorm``/``LayerNorm`` count too.

    Example:
        >>> is_norm_layer(nn.LayerNorm(4)), is_norm_layer(nn.Linear(4, 4))
        (True, False)
    """
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase,
                           nn.RMSNorm)):
        return True
    name = type(module).__name__
    return name.endswith(("RMSNorm", "LayerNorm", "BatchNorm", "GroupNorm"))


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The affine parameters (weights and biases) of every normalisation layer in ``model``.

    Args:
        model: any torch module.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> [name for name, _ in norm_parameters(net)]
        ['1.weight', '1.bias']
    """
    out = []
    for mod_name, module in model.named_modules():
        if not is_norm_layer(module):
            continue
        for p_name, param in module.named_parameters(recurse=False):
            out.append((f"{mod_name}.{p_name}" if mod_name else p_name, param))
    return out


def _use_batch_statistics(model: nn.Module) -> None:
    """BatchNorm normalises with the test batch's own statistics, as TENT does."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None


def _logits_of(output: Any) -> Tensor:
    logits = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(output).__name__
        raise TokenwiseError(
            f"the classifier must return float logits of shape (batch, classes) (a tensor, or "
            f"an object with .logits); got {shape}"
        )
    return logits


class EntropyMinimization:
    """Adapt a classifier online to a shifted test stream by minimising prediction entropy.

    Calling it on a batch returns that batch's logits (from the forward pass the update is
    computed with, as TENT reports) and then updates the model in place.

    Args:
        model: any torch classifier, ``model(x) -> (B, C)`` logits (or an object with
            ``.logits``). It is switched to eval mode, except BatchNorm layers, which use
            batch statistics.
        crowd_filter: keep only samples with ``p_theta(c|x) >= p0(c|x)`` (the wisdom of
            crowds); False gives plain TENT.
        params: ``"norm"`` (default: normalisation weights and biases), ``"all"``, or an
            iterable of the model's parameters to update.
        optimizer: ``params -> torch.optim.Optimizer``; default Adam with ``lr``.
        lr: learning rate of the default optimizer.
        steps: gradient steps per batch.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
        >>> adapt = EntropyMinimization(net, lr=1e-2)
        >>> logits = adapt(torch.randn(16, 2))
        >>> logits.shape, adapt.kept_fraction          # the first batch: every sample kept
        (torch.Size([16, 3]), 1.0)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        crowd_filter: bool = True,
        params: str | Iterable[nn.Parameter] = "norm",
        optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        lr: float = 1e-3,
        steps: int = 1,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TokenwiseError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(steps, int) or steps < 1:
            raise TokenwiseError(f"steps={steps!r}: allowed an integer >= 1")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise TokenwiseError(f"lr={lr!r}: allowed a number > 0")
        self.model = model
        self.crowd_filter = bool(crowd_filter)
        self.steps = steps
        chosen = self._choose(params)
        model.eval()
        model.requires_grad_(False)
        for p in chosen:
            p.requires_grad_(True)
        _use_batch_statistics(model)
        # The reference point: the model as given, normalised the same way, never updated.
        self.original = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = (optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr)))(chosen)
        self._initial = (copy.deepcopy(model.state_dict()),
                         copy.deepcopy(self.optimizer.state_dict()))
        self.kept_fraction: float | None = None
        self.kept_total = 0
        self.seen_total = 0

    def _choose(self, params: str | Iterable[nn.Parameter]) -> list[nn.Parameter]:
        if params == "norm":
            chosen = [p for _, p in norm_parameters(self.model)]
            if not chosen:
                raise TokenwiseError(
                    f"{type(self.model).__name__} has no normalisation layer with affine "
                    "parameters; pass params='all' or a list of parameters"
                )
            return chosen
        if params == "all":
            return list(self.model.parameters())
        if isinstance(params, str):
            raise TokenwiseError(f"params={params!r}: allowed 'norm', 'all' or parameters")
        chosen = list(params)
        owned = {id(p) for p in self.model.parameters()}
        if not chosen or any(id(p) not in owned for p in chosen):
            raise TokenwiseError("params must be a non-empty iterable of the model's parameters")
        return chosen

    def keep_mask(self, logits: Tensor, original_logits: Tensor) -> Tensor:
        """The crowd filter: True where ``p_theta(c|x) >= p0(c|x)``, ``c = argmax p0``.

        Args:
            logits: ``(B, C)`` logits of the adapted model.
            original_logits: ``(B, C)`` logits of the frozen original.

        Example:
            >>> adapt = EntropyMinimization(nn.Sequential(nn.LayerNorm(2)))
            >>> adapt.keep_mask(torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
            ...                 torch.tensor([[1.0, 0.0], [0.0, 2.0]])).tolist()
            [True, False]
        """
        p0 = torch.softmax(original_logits.float(), -1)  # (B, C)
        c = p0.argmax(-1, keepdim=True)  # (B, 1)
        p = torch.softmax(logits.float(), -1).gather(-1, c)  # (B, 1)
        return (p >= p0.gather(-1, c)).squeeze(-1)  # (B,)

    def __call__(self, x: Any) -> Tensor:
        """Predict ``x`` and adapt on it; returns the ``(B, C)`` logits before the update."""
        logits = None
        for _ in range(self.steps):
            logits = _logits_of(self.model(x))  # (B, C)
            ent = signals.entropy(logits.float())  # (B,)
            if self.crowd_filter:
                with torch.no_grad():
                    reference = _logits_of(self.original(x))
                keep = self.keep_mask(logits.detach(), reference)
            else:
                keep = torch.ones_like(ent, dtype=torch.bool)
            self.kept_fraction = float(keep.float().mean())
            self.kept_total += int(keep.sum())
            self.seen_total += int(keep.numel())
            if keep.any():  # nobody trustworthy in this batch: no update at all
                ent[keep].mean().backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        assert logits is not None
        return logits.detach()

    def reset(self) -> None:
        """Back to the original parameters and a fresh optimizer state."""
        self.model.load_state_dict(self._initial[0])
        self.optimizer.load_state_dict(self._initial[1])
        self.kept_fraction, self.kept_total, self.seen_total = None, 0, 0


def tent(model: nn.Module, **kwargs: Any) -> EntropyMinimization:
    """Plain TENT: :class:`EntropyMinimization` with the crowd filter off.

    Args:
        model: the classifier.
        **kwargs: as for :class:`EntropyMinimization` (except ``crowd_filter``).

    Example:
        >>> tent(nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))).crowd_filter
        False
    """
    if "crowd_filter" in kwargs:
        raise TokenwiseError("tent() is the unfiltered method; use EntropyMinimization "
                             "for crowd_filter")
    return EntropyMinimization(model, crowd_filter=False, **kwargs)
