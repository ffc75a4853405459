"""`CompressionRequest`: everything one compress call asks for, checked once.

The budget (``rate``, ``target_tokens`` or ``threshold``), the keep rules (force tokens,
digits, protected structure, the question), how the input is read (message roles, the
context filter) and how words are chosen (``percentile``) travel together in one frozen,
validated object, so a compressor reads them from the call in progress and never from
its own (shared, cached) instance. What a single method cannot honour (a threshold outside
its score range, a force token its tokenizer cannot represent) is checked by the method's
:meth:`~tokenwise.compression.base.Compressor.check_request`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError

#: Message roles compressed by default; system and tool messages are left alone.
DEFAULT_ROLES = ("user", "assistant")
PERCENTILE_MODES = ("global", "chunk")


@dataclass(frozen=True)
class Budget:
    """How much to keep: exactly one of a rate, a token target, or a score threshold."""

    rate: float | None = None
    target_tokens: int | None = None
    threshold: float | None = None


def check_budget(rate: Any = None, target_tokens: Any = None,
                 threshold: Any = None) -> Budget:
    """Check that exactly one budget is given and that it is in range.

    Example:
        >>> check_budget(rate=0.5).rate
        0.5
        >>> check_budget(rate=1.5)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: rate=1.5 is outside (0, 1]; ...
    """
    given = {k: v for k, v in (("rate", rate), ("target_tokens", target_tokens),
                               ("threshold", threshold)) if v is not None}
    if len(given) != 1:
        got = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "none"
        raise TokenwiseError(
            f"give exactly one of rate= (fraction of tokens kept, in (0, 1]), target_tokens= "
            f"(tokens to keep, > 0) or threshold= (keep words scoring at least it); got {got}"
        )
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0 < rate <= 1):
            raise TokenwiseError(
                f"rate={rate!r} is outside (0, 1]; it is the fraction of tokens to keep"
            )
        return Budget(rate=float(rate))
    if target_tokens is not None:
        if (isinstance(target_tokens, bool) or not isinstance(target_tokens, (int, np.integer))
                or target_tokens <= 0):
            raise TokenwiseError(
                f"target_tokens={target_tokens!r}: must be a whole number of tokens > 0"
            )
        return Budget(target_tokens=int(target_tokens))
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)):
        raise TokenwiseError(f"threshold={threshold!r}: must be a finite number")
    return Budget(threshold=float(threshold))


def check_question(question: Any) -> None:
    """Raise unless ``question`` is None or a string."""
    if question is not None and not isinstance(question, str):
        raise TokenwiseError(f"question={question!r} must be a string")


def check_force_tokens(force_tokens: Any) -> tuple[tuple[str, ...], bool]:
    """Validate force tokens; returns them without line breaks, and whether ``"\\n"`` was one.

    Line breaks are never dropped between kept words (see :func:`words.render`); asking to
    force ``"\\n"`` additionally keeps every line break, even between dropped words.

    Example:
        >>> check_force_tokens(["?", "\\n"])
        (('?',), True)
    """
    if isinstance(force_tokens, str):
        force_tokens = (force_tokens,)
    out, newline = [], False
    for tok in force_tokens:
        if not isinstance(tok, str):
            raise TokenwiseError(f"force token {tok!r} is a {type(tok).__name__}; give strings")
        if tok in ("\n", "\r\n"):
            newline = True
        elif not tok.strip():
            raise TokenwiseError(
                f"force token {tok!r} is empty or only whitespace; it would not tokenize into "
                "a word (line breaks: force '\\n')"
            )
        else:
            out.append(tok)
    return tuple(dict.fromkeys(out)), newline


@dataclass(frozen=True)
class CompressionRequest:
    """One compress call's settings, validated when made (the arguments of
    :func:`tokenwise.compression.compress` other than the input, the method and its model).

    Args:
        rate: fraction of the tokens to keep, in (0, 1].
        target_tokens: tokens to keep.
        threshold: keep every word scoring at least this. Exactly one of the three.
        question: the question the compressed prompt must answer.
        force_tokens: strings always kept where they occur as whole words (``"\\n"``: keep
            every line break).
        keep_digits: keep every word containing a digit.
        protect: keep structured spans whole: True, False, or a tuple of kinds.
        target_model: whose tokenizer counts tokens (see
            :meth:`~tokenwise.compression.TokenCounter.resolve`).
        roles: message roles that may be compressed.
        percentile: ``"global"`` or ``"chunk"``.
        context_filter: first drop whole contexts whose mean word score is low.
        context_rate: fraction of contexts the filter keeps.

    Attributes:
        budget: the checked budget.
        phrases: the force tokens other than line breaks, each once.
        keep_newlines: whether ``"\\n"`` was a force token.

    Example:
        >>> r = CompressionRequest(rate=0.5, force_tokens=["code", "\\n"])
        >>> r.budget.rate, r.phrases, r.keep_newlines
        (0.5, ('code',), True)
        >>> CompressionRequest(rate=0.5, percentile="row")
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: percentile='row': allowed ('global', 'chunk')
    """

    rate: float | None = None
    target_tokens: int | None = None
    threshold: float | None = None
    question: str | None = None
    force_tokens: Sequence[str] = ()
    keep_digits: bool = False
    protect: bool | Sequence[str] = True
    target_model: Any = None
    roles: Sequence[str] = DEFAULT_ROLES
    percentile: str = "global"
    context_filter: bool = False
    context_rate: float | None = None
    budget: Budget = field(init=False, repr=False, compare=False)
    phrases: tuple[str, ...] = field(init=False, repr=False, compare=False)
    keep_newlines: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        budget = check_budget(self.rate, self.target_tokens, self.threshold)
        if self.percentile not in PERCENTILE_MODES:
            raise TokenwiseError(f"percentile={self.percentile!r}: allowed {PERCENTILE_MODES}")
        if self.context_filter and budget.threshold is not None and self.context_rate is None:
            raise TokenwiseError("context_filter with threshold= needs context_rate= as well")
        if self.context_rate is not None and not (0 < self.context_rate <= 1):
            raise TokenwiseError(f"context_rate={self.context_rate!r} is outside (0, 1]")
        check_question(self.question)
        phrases, keep_newlines = check_force_tokens(self.force_tokens)
        # Frozen: the derived fields are set once, here, and never again.
        set_ = object.__setattr__
        if isinstance(self.roles, str):
            set_(self, "roles", (self.roles,))
        set_(self, "budget", budget)
        set_(self, "phrases", phrases)
        set_(self, "keep_newlines", keep_newlines)
