"""Stop strings: where a generated text ends, and which part of it is safe to stream.

One rule serves every decode loop (:func:`~tokenwise.generation.generate`, entropy-adaptive
decoding, the server's batch runner and its vLLM backend): the text of a sequence is the
decoded text of its tokens (special tokens skipped), cut before the earliest stop string as
soon as one appears, and the sequence ends there.

A streamed delta must never show text that a stop string later removes, nor half a UTF-8
character, so :meth:`TextStream.push` releases only the text that cannot change: it holds
back a tail that could still grow into a stop string, and a trailing U+FFFD (a multi-byte
character whose remaining bytes are in the next token).

Example:
    >>> ts = TextStream(lambda ids: "".join(chr(i) for i in ids), stops=["\\nQ"])
    >>> [ts.push(ord(c)) for c in "ab\\nQ"]
    ['a', 'b', '', '']
    >>> ts.text, ts.stopped
    ('ab', True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tokenwise.errors import TokenwiseError


def check_stops(stop: str | Sequence[str] | None) -> list[str]:
    """The stop strings as a list; raise on an empty or non-string one.

    Args:
        stop: one string, several, or None (no stop strings).

    Returns:
        The stop strings, in the order given.

    Example:
        >>> check_stops("\\n"), check_stops(None)
        (['\\n'], [])
        >>> check_stops(["a", ""])
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: stop=['a', '']: allowed non-empty strings
    """
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise TokenwiseError(f"stop={stop!r}: allowed non-empty strings")
    return stops


class TextStream:
    """The text of one sequence as tokens arrive.

    Args:
        decode: token ids -> text (special tokens skipped).
        stops: strings that end the sequence; the text is cut before the first one.

    Attributes:
        ids: the tokens so far.
        text: the text so far, cut at a stop string when one was hit.
        sent: how many characters of ``text`` :meth:`push` has released.
        stopped: a stop string was hit.

    Example:
        >>> ts = TextStream(lambda ids: "".join(chr(i) for i in ids), stops=["b"])
        >>> ts.push(ord("a")), ts.push(ord("b")), ts.text, ts.stopped
        ('a', '', 'a', True)
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str] | None = None):
        self.decode = decode
        self.stops = [s for s in (stops or []) if s]
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def _held_back(self, text: str) -> int:
        """Characters at the end of ``text`` that may still change."""
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        if text[len(text) - hold - 1:len(text) - hold] == "\ufffd":
            hold += 1
        return hold

    def push(self, token_id: int) -> str:
        """Add a token; return the newly releasable text (may be empty).

        Args:
            token_id: the next token of the sequence.

        Raises:
            RuntimeError: the sequence already ended at a stop string.
        """
        if self.stopped:
            raise RuntimeError("the sequence already ended at a stop string")
        self.ids.append(token_id)
        full = self.decode(self.ids)
        hits = [full.index(s) for s in self.stops if s in full]
        if hits:
            self.text, self.stopped = full[: min(hits)], True
            return self.flush()
        self.text = full
        safe = len(full) - self._held_back(full)
        if safe <= self.sent:
            return ""
        delta, self.sent = full[self.sent:safe], safe
        return delta

    def flush(self) -> str:
        """Release everything not yet released (at the end of the sequence)."""
        delta, self.sent = self.text[self.sent:], len(self.text)
        return delta
