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
    from tokenwise.generation.hf import custom_generate_path
    from tokenwise.models import LanguageModel, load
    from tokenwise.sampling.hf import hf_generation_config
    from tokenwise.scoring import score
    from tokenwise.trace import TokenTrace

_LAZY = {
    "score": ("tokenwise.scoring", "score"),
    "generate": ("tokenwise.generation", "generate"),
    "Generation": ("tokenwise.generation", "Generation"),
    "TokenTrace": ("tokenwise.trace", "TokenTrace"),
    "load": ("tokenwise.models", "load"),
    "LanguageModel": ("tokenwise.models", "LanguageModel"),
    # transformers: a config under which a tokenwise processor alone samples, and the
    # directory to pass as model.generate(custom_generate=...)
    "hf_generation_config": ("tokenwise.sampling.hf", "hf_generation_config"),
    "custom_generate_path": ("tokenwise.generation.hf", "custom_generate_path"),
}

#: Subpackages reachable as attributes (``tw.models``, ``tw.sampling``, ...), imported on first
#: use as ``torch.nn`` or ``numpy.linalg`` are.
#: Names of parts not written yet are listed too; they raise AttributeError until they exist.
_SUBMODULES = ("analysis", "compression", "context", "errors", "evaluate", "generation",
               "heatmap", "kv", "models", "routing", "sampling", "scoring", "serving",
               "signals", "testbed", "tokenizers", "trace", "training", "uncertainty")

__all__ = ["Generation", "LanguageModel", "TokenTrace", "__version__", "custom_generate_path",
           "generate", "hf_generation_config", "load", "score"]


def __getattr__(name: str) -> Any:
    # Importing transformers takes seconds; `import tokenwise` stays instant until needed.
    import importlib
    import importlib.util

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES and importlib.util.find_spec(f"tokenwise.{name}") is not None:
        # import_module also binds the attribute on this package, so this runs once per name
        return importlib.import_module(f"tokenwise.{name}")
    raise AttributeError(f"module 'tokenwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    import importlib.util

    present = [n for n in _SUBMODULES if importlib.util.find_spec(f"tokenwise.{n}") is not None]
    return sorted({*globals(), *__all__, *present})
