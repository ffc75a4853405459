"""Context extension: a longer window for a RoPE model, and attention entropy to judge it.

``extend(model, target_length, method=...)`` applies Entropy-ABF, position interpolation,
NTK-aware scaling or YaRN through transformers' own RoPE parameters and attention interface;
``restore(model)`` undoes it; the settings live in the config, so ``save_pretrained`` and
``tokenwise.load`` keep them (it registers the scaled attention a saved Entropy-ABF model
names).

Example:
    >>> from tokenwise.models import load as load_model
    >>> lm = extend(load_model("tw-reader"), 1024, method="entropy_abf")
    >>> lm.context_length, lm.config.rope_parameters["rope_theta"]
    (1024, 500000.0)
"""

from __future__ import annotations

from typing import Any

from tokenwise.context.entropy_abf import ATTENTION_NAME, query_scale, register
from tokenwise.context.extend import (
    CONFIG_KEY,
    METHODS,
    estimate_memory,
    extend,
    require_memory,
    restore,
    trained_length,
)
from tokenwise.context.probe import attention_entropies, entropy_by_position

__all__ = ["ATTENTION_NAME", "CONFIG_KEY", "METHODS", "attention_entropies",
           "entropy_by_position", "estimate_memory", "extend", "load", "query_scale",
           "register", "require_memory", "restore", "trained_length"]


def load(path_or_name: str, **kwargs: Any) -> Any:
    """``tokenwise.load`` for a model saved after :func:`extend` (kept for readability:
    ``tokenwise.load`` itself registers the scaled attention a saved model names).

    Args:
        path_or_name: anything :func:`tokenwise.models.load` takes.
        **kwargs: passed on to it.

    Example:
        >>> load("tw-reader").context_length
        256
    """
    from tokenwise.models import load as load_model

    return load_model(path_or_name, **kwargs)
