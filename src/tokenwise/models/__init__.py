"""Models: load a built-in, a fetched real model, a local Hugging Face directory or a GGUF file
as a :class:`LanguageModel`.

What the rest of tokenwise asks of a model is written down in :mod:`tokenwise.models.protocols`:
a :class:`Codec` (encode, decode, start and end ids, context, vocabulary), and a
:data:`Scorer` (a :class:`ForwardScorer` such as :class:`LanguageModel`, or a
:class:`PromptScorer`). :class:`TokenizerCodec` is the codec read from a Hugging Face tokenizer.
"""

from tokenwise.models.builtin import BUILTIN_DIR, builtin_names, builtin_path
from tokenwise.models.cache import cache_dir
from tokenwise.models.gguf import convert_gguf
from tokenwise.models.language_model import ForwardOutput, LanguageModel, TokenizerCodec
from tokenwise.models.loading import declared_context_length, load, resolve
from tokenwise.models.protocols import Codec, ForwardScorer, PromptScorer, Scorer
from tokenwise.models.real import (
    REAL_MODELS,
    RealModel,
    fetch,
    fetch_command,
    fetched,
    real_model,
    real_model_names,
)

__all__ = [
    "BUILTIN_DIR",
    "REAL_MODELS",
    "Codec",
    "ForwardOutput",
    "ForwardScorer",
    "LanguageModel",
    "PromptScorer",
    "RealModel",
    "Scorer",
    "TokenizerCodec",
    "builtin_names",
    "builtin_path",
    "cache_dir",
    "convert_gguf",
    "declared_context_length",
    "fetch",
    "fetch_command",
    "fetched",
    "load",
    "real_model",
    "real_model_names",
    "resolve",
]
