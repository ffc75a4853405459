"""The sampler a request asks for, as a plain spec: checked once, rebuilt for every batch.

Top-level fields follow vLLM and llama.cpp: ``top_k`` (0 or -1 = off), ``typical_p``,
``top_p``, ``min_p`` (1, 1, 0 = off) and ``top_h``, applied in llama.cpp's order (the
filters first, then temperature) so a filter's threshold is read on the model's own
distribution. ``temperature`` defaults to 1 as in OpenAI's API; ``temperature=0`` is
greedy decoding (after the filters, if any). ``tokenwise.sampler`` instead gives the whole
chain, in the order written; it cannot be mixed with the top-level fields.

Samplers carry state (Mirostat) and are not shared between batches: the spec is a tuple of
``(name, params)`` steps, hashable, so requests with equal specs can share one batch.

Example:
    >>> from tokenwise.serving.schemas import CompletionRequest
    >>> req = CompletionRequest.model_validate_json(
    ...     '{"model": "m", "prompt": "x", "top_k": 40, "temperature": 0.7}')
    >>> spec = sampler_spec(req)
    >>> [name for name, _ in spec.steps]
    ['top_k', 'temperature']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Sampler, get
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import SamplingFields

_TOP_LEVEL = ("temperature", "top_k", "typical_p", "top_p", "min_p", "top_h")


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler chain as data.

    Attributes:
        steps: ``((name, ((param, value), ...)), ...)``; empty = greedy decoding.
    """

    steps: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def greedy(self) -> bool:
        """True when no sampler runs (argmax decoding)."""
        return not self.steps

    def build(self) -> Sampler | None:
        """A fresh sampler (None for greedy)."""
        if not self.steps:
            return None
        samplers = [get(name, **dict(params)) for name, params in self.steps]
        return samplers[0] if len(samplers) == 1 else Chain(samplers)

    def describe(self) -> list[dict[str, Any]]:
        """The steps with every setting the samplers use (defaults included), for responses."""
        sampler = self.build()
        if sampler is None:
            return []
        steps = sampler.samplers if isinstance(sampler, Chain) else [sampler]
        return [json.loads(json.dumps({"name": s.name, **s.params()}, default=_jsonable))
                for s in steps]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _step(name: str, params: dict[str, Any], param: str) -> tuple[str, tuple]:
    for key, value in params.items():
        if not isinstance(value, (bool, int, float, str)):
            raise APIError(400, f"{param}.{key}={value!r}: sampler parameters are numbers, "
                                "booleans or strings", param=f"{param}.{key}")
    try:
        get(name, **params)
    except TokenwiseError as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_sampler") from None
    return name, tuple(sorted(params.items()))


def sampler_spec(req: SamplingFields) -> SamplerSpec:
    """The spec for a request's sampling fields (raises :class:`APIError` 400 when bad).

    Args:
        req: a chat or completion request.

    Example:
        >>> from tokenwise.serving.schemas import CompletionRequest
        >>> sampler_spec(CompletionRequest(model="m", prompt="x", temperature=0.0)).greedy
        True
    """
    chain = req.tokenwise.sampler if req.tokenwise is not None else None
    if chain is not None:
        mixed = [f for f in _TOP_LEVEL if getattr(req, f) is not None]
        if mixed:
            raise APIError(400, f"give either tokenwise.sampler or the top-level field(s) "
                                f"{', '.join(mixed)}, not both: the chain sets the whole "
                                "sampling order", param=mixed[0], code="conflicting_fields")
        return SamplerSpec(tuple(_step(s.name, s.params(), f"tokenwise.sampler.{i}")
                                 for i, s in enumerate(chain)))
    steps = []
    if req.top_k is not None and req.top_k not in (0, -1):
        steps.append(_step("top_k", {"top_k": req.top_k}, "top_k"))
    if req.typical_p is not None and req.typical_p < 1.0:
        steps.append(_step("typical", {"mass": req.typical_p}, "typical_p"))
    if req.top_p is not None and req.top_p < 1.0:
        steps.append(_step("top_p", {"top_p": req.top_p}, "top_p"))
    if req.min_p is not None and req.min_p > 0.0:
        steps.append(_step("min_p", {"min_p": req.min_p}, "min_p"))
    if req.top_h is not None:
        steps.append(_step("top_h", {"alpha": req.top_h}, "top_h"))
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature == 0.0 and not steps:
        return SamplerSpec()  # plain greedy: the engine's argmax path
    if temperature != 1.0 or not steps:  # T = 1 alone still samples (an empty spec is greedy)
        steps.append(_step("temperature", {"temperature": temperature}, "temperature"))
    return SamplerSpec(tuple(steps))
