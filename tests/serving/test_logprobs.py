"""Wire formats of logprobs, and exact token bytes of the byte-level BPE."""

from __future__ import annotations

from tokenwise.serving.logprobs import (
    Alternative,
    TokenBytes,
    WireToken,
    chat_logprobs,
    completion_logprobs,
)


def test_token_bytes_rebuild_any_text(small):
    names = TokenBytes(small.tokenizer)
    for text in ["héllo → wörld 日本", "plain ascii", "emoji 🙂 ok"]:
        ids = small.encode(text)
        assert b"".join(bytes(names.bytes(i)) for i in ids).decode() == text


def test_completion_format_collapses_alternatives_by_text():
    a = WireToken(1, "x", [120], -0.1, 0.4,
                  [Alternative("x", [120], -0.1), Alternative("x", [120], -2.0),
                   Alternative("y", [121], -3.0)])
    out = completion_logprobs([a], start_offset=5)
    assert out["top_logprobs"] == [{"x": -0.1, "y": -3.0}]
    assert out["text_offset"] == [5] and out["token_entropies"] == [0.4]


def test_chat_format_has_entropy_beside_openai_fields():
    entry = chat_logprobs([WireToken(1, "x", [120], -0.1, 0.4)])["content"][0]
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs", "entropy"}
