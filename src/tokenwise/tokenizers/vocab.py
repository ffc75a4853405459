"""What each token of a tokenizer stands for, as bytes, whatever its spelling convention.

Byte-level BPE (GPT-2, SmolLM2, the built-in models) writes a leading space as ``Ġ`` and every
byte as one printable character; SentencePiece writes it as ``▁`` and unknown bytes as
``<0xNN>``. Comparing raw token strings across the two never matches ``Ġcity`` with
``▁city``; comparing the bytes they decode to does. Special tokens (BOS, chat markers) stand
for no text and are kept apart, by their content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["TokenBytes", "byte_level_chars", "old_pieces", "token_bytes"]

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_maps() -> tuple[dict[int, str], dict[str, int]]:
    # GPT-2's byte <-> printable character table (the same as tokenizers' ByteLevel).
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    to_char = {b: chr(c) for b, c in zip(printable, codes, strict=True)}
    return to_char, {c: b for b, c in to_char.items()}


def byte_level_chars(data: bytes) -> str:
    """``data`` written in the byte-level alphabet (``b" a"`` -> ``"Ġa"``).

    Example:
        >>> byte_level_chars(" city".encode())
        'Ġcity'
    """
    to_char, _ = _byte_maps()
    return "".join(to_char[b] for b in data)


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    return "ByteLevel" in json.dumps(decoder)


@dataclass(frozen=True)
class TokenBytes:
    """The bytes behind every token id of one tokenizer.

    Attributes:
        data: per id, the bytes the token decodes to (a special token: its content, UTF-8).
        special: per id, whether it is a special (control) token.
        byte_level: whether the tokenizer spells tokens in the byte-level alphabet.
    """

    data: list[bytes]
    special: list[bool]
    byte_level: bool

    def text(self, tid: int) -> str:
        """The token's text (undecodable partial characters as U+FFFD)."""
        return self.data[tid].decode("utf-8", errors="replace")


def token_bytes(tokenizer: Any) -> TokenBytes:
    """Bytes of every token of ``tokenizer`` (ids ``0 .. len(tokenizer) - 1``).

    Args:
        tokenizer: a Hugging Face fast tokenizer.

    Example:
        >>> from tokenwise.models import load
        >>> tb = token_bytes(load("tw-small").tokenizer)
        >>> tb.data[1], tb.special[1]
        (b'<s>', True)
    """
    byte_level = _is_byte_level(tokenizer)
    _, to_byte = _byte_maps()
    special_ids = {int(t) for t, a in tokenizer.added_tokens_decoder.items() if a.special}
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    data: list[bytes] = []
    for tid, tok in enumerate(tokens):
        tok = "" if tok is None else str(tok)
        if tid in special_ids:
            data.append(tok.encode())
        elif byte_level and all(c in to_byte for c in tok):
            data.append(bytes(to_byte[c] for c in tok))
        elif (m := _BYTE_TOKEN.match(tok)) is not None:
            data.append(bytes([int(m.group(1), 16)]))
        else:
            data.append(tok.replace("▁", " ").encode())
    return TokenBytes(data, [i in special_ids for i in range(n)], byte_level)


def old_pieces(tokenizer: Any, info: TokenBytes, data: bytes) -> list[int]:
    """Ids of ``tokenizer`` (described by ``info``) that spell ``data``.

    Text that is valid UTF-8 goes through the tokenizer as it is; a fragment of a character
    (a byte-level token holding half of one) through the byte-level model, or as
    ``<0xNN>`` byte tokens. Empty when it cannot be spelled.

    Args:
        tokenizer: the tokenizer whose pieces are wanted.
        info: its :func:`token_bytes`.
        data: the bytes to spell.

    Example:
        >>> from tokenwise.models import load
        >>> tok = load("tw-small").tokenizer
        >>> info = token_bytes(tok)
        >>> tok.convert_ids_to_tokens(old_pieces(tok, info, b" Zoklailaind"))
        ['ĠZ', 'okl', 'ail', 'aind']
        >>> tok.convert_ids_to_tokens(old_pieces(tok, info, b" caf\\xc3"))  # half an "é"
        ['Ġc', 'a', 'f', 'Ã']
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)
                    ["input_ids"])
    if info.byte_level:
        model = tokenizer.backend_tokenizer.model
        return [t.id for t in model.tokenize(byte_level_chars(data))]
    vocab = tokenizer.get_vocab()
    ids = [vocab.get(f"<0x{b:02X}>") for b in data]
    return [] if any(i is None for i in ids) else [int(i) for i in ids]  # type: ignore[misc]
