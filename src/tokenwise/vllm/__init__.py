"""tokenwise on vLLM: the backend, the logits processors, the entropy recorder, the server engine.

Arrows run from here into the core, never back: the core meets a vLLM ``LLM`` only through
the adapter this package registers with :mod:`tokenwise.models.adapters` when it is imported
(so import it, e.g. ``from tokenwise.vllm import PROCESSORS``, before handing an ``LLM`` to
:func:`tokenwise.uncertainty.sample_answers` or the perplexity compressor). Nothing here
imports ``vllm`` until an engine is used.

Modules, one idea each:

* :mod:`~tokenwise.vllm.backend`: :class:`VLLMModel` (an ``LLM`` as a tokenwise codec and
  scorer), :func:`generate_with_stats`, :func:`sample_logprobs`, :func:`prompt_surprisal`;
* :mod:`~tokenwise.vllm.logprobs`: entropy from vLLM's logprobs (:func:`token_stats`);
* :mod:`~tokenwise.vllm.processors`: tokenwise samplers as vLLM logits processors
  (:data:`PROCESSORS`, :func:`to_vllm`);
* :mod:`~tokenwise.vllm.recorder`: ``EntropyRecorder`` and its worker extension;
* :mod:`~tokenwise.vllm.tracking`: following a request through vLLM's batch updates;
* :mod:`~tokenwise.vllm.server`: ``VLLMBackend``, ``tokenwise serve --engine vllm``.

Example:
    >>> from tokenwise.models.adapters import adapt
    >>> adapt("tw-small")  # not a vLLM LLM: unchanged
    'tw-small'
"""

from __future__ import annotations

from typing import Any

from tokenwise.models.adapters import register_adapter
from tokenwise.vllm.backend import (
    VLLMModel,
    as_vllm_model,
    generate_with_stats,
    is_vllm_llm,
    prompt_surprisal,
    sample_logprobs,
)
from tokenwise.vllm.logprobs import position_entries, token_stats
from tokenwise.vllm.processors import PROCESSORS, to_vllm
from tokenwise.vllm.recorder import STATS_KEY, WORKER_EXTENSION, StatsWorkerExtension

__all__ = [
    "PROCESSORS",
    "STATS_KEY",
    "WORKER_EXTENSION",
    "EntropyRecorder",
    "StatsWorkerExtension",
    "VLLMModel",
    "as_vllm_model",
    "generate_with_stats",
    "is_vllm_llm",
    "position_entries",
    "prompt_surprisal",
    "sample_logprobs",
    "to_vllm",
    "token_stats",
]


def _adapt(obj: Any) -> VLLMModel | None:
    return VLLMModel(obj) if is_vllm_llm(obj) else None


register_adapter(_adapt)


def __getattr__(name: str) -> Any:
    # EntropyRecorder subclasses vLLM's LogitsProcessor: built on first use, in its module.
    if name == "EntropyRecorder":
        from tokenwise.vllm import recorder

        return recorder.EntropyRecorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
