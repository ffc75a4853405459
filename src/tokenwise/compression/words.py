"""Words of a text as character spans: splitting, protected spans, and joining kept words.

Every compressor decides per *word*; a word is a span ``[start, end)`` of the original
string, so a compressed text is built by slicing the original and never re-decodes token
pieces (no garbled bytes, no lost accents). Chinese and Japanese characters are one word
each (those scripts put no spaces between words); Hangul runs, Latin words, numbers and
URLs are one word each; every other non-space symbol is a word of its own.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

# Scripts written without spaces: every character is its own word.
_CJK_RANGES = (
    (0x3040, 0x30FF),    # Hiragana, Katakana
    (0x3400, 0x4DBF),    # CJK Extension A
    (0x4E00, 0x9FFF),    # CJK Unified Ideographs
    (0xF900, 0xFAFF),    # CJK Compatibility Ideographs
    (0x20000, 0x3FFFF),  # CJK Extensions B..H
)
# CJK punctuation and full-width forms: no space before them either.
_CJK_PUNCT_RANGES = ((0x3000, 0x303F), (0xFF00, 0xFFEF))
_CJK_CLASS = "".join(f"{chr(a)}-{chr(b)}" for a, b in _CJK_RANGES)
_CLOSING = set(".,;:!?)]}%…'\"”’»") | {chr(c) for a, b in _CJK_PUNCT_RANGES
                                       for c in range(a, b + 1)}



def _mark_class() -> str:
    # Combining marks (accents in NFD text, Indic vowel signs) belong to the letters before
    # them; Python's \w leaves them out, so list them (Basic Multilingual Plane).
    ranges, start, prev = [], None, None
    for c in range(0x300, 0x10000):
        if unicodedata.category(chr(c)).startswith("M"):
            if start is None:
                start = c
            elif c != prev + 1:
                ranges.append((start, prev))
                start = c
            prev = c
    ranges.append((start, prev))
    return "".join(f"{chr(a)}-{chr(b)}" for a, b in ranges)


_MARKS = _mark_class()
_LETTER = rf"[^\W\d_{_CJK_CLASS}]"
_URL = r"(?:https?://|ftp://|www\.)[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]}]"
_NUMBER = r"[-+]?\d+(?:[.,:]\d+)*%?"
_WORD_RE = re.compile(
    rf"{_URL}"                          # a URL is one word
    rf"|{_NUMBER}"                      # so is a number: 3.14, 1,000, 12:30, 7%
    rf"|[{_CJK_CLASS}]"                 # one CJK character
    rf"|{_LETTER}(?:{_LETTER}|[{_MARKS}])*"  # letters and their marks,
    rf"(?:['’]{_LETTER}(?:{_LETTER}|[{_MARKS}])*)*"  # with inner apostrophes
    r"|[\d_]+"                          # digits glued to underscores (ids like a_1 split)
    r"|[^\s\w]",                        # any other symbol alone
    re.UNICODE,
)

#: Structured spans kept whole by default: fenced and inline code, URLs, e-mail
#: addresses, numbers, JSON keys, short double-quoted strings, and markup tags.
PROTECTED_PATTERNS: dict[str, re.Pattern[str]] = {
    "code_fence": re.compile(r"```.*?(?:```|\Z)", re.DOTALL),
    "inline_code": re.compile(r"(?<!`)`[^`\n]+`(?!`)"),
    "url": re.compile(_URL),
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "number": re.compile(r"(?<![^\W\d_])" + _NUMBER),
    "json_key": re.compile(r"\"[^\"\n]{1,100}\"\s*:"),
    "quoted": re.compile(r"\"[^\"\n]{1,200}\"|“[^”\n]{1,200}”"),
    "tag": re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>\n]{0,200})?/?>"),
}


#: English function words (articles, prepositions, conjunctions, relative pronouns,
#: auxiliaries): they open phrases in Selective Context and are never question keywords.
_FUNCTION_WORDS = (
    "a an the of in on at to for with by from into onto over under about after before "
    "between through during without within and or but nor so yet because although while "
    "if then than that which who whom whose where when is are was were be been being has "
    "have had do does did will would can could should may might must not"
)
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
#: Words that ask rather than say what is asked about.
WH_WORDS = frozenset({"what", "who", "whom", "whose", "where", "when", "which", "why", "how"})


def code_points(text: str) -> np.ndarray:
    """The text as an array of Unicode code points (one entry per ``str`` index).

    Example:
        >>> code_points("a中").tolist()
        [97, 20013]
    """
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def is_cjk(cps: np.ndarray) -> np.ndarray:
    """Which code points belong to a script written without spaces (Han, kana).

    Example:
        >>> is_cjk(code_points("a中の")).tolist()
        [False, True, True]
    """
    out = np.zeros(cps.shape, dtype=bool)
    for lo, hi in _CJK_RANGES:
        out |= (cps >= lo) & (cps <= hi)
    return out


def is_han(cps: np.ndarray) -> np.ndarray:
    """Which code points are Han ideographs (kana excluded: a kana run attaches to its word).

    Example:
        >>> is_han(code_points("a中の")).tolist()
        [False, True, False]
    """
    out = np.zeros(cps.shape, dtype=bool)
    for lo, hi in _CJK_RANGES[1:]:
        out |= (cps >= lo) & (cps <= hi)
    return out


def split_words(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``text`` into words, returned as ``(starts, ends)`` character offsets.

    Args:
        text: any text.

    Returns:
        two ``int64`` arrays of equal length; ``text[starts[i]:ends[i]]`` is word ``i``.

    Example:
        >>> s, e = split_words("Visit https://a.org/x, 北京 3.5 km!")
        >>> [ "Visit https://a.org/x, 北京 3.5 km!"[a:b] for a, b in zip(s, e)]
        ['Visit', 'https://a.org/x', ',', '北', '京', '3.5', 'km', '!']
    """
    spans = [m.span() for m in _WORD_RE.finditer(text)]
    if not spans:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    arr = np.asarray(spans, dtype=np.int64)  # (W, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def disjoint_spans(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spans in order, each moved past the text of the ones before it, so none overlap.

    A span whose text earlier spans already hold becomes empty (at the end of what holds
    it), so a compressor that keeps it adds no text: no character is ever kept twice. Spans
    that are empty to begin with hold nothing and stay where they are.

    Args:
        starts, ends: ``(W,)`` word spans in text order.

    Returns:
        ``(starts, ends)``, new int64 arrays.

    Example:
        >>> s, e = disjoint_spans(np.array([0, 0, 2, 3, 1]), np.array([1, 2, 4, 4, 1]))
        >>> s.tolist(), e.tolist()
        ([0, 1, 2, 4, 1], [1, 2, 4, 4, 1])
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if len(starts) == 0:
        return starts.copy(), ends.copy()
    solid = starts < ends  # (W,) spans that hold text
    held = np.maximum.accumulate(np.where(solid, ends, 0))  # (W,) end of the text held so far
    reach = np.concatenate([[0], held[:-1]])  # (W,) ... by the spans before each
    new_starts = np.where(solid, np.maximum(starts, reach), starts)
    return new_starts, np.maximum(ends, new_starts)


def protected_spans(text: str, kinds: tuple[str, ...] | None = None) -> np.ndarray:
    """Spans of ``text`` that compression must keep whole, merged and sorted.

    Args:
        text: the text.
        kinds: which of :data:`PROTECTED_PATTERNS` to look for (default: all).

    Returns:
        an ``(S, 2)`` int64 array of non-overlapping ``[start, end)`` spans.

    Example:
        >>> t = 'see {"id": 7} at www.x.org'
        >>> [t[a:b] for a, b in protected_spans(t)]
        ['"id":', '7', 'www.x.org']
    """
    names = tuple(PROTECTED_PATTERNS) if kinds is None else kinds
    unknown = [k for k in names if k not in PROTECTED_PATTERNS]
    if unknown:
        raise ValueError(f"unknown protected span kinds {unknown}; allowed: "
                         f"{', '.join(PROTECTED_PATTERNS)}")
    found = [m.span() for k in names for m in PROTECTED_PATTERNS[k].finditer(text)
             if m.end() > m.start()]
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    spans = np.asarray(sorted(found), dtype=np.int64)  # (S, 2)
    # Merge overlapping spans: a new group starts where a span begins after every earlier end.
    run_end = np.maximum.accumulate(spans[:, 1])
    new = np.ones(len(spans), dtype=bool)
    new[1:] = spans[1:, 0] >= run_end[:-1]
    firsts = np.flatnonzero(new)
    return np.stack([spans[firsts, 0], np.maximum.reduceat(spans[:, 1], firsts)], axis=1)


def overlaps(starts: np.ndarray, ends: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Which words ``[starts, ends)`` overlap any of the sorted, disjoint ``spans``.

    Example:
        >>> overlaps(np.array([0, 4, 9]), np.array([3, 8, 12]), np.array([[5, 6]])).tolist()
        [False, True, False]
    """
    if len(spans) == 0 or len(starts) == 0:
        return np.zeros(len(starts), dtype=bool)
    # The last span that starts before the word ends is the only one that can overlap it.
    idx = np.searchsorted(spans[:, 0], ends, side="left") - 1  # (W,)
    safe = np.clip(idx, 0, None)
    return (idx >= 0) & (spans[safe, 1] > starts)


def match_phrases(text: str, starts: np.ndarray, ends: np.ndarray,
                  phrases: tuple[str, ...]) -> np.ndarray:
    """Words covered by an occurrence of a phrase that starts and ends on word boundaries.

    Args:
        text: the text the spans index.
        starts, ends: word spans (sorted).
        phrases: literal strings (e.g. force tokens); matched case-sensitively.

    Example:
        >>> t = "New York is not Newark."
        >>> s, e = split_words(t)
        >>> match_phrases(t, s, e, ("New York", "Ne")).tolist()
        [True, True, False, False, False, False]
    """
    hit = np.zeros(len(starts), dtype=bool)
    if len(starts) == 0:
        return hit
    start_set, end_set = set(starts.tolist()), set(ends.tolist())
    for phrase in phrases:
        for m in re.finditer(re.escape(phrase), text):
            if m.start() in start_set and m.end() in end_set:
                lo = np.searchsorted(starts, m.start(), side="left")
                hi = np.searchsorted(ends, m.end(), side="right")
                hit[lo:hi] = True
    return hit


def render(text: str, starts: np.ndarray, ends: np.ndarray, keep: np.ndarray,
           cps: np.ndarray | None = None, max_newlines: int = 2) -> str:
    """Join the kept words of ``text`` into the compressed text.

    Words that touched in the original still touch (``"world."``); a line break between two
    kept words survives (at most ``max_newlines`` in a row), so lists, code and chat turns keep
    their lines; closing punctuation and CJK characters never get a space inserted before
    them; every other gap becomes one space.

    Args:
        text: the original text.
        starts, ends: word spans.
        keep: ``(W,)`` bool, which words to keep.
        cps: :func:`code_points` of ``text`` (computed if not given).
        max_newlines: the most line breaks kept in a row.

    Example:
        >>> t = "Hello big world.\\nNext 北京市 line"
        >>> s, e = split_words(t)
        >>> render(t, s, e, np.array([1, 0, 1, 1, 0, 1, 0, 1, 0], dtype=bool))
        'Hello world.\\n北市'
    """
    idx = np.flatnonzero(keep & (ends > starts))  # a word with no text adds nothing
    if len(idx) == 0:
        return ""
    if cps is None:
        cps = code_points(text)
    ks, ke = starts[idx], ends[idx]  # (K,)
    # Line breaks before each position: how many fall between two kept words.
    nl_before = np.concatenate([[0], np.cumsum(cps == 10)])  # (L+1,)
    gap_nl = nl_before[ks[1:]] - nl_before[ke[:-1]]  # (K-1,)
    touching = ks[1:] == ke[:-1]
    first_cp = cps[ks[1:]]
    prev_cp = cps[ke[:-1] - 1]
    closing = np.isin(first_cp, _CLOSING_CPS)
    # Punctuation that followed a dropped word with no space stays attached.
    glued = closing & ~_is_space(cps[np.maximum(ks[1:] - 1, 0)])
    cjk_pair = (is_cjk(first_cp) | closing) & (is_cjk(prev_cp) | np.isin(prev_cp, _CJK_PUNCT))
    sep = np.where(gap_nl > 0, 2, np.where(touching | glued | cjk_pair, 0, 1))  # (K-1,)
    nls = np.minimum(gap_nl, max_newlines)
    pieces = [text[a:b] for a, b in zip(ks.tolist(), ke.tolist(), strict=True)]
    seps = ["", *("\n" * n if s == 2 else " " if s == 1 else ""
                  for s, n in zip(sep.tolist(), nls.tolist(), strict=True))]
    return "".join(a + b for a, b in zip(seps, pieces, strict=True))


_CLOSING_CPS = np.array(sorted(ord(c) for c in _CLOSING), dtype=np.uint32)
_CJK_PUNCT = np.array([c for a, b in _CJK_PUNCT_RANGES for c in range(a, b + 1)],
                      dtype=np.uint32)
_SPACE_CPS = np.array(sorted(ord(c) for c in " \t\n\r\v\f\u00a0\u2028\u2029\u3000"),
                      dtype=np.uint32)


def _is_space(cps: np.ndarray) -> np.ndarray:
    return np.isin(cps, _SPACE_CPS)


def question_words(question: str | None) -> frozenset[str]:
    """The question's keywords, lowercased: its words less function words and wh-words.

    These are the words a question-aware keep rule forces wherever they occur in the text
    ("What is the code of Tavoun?" forces "code" and "tavoun", not "the" or "what", which
    occur in every line and would take the budget).

    Example:
        >>> sorted(question_words("What is the code of Tavoun?"))
        ['code', 'tavoun']
    """
    if not question:
        return frozenset()
    s, e = split_words(question)
    found = (question[a:b].lower() for a, b in zip(s.tolist(), e.tolist(), strict=True))
    return frozenset(w for w in found if w[:1].isalnum() and w not in FUNCTION_WORDS
                     and w not in WH_WORDS)


def strip_spans(cps: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Move span edges inward past whitespace (token offsets may include a leading space).

    Example:
        >>> strip_spans(code_points(" ab "), np.array([0]), np.array([4]))
        (array([1]), array([3]))
    """
    starts, ends = starts.copy(), ends.copy()
    n = len(cps)
    for _ in range(4):  # a token carries at most a few spaces at an edge
        lead = (starts < ends) & _is_space(cps[np.clip(starts, 0, max(n - 1, 0))])
        trail = (starts < ends) & _is_space(cps[np.clip(ends - 1, 0, max(n - 1, 0))])
        if not (lead.any() or trail.any()):
            break
        starts = starts + lead
        ends = ends - (trail & (starts < ends))
    return starts, ends
