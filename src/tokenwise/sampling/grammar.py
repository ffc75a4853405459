"""Structured output: a sampler that keeps only the tokens that continue valid JSON.

:class:`JsonGrammar` drops every token that cannot continue a JSON document matching a JSON
schema (or, with no schema, any JSON object: OpenAI's ``json_object``), and allows the end of
text only once the document is complete. The grammar engine is llguidance (chosen over
xgrammar and outlines-core by ``benchmarks/structured_output.py``: it never allows special
tokens such as ``<|im_start|>`` inside the JSON text, its free-JSON grammar has no depth
limit, and it compiles a schema in about a millisecond). llguidance is an optional
dependency, imported on first use.

:func:`from_response_format` builds the sampler from OpenAI's ``response_format`` field and
raises :class:`ResponseFormatError` (a :class:`~tokenwise.errors.TokenwiseError` carrying the
bad field's path in ``param``) for a bad one.

Example:
    >>> import tokenwise as tw
    >>> from tokenwise.sampling import Chain, Temperature
    >>> lm = tw.load("tw-small")
    >>> grammar = JsonGrammar.for_model(lm, {"type": "object", "properties": {
    ...     "ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False})
    >>> g = tw.generate(lm, "{", Chain([grammar, Temperature(0.8)]), seed=0,
    ...                 max_new_tokens=40)
    >>> import json; sorted(json.loads(g.text)), g.finish_reason
    (['ok'], 'eos')
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler, check_int, check_logits

#: what to install for :class:`JsonGrammar` (the engine; ``tokenwise[serve]`` brings it too)
INSTALL = 'pip install "llguidance>=1.9"'
#: the most whitespace characters allowed between two JSON tokens (a weak model left free to
#: add whitespace can emit newlines until ``max_new_tokens``; 16 fits pretty-printed JSON
#: indented 2 spaces up to 7 levels deep)
MAX_WHITESPACE = 16

# the engine's tokenizer per HF tokenizer and end ids: building it reads the whole vocabulary
# (measured on a loaded 2-core CPU: 0.7 s for SmolLM2's 49k tokens, 16 s for Gemma's 262k),
# so a server pays it once per model
_ENGINE_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# One build at a time: concurrent first requests (the server warms the engine on worker
# threads) would each spend seconds (Gemma's 262k vocabulary: ~16 s) building the same view.
_BUILD_LOCK = threading.Lock()


class ResponseFormatError(TokenwiseError):
    """A bad ``response_format``; ``param`` is the path of the bad field
    (``"response_format.json_schema.schema"``), for an OpenAI-shaped 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _llguidance() -> Any:
    """The llguidance module, or a TokenwiseError saying what to install."""
    try:
        import llguidance
        import llguidance.hf
    except ImportError as exc:
        raise TokenwiseError(f"structured output (JSON) needs the grammar engine llguidance, "
                             f"which is not installed ({exc}); install it with: {INSTALL}, "
                             "or pip install \"tokenwise[serve]\"") from None
    return llguidance


def _first_line(error: str) -> str:
    """The reason in an llguidance error (the lines after it dump the parser state and the
    whole grammar)."""
    return (error.splitlines() or ["unknown error"])[0]


def _end_ids(tokenizer: Any, end_token_ids: Iterable[int] | None) -> tuple[int, ...]:
    if end_token_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        ends = [] if eos is None else [eos]
    else:
        ends = list(end_token_ids)
    checked = sorted({check_int("end_token_ids", t, 0) for t in ends})
    if not checked:
        raise TokenwiseError("JsonGrammar needs at least one end-of-text token id to end the "
                             "JSON; the tokenizer has no eos_token_id: pass end_token_ids "
                             "(e.g. lm.end_token_ids)")
    return tuple(checked)


def engine_tokenizer(tokenizer: Any, end_token_ids: Sequence[int]) -> Any:
    """llguidance's view of a Hugging Face tokenizer (cached per tokenizer and end ids).

    Args:
        tokenizer: a fast (Rust-backed) Hugging Face tokenizer, e.g. ``lm.tokenizer``.
        end_token_ids: the ids that end a text.

    Returns:
        An ``llguidance.LLTokenizer``.

    Example:
        >>> from tokenwise.models import load
        >>> engine_tokenizer(load("tw-small").tokenizer, [2]).vocab_size
        1024
    """
    llguidance = _llguidance()
    ends = tuple(sorted(end_token_ids))
    with _BUILD_LOCK:
        return _engine_tokenizer(llguidance, tokenizer, ends)


def _engine_tokenizer(llguidance: Any, tokenizer: Any, ends: tuple[int, ...]) -> Any:
    try:
        per_tokenizer = _ENGINE_TOKENIZERS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: build it each time
        per_tokenizer = {}
    if ends not in per_tokenizer:
        try:
            per_tokenizer[ends] = llguidance.hf.from_tokenizer(tokenizer, eos_token=list(ends))
        except Exception as exc:  # llguidance raises ValueError or its own Rust errors
            raise TokenwiseError(
                f"the grammar engine llguidance cannot read the tokenizer "
                f"{type(tokenizer).__name__} ({exc}); structured output needs a fast "
                "(Rust-backed) Hugging Face tokenizer with a tokenizer.json (byte-level BPE, "
                "or SentencePiece-style BPE with byte fallback)") from None
    return per_tokenizer[ends]


def json_grammar(schema: Mapping[str, Any] | None, max_whitespace: int = MAX_WHITESPACE) -> str:
    """llguidance's grammar for JSON matching ``schema`` (None: any JSON object).

    Args:
        schema: a JSON schema as a dict, or None for any JSON object.
        max_whitespace: most whitespace characters between two JSON tokens (0: none, the
            compact form ``{"a":1}``).

    Returns:
        The grammar, as llguidance's serialised form.

    Example:
        >>> json.loads(json_grammar({"type": "integer"}, 0))["grammars"][0]["json_schema"]
        {'type': 'integer', 'x-guidance': {'whitespace_flexible': False}}
    """
    llguidance = _llguidance()
    max_whitespace = check_int("max_whitespace", max_whitespace, 0)
    if schema is None:
        schema = {"type": "object"}
    elif not isinstance(schema, Mapping):
        raise TokenwiseError(f"schema={schema!r}: allowed a JSON schema as a dict (e.g. "
                             '{"type": "object", "properties": {...}}) or None for any JSON '
                             "object")
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise TokenwiseError(f"schema is not JSON-serialisable ({exc}); a JSON schema holds "
                             "only dicts, lists, strings, numbers, booleans and None") from None
    if max_whitespace:
        options = {"whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{0,{max_whitespace}}}"}
    else:
        options = {"whitespace_flexible": False}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(dict(schema), defaults=options)
    except ValueError as exc:
        raise TokenwiseError(f"bad JSON schema: {exc}") from None


class JsonGrammar(Sampler):
    """Keep only the tokens that continue a JSON document matching a schema.

    Each row has its own grammar matcher: rows of a batch may be at different points of
    their documents and finish at different times. A token is kept when the matcher accepts
    it (its original logit is kept, every other token becomes ``-inf``). The end-of-text
    ids (``end_token_ids``) are kept only once the row's document is complete, and they are
    all a complete document allows. A row that has chosen an end id keeps only the first
    end id from then on (the decode loop ignores finished rows' tokens). Special tokens
    (``<s>``, ``<|im_start|>``) are never allowed inside the JSON text.

    Where it goes in a :class:`~tokenwise.sampling.Chain`: first, or after samplers that
    drop nothing (temperature, logit bias, penalties). A truncating step before it (top-k,
    top-p, min-p, ...) may drop every token the grammar allows; then a row whose only
    continuation is forced (one allowed token, or the end of a complete document) takes it,
    and any other row raises a :class:`~tokenwise.errors.TokenwiseError`. So
    ``min_tokens_to_keep`` does not apply: the grammar, not the ranking, says what stays.

    The constrained entropy: after each call, :attr:`constrained_entropy` is a ``(B,)``
    float32 tensor (nats) with the entropy of this step's output distribution, i.e. the
    input logits renormalised over the tokens the grammar allows. With the grammar first in
    the chain, that is the model's own distribution restricted to valid JSON; the records
    of ``tokenwise.generate`` keep the model's own ``entropy``. It is computed when first
    read, from the logits this call returned.

    Stateful: :meth:`observe` advances each row's matcher by its chosen token;
    ``tokenwise.generate`` calls :meth:`reset`, :meth:`observe_prompt` and :meth:`observe`
    for you.

    Args:
        tokenizer: the model's fast Hugging Face tokenizer (``lm.tokenizer``).
        schema: a JSON schema (a dict), or None for any JSON object (``json_object``).
        end_token_ids: ids that end a text (default: the tokenizer's EOS; pass
            ``lm.end_token_ids``, or use :meth:`for_model`).
        max_whitespace: most whitespace characters between two JSON tokens (0: compact).

    Raises:
        TokenwiseError: a bad schema (the engine's reason), a tokenizer the engine cannot
            read, or llguidance not installed (naming the pip install).

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> grammar = JsonGrammar.for_model(lm, {"enum": ["yes", "no"]})
        >>> out = grammar(torch.zeros(1, lm.vocab_size))
        >>> [lm.decode([t]) for t in (~out[0].isneginf()).nonzero()[:, 0].tolist()]
        ['"']
    """

    name = "json_grammar"

    def __init__(self, tokenizer: Any, schema: Mapping[str, Any] | None = None, *,
                 end_token_ids: Iterable[int] | None = None,
                 max_whitespace: int = MAX_WHITESPACE) -> None:
        llguidance = _llguidance()
        grammar = json_grammar(schema, max_whitespace)  # checks both
        self.schema = None if schema is None else dict(schema)
        self.max_whitespace = int(max_whitespace)
        self.end_token_ids = _end_ids(tokenizer, end_token_ids)
        self._tokenizer = engine_tokenizer(tokenizer, self.end_token_ids)
        self._vocab = int(self._tokenizer.vocab_size)
        self._template = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if self._template.is_error():
            raise TokenwiseError(f"bad JSON schema: {self._template.get_error()}")
        # Some schemas compile but admit no first token (a bare {"$ref": "#"}): found here,
        # once, instead of failing the batch that decodes them.
        probe = self._template.deep_copy()
        words = (self._vocab + 31) // 32
        first = np.zeros(words, dtype=np.int32)
        probe.unsafe_compute_mask_ptr(first.ctypes.data, 4 * words)
        if probe.is_error() or not first.any():
            reason = _first_line(probe.get_error()) if probe.is_error() else "no token can start it"
            raise TokenwiseError(f"bad JSON schema: no document can be written: {reason}")
        self.reset()

    @classmethod
    def for_model(cls, lm: Any, schema: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> JsonGrammar:
        """The grammar for a :class:`~tokenwise.models.LanguageModel`: its tokenizer and
        all its end ids (``lm.end_token_ids``).

        Args:
            lm: the model.
            schema: a JSON schema, or None for any JSON object.
            kwargs: :class:`JsonGrammar`'s other arguments.

        Example:
            >>> from tokenwise.models import load
            >>> JsonGrammar.for_model(load("tw-small")).end_token_ids
            (2,)
        """
        kwargs.setdefault("end_token_ids", sorted(lm.end_token_ids))
        return cls(lm.tokenizer, schema, **kwargs)

    def params(self) -> dict:
        """The settings."""
        return {"schema": self.schema, "end_token_ids": list(self.end_token_ids),
                "max_whitespace": self.max_whitespace}

    def reset(self) -> None:
        """Forget every row (start of a new generation)."""
        self._rows: list[Any] | None = None
        self._ended: list[bool] = []
        self._observed = False
        self._output: Tensor | None = None
        self._entropy: Tensor | None = None

    def observe_prompt(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Start one matcher per row (the prompt itself is not JSON and is not read).

        Args:
            prompt_ids: one list of ids per row.
        """
        if self._observed:
            raise TokenwiseError("JsonGrammar.observe_prompt() after tokens were observed; "
                                 "call reset() before a new generation")
        self._start(len(prompt_ids))

    def _start(self, batch: int) -> None:
        self._rows = [self._template.deep_copy() for _ in range(batch)]
        self._ended = [False] * batch

    @property
    def constrained_entropy(self) -> Tensor | None:
        """``(B,)`` float32, nats: the entropy of the last call's output distribution (its
        input renormalised over the tokens the grammar allows); None before the first call.
        A finished row, which allows one end id, has 0."""
        if self._entropy is None and self._output is not None:
            # entr(0) = 0 covers the dropped tokens; one pass fewer than signals.entropy,
            # which also re-checks logits this sampler made itself
            self._entropy = torch.special.entr(self._output.float().softmax(-1)).sum(-1)
        return self._entropy

    @property
    def complete(self) -> list[bool]:
        """Per row: whether its text so far is a complete document of the schema."""
        if self._rows is None:
            return []
        return [ended or m.is_accepting() for ended, m in zip(self._ended, self._rows,
                                                                    strict=True)]

    def _allowed(self, batch: int, width: int) -> Tensor:
        """``(B, width)`` bool on the CPU: the tokens each row's grammar allows now."""
        assert self._rows is not None
        words = (self._vocab + 31) // 32
        bitmask = np.zeros((batch, words), dtype=np.int32)
        for r, matcher in enumerate(self._rows):
            if self._ended[r]:
                continue
            # llguidance writes the row's packed mask in place (the pointer API spares
            # importing llguidance.torch, whose torch.compile import costs seconds)
            matcher.unsafe_compute_mask_ptr(bitmask[r].ctypes.data, 4 * words)
            if matcher.is_error():
                raise TokenwiseError(f"row {r}: the grammar engine failed: "
                                     f"{_first_line(matcher.get_error())}")
        # bit i of int32 word w is token 32 w + i: unpackbits reads little-endian bytes in
        # order (about 10x faster than unpacking with torch ops at V = 49k)
        as_bytes = bitmask.astype("<i4", copy=False).view(np.uint8)
        bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")  # (B, 32 W) of 0/1
        if width > bits.shape[1]:
            bits = np.pad(bits, ((0, 0), (0, width - bits.shape[1])))
        bits = bits[:, :width]
        bits[:, self._vocab:] = 0  # ids past the tokenizer: the model's padding rows, never
        for r, ended in enumerate(self._ended):
            if ended:
                bits[r, self.end_token_ids[0]] = 1
        return torch.from_numpy(bits).view(torch.bool)

    def __call__(self, logits: Tensor) -> Tensor:
        return self.mask(check_logits(logits))

    def mask(self, logits: Tensor) -> Tensor:
        """:meth:`__call__` without the argument check, for a caller that checked ``logits``
        (e.g. a row-wise sampler passing slices of a batch it checked whole).

        Args:
            logits: ``(B, V)`` floating logits, no NaN.
        """
        batch, width = logits.shape
        if self._rows is None or len(self._rows) != batch:
            if self._observed:
                raise TokenwiseError(f"JsonGrammar holds {len(self._rows or [])} row(s) and "
                                     f"got logits of {batch}; call reset() before another "
                                     "batch")
            self._start(batch)
        if max(self.end_token_ids) >= width:
            raise TokenwiseError(f"end token id {max(self.end_token_ids)} is not in logits of "
                                 f"width {width}")
        allowed = self._allowed(batch, width).to(logits.device)
        # torch.where rather than masked_fill: cheaper on the CPU for 49k-wide rows
        out = torch.where(allowed, logits, float("-inf"))
        empty = torch.isneginf(out.amax(-1))  # (B,) rows left with nothing
        if bool(empty.any()):
            out = self._forced(out, logits, allowed, empty)
        self._output, self._entropy = out, None
        return out

    def _forced(self, out: Tensor, logits: Tensor, allowed: Tensor, empty: Tensor) -> Tensor:
        """Rows where an earlier sampler dropped every allowed token: take a forced
        continuation (one allowed token, or only end ids), refuse otherwise."""
        out = out.clone()
        ends = list(self.end_token_ids)
        for r in empty.nonzero()[:, 0].tolist():
            if bool(torch.isneginf(logits[r]).all()):
                continue  # a fully masked input row comes back as it is (the contract)
            ids = allowed[r].nonzero()[:, 0].tolist()
            if not ids:
                raise TokenwiseError(f"row {r}: the grammar allows no token of logits of width "
                                     f"{logits.shape[1]} (the tokenizer has {self._vocab})")
            if len(ids) == 1 or set(ids) <= set(ends):
                out[r, ids[0]] = 0.0  # the only continuation: probability 1 whatever its logit
                continue
            raise TokenwiseError(
                f"row {r}: an earlier sampler in the chain dropped all {len(ids)} tokens the "
                "JSON grammar allows at this step; put JsonGrammar first in the Chain (before "
                "top_k, top_p, min_p and other truncating samplers)")
        return out

    def observe(self, chosen: Tensor) -> None:
        """Advance each row's matcher by its chosen token (``(B,)`` ids)."""
        if self._rows is None:
            raise TokenwiseError("JsonGrammar.observe() before the sampler saw any logits")
        ids = torch.as_tensor(chosen).reshape(-1).tolist()
        if len(ids) != len(self._rows):
            raise TokenwiseError(f"{len(ids)} chosen tokens for a batch of {len(self._rows)} "
                                 "rows")
        self._observed = True
        ends = set(self.end_token_ids)
        for r, (token, matcher) in enumerate(zip(ids, self._rows, strict=True)):
            if self._ended[r]:
                continue  # the decode loop ignores a finished row's tokens
            if token in ends:
                if not matcher.is_accepting():
                    raise TokenwiseError(f"row {r}: end token {token} chosen before the JSON "
                                         "document is complete; sample from JsonGrammar's "
                                         "output")
                self._ended[r] = True
                continue
            if not matcher.consume_token(token):
                reason = _first_line(matcher.get_error())
                raise TokenwiseError(f"row {r}: token {token} does not continue the JSON "
                                     f"document ({reason}); sample from JsonGrammar's output")


def _field(mapping: Mapping[str, Any], key: str, param: str, kind: type | tuple,
           allowed: str, required: bool = True) -> Any:
    if key not in mapping:
        if required:
            raise ResponseFormatError(f"{param}.{key}", f"missing; allowed: {allowed}")
        return None
    value = mapping[key]
    if not isinstance(value, kind):
        raise ResponseFormatError(f"{param}.{key}", f"{value!r}: allowed {allowed}")
    return value


def _unknown(mapping: Mapping[str, Any], known: set[str], param: str) -> None:
    extra = sorted(set(mapping) - known)
    if extra:
        raise ResponseFormatError(f"{param}.{extra[0]}",
                                  f"unknown field; allowed: {', '.join(sorted(known))}")


def from_response_format(response_format: Mapping[str, Any] | None, tokenizer: Any, *,
                         end_token_ids: Iterable[int] | None = None,
                         max_whitespace: int = MAX_WHITESPACE) -> JsonGrammar | None:
    """The sampler for OpenAI's ``response_format`` (None for plain text).

    ``{"type": "text"}`` (or None) needs no sampler; ``{"type": "json_object"}`` allows any
    JSON object; ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...},
    "strict": true, "description": ...}}`` allows the documents of ``schema``. The schema is
    enforced whatever ``strict`` says (a grammar cannot enforce it by halves).

    Args:
        response_format: the request's field, as a dict.
        tokenizer: the model's fast Hugging Face tokenizer.
        end_token_ids: ids that end a text (e.g. ``lm.end_token_ids``).
        max_whitespace: most whitespace characters between two JSON tokens.

    Returns:
        A :class:`JsonGrammar`, or None for plain text.

    Raises:
        ResponseFormatError: a bad field; ``param`` is its path (e.g.
            ``"response_format.json_schema.schema"``) and the message says what is allowed.
        TokenwiseError: the engine missing, or a tokenizer it cannot read (a server error,
            not the client's).

    Example:
        >>> from tokenwise.models import load
        >>> tok = load("tw-small").tokenizer
        >>> from_response_format({"type": "json_object"}, tok).schema is None
        True
        >>> from_response_format({"type": "json_schema", "json_schema": {"name": "x"}}, tok)
        Traceback (most recent call last):
        ...
        tokenwise.sampling.grammar.ResponseFormatError: response_format.json_schema.schema: ...
    """
    if response_format is None:
        return None
    param = "response_format"
    if not isinstance(response_format, Mapping):
        raise ResponseFormatError(param, f"{response_format!r}: allowed an object such as "
                                         '{"type": "json_object"}')
    kinds = ("text", "json_object", "json_schema")
    kind = _field(response_format, "type", param, str, "one of 'text', 'json_object', "
                                                       "'json_schema'")
    if kind not in kinds:
        raise ResponseFormatError(f"{param}.type", f"{kind!r}: allowed one of 'text', "
                                                   "'json_object', 'json_schema'")
    if kind in ("text", "json_object"):
        _unknown(response_format, {"type"}, param)
        if kind == "text":
            return None
        return JsonGrammar(tokenizer, None, end_token_ids=end_token_ids,
                           max_whitespace=max_whitespace)
    _unknown(response_format, {"type", "json_schema"}, param)
    spec = _field(response_format, "json_schema", param, Mapping,
                  'an object {"name": ..., "schema": {...}, "strict": true}')
    param = f"{param}.json_schema"
    _unknown(spec, {"name", "description", "schema", "strict"}, param)
    name = _field(spec, "name", param, str, "a string of a-z, A-Z, 0-9, _ and -, at most 64 "
                                            "characters")
    if not name or len(name) > 64 or not all(c.isascii() and (c.isalnum() or c in "_-")
                                             for c in name):
        raise ResponseFormatError(f"{param}.name", f"{name!r}: allowed a string of a-z, A-Z, "
                                                   "0-9, _ and -, 1 to 64 characters")
    _field(spec, "description", param, str, "a string", required=False)
    _field(spec, "strict", param, (bool, type(None)), "true, false or null", required=False)
    schema = _field(spec, "schema", param, Mapping, "a JSON schema object")
    try:
        return JsonGrammar(tokenizer, schema, end_token_ids=end_token_ids,
                           max_whitespace=max_whitespace)
    except TokenwiseError as exc:
        if str(exc).startswith("bad JSON schema"):
            raise ResponseFormatError(f"{param}.schema", str(exc)) from None
        raise
