"""The batch runner: per-row limits, stops, seeds and top alternatives inside one batch equal
each row decoded alone."""

from __future__ import annotations

import pytest
import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Temperature, TopK
from tokenwise.serving.engine import FinishEvent, Row, TokenEvent, run_batch
from tokenwise.serving.sampler_spec import SamplerSpec

SPEC = SamplerSpec((("top_k", (("top_k", 8),)), ("temperature", (("temperature", 0.9),))))


def collect(rows_args):
    events = [[] for _ in rows_args]
    rows = [Row(sink=events[i].append, **args) for i, args in enumerate(rows_args)]
    return rows, events


def test_rows_in_a_batch_equal_their_solo_generations(small):
    args = [dict(prompt="markov: ka", max_tokens=12, seed=1),
            dict(prompt="7+2=", max_tokens=3, seed=2, stops=["\n"]),
            dict(prompt="Q: Where was Tavoun born?\nA:", max_tokens=20, seed=3,
                 stops=["\n"], top_logprobs=4)]
    rows, events = collect(args)
    stats = run_batch(small, SPEC, rows)
    for a, ev in zip(args, events, strict=True):
        ref = tw.generate(small, a["prompt"], Chain([TopK(8), Temperature(0.9)]), seed=a["seed"],
                          max_new_tokens=a["max_tokens"], stop=a.get("stops"))
        tokens = [e for e in ev if isinstance(e, TokenEvent)]
        finish = ev[-1]
        assert isinstance(finish, FinishEvent) and finish.text == ref.text
        assert "".join(t.delta for t in tokens) + finish.delta == ref.text
        assert [t.token.id for t in tokens] == [r.id for r in ref.tokens]
        expected = "stop" if ref.finish_reason in ("stop", "eos") else "length"
        assert finish.reason == expected
    assert stats.tokens == sum(len([e for e in ev if isinstance(e, TokenEvent)])
                               for ev in events)


def test_top_alternatives_are_the_models_own_distribution(small):
    rows, events = collect([dict(prompt="markov: ka", max_tokens=3, top_logprobs=5)])
    run_batch(small, SamplerSpec(), rows)
    first = events[0][0].token
    with torch.no_grad():
        logits = small.hf_model(torch.tensor([small.encode("markov: ka", add_bos=True)]))
    logp = logits.logits[0, -1].double().log_softmax(-1)
    values, ids = logp.topk(5)
    assert [a.text for a in first.top] == [small.decode([i]) for i in ids.tolist()]
    assert max(abs(a.logprob - v) for a, v in zip(first.top, values.tolist(), strict=True)) < 1e-4


def test_each_row_gets_as_many_alternatives_as_it_asked_for(small):
    prompts = ["markov: ka", "7+2=", "markov: ko ki"]
    rows, events = collect([dict(prompt=p, max_tokens=3, top_logprobs=k)
                            for p, k in zip(prompts, (2, 0, 7), strict=True)])
    run_batch(small, SamplerSpec(), rows)
    for p, k, ev in zip(prompts, (2, 0, 7), events, strict=True):
        tokens = [e.token for e in ev if isinstance(e, TokenEvent)]
        ref = tw.generate(small, p, max_new_tokens=3, top_logprobs=7)
        assert [t.id for t in tokens] == [r.id for r in ref.tokens]
        for tok, rec in zip(tokens, ref.tokens, strict=True):
            assert [a.text for a in tok.top] == [small.decode([i]) for i in rec.top_ids[:k]]
            assert [a.logprob for a in tok.top] == pytest.approx(rec.top_logprobs[:k], abs=1e-4)


def test_a_cancelled_row_stops_and_the_batch_ends_when_all_have(small):
    flag = {"gone": False}
    rows, events = collect([dict(prompt="markov: ka", max_tokens=40)])
    rows[0].cancelled = lambda: flag["gone"]

    def sink(event, inner=rows[0].sink):
        inner(event)
        if isinstance(event, TokenEvent) and len(events[0]) == 3:
            flag["gone"] = True

    rows[0].sink = sink
    stats = run_batch(small, SamplerSpec(), rows)
    assert events[0][-1].reason == "cancelled"
    assert stats.cancelled == 1 and stats.steps <= 5


def test_eos_ends_a_row_as_stop(small):
    # tw-small ends a fact answer with EOS or a newline; without stops, EOS must show as stop
    rows, events = collect([dict(prompt="Q: Where was Tavoun born?\nA:", max_tokens=60)])
    run_batch(small, SamplerSpec(), rows)
    ref = tw.generate(small, "Q: Where was Tavoun born?\nA:", max_new_tokens=60)
    want = "stop" if ref.finish_reason == "eos" else "length"
    assert events[0][-1].reason == want and events[0][-1].text == ref.text


def test_a_batch_the_engine_refuses_at_the_call_still_finishes_every_row(small):
    # generate checks its arguments before the first token; a row must never wait forever
    rows, events = collect([dict(prompt="7+2=", max_tokens=2, seed=1),
                            dict(prompt="7+2=", max_tokens=2, seed=2**64)])
    with pytest.raises(TokenwiseError, match="2\\*\\*64 - 1"):
        run_batch(small, SPEC, rows)
    assert events == [[FinishEvent("error", "", "", 0)]] * 2


def test_a_sampler_that_cannot_be_built_ends_every_row_with_an_error(small, monkeypatch):
    # without a finish event a waiting client would hang until the request timeout
    import tokenwise.serving.engine as engine

    def broken(*args, **kwargs):
        raise MemoryError("no room for the grammar")

    monkeypatch.setattr(engine, "batch_sampler", broken)
    events: list = []
    rows = [Row(prompt=p, max_tokens=3, sink=events.append) for p in ("7+2=", "3+1=")]
    with pytest.raises(MemoryError):
        run_batch(small, SamplerSpec(), rows)
    assert [e for e in events if isinstance(e, FinishEvent)] == [
        FinishEvent("error", "", "", 0), FinishEvent("error", "", "", 0)]


def test_a_prompt_too_long_for_one_pass_is_scored_in_chunks_identically(small, monkeypatch):
    # a long prompt on a large vocabulary must not build all its logits at once
    import tokenwise.serving.engine as engine
    from tokenwise.serving.logprobs import TokenBytes

    names = TokenBytes(small.tokenizer)
    prompts = [small.encode("7+2=9\n3+4=7\n" * 6, add_bos=True), small.encode("5+5=", add_bos=True)]
    whole = engine.score_prompts(small, prompts, 2, names)
    forwards = []
    real = small.forward
    monkeypatch.setattr(small, "forward", lambda ids, *a, **k: forwards.append(ids.shape)
                        or real(ids, *a, **k))
    monkeypatch.setattr(engine, "SCORE_LOGITS", 5 * small.vocab_size)  # 5 positions a pass
    chunked = engine.score_prompts(small, prompts, 2, names)
    assert max(b * t for b, t in forwards) <= 5 and len(forwards) > 2
    for w, c in zip(whole, chunked, strict=True):
        assert [t.id for t in w] == [t.id for t in c]
        assert [t.logprob for t in w[1:]] == pytest.approx([t.logprob for t in c[1:]], abs=1e-4)
        assert [t.entropy for t in w[1:]] == pytest.approx([t.entropy for t in c[1:]], abs=1e-4)
        assert [[a.text for a in t.top] for t in w] == [[a.text for a in t.top] for t in c]
