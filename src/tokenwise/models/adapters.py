"""Models from other engines: a registration hook, so the core never imports their code.

A package that runs tokenwise on another engine (:mod:`tokenwise.vllm`) registers an adapter
when it is imported, and names itself as an entry point of the group ``tokenwise.adapters``
under the engine's top-level module name (``vllm``), so that an object of that engine is
adapted without the user importing the package first. An adapter is a function that turns
that engine's model object into one tokenwise can use, or returns ``None`` for anything else.
The parts that accept a model (the perplexity compressor,
:func:`tokenwise.uncertainty.sample_answers`) call :func:`adapt` and then go by what the
result can do (duck typing), e.g. a scorer with ``prompt_logprobs`` and no ``forward``, or a
sampler with ``sample_completions``.

Example:
    >>> adapt("tw-small")  # no adapter knows a name: it comes back unchanged
    'tw-small'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["adapt", "register_adapter"]

_ADAPTERS: list[Callable[[Any], Any]] = []
#: top-level module names whose entry point was already looked up
_LOOKED_UP: set[str] = set()
ENTRY_POINT_GROUP = "tokenwise.adapters"


def register_adapter(adapter: Callable[[Any], Any]) -> None:
    """Let :func:`adapt` turn another engine's model objects into tokenwise ones.

    Registering the same function again changes nothing; the latest registered is tried first.

    Args:
        adapter: ``obj -> adapted object``, or ``None`` for objects it does not know.

    Example:
        >>> def known_as_none(obj):  # an adapter that knows no object
        ...     return None
        >>> register_adapter(known_as_none)
        >>> adapt("tw-small")
        'tw-small'
    """
    if not callable(adapter):
        raise TypeError(f"adapter={adapter!r}: allowed a callable obj -> object or None")
    if adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)


def adapt(obj: Any) -> Any:
    """``obj`` as the first registered adapter that knows it makes it, else ``obj`` itself.

    Args:
        obj: a model as a user passed it (a name, a model, another engine's object).

    Example:
        >>> adapt("tw-small")
        'tw-small'
    """
    _load_adapter_for(obj)
    for adapter in reversed(_ADAPTERS):
        adapted = adapter(obj)
        if adapted is not None:
            return adapted
    return obj


def _load_adapter_for(obj: Any) -> None:
    """Import the adapter package registered for ``obj``'s engine, once per engine.

    Only an object from a module whose top-level name has an entry point triggers an import,
    so a name or a Hugging Face model never imports anything here.
    """
    root = type(obj).__module__.partition(".")[0]
    if root in _LOOKED_UP or root in ("builtins", "tokenwise", "transformers", "torch"):
        return
    _LOOKED_UP.add(root)
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == root:
            entry.load()  # importing the package registers its adapter
