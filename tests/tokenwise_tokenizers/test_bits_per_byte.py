"""tokenwise.tokenizers.evaluate: bits per byte and tokens per byte."""

from __future__ import annotations

import math

import pytest
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.tokenizers import bits_per_byte, text_bits, tokens_per_byte
from tokenwise.tokenizers import evaluate as tk_eval


def test_bits_per_byte_is_total_surprisal_over_bytes(small):
    texts = ["The code of Zeipeth is 960.\n", "12+7=19\n", "naïve ☃\n"]
    total = 0.0
    for text in texts:
        ids = small.encode(text, add_bos=True)
        logp = torch.log_softmax(small.forward(torch.tensor([ids])).logits[0].double(), -1)
        total -= sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    expected = total / math.log(2) / sum(len(t.encode()) for t in texts)
    assert bits_per_byte(small, texts) == pytest.approx(expected, rel=1e-5)


def test_no_start_token_reads_the_first_token_after_eos(small, monkeypatch):
    seen = {}

    def fake(lm, ids, prefix=()):
        seen["prefix"], seen["n"] = list(prefix), len(ids)
        return [1.0] * len(ids)

    class NoBos:
        name, start_ids, eos_token_id, bos_token_id = "stub", (), 7, None

        def encode(self, text):
            return small.encode(text)

    monkeypatch.setattr(tk_eval, "token_surprisal", fake)
    bits = text_bits(NoBos(), "12+7=19")
    assert seen == {"prefix": [7], "n": 7}  # every token scored, after the EOS
    assert bits == pytest.approx(7 / math.log(2))


def test_tokens_per_byte(small):
    assert tokens_per_byte(small.tokenizer, ["12+7=19"]) == 1.0  # digits and signs: one each
    text = "The birthplace of Dalvin Orsk"
    n = len(small.encode(text))
    assert tokens_per_byte(small.tokenizer, [text, text]) == pytest.approx(n / len(text))


def test_empty_texts_refused(small):
    with pytest.raises(TokenwiseError, match="non-empty list"):
        bits_per_byte(small, [])
    with pytest.raises(TokenwiseError, match="all empty"):
        tokens_per_byte(small.tokenizer, ["", ""])
