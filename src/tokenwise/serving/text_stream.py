"""Incremental text of one generated sequence: stop strings, and the safe part to stream.

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

from collections.abc import Callable


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
        """Add a token; return the newly releasable text (may be empty)."""
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
