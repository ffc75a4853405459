"""``echo`` with prompt logprobs and token-id prompts on ``/v1/completions``: through the real
openai client against a live server, and the batch runner and batcher directly, checked
against the model's own scores of the same ids (a naive forward pass, and ``tw.score``'s
:func:`~tokenwise.scoring.token_surprisal`)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch
from tests.serving.conftest import API_KEY
from tests.serving.helpers import InlineBackend

import tokenwise as tw
from tokenwise.models.language_model import EncodedText
from tokenwise.scoring import token_surprisal
from tokenwise.serving import ServerConfig
from tokenwise.serving.batcher import Batcher, Job
from tokenwise.serving.engine import FinishEvent, PromptEvent, Row, TokenEvent, run_batch
from tokenwise.serving.errors import APIError
from tokenwise.serving.planning import plan_request
from tokenwise.serving.routes import CompletionService
from tokenwise.serving.sampler_spec import SamplerSpec
from tokenwise.serving.schemas import CompletionRequest

openai = pytest.importorskip("openai")

AUTH = {"Authorization": f"Bearer {API_KEY}"}
QA = "Q: Where was Tavoun born?\nA:"
PROMPTS = [QA, "7+2=", "markov: ka", "Q: café?\nA:"]


def naive_scores(lm, ids: list[int], k: int) -> dict:
    """The model's own logprob, entropy and top-``k`` for every token of ``ids`` after the
    first, from one plain forward pass of the HF model (None for the first token)."""
    with torch.no_grad():
        logp = lm.hf_model(torch.tensor([ids])).logits[0].double().log_softmax(-1)  # (T, V)
    out: dict = {"logprobs": [None], "entropies": [None], "tops": [None]}
    for t in range(len(ids) - 1):
        out["logprobs"].append(float(logp[t, ids[t + 1]]))
        out["entropies"].append(float(-(logp[t].exp() * logp[t]).sum()))
        out["tops"].append(sorted(logp[t].topk(k).values.tolist(), reverse=True) if k else [])
    return out


def check_prompt_scores(lp, lm, ids: list[int], k: int, start: int = 0) -> None:
    """``lp``'s entries ``start..start + len(ids)`` are ``ids`` scored by the model."""
    n = len(ids)
    ref = naive_scores(lm, ids, k)
    assert lp.tokens[start:start + n] == [lm.decode([i]) for i in ids]
    got = lp.token_logprobs[start:start + n]
    assert got[0] is None and lp.top_logprobs[start] is None
    assert lp.model_extra["token_entropies"][start] is None
    assert got[1:] == pytest.approx(ref["logprobs"][1:], abs=1e-4)
    assert lp.model_extra["token_entropies"][start + 1:start + n] == pytest.approx(
        ref["entropies"][1:], abs=1e-4)
    for top, want in zip(lp.top_logprobs[start + 1:start + n], ref["tops"][1:], strict=True):
        # byte pieces of one character share the text U+FFFD: the dict keeps the likeliest
        assert sorted(top.values(), reverse=True) == pytest.approx(want[:len(top)], abs=1e-4)
        assert len(top) == k or "\ufffd" in top


def test_echo_with_logprobs_puts_the_scored_prompt_before_the_completion(client, small):
    plain = client.completions.create(model="tw-small", prompt=QA, max_tokens=4,
                                      temperature=0, logprobs=3)
    r = client.completions.create(model="tw-small", prompt=QA, max_tokens=4, temperature=0,
                                  logprobs=3, echo=True)
    ids = small.encode(QA, add_bos=True)
    n = len(ids)
    choice, lp, want = r.choices[0], r.choices[0].logprobs, plain.choices[0].logprobs
    assert choice.text == QA + plain.choices[0].text
    check_prompt_scores(lp, small, ids, 3)
    # the completion is the same as without echo; its offsets continue after the prompt
    assert lp.tokens[n:] == want.tokens and lp.token_logprobs[n:] == want.token_logprobs
    assert lp.top_logprobs[n:] == want.top_logprobs
    assert lp.model_extra["token_entropies"][n:] == want.model_extra["token_entropies"]
    assert lp.text_offset[n:] == [len(QA) + o for o in want.text_offset]
    # the start token is not in the text: it takes no room
    assert lp.text_offset[:n] == [0] + [sum(len(t) for t in lp.tokens[1:i]) for i in
                                        range(1, n)]
    assert r.usage.prompt_tokens == n
    assert r.usage.completion_tokens == plain.usage.completion_tokens == len(want.tokens)


def test_offsets_count_a_character_split_over_two_tokens_once(client, small):
    prompt = "Q: café?\nA:"
    r = client.completions.create(model="tw-small", prompt=prompt, max_tokens=2,
                                  temperature=0, logprobs=0, echo=True)
    lp = r.choices[0].logprobs
    n = len(small.encode(prompt, add_bos=True))
    offsets, tokens = lp.text_offset, lp.tokens
    assert tokens.count("\ufffd") == 2  # "é" is two byte-level tokens here
    at = prompt.index("é")
    assert [o for o, t in zip(offsets, tokens, strict=True) if t == "\ufffd"] == [at, at]
    for o, t in zip(offsets[1:n], tokens[1:n], strict=True):
        if t != "\ufffd":
            assert r.choices[0].text[o:o + len(t)] == t
    assert offsets[n] == len(prompt)


def test_max_tokens_0_with_echo_returns_the_prompt_scored_as_tw_score_does(client, small):
    ids = small.encode("12+7=19", add_bos=True)
    r = client.completions.create(model="tw-small", prompt=ids, max_tokens=0, echo=True,
                                  logprobs=0)
    choice = r.choices[0]
    assert choice.text == small.decode(ids) == "<s>12+7=19"  # as vLLM echoes token ids
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == [small.decode([i]) for i in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[1:] == [{}] * (len(ids) - 1)
    # tw.score's path: the start id, then the text's tokens
    surprisal = token_surprisal(small, ids[1:])
    assert [-x for x in lp.token_logprobs[1:]] == pytest.approx(surprisal.tolist(), abs=1e-5)
    assert lp.text_offset == [0, *range(3, 3 + len(ids) - 1)]  # "<s>" is in this text
    # echo without logprobs: just the text
    bare = client.completions.create(model="tw-small", prompt=[ids], max_tokens=0, echo=True)
    assert bare.choices[0].text == choice.text and bare.choices[0].logprobs is None


def test_token_id_prompts_are_read_as_given_without_a_start_token(client, small):
    with_bos = small.encode(QA, add_bos=True)
    without = small.encode(QA)
    r = client.completions.create(model="tw-small", prompt=[with_bos, without], max_tokens=5,
                                  temperature=0, logprobs=2, echo=True)
    text = client.completions.create(model="tw-small", prompt=QA, max_tokens=5, temperature=0)
    first, second = r.choices
    assert first.text == "<s>" + QA + text.choices[0].text  # the same ids as the text prompt
    check_prompt_scores(first.logprobs, small, with_bos, 2)
    check_prompt_scores(second.logprobs, small, without, 2)  # no start token was added
    alone = tw.generate(small, EncodedText(QA, without), max_new_tokens=5)
    assert second.text == QA + alone.text
    assert r.usage.prompt_tokens == len(with_bos) + len(without)


def test_streamed_echo_starts_with_the_prompt_and_adds_up_to_the_plain_answer(client, small):
    args = dict(model="tw-small", prompt=QA, max_tokens=5, temperature=0, logprobs=1,
                echo=True)
    whole = client.completions.create(**args)
    chunks = [c for c in client.completions.create(stream=True, **args) if c.choices]
    first = chunks[0].choices[0]
    assert first.text == QA
    assert first.logprobs.tokens == [small.decode([i]) for i in small.encode(QA, add_bos=True)]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    joined: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        if c.choices[0].logprobs is not None:
            for key, values in joined.items():
                values.extend(getattr(c.choices[0].logprobs, key))
    lp = whole.choices[0].logprobs
    assert joined == {key: getattr(lp, key) for key in joined}


def test_bad_prompts_and_max_tokens_0_without_echo_are_400s_naming_them(client):
    cases = [
        (dict(prompt=[5, 1024]), "prompt 0: token id 1024 (at position 1) is not in this "
                                 "model's vocabulary; allowed ids 0 to 1023"),
        (dict(prompt=[[5], [7, -3]]), "prompt 1: token id -3 (at position 1)"),
        (dict(prompt=[[5], []]), "prompt 1 is empty"),
        (dict(prompt="7+2=", max_tokens=0), "max_tokens=0 generates nothing"),
        (dict(prompt="7+2=", echo=True, extra_body={"tokenwise": {"ead": {"large": "tw-large"}}}),
         "echo is not supported with tokenwise.ead"),
        (dict(prompt="7+2=", echo=True, max_tokens=0,
              extra_body={"tokenwise": {"uncertainty": {"n": 2}}}),
         "max_tokens=0 generates none"),
        (dict(prompt=[1, 20], extra_body={"tokenwise": {"compress": {"method": "x"}}}),
         "this prompt is token ids"),
    ]
    for fields, message in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model="tw-small", **{"max_tokens": 2, **fields})
        assert message in err.value.body["message"], err.value.body
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt=[5, 1024], max_tokens=1)
    assert err.value.body["param"] == "prompt"


def test_a_prompt_that_fills_the_context_can_be_scored_but_not_continued(small):
    cfg, models = ServerConfig(), {"tw-small": small}
    full = [1] + [20] * (small.context_length - 1)
    plan = plan_request(CompletionRequest(model="tw-small", prompt=full, max_tokens=0,
                                          echo=True), cfg, models)
    assert plan.prompt_tokens == [small.context_length] and plan.echo
    plan_request(CompletionRequest(model="tw-small", prompt=full, max_tokens=1), cfg, models)
    for ids, max_tokens in (([*full, 20], 0), (full, 2)):
        with pytest.raises(APIError, match="maximum context length"):
            plan_request(CompletionRequest(model="tw-small", prompt=ids, max_tokens=max_tokens,
                                           echo=True), cfg, models)


def test_a_backend_that_does_not_serve_echo_refuses_it(small):
    # the vLLM backend sends no prompt events: echo there must be a 400, never a bare answer
    service = CompletionService(ServerConfig(), {"tw-small": small}, InlineBackend())
    req = CompletionRequest(model="tw-small", prompt="7+2=", max_tokens=1, echo=True)
    with pytest.raises(APIError, match="echo is not supported by this server's engine") as err:
        asyncio.run(service._plan(req, "completion"))
    assert err.value.status == 400 and err.value.param == "echo"
    ids = CompletionRequest(model="tw-small", prompt=[1, 20, 13], max_tokens=1)
    assert asyncio.run(service._plan(ids, "completion")).prompts[0].ids == (1, 20, 13)


def collect(rows_args):
    events = [[] for _ in rows_args]
    rows = [Row(sink=events[i].append, **args) for i, args in enumerate(rows_args)]
    return rows, events


def test_every_echo_row_in_a_batch_is_scored_as_alone(small):
    ids = [small.encode(p, add_bos=True) for p in PROMPTS]
    args = [dict(prompt=PROMPTS[0], max_tokens=3, echo=True, score_prompt=True, top_logprobs=2),
            dict(prompt=PROMPTS[1], max_tokens=4),  # no echo, decoded in the same batch
            dict(prompt=EncodedText("x", ids[2][1:]), max_tokens=0, echo=True,
                 score_prompt=True, top_logprobs=4),  # token ids, no start token, no decoding
            dict(prompt=PROMPTS[3], max_tokens=2, echo=True),  # echo without logprobs
            dict(prompt=PROMPTS[0], max_tokens=0, echo=True, score_prompt=True, top_logprobs=1)]
    rows, events = collect(args)
    run_batch(small, SamplerSpec(), rows)
    scored = {0: (ids[0], 2), 2: (ids[2][1:], 4), 4: (ids[0], 1)}
    for i, (want_ids, k) in scored.items():
        prompt = events[i][0]
        assert isinstance(prompt, PromptEvent) and prompt.hidden == (0 if i == 2 else 1)
        ref = naive_scores(small, want_ids, k)
        assert [t.id for t in prompt.tokens] == want_ids
        assert [t.logprob for t in prompt.tokens][1:] == pytest.approx(ref["logprobs"][1:],
                                                                       abs=1e-4)
        assert [t.entropy for t in prompt.tokens][1:] == pytest.approx(ref["entropies"][1:],
                                                                       abs=1e-4)
        assert [[a.logprob for a in t.top] for t in prompt.tokens[1:]] == \
            [pytest.approx(top, abs=1e-4) for top in ref["tops"][1:]]
    assert events[3][0] == PromptEvent(PROMPTS[3], None, 1)
    assert not any(isinstance(e, PromptEvent) for e in events[1])
    for i in (2, 4):  # echo only: the prompt, then the end
        assert events[i][1:] == [FinishEvent("length", "", "", 0)]
    for i in (0, 1, 3):
        a = args[i]
        want = tw.generate(small, a["prompt"], max_new_tokens=a["max_tokens"])
        got = [e.token.id for e in events[i] if isinstance(e, TokenEvent)]
        assert got == [t.id for t in want.tokens] and events[i][-1].text == want.text


class FailingSharedLM(tw.models.LanguageModel):
    """tw-small whose ``fail_on``-th forward pass over several rows fails, once."""

    def __init__(self, lm, fail_on: int) -> None:
        self.__dict__.update(lm.__dict__)
        self.inner, self.fail_on, self.calls = lm, fail_on, 0

    def forward(self, ids, *args, **kwargs):
        if ids.shape[0] > 1:
            self.calls += 1
            if self.calls == self.fail_on:
                raise RuntimeError("a deliberate failure of the shared batch")
        return self.inner.forward(ids, *args, **kwargs)


def _batched(lm, prompts: list[str]):
    """One echo job per prompt, submitted at once (they share a batch); every row's events."""

    async def main():
        batcher = Batcher({"tw-small": lm}, window_s=0.05)
        await batcher.start()
        loop = asyncio.get_running_loop()
        events: list[list] = [[] for _ in prompts]
        done = [loop.create_future() for _ in prompts]

        def sink(i, event):
            events[i].append(event)
            if isinstance(event, FinishEvent):
                loop.call_soon_threadsafe(done[i].set_result, event)

        for i, p in enumerate(prompts):
            row = Row(prompt=p, max_tokens=3, prompt_tokens=12, echo=True, score_prompt=True,
                      top_logprobs=1, sink=lambda ev, i=i: sink(i, ev))
            batcher.submit(Job("tw-small", SamplerSpec(), [row]))
        await asyncio.wait_for(asyncio.gather(*done), 60)
        await batcher.stop()
        return events, batcher.stats

    return asyncio.run(main())


@pytest.mark.parametrize("fail_on", [1, 2])  # the prompts' pass, then the decode loop's first
def test_a_batch_that_fails_sends_each_row_its_prompt_once(small, fail_on):
    events, stats = _batched(FailingSharedLM(small, fail_on), PROMPTS[:3])
    assert stats.failed_batches == 1 and stats.failed_rows == 0
    for p, ev in zip(PROMPTS[:3], events, strict=True):
        prompts = [e for e in ev if isinstance(e, PromptEvent)]
        assert len(prompts) == 1 and ev[0] is prompts[0]
        ids = small.encode(p, add_bos=True)
        ref = naive_scores(small, ids, 1)
        assert [t.logprob for t in prompts[0].tokens][1:] == pytest.approx(ref["logprobs"][1:],
                                                                           abs=1e-4)
        want = tw.generate(small, p, max_new_tokens=3)
        assert [e.token.id for e in ev if isinstance(e, TokenEvent)] == \
            [t.id for t in want.tokens]
        assert ev[-1].reason in ("stop", "length") and ev[-1].text == want.text


def test_concurrent_echo_and_plain_requests_each_get_their_own_answer(server, small):
    async def send():
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0)
        calls = [client.completions.create(model="tw-small", prompt=p, max_tokens=3,
                                           temperature=0, logprobs=2, echo=i % 2 == 0)
                 for i, p in enumerate(PROMPTS)]
        calls.append(client.completions.create(
            model="tw-small", prompt=[small.encode(p, add_bos=True) for p in PROMPTS[:2]],
            max_tokens=0, logprobs=1, echo=True))
        try:
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    before = httpx.get(server + "/tokenwise/stats", headers=AUTH).json()
    out = asyncio.run(send())
    after = httpx.get(server + "/tokenwise/stats", headers=AUTH).json()
    assert after["batches"] - before["batches"] < len(out)  # some of them shared a batch
    for i, (p, r) in enumerate(zip(PROMPTS, out, strict=False)):
        answer = tw.generate(small, p, max_new_tokens=3).text
        if i % 2:
            assert r.choices[0].text == answer
            continue
        assert r.choices[0].text == p + answer
        check_prompt_scores(r.choices[0].logprobs, small, small.encode(p, add_bos=True), 2)
    for p, choice in zip(PROMPTS[:2], out[-1].choices, strict=True):
        check_prompt_scores(choice.logprobs, small, small.encode(p, add_bos=True), 1)
