"""Samplers: pure maps from logits ``(B, V)`` to logits ``(B, V)`` with ``-inf`` for dropped
tokens, a :class:`Chain` to order them, and :func:`get` to build one by name.

Example:
    >>> import torch
    >>> from tokenwise import sampling
    >>> sampling.get("top_k", top_k=1)(torch.tensor([[0.0, 1.0]])).tolist()
    [[-inf, 1.0]]
"""

from tokenwise.sampling.base import Sampler
from tokenwise.sampling.chain import Chain
from tokenwise.sampling.epsilon import Epsilon
from tokenwise.sampling.eta import Eta
from tokenwise.sampling.grammar import JsonGrammar as JsonGrammar  # needs llguidance on use
from tokenwise.sampling.logit_bias import LogitBias
from tokenwise.sampling.min_p import MinP
from tokenwise.sampling.mirostat import MirostatV2
from tokenwise.sampling.penalties import Penalties
from tokenwise.sampling.regime import EntropyRegime
from tokenwise.sampling.registry import SAMPLERS, describe, get, sampler_class
from tokenwise.sampling.semantic_control import SemanticControl
from tokenwise.sampling.temperature import Temperature
from tokenwise.sampling.top_h import TopH
from tokenwise.sampling.top_k import TopK
from tokenwise.sampling.top_p import TopP
from tokenwise.sampling.typical import Typical

__all__ = [
    "SAMPLERS",
    "Chain",
    "EntropyRegime",
    "Epsilon",
    "Eta",
    "LogitBias",
    "MinP",
    "MirostatV2",
    "Penalties",
    "Sampler",
    "SemanticControl",
    "Temperature",
    "TopH",
    "TopK",
    "TopP",
    "Typical",
    "describe",
    "get",
    "sampler_class",
]
