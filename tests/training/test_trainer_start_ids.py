"""Training rows start as inference texts do: with what the tokenizer itself adds."""

from __future__ import annotations

from tests.models.helpers import load_tiny_chat_model

from tokenwise.models import load
from tokenwise.training.trainer import Example, _tokenize


def test_rows_start_with_the_tokenizers_own_start_ids(tmp_path):
    for add_bos in (False, True):
        lm = load_tiny_chat_model(tmp_path / str(add_bos), add_bos=add_bos)
        (ids, _), = _tokenize([Example("hello there")], lm, seq_len=64, progress=False)[0]
        assert ids[: len(lm.start_ids)] == list(lm.start_ids)
        assert ids[len(lm.start_ids):] == [*lm.encode("hello there"), lm.eos_token_id]
        # SmolLM2's kind: its BOS is a chat-turn marker, never put before a plain text
        assert (ids[0] == lm.bos_token_id) == add_bos
    small = load("tw-small")
    (ids, _), = _tokenize([Example("7+5=12")], small, seq_len=64, progress=False)[0]
    assert ids[0] == small.bos_token_id  # the built-in models are trained after their BOS
