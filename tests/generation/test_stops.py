"""Stop strings, one rule for every decode loop: released deltas add up to the answer and
never show a stop string, and the decode loop, EAD and the batch runner end where it says."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwise.generation.stops import TextStream, check_stops


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


@pytest.mark.parametrize(("stop", "want"), [(None, []), ("\n", ["\n"]), (["a", "bc"], ["a", "bc"]),
                                            (("x",), ["x"])])
def test_check_stops_gives_a_list(stop, want):
    assert check_stops(stop) == want


@pytest.mark.parametrize("stop", ["", ["a", ""], [3], ["a", None]])
def test_check_stops_refuses_empty_and_non_strings(stop):
    from tokenwise.errors import TokenwiseError

    with pytest.raises(TokenwiseError, match="allowed non-empty strings"):
        check_stops(stop)


def test_every_decode_loop_ends_where_the_text_stream_does(small, large):
    import tokenwise as tw
    from tokenwise.generation.ead import generate_ead
    from tokenwise.serving.engine import FinishEvent, Row, run_batch
    from tokenwise.serving.sampler_spec import SamplerSpec

    prompt, stops = "Q: Where was Tavoun born?\nA:", ["o", "\n"]
    free = tw.generate(small, prompt, max_new_tokens=20)
    ts = TextStream(lambda ids: small.decode(ids, skip_special_tokens=True), stops)
    for rec in free.tokens:
        ts.push(rec.id)
        if ts.stopped:
            break
    assert ts.stopped and 0 < len(ts.text) < len(free.text)
    gen = tw.generate(small, prompt, max_new_tokens=20, stop=stops)
    assert (gen.text, gen.finish_reason, len(gen.tokens)) == (ts.text, "stop", len(ts.ids))
    ead = generate_ead(small, large, prompt, up=1e9, max_new_tokens=20, stop=stops)
    assert (ead.text, ead.finish_reason, len(ead.tokens)) == (ts.text, "stop", len(ts.ids))
    events = []
    run_batch(small, SamplerSpec(), [Row(prompt=prompt, max_tokens=20, stops=stops,
                                         sink=events.append)])
    assert isinstance(events[-1], FinishEvent)
    assert (events[-1].text, events[-1].reason, events[-1].completion_tokens) == (
        ts.text, "stop", len(ts.ids))
