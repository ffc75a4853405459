"""Models: load a built-in or a local Hugging Face causal LM as a :class:`LanguageModel`."""

from tokenwise.models.language_model import ForwardOutput, LanguageModel
from tokenwise.models.loading import (
    BUILTIN_DIR,
    builtin_names,
    builtin_path,
    declared_context_length,
    load,
    resolve,
)

__all__ = [
    "BUILTIN_DIR",
    "ForwardOutput",
    "LanguageModel",
    "builtin_names",
    "builtin_path",
    "declared_context_length",
    "load",
    "resolve",
]
