"""The layout of one compress call: segments in, rendered text out, counted on the target.

Selection (which words to keep) needs four things from the input it never decides itself:
the *segments* (a text, its paragraphs, contexts, or chat messages, and which of them may be
compressed), how a keep mask *renders* back into each segment's text, how the segments
*assemble* into the output (messages keep their roles; a context dropped by the filter
disappears), and how that output is *counted* on the target model's tokenizer. They live
here, so :class:`~tokenwise.compression.base.SelectiveCompressor` is left with the choice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenwise.compression import words
from tokenwise.compression.counting import TokenCounter
from tokenwise.compression.request import DEFAULT_ROLES
from tokenwise.errors import TokenwiseError

#: What joins segments (contexts, messages, paragraphs) into the output text.
SEPARATOR = "\n\n"
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n\s*")


@dataclass
class Prompt:
    """The input split into segments (a text, its paragraphs, contexts, or messages).

    Attributes:
        kind: ``"text"``, ``"contexts"`` or ``"messages"``.
        texts: every segment's text.
        compressible: which segments may be compressed (system/tool messages may not).
        source: the input as given (the text, the list of contexts, or the messages).
        split: True when a text was split into paragraphs.
    """

    kind: str
    texts: list[str]
    compressible: list[bool]
    source: Any
    split: bool = False


def parse_input(text_or_messages: Any, roles: Sequence[str] = DEFAULT_ROLES,
                split_paragraphs: bool = False) -> Prompt:
    """Turn a text, a list of texts (contexts) or chat messages into segments.

    Args:
        text_or_messages: a string; a list of strings (contexts, compressed as separate
            documents); or a list of ``{"role": ..., "content": str}`` messages.
        roles: the message roles that may be compressed.
        split_paragraphs: split a single text at blank lines (for the context filter).

    Example:
        >>> p = parse_input([{"role": "system", "content": "Be brief."},
        ...                  {"role": "user", "content": "Tell me."}])
        >>> p.kind, p.compressible
        ('messages', [False, True])
    """
    if isinstance(text_or_messages, str):
        if not text_or_messages.strip():
            raise TokenwiseError("the text to compress is empty (or only whitespace)")
        if split_paragraphs:
            parts = [p for p in _PARAGRAPH_RE.split(text_or_messages.strip()) if p.strip()]
            return Prompt("text", parts, [True] * len(parts), text_or_messages,
                          split=len(parts) > 1)
        return Prompt("text", [text_or_messages], [True], text_or_messages)
    if not isinstance(text_or_messages, (list, tuple)) or not text_or_messages:
        raise TokenwiseError(
            f"cannot compress {type(text_or_messages).__name__} {text_or_messages!r:.60}: give a "
            "non-empty string, a list of strings, or a list of {'role', 'content'} messages"
        )
    items = list(text_or_messages)
    if all(isinstance(x, str) for x in items):
        if not any(x.strip() for x in items):
            raise TokenwiseError("every context to compress is empty")
        return Prompt("contexts", items, [bool(x.strip()) for x in items], items)
    if isinstance(roles, str):
        roles = (roles,)
    role_set = set(roles)
    texts, compressible = [], []
    for i, msg in enumerate(items):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise TokenwiseError(
                f"message {i} is {msg!r:.80}; chat messages are dicts with 'role' and 'content' "
                "(or give a list of strings)"
            )
        content = msg["content"]
        if not isinstance(content, str):
            raise TokenwiseError(
                f"message {i} has content of type {type(content).__name__}; only string "
                "contents can be compressed (join multi-part contents first)"
            )
        texts.append(content)
        compressible.append(msg["role"] in role_set and bool(content.strip()))
    if not any(compressible):
        raise TokenwiseError(
            f"no message to compress: none with role in {sorted(role_set)} has text "
            f"(roles present: {sorted({m['role'] for m in items})}); pass roles=... to choose"
        )
    return Prompt("messages", texts, compressible, items)


@dataclass
class WordSpans:
    """The scored words laid on the compressible texts, ready to render a keep mask.

    Args:
        texts: the compressible texts.
        starts, ends: ``(W,)`` character spans into their own text.
        segment: ``(W,)`` index into ``texts``, non-decreasing.
        keep_newlines: render every line of a text, even between dropped words.

    Example:
        >>> s = WordSpans(["ab cd", "ef"], np.array([0, 3, 0]), np.array([2, 5, 2]),
        ...               np.array([0, 0, 1]))
        >>> s.words, s.render(np.array([False, True, True]))
        (['ab', 'cd', 'ef'], ['cd', 'ef'])
    """

    texts: list[str]
    starts: np.ndarray
    ends: np.ndarray
    segment: np.ndarray
    keep_newlines: bool = False
    words: list[str] = field(init=False)
    #: ``(T+1,)`` word range ``[bounds[j], bounds[j+1])`` of text ``j``.
    bounds: np.ndarray = field(init=False)
    _cps: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.words = [self.texts[g][a:b] for g, a, b in zip(
            self.segment.tolist(), self.starts.tolist(), self.ends.tolist(), strict=True)]
        self.bounds = np.searchsorted(self.segment, np.arange(len(self.texts) + 1))
        self._cps = [words.code_points(t) for t in self.texts]

    def render(self, keep: np.ndarray) -> list[str]:
        """Each text with only the words ``keep`` marks."""
        b = self.bounds
        return [render_text(self.texts[j], self.starts[b[j]:b[j + 1]], self.ends[b[j]:b[j + 1]],
                            keep[b[j]:b[j + 1]], self._cps[j], self.keep_newlines)
                for j in range(len(self.texts))]


def render_text(text: str, starts: np.ndarray, ends: np.ndarray, keep: np.ndarray,
                cps: np.ndarray, keep_newlines: bool) -> str:
    """:func:`words.render`, or with ``keep_newlines`` every line rendered on its own.

    Example:
        >>> t = "a b\\nc d"
        >>> s, e = words.split_words(t)
        >>> keep = np.array([True, False, False, True])
        >>> render_text(t, s, e, keep, words.code_points(t), True)
        'a\\nd'
    """
    if not keep_newlines:
        return words.render(text, starts, ends, keep, cps)
    # Forcing "\n" keeps every line: render each line's kept words on their own.
    out, pos = [], 0
    line_ends = [m.start() for m in re.finditer("\n", text)] + [len(text)]
    for end in line_ends:
        lo = np.searchsorted(starts, pos, side="left")
        hi = np.searchsorted(starts, end, side="left")
        out.append(words.render(text, starts[lo:hi], ends[lo:hi], keep[lo:hi], cps))
        pos = end + 1
    return "\n".join(out)


class Layout:
    """One call's input as segments: what is compressed, how the output assembles and counts.

    Args:
        prompt: the parsed input (:func:`parse_input`).
        counter: the target model's token counter.

    Attributes:
        compressed: indices (into ``prompt.texts``) of the segments that may be compressed.
        texts: their texts, in order.
        fixed_tokens: tokens of the segments left alone (messages only; 0 otherwise, where
            the whole output is counted at once).

    Example:
        >>> lay = Layout(parse_input(["ab", "", "cd"]), TokenCounter(len, "chars"))
        >>> lay.texts, lay.assemble(["a", "c"], np.array([True, True]))
        (['ab', 'cd'], ('a\\n\\nc', ['a', '', 'c']))
        >>> lay.assemble(["a", "c"], np.array([True, False]))  # the filter dropped "cd"
        ('a', ['a', ''])
    """

    def __init__(self, prompt: Prompt, counter: TokenCounter):
        self.prompt = prompt
        self.counter = counter
        self.compressed = [i for i, c in enumerate(prompt.compressible) if c]
        self.texts = [prompt.texts[i] for i in self.compressed]
        fixed = [t for t, c in zip(prompt.texts, prompt.compressible, strict=True) if not c]
        self.fixed_tokens = (int(counter.count_each(fixed).sum()) if prompt.kind == "messages"
                             else 0)

    @property
    def whole(self) -> str | None:
        """The input as one text, counted whole (None for messages, counted one by one)."""
        if self.prompt.kind == "messages":
            return None
        if self.prompt.kind == "contexts":
            return SEPARATOR.join(self.prompt.texts)
        return self.prompt.source

    @property
    def single(self) -> bool:
        """Whether the input is one text, not split into paragraphs."""
        return self.prompt.kind == "text" and not self.prompt.split

    def segment_alive(self, alive: np.ndarray) -> list[bool]:
        """Per segment of the prompt: whether it survives (``alive`` per compressed one)."""
        ok = [True] * len(self.prompt.texts)
        for j, i in enumerate(self.compressed):
            ok[i] = bool(alive[j])
        return ok

    def assemble(self, rendered: list[str], alive: np.ndarray) -> tuple[str, list[str]]:
        """The output text and its parts, from each compressed segment's rendered text.

        Args:
            rendered: the new text of every compressed segment.
            alive: ``(T,)`` whether each compressed segment survives the context filter
                (messages always keep their place).

        Returns:
            ``(text, parts)``: for messages, every message's content; otherwise the
            surviving segments.
        """
        out = list(self.prompt.texts)
        for j, i in enumerate(self.compressed):
            out[i] = rendered[j]
        if self.prompt.kind == "messages":
            return SEPARATOR.join(t for t in out if t), out
        kept = [t for t, ok in zip(out, self.segment_alive(alive), strict=True) if ok]
        if self.single:
            return kept[0] if kept else "", kept
        return SEPARATOR.join(t for t in kept if t), kept

    def count(self, text: str, parts: list[str]) -> int:
        """Tokens of an output from :meth:`assemble` on the target tokenizer."""
        if self.prompt.kind == "messages":
            return self.fixed_tokens + int(self.counter.count_each(
                [parts[i] for i in self.compressed]).sum())
        return self.counter.count(text)

    def tokens_before(self, whole_count: int) -> int:
        """Tokens of the input, given :attr:`whole`'s count (ignored for messages)."""
        if self.whole is not None:
            return whole_count
        return self.count("", self.prompt.texts)

    def outputs(self, parts: list[str]) -> tuple[list[dict[str, Any]] | None, list[str] | None]:
        """``(messages, contexts)`` of the result: the one that matches the input's form."""
        if self.prompt.kind == "messages":
            return [{**m, "content": c}
                    for m, c in zip(self.prompt.source, parts, strict=True)], None
        if self.prompt.kind == "contexts":
            return None, parts
        return None, None
