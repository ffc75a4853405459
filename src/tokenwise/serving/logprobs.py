"""Per-token log-probabilities in OpenAI's two wire formats, each token with its entropy.

Chat (``choices[i].logprobs.content``): one object per token,
``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}], "entropy"}``.
Completions (``choices[i].logprobs``): parallel lists ``tokens``, ``token_logprobs``,
``top_logprobs`` (one ``{token: logprob}`` dict per token), ``text_offset``, and
``token_entropies``. ``entropy`` is the entropy in nats of the model's own next-token
distribution at that step (before any sampler), the same number as
:attr:`tokenwise.generation.TokenRecord.entropy`.

A reply held to a constraint (``response_format`` JSON, a forced tool call) also reports
``constrained_entropy`` per token (completions: ``token_constrained_entropies``): the
entropy of the model's distribution renormalised over the tokens the constraint allowed at
that step (0 where it allowed one). It is absent when no constraint is active, and null for
an echoed prompt token.

``bytes`` are the token's exact bytes: a byte-level BPE token may hold part of a UTF-8
character, whose text alone shows as U+FFFD.

With ``echo`` the completions lists start with the prompt's tokens (:func:`echo_logprobs`):
the first prompt token has ``null`` logprob, entropy and top alternatives (nothing predicts
it), and ``text_offset`` runs on through the prompt into the completion, each offset a
character position in the echoed ``text``.

Example:
    >>> tok = WireToken(id=5, text="hi", bytes=[104, 105], logprob=-0.5, entropy=1.2)
    >>> chat_entry(tok)["entropy"]
    1.2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any


@dataclass(frozen=True)
class Alternative:
    """One of the most likely tokens at a step."""

    text: str
    bytes: list[int]
    logprob: float


@dataclass(frozen=True)
class WireToken:
    """A generated token as the wire formats need it.

    Attributes:
        id: token id.
        text: decoded text of the token alone.
        bytes: its exact bytes.
        logprob: its log-probability under the model (nats); ``None`` when the engine did
            not compute it (the vLLM engine, for a request that asked for no logprobs).
        entropy: entropy of the model's distribution at this step (nats); ``None`` as for
            ``logprob``.
        top: the most likely tokens at this step, best first (empty when not asked for).
        model: the model that wrote it (entropy-adaptive decoding uses two).
        constrained_entropy: entropy (nats) of the model's distribution renormalised over the
            tokens the row's constraint allowed; None without a constraint.
    """

    id: int
    text: str
    bytes: list[int]
    logprob: float | None
    entropy: float | None
    top: list[Alternative] = field(default_factory=list)
    model: str = ""
    constrained_entropy: float | None = None


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's printable stand-ins for the 256 byte values (byte-level BPE vocabularies).
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, codes, strict=True)}


class TokenBytes:
    """Text and exact bytes of single tokens of one tokenizer (cached per id).

    Args:
        tokenizer: a Hugging Face tokenizer.

    Example:
        >>> from tokenwise.models import load
        >>> tb = TokenBytes(load("tw-small").tokenizer)
        >>> ids = load("tw-small").encode("é")
        >>> b"".join(bytes(tb.bytes(i)) for i in ids).decode()
        'é'
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def _get(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self._cache:
            text = self.tokenizer.decode([token_id])
            raw = None
            if self.byte_level:
                piece = self.tokenizer.convert_ids_to_tokens(token_id)
                table = _byte_decoder()
                if isinstance(piece, str) and all(ch in table for ch in piece):
                    raw = [table[ch] for ch in piece]
            self._cache[token_id] = (text, raw if raw is not None else list(text.encode()))
        return self._cache[token_id]

    def text(self, token_id: int) -> str:
        """The token's text on its own."""
        return self._get(token_id)[0]

    def bytes(self, token_id: int) -> list[int]:
        """The token's exact bytes."""
        return self._get(token_id)[1]


def chat_entry(tok: WireToken) -> dict[str, Any]:
    """One token of ``logprobs.content`` in a chat response (``constrained_entropy`` only
    for a token written under a constraint).

    Example:
        >>> t = WireToken(1, "a", [97], -0.1, 0.3, [Alternative("a", [97], -0.1)])
        >>> chat_entry(t)["top_logprobs"]
        [{'token': 'a', 'logprob': -0.1, 'bytes': [97]}]
        >>> chat_entry(WireToken(1, "a", [97], -0.1, 0.3, constrained_entropy=0.0))["entropy"]
        0.3
    """
    entry = {"token": tok.text, "logprob": tok.logprob, "bytes": tok.bytes,
             "top_logprobs": [{"token": a.text, "logprob": a.logprob, "bytes": a.bytes}
                              for a in tok.top],
             "entropy": tok.entropy}
    if tok.constrained_entropy is not None:
        entry["constrained_entropy"] = tok.constrained_entropy
    return entry


def chat_logprobs(tokens: list[WireToken]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat response."""
    return {"content": [chat_entry(t) for t in tokens], "refusal": None}


def completion_logprobs(tokens: list[WireToken], start_offset: int = 0,
                        offsets: list[int] | None = None) -> dict[str, Any]:
    """``choices[i].logprobs`` of a completions response (offsets count characters of the
    generated text from ``start_offset``, unless ``offsets`` gives them).

    Where two alternatives decode to the same text the dict keeps the likelier one (OpenAI's
    format keys alternatives by text). A token without a logprob (a prompt's first token,
    which nothing predicts) has ``None`` for its alternatives.

    Args:
        tokens: the tokens.
        start_offset: the first token's character offset.
        offsets: every token's offset (see :func:`prompt_offsets`).

    Example:
        >>> t = WireToken(1, "ab", [97, 98], -0.2, 0.5, [Alternative("ab", [97, 98], -0.2)])
        >>> completion_logprobs([t, t])["text_offset"]
        [0, 2]
    """
    if offsets is None:
        offsets, pos = [], start_offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t.text)
    tops: list[dict[str, float] | None] = []
    for t in tokens:
        best: dict[str, float] = {}
        for a in t.top:
            best.setdefault(a.text, a.logprob)
        tops.append(None if t.logprob is None else best)
    out = {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
           "top_logprobs": tops, "text_offset": offsets,
           "token_entropies": [t.entropy for t in tokens]}
    if any(t.constrained_entropy is not None for t in tokens):
        out["token_constrained_entropies"] = [t.constrained_entropy for t in tokens]
    return out


def prompt_offsets(tokens: list[WireToken], hidden: int = 0) -> list[int]:
    """Character offsets of a prompt's tokens in its echoed text.

    Counted from the tokens' exact bytes, so a character split over two byte-level tokens
    counts once and both tokens start at it. The first ``hidden`` tokens (a text prompt's
    start ids, which its text leaves out) sit at 0 and take no room. Exact where the tokens'
    bytes spell the text (byte-level BPE vocabularies); for a tokenizer whose single tokens
    decode differently from the text (a SentencePiece piece losing its leading space) the
    offsets are those of the pieces' own texts.

    Args:
        tokens: the prompt's tokens, as the model reads them.
        hidden: leading tokens the text leaves out.

    Example:
        >>> e = "é".encode()
        >>> toks = [WireToken(1, "<s>", list(b"<s>"), None, None),
        ...         WireToken(9, "a", [97], -1.0, 0.5),
        ...         WireToken(7, "\ufffd", [e[0]], -1.0, 0.5),
        ...         WireToken(8, "\ufffd", [e[1]], -1.0, 0.5),
        ...         WireToken(9, "a", [97], -1.0, 0.5)]
        >>> prompt_offsets(toks, hidden=1)  # the text is "aéa"
        [0, 0, 1, 1, 2]
    """
    offsets, chars = [], 0  # chars: characters begun so far
    for i, t in enumerate(tokens):
        if i < hidden:
            offsets.append(0)
            continue
        inside = bool(t.bytes) and t.bytes[0] & 0xC0 == 0x80  # a UTF-8 continuation byte
        offsets.append(chars - 1 if inside and chars else chars)
        chars += sum(b & 0xC0 != 0x80 for b in t.bytes)
    return offsets


def prompt_logprobs(prompt: list[WireToken], hidden: int = 0) -> dict[str, Any]:
    """The legacy ``logprobs`` object of an echoed prompt alone (a stream's first chunk; the
    head of :func:`echo_logprobs`): offsets as :func:`prompt_offsets` gives them.

    Args:
        prompt: the scored prompt tokens (start ids first).
        hidden: how many leading tokens take no room in the echoed text.

    Example:
        >>> p = [WireToken(1, "<s>", list(b"<s>"), None, None),
        ...      WireToken(9, "ab", [97, 98], -0.5, 1.0)]
        >>> prompt_logprobs(p, 1)["text_offset"]
        [0, 0]
    """
    return completion_logprobs(prompt, offsets=prompt_offsets(prompt, hidden))


def echo_logprobs(prompt: list[WireToken], hidden: int, prompt_text: str,
                  tokens: list[WireToken]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a completion with ``echo``: the prompt's tokens, then the
    generated ones, whose offsets continue after the echoed prompt text.

    Args:
        prompt: the prompt's tokens (the first without a logprob).
        hidden: leading prompt tokens the echoed text leaves out (see
            :func:`prompt_offsets`).
        prompt_text: the echoed prompt text.
        tokens: the generated tokens.

    Example:
        >>> p = [WireToken(1, "<s>", list(b"<s>"), None, None),
        ...      WireToken(9, "ab", [97, 98], -0.5, 1.0)]
        >>> lp = echo_logprobs(p, 1, "ab", [WireToken(3, "c", [99], -0.1, 0.2)])
        >>> lp["token_logprobs"], lp["top_logprobs"][0], lp["text_offset"]
        ([None, -0.5, -0.1], None, [0, 0, 2])
    """
    head = prompt_logprobs(prompt, hidden)
    tail = completion_logprobs(tokens, start_offset=len(prompt_text))
    constrained = "token_constrained_entropies"
    if constrained in tail:  # the prompt was written under no constraint
        head[constrained] = [None] * len(prompt)
    return {key: head[key] + tail[key] for key in head}
