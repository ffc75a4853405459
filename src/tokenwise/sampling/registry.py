"""Samplers by name: one line per sampler in :data:`SAMPLERS`."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler

#: name -> "module:Class" (imported on first use).
SAMPLERS: dict[str, str] = {
    "temperature": "tokenwise.sampling.temperature:Temperature",
    "top_k": "tokenwise.sampling.top_k:TopK",
    "top_p": "tokenwise.sampling.top_p:TopP",
    "min_p": "tokenwise.sampling.min_p:MinP",
    "typical": "tokenwise.sampling.typical:Typical",
    "epsilon": "tokenwise.sampling.epsilon:Epsilon",
    "eta": "tokenwise.sampling.eta:Eta",
    "top_h": "tokenwise.sampling.top_h:TopH",
    "mirostat_v2": "tokenwise.sampling.mirostat:MirostatV2",
    "entropy_regime": "tokenwise.sampling.regime:EntropyRegime",
    "logit_bias": "tokenwise.sampling.logit_bias:LogitBias",
    "penalties": "tokenwise.sampling.penalties:Penalties",
    "semantic_control": "tokenwise.sampling.semantic_control:SemanticControl",
}


def sampler_class(name: str) -> type[Sampler]:
    """The class registered as ``name`` (raises, listing the names, if there is none).

    Example:
        >>> sampler_class("top_k").__name__
        'TopK'
    """
    if name not in SAMPLERS:
        raise TokenwiseError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    module, attr = SAMPLERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str, **params: Any) -> Sampler:
    """Build a sampler by name: ``get("top_p", top_p=0.9)``.

    Args:
        name: a key of :data:`SAMPLERS`.
        params: the sampler's arguments; unknown ones are an error, never ignored.

    Example:
        >>> get("min_p", min_p=0.1)
        MinP(min_p=0.1, min_tokens_to_keep=1)
    """
    cls = sampler_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TokenwiseError(
            f"sampler {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(accepted)}"
        )
    required = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.default is inspect.Parameter.empty]
    missing = [r for r in required if r not in params]
    if missing:
        raise TokenwiseError(f"sampler {name!r} needs {', '.join(missing)} "
                             f"(e.g. get({name!r}, {missing[0]}=...))")
    return cls(**params)


def describe() -> list[dict[str, Any]]:
    """Every registered sampler with its parameters and defaults (for listings)."""
    rows = []
    for name in sorted(SAMPLERS):
        cls = sampler_class(name)
        sig = inspect.signature(cls.__init__)
        rows.append({
            "name": name,
            "class": cls.__name__,
            "params": {p.name: (None if p.default is inspect.Parameter.empty else p.default)
                       for p in sig.parameters.values() if p.name != "self"},
            "summary": (cls.__doc__ or "").strip().split("\n")[0],
        })
    return rows
