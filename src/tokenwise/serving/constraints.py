"""Structured output in the embedded engine: what a reply must be (:class:`Constraint`),
checked when a request is planned, and the sampler that holds every row of a batch to its
own constraint (:class:`RowConstraints`).

Two fields constrain a reply:

* ``response_format`` ``{"type": "json_object"}`` (any JSON object) or ``{"type":
  "json_schema", "json_schema": {"name", "schema", ...}}`` (the documents of ``schema``),
  on ``/v1/chat/completions`` and, as vLLM takes it, ``/v1/completions``; checked by
  :func:`tokenwise.sampling.grammar.from_response_format`, whose errors name the bad field.
* a forced tool call (``tool_choice: "required"`` or a named function): the model's call
  form, i.e. a prefix (SmolLM2's ``<tool_call>``), JSON following the call schema of
  :func:`tokenwise.serving.tools.call_constraint`, then a suffix (``</tool_call>``).

The JSON is enforced by :class:`tokenwise.sampling.grammar.JsonGrammar` (llguidance); the
prefix and suffix are forced token by token around it (the prefix's ids as the tokenizer
writes it, control tokens included; the suffix once the document is complete), and the
end-of-text token is allowed only after the suffix.

Whitespace: JSON may hold up to :data:`~tokenwise.sampling.grammar.MAX_WHITESPACE`
whitespace characters between two tokens, except when a stop string holds whitespace (the
question-answer fallback's ``"\\n"``, which ends a built-in model's turn): then the JSON is
compact, so whitespace between its tokens cannot end the reply inside the document.

Batching: rows of one batch share the sampler chain (the request's sampler spec) but each
row has its own constraint, or none, so requests with different schemas still decode
together. :class:`RowConstraints` goes first in the chain, groups the rows by constraint
(one compiled grammar per distinct constraint, one matcher per row) and leaves
unconstrained rows as they are. Each row's constrained entropy (the model's distribution
renormalised over the tokens its constraint allows; 0 where a prefix or suffix token is
forced) is read per step with :meth:`RowConstraints.constrained_entropy`.

Example:
    >>> import tokenwise as tw
    >>> from tokenwise.sampling import Chain, Temperature
    >>> lm = tw.load("tw-small")
    >>> schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
    ...           "required": ["ok"], "additionalProperties": False}
    >>> c = response_format_constraint(
    ...     {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, lm, ["\\n"])
    >>> c.kind, c.max_whitespace
    ('json_schema', 0)
    >>> rows = RowConstraints(lm, [c, None])
    >>> g = tw.generate(lm, ["Q: ok?\\nA:", "7+2="], Chain([rows, Temperature(0)]), seed=0,
    ...                 max_new_tokens=12, stop="\\n")
    >>> g[0].text, g[1].text
    ('{"ok":true}', '9')
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_logits
from tokenwise.sampling.grammar import (
    MAX_WHITESPACE,
    JsonGrammar,
    ResponseFormatError,
    engine_tokenizer,
    from_response_format,
)
from tokenwise.serving.errors import APIError
from tokenwise.serving.tools import CallConstraint, ToolSpec

__all__ = ["Constraint", "RowConstraints", "response_format_constraint", "tool_call_constraint",
           "warm_up", "whitespace_for"]

_WHITESPACE = " \n\r\t"


@dataclass(frozen=True)
class Constraint:
    """What a row's reply must be: ``prefix``, then JSON matching ``schema``, then ``suffix``.

    Hashable (the schema is kept as its JSON text), so rows with equal constraints share
    one compiled grammar.

    Attributes:
        kind: ``"json_object"``, ``"json_schema"`` or ``"tool_call"``.
        schema: the JSON schema as JSON text (keys in the client's order, which is the
            order the properties are written in); None for any JSON object.
        prefix: text forced before the JSON.
        suffix: text forced after it, before the end of the text.
        max_whitespace: most whitespace characters between two JSON tokens (0: compact).
    """

    kind: str
    schema: str | None
    prefix: str = ""
    suffix: str = ""
    max_whitespace: int = MAX_WHITESPACE

    def schema_dict(self) -> dict[str, Any] | None:
        """The schema as a dict (None: any JSON object)."""
        return None if self.schema is None else json.loads(self.schema)

    def describe(self) -> dict[str, Any]:
        """The constraint for the response's ``tokenwise`` object (the schema is the
        client's own, so it is left out)."""
        return {"kind": self.kind, "prefix": self.prefix, "suffix": self.suffix,
                "max_whitespace": self.max_whitespace}


def whitespace_for(stops: Sequence[str]) -> int:
    """Most whitespace characters between JSON tokens for a reply with these stop strings:
    0 (compact JSON) when one holds whitespace, which would end the reply inside the
    document; :data:`~tokenwise.sampling.grammar.MAX_WHITESPACE` otherwise.

    Args:
        stops: the reply's stop strings (the request's and the chat format's).

    Example:
        >>> whitespace_for(["\\n"]), whitespace_for(["###"])
        (0, 16)
    """
    return 0 if any(ch in _WHITESPACE for s in stops for ch in s) else MAX_WHITESPACE


def _schema_text(schema: Mapping[str, Any] | None) -> str | None:
    # keys keep their order: the engine writes an object's properties in the schema's order
    return None if schema is None else json.dumps(schema, ensure_ascii=False)


def warm_up(lm: Any) -> None:
    """Build the grammar engine's view of ``lm``'s tokenizer (cached; 0.5 s for a 49k
    vocabulary, 15 s for 262k), so that checking a request's constraint is quick. The
    routes call it off the event loop before planning a request that needs a grammar;
    errors are left for planning to report.

    Args:
        lm: the served model (any :class:`~tokenwise.models.Codec`).
    """
    with contextlib.suppress(TokenwiseError):
        engine_tokenizer(lm.tokenizer, sorted(lm.end_token_ids))


def _unavailable(exc: TokenwiseError, param: str, model: str) -> APIError:
    return APIError(400, f"{param}: structured output is not available for model {model!r}: "
                         f"{exc}", param=param, code="structured_output_unavailable")


def response_format_constraint(response_format: Mapping[str, Any] | None, lm: Any,
                               stops: Sequence[str]) -> Constraint | None:
    """The constraint of a request's ``response_format`` (None for plain text), checked by
    compiling it for ``lm``.

    Args:
        response_format: the field as the client sent it (a dict), or None.
        lm: the request's model (its tokenizer and end ids).
        stops: the reply's stop strings (see :func:`whitespace_for`).

    Raises:
        APIError: 400 naming the bad field (``response_format.json_schema.schema``: the
            engine's reason), or saying that the model's tokenizer cannot be constrained.

    Example:
        >>> from tokenwise.models import load
        >>> response_format_constraint({"type": "json_object"}, load("tw-small"), []).kind
        'json_object'
        >>> response_format_constraint({"type": "json_schema"}, load("tw-small"), [])
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: response_format.json_schema: missing; allowed: ...
    """
    ws = whitespace_for(stops)
    try:
        grammar = from_response_format(response_format, lm.tokenizer,
                                       end_token_ids=sorted(lm.end_token_ids),
                                       max_whitespace=ws)
    except ResponseFormatError as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None
    except TokenwiseError as exc:
        raise _unavailable(exc, "response_format", lm.name) from None
    if grammar is None:
        return None
    kind = "json_object" if grammar.schema is None else "json_schema"
    return Constraint(kind, _schema_text(grammar.schema), max_whitespace=ws)


def tool_call_constraint(call: CallConstraint | None, spec: ToolSpec, lm: Any,
                         stops: Sequence[str]) -> Constraint | None:
    """The constraint of a forced tool call (None when nothing is forced), checked by
    compiling it for ``lm``.

    Args:
        call: :func:`tokenwise.serving.tools.call_constraint`'s answer.
        spec: the checked tools (a function whose parameters the engine refuses is named).
        lm: the request's model.
        stops: the reply's stop strings (see :func:`whitespace_for`).

    Raises:
        APIError: 400 naming the function whose ``parameters`` the grammar engine cannot
            compile, or saying that the model's tokenizer cannot be constrained.

    Example:
        >>> from tokenwise.serving.tools import TOOL_CALL_LIST, call_constraint, check_tools
        >>> from tokenwise.models import load
        >>> spec = check_tools([{"type": "function", "function": {"name": "now"}}], "required")
        >>> c = tool_call_constraint(call_constraint(spec, TOOL_CALL_LIST), spec,
        ...                          load("tw-small"), [])
        >>> c.kind, c.prefix, c.suffix
        ('tool_call', '<tool_call>', '</tool_call>')
    """
    if call is None:
        return None
    constraint = Constraint("tool_call", _schema_text(call.schema), call.prefix, call.suffix,
                            whitespace_for(stops))
    try:
        JsonGrammar.for_model(lm, call.schema, max_whitespace=constraint.max_whitespace)
    except TokenwiseError as exc:
        if not str(exc).startswith("bad JSON schema"):
            raise _unavailable(exc, "tool_choice", lm.name) from None
        for i, fn in enumerate(spec.functions):
            try:
                JsonGrammar.for_model(lm, fn["parameters"])
            except TokenwiseError as bad:
                raise APIError(400, f"tools.{i}.function.parameters: the grammar engine cannot "
                                    f"force a call of {fn['name']!r}: {bad}",
                               param=f"tools.{i}.function.parameters",
                               code="invalid_value") from None
        raise APIError(400, f"tool_choice: the grammar engine cannot force this call: {exc}",
                       param="tool_choice", code="invalid_value") from None
    return constraint


def _only(logits: Tensor, allowed: Sequence[Sequence[int]]) -> Tensor:
    """``logits`` with every token but each row's ``allowed`` ids set to ``-inf``."""
    out = torch.full_like(logits, float("-inf"))
    for r, ids in enumerate(allowed):
        index = torch.tensor(list(ids), device=logits.device)
        out[r, index] = logits[r, index]
    return out


class _Enforcer:
    """One constraint over the rows that share it (all at the same step): the prefix's
    ids, then the grammar, then the suffix's ids once a row's document is complete, then
    only end ids."""

    def __init__(self, lm: Any, constraint: Constraint) -> None:
        self.grammar = JsonGrammar.for_model(lm, constraint.schema_dict(),
                                             max_whitespace=constraint.max_whitespace)
        # as the template writes them: a control token string (Qwen's <tool_call>) is its id
        self.prefix = self._ids(lm, constraint.prefix)
        self.suffix = self._ids(lm, constraint.suffix)
        self.ends = sorted(lm.end_token_ids)
        self.reset()

    @staticmethod
    def _ids(lm: Any, text: str) -> list[int]:
        return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def reset(self) -> None:
        self.grammar.reset()
        self.step = 0
        #: per row: its position in the suffix, None while it writes the JSON
        self.tail: list[int | None] | None = None

    def observe_prompt(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        self.grammar.observe_prompt(prompt_ids)
        self.tail = [None] * len(prompt_ids)

    def __call__(self, logits: Tensor) -> Tensor:
        batch = logits.shape[0]
        if self.tail is None:
            self.tail = [None] * batch
        if self.step < len(self.prefix):
            return _only(logits, [[self.prefix[self.step]]] * batch)
        if self.suffix:
            complete = self.grammar.complete
            for r in range(batch):
                if self.tail[r] is None and complete and complete[r]:
                    self.tail[r] = 0  # the document is complete: the suffix follows
        out = self.grammar.mask(logits)  # RowConstraints checked the whole batch
        tails = [r for r in range(batch) if self.tail[r] is not None]
        if tails:
            forced = _only(logits[tails], [
                [self.suffix[self.tail[r]]] if self.tail[r] < len(self.suffix) else self.ends
                for r in tails])
            out = out.clone()
            out[tails] = forced
        return out

    def observe(self, chosen: Tensor) -> None:
        self.step += 1
        if self.step <= len(self.prefix):
            return  # a prefix token: the grammar starts after it
        assert self.tail is not None
        ids = chosen.tolist()
        for r, pos in enumerate(self.tail):
            if pos is not None:
                # the grammar's row ends where the suffix begins (its document is complete)
                ids[r] = self.grammar.end_token_ids[0]
                self.tail[r] = pos + 1
        self.grammar.observe(torch.tensor(ids))


class RowConstraints(Sampler):
    """Hold each row of a batch to its own :class:`Constraint` (or to none).

    Put it first in the chain: a row's allowed tokens keep the model's own logits, so the
    samplers after it (temperature, top-k, ...) choose among valid tokens only, and
    :meth:`constrained_entropy` is the model's distribution renormalised over them.
    Stateful like :class:`~tokenwise.sampling.grammar.JsonGrammar`: the decode loop calls
    :meth:`reset`, :meth:`observe_prompt` and :meth:`observe`.

    Args:
        lm: the model (its tokenizer and end ids).
        constraints: one per row of the batch, None for a row left free.

    Raises:
        TokenwiseError: a constraint the grammar engine cannot compile (planning has
            checked each one, so a server never sees this).

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> rows = RowConstraints(lm, [Constraint("json_object", None, max_whitespace=0), None])
        >>> out = rows(torch.zeros(2, lm.vocab_size))
        >>> [lm.decode([t]) for t in (~out[0].isneginf()).nonzero()[:, 0].tolist()]
        ['{']
        >>> bool(out[1].isneginf().any()), rows.constrained_entropy(0), rows.constrained_entropy(1)
        (False, 0.0, None)
    """

    name = "row_constraints"

    def __init__(self, lm: Any, constraints: Sequence[Constraint | None]) -> None:
        self.constraints = list(constraints)
        groups: dict[Constraint, list[int]] = {}
        for r, c in enumerate(self.constraints):
            if c is not None:
                groups.setdefault(c, []).append(r)
        self._groups = [(_Enforcer(lm, c), rows) for c, rows in groups.items()]
        self._constrained = [r for _, rows in self._groups for r in rows]
        self.reset()

    def params(self) -> dict:
        """The constraints, one per row."""
        return {"constraints": [None if c is None else c.describe() for c in self.constraints]}

    def reset(self) -> None:
        """Start every row afresh (a new generation)."""
        for enforcer, _ in self._groups:
            enforcer.reset()
        self._out: Tensor | None = None
        self._entropy: dict[int, float] | None = None

    def observe_prompt(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Start each constrained row (its prompt is not JSON and is not read)."""
        self._check_rows(len(prompt_ids))
        for enforcer, rows in self._groups:
            enforcer.observe_prompt([prompt_ids[r] for r in rows])

    def _check_rows(self, batch: int) -> None:
        if batch != len(self.constraints):
            raise TokenwiseError(f"RowConstraints holds {len(self.constraints)} row(s) and got "
                                 f"a batch of {batch}")

    def __call__(self, logits: Tensor) -> Tensor:
        logits = check_logits(logits)
        self._check_rows(logits.shape[0])
        out = logits
        if self._groups:
            out = logits.clone()
            for enforcer, rows in self._groups:
                out[rows] = enforcer(logits[rows])
        self._out, self._entropy = out, None
        return out

    def observe(self, chosen: Tensor) -> None:
        """Advance each constrained row by its chosen token (``(B,)`` ids)."""
        chosen = torch.as_tensor(chosen).reshape(-1)
        self._check_rows(chosen.shape[0])
        for enforcer, rows in self._groups:
            enforcer.observe(chosen[rows].cpu())

    def constrained_entropy(self, row: int) -> float | None:
        """The entropy (nats) of row ``row``'s distribution at the last call, renormalised
        over the tokens its constraint allows; None for a free row or before any call."""
        if self._out is None or self.constraints[row] is None:
            return None
        if self._entropy is None:  # one pass over the constrained rows, when first read
            values = signals.entropy(self._out[self._constrained].float()).tolist()
            self._entropy = dict(zip(self._constrained, values, strict=True))
        return self._entropy[row]
