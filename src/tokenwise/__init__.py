"""tokenwise: read the per-token distribution of a language model and act on it.

Example:
    >>> import tokenwise as tw
    >>> trace = tw.score("tw-small", "7+5=12")
    >>> len(trace.entropies) == len(trace)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tokenwise.generation import Generation, generate
    from tokenwise.models import LanguageModel, load
    from tokenwise.scoring import score
    from tokenwise.trace import TokenTrace

_LAZY = {
    "score": ("tokenwise.scoring", "score"),
    "generate": ("tokenwise.generation", "generate"),
    "Generation": ("tokenwise.generation", "Generation"),
    "TokenTrace": ("tokenwise.trace", "TokenTrace"),
    "load": ("tokenwise.models", "load"),
    "LanguageModel": ("tokenwise.models", "LanguageModel"),
}

__all__ = ["Generation", "LanguageModel", "TokenTrace", "__version__", "generate", "load",
           "score"]


def __getattr__(name: str) -> Any:
    # Importing transformers takes seconds; `import tokenwise` stays instant until needed.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tokenwise' has no attribute {name!r}")
