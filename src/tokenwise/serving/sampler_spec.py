"""The sampler a request asks for, as a plain spec: checked once, rebuilt for every batch.

Top-level fields follow vLLM and llama.cpp: ``top_k`` (0 or -1 = off), ``typical_p``,
``top_p``, ``min_p`` (1, 1, 0 = off) and ``top_h``, applied in llama.cpp's order (the
filters first, then temperature) so a filter's threshold is read on the model's own
distribution. ``temperature`` defaults to 1 as in OpenAI's API; ``temperature=0`` is
greedy decoding (after the filters, if any). ``logit_bias`` and the penalties
(``presence_penalty``, ``frequency_penalty``, vLLM's ``repetition_penalty``) come before
the filters, as in llama.cpp and vLLM; their neutral values (0, 0, 1, ``{}``) add no step.
``tokenwise.sampler`` instead gives the whole chain, in the order written; it cannot be
mixed with the top-level fields (their neutral values aside, which clients send by default).

Samplers carry state (Mirostat) and are not shared between batches: the spec is a tuple of
``(name, params)`` steps, hashable, so requests with equal specs can share one batch.
``tokenwise.control`` (semantic control with a probe the server loaded,
:mod:`tokenwise.serving.control_options`) is the spec's ``control``, run before the steps;
it needs the model, so :meth:`SamplerSpec.build` takes it.

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
from tokenwise.serving.control_options import ControlSpec
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import SamplingFields

_TOP_LEVEL = ("temperature", "top_k", "typical_p", "top_p", "min_p", "top_h", "logit_bias",
              "presence_penalty", "frequency_penalty", "repetition_penalty")
#: the penalty fields and the value that switches each off
_PENALTIES = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler chain as data.

    Attributes:
        steps: ``((name, ((param, value), ...)), ...)``; empty = greedy decoding.
        control: semantic control run before the steps
            (:class:`~tokenwise.serving.control_options.ControlSpec`), or None.
    """

    steps: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    control: ControlSpec | None = None

    @property
    def greedy(self) -> bool:
        """True when no sampler runs (argmax decoding)."""
        return not self.steps and self.control is None

    def build(self, lm: Any = None) -> Sampler | None:
        """A fresh sampler (None for greedy).

        Args:
            lm: the model the sampler runs on; needed with ``control`` (its rollouts and
                embeddings run on the model).
        """
        samplers = [get(name, **dict(params)) for name, params in self.steps]
        if self.control is not None:
            if lm is None:
                raise TokenwiseError("SamplerSpec.build() with control needs the model: "
                                     "build(lm)")
            samplers.insert(0, self.control.build(lm))
        if not samplers:
            return None
        return samplers[0] if len(samplers) == 1 else Chain(samplers)

    def describe(self) -> list[dict[str, Any]]:
        """The steps with every setting the samplers use (defaults included), for responses
        (semantic control first, its probe named, not its file)."""
        out = [] if self.control is None else [self.control.describe()]
        steps = [get(name, **dict(params)) for name, params in self.steps]
        return out + [json.loads(json.dumps({"name": s.name, **s.params()}, default=_jsonable))
                      for s in steps]

    def with_control(self, control: ControlSpec) -> SamplerSpec:
        """This spec with ``control`` before its steps; a greedy spec keeps choosing the
        argmax (of the steered logits) with an explicit ``temperature=0`` step.

        Example:
            >>> from tokenwise.serving.control_options import ControlSpec
            >>> c = ControlSpec("calm", "p.json", "hidden", -1, 1.0, 4, 4, True, 0, 8)
            >>> SamplerSpec().with_control(c).steps
            (('temperature', (('temperature', 0.0),)),)
        """
        steps = self.steps or (("temperature", (("temperature", 0.0),)),)
        return SamplerSpec(steps, control)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


#: the most digits a token id key may have (leading zeros aside): 10**18 ids is past any
#: vocabulary, and below the 64-bit integers the samplers hold ids in
_MAX_ID_DIGITS = 18


def _token_ids(mapping: dict[str, Any], param: str) -> tuple[tuple[int, float], ...]:
    """A JSON object of token id -> number (``logit_bias``) as sorted ``(id, number)`` pairs."""
    pairs = []
    for key, value in mapping.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise APIError(400, f"{param}: key {key!r} is not a token id; keys are token ids "
                                'written as strings of integers (e.g. "50256")', param=param,
                           code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise APIError(400, f"{param}[{key!r}]={value!r}: allowed a number in [-100, 100]",
                           param=param, code="invalid_value")
        if len(key.lstrip("0")) > _MAX_ID_DIGITS:
            raise APIError(400, f"{param}: key {key[:40]!r}{'...' if len(key) > 40 else ''} "
                                "is not a token id of any model: allowed ids below the model's "
                                "vocabulary size", param=param, code="invalid_value")
        pairs.append((int(key), value))
    return tuple(sorted(pairs))


def _step(name: str, params: dict[str, Any], param: str) -> tuple[str, tuple]:
    params = dict(params)
    for key, value in params.items():
        if isinstance(value, dict):  # token id -> number (logit_bias), hashable as pairs
            params[key] = _token_ids(value, f"{param}.{key}")
        elif isinstance(value, tuple):  # pairs made by _token_ids (JSON gives no tuples)
            continue
        elif not isinstance(value, (bool, int, float, str)):
            raise APIError(400, f"{param}.{key}={value!r}: sampler parameters are numbers, "
                                "booleans, strings or objects of token id -> number",
                           param=f"{param}.{key}")
    try:
        get(name, **params)
    except TokenwiseError as exc:
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_sampler") from None
    return name, tuple(sorted(params.items()))


def _given(req: SamplingFields, field: str) -> bool:
    """Whether a top-level field asks for anything (a penalty's neutral value or an empty
    ``logit_bias`` does not)."""
    value = getattr(req, field)
    if field in _PENALTIES:
        return value is not None and value != _PENALTIES[field]
    if field == "logit_bias":
        return bool(value)
    return value is not None


def _history_steps(req: SamplingFields) -> list[tuple[str, tuple]]:
    """The ``logit_bias`` and ``penalties`` steps of the top-level fields (none when neutral)."""
    steps = []
    if req.logit_bias:
        bias = _token_ids(req.logit_bias, "logit_bias")
        steps.append(_step("logit_bias", {"bias": bias}, "logit_bias"))
    penalties = {}
    for field in _PENALTIES:
        if _given(req, field):
            _step("penalties", {field: getattr(req, field)}, field)  # names the bad field
            penalties[field] = getattr(req, field)
    if penalties:
        steps.append(_step("penalties", penalties, "penalties"))
    return steps


def check_vocabulary(req: SamplingFields, spec: SamplerSpec, vocab_size: int) -> None:
    """Raise a 400 when a ``logit_bias`` id (top-level or in ``tokenwise.sampler``) is not a
    token of the model's vocabulary.

    Args:
        req: the request the spec was made from.
        spec: its sampler spec.
        vocab_size: the model's vocabulary (the width of its logits).

    Example:
        >>> from tokenwise.serving.schemas import CompletionRequest
        >>> req = CompletionRequest(model="m", prompt="x", logit_bias={"7": 1.0})
        >>> check_vocabulary(req, sampler_spec(req), 5)
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: logit_bias: token id 7 is not in the vocabulary ...
    """
    chain = req.tokenwise is not None and req.tokenwise.sampler is not None
    for i, (name, params) in enumerate(spec.steps):
        if name != "logit_bias":
            continue
        bad = [t for t, _ in dict(params)["bias"] if t >= vocab_size]  # (id, bias) pairs
        if bad:
            param = f"tokenwise.sampler.{i}.bias" if chain else "logit_bias"
            raise APIError(400, f"{param}: token id {bad[0]} is not in the vocabulary of "
                                f"model {req.model!r}: allowed ids 0 to {vocab_size - 1}",
                           param=param, code="invalid_value")


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
        mixed = [f for f in _TOP_LEVEL if _given(req, f)]
        if mixed:
            raise APIError(400, f"give either tokenwise.sampler or the top-level field(s) "
                                f"{', '.join(mixed)}, not both: the chain sets the whole "
                                "sampling order", param=mixed[0], code="conflicting_fields")
        return SamplerSpec(tuple(_step(s.name, s.params(), f"tokenwise.sampler.{i}")
                                 for i, s in enumerate(chain)))
    steps = _history_steps(req)
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
