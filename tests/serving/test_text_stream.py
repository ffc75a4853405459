"""TextStream: released deltas add up to the answer and never show a stop string."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.serving.text_stream import TextStream


def chars(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab\n", max_size=30), st.lists(st.text(alphabet="ab\n", min_size=1,
                                                                  max_size=3), max_size=3))
def test_deltas_add_up_and_never_show_a_stop(text, stops):
    ts = TextStream(chars, stops)
    released = ""
    for ch in text:
        if ts.stopped:
            break
        released += ts.push(ord(ch))
        assert not any(s in released for s in stops)
        assert ts.text.startswith(released)
    released += ts.flush()
    want, stopped = text, False  # the first prefix holding a stop ends the text
    for k in range(1, len(text) + 1):
        cuts = [text[:k].index(s) for s in stops if s in text[:k]]
        if cuts:
            want, stopped = text[:min(cuts)], True
            break
    assert released == ts.text == want
    assert ts.stopped == stopped


def test_a_partial_utf8_character_is_held_back():
    pieces = {1: b"\xc3", 2: b"\xa9", 3: b"x"}

    def decode(ids):
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    ts = TextStream(decode)
    assert ts.push(1) == ""  # half of 'é'
    assert ts.push(2) == "é"
    assert ts.push(3) == "x"


def test_push_after_a_stop_is_an_error():
    ts = TextStream(chars, ["b"])
    ts.push(ord("a"))
    ts.push(ord("b"))
    with pytest.raises(RuntimeError, match="stop string"):
        ts.push(ord("a"))
