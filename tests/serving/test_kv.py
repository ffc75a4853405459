"""``"tokenwise": {"kv": ...}`` on a live server: the reply is the one tokenwise.generate(kv=...)
gives, the response reports what the cache held, bad settings are 400s naming the field, and
a kv request decodes alone without disturbing the requests around it."""

from __future__ import annotations

import asyncio
import json
import warnings

import httpx
import pytest
from tests.serving.conftest import API_KEY

import tokenwise as tw
from tokenwise import kv
from tokenwise.generation.ead import generate_ead
from tokenwise.sampling import Temperature

openai = pytest.importorskip("openai")

PROMPT = "Q: What is the job of Trather Shai?\nA:"  # 14 tokens with BOS
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def _kv(**options):
    return {"tokenwise": {"kv": options}}


def test_a_press_gives_generates_answer_and_reports_the_cache(client, small):
    r = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=8, temperature=0,
                                  extra_body=_kv(press="streaming", budget=6, sinks=2))
    ref = tw.generate(small, PROMPT, max_new_tokens=8, kv=kv.StreamingLLM(6, sinks=2))
    assert r.choices[0].text == ref.text
    info = r.model_extra["tokenwise"]["kv"]
    assert info["setting"] == {"press": "streaming", "budget": 6, "sinks": 2, "every": None,
                               "chunk_size": None}
    (report,) = info["choices"]
    assert report["kind"] == "press" and report["prompt_tokens"] == r.usage.prompt_tokens
    # the prompt kept to its budget; every token read after it stays (no `every`)
    assert report["kept_tokens"] == 6 + report["seen_tokens"] - report["prompt_tokens"]
    assert report["cache_bytes"] < report["full_bytes"] and report["noop"] is False
    plain = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=8,
                                      temperature=0)
    assert plain.model_extra["tokenwise"]["kv"] is None


def test_a_quantised_cache_on_the_chat_route(client, small):
    r = client.chat.completions.create(
        model="tw-small", messages=[{"role": "user", "content": "What is the job of Trather "
                                                                "Shai?"}],
        max_tokens=6, temperature=0, extra_body=_kv(quantize="kivi", bits=4.0, group=8,
                                                    residual=8))
    info = r.model_extra["tokenwise"]["kv"]
    assert info["setting"]["quantize"] == "kivi" and info["setting"]["bits"] == [4]
    (report,) = info["choices"]
    assert report["kind"] == "quantized" and report["kept_tokens"] == report["seen_tokens"]
    assert report["cache_bytes"] < report["full_bytes"]
    assert report["bits_histogram"].get("4", 0) > 0
    assert r.choices[0].message.content is not None


def test_seeded_choices_decode_one_by_one_as_generate_does(client, small):
    r = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=6, n=2, seed=7,
                                  extra_body=_kv(press="snapkv", budget=0.5, window=4))
    ref = tw.generate(small, [PROMPT, PROMPT], Temperature(1.0), seed=[7, 8], max_new_tokens=6,
                      kv=kv.SnapKV(0.5, window=4))
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == [g.text for g in ref]
    reports = r.model_extra["tokenwise"]["kv"]["choices"]
    assert len(reports) == 2 and all(rep["kept_tokens"] >= 7 for rep in reports)


def test_a_streamed_kv_request_reports_in_its_last_chunk(server, client):
    body = {"model": "tw-small", "prompt": PROMPT, "max_tokens": 6, "temperature": 0,
            "stream": True, **_kv(press="h2o", budget=0.5, recent=2)}
    with httpx.stream("POST", server + "/v1/completions", json=body, headers=HEADERS,
                      timeout=60) as resp:
        assert resp.status_code == 200
        chunks = [json.loads(line[len("data: "):]) for line in resp.iter_lines()
                  if line.startswith("data: {")]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    last = [c for c in chunks if "tokenwise" in c][-1]["tokenwise"]["kv"]
    assert last["setting"]["press"] == "h2o" and last["choices"][0]["kind"] == "press"
    plain = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=6,
                                      temperature=0,
                                      extra_body=_kv(press="h2o", budget=0.5, recent=2))
    assert text == plain.choices[0].text


def test_ead_with_kv_compresses_both_models(client, small, large):
    r = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=12,
                                  temperature=0,
                                  extra_body={"tokenwise": {"ead": {"large": "tw-large",
                                                                    "up": 1.5},
                                                            "kv": {"press": "streaming",
                                                                   "budget": 8}}})
    ref = generate_ead(small, large, PROMPT, up=1.5, max_new_tokens=12,
                       kv=kv.StreamingLLM(8))
    assert r.choices[0].text == ref.text
    (report,) = r.model_extra["tokenwise"]["kv"]["choices"]
    assert report == ref.kv and set(report) == {"small", "large"}


@pytest.mark.parametrize(("options", "param", "says"), [
    ({"press": "adakv"}, "tokenwise.kv.press", "allowed critic, expected_attention, h2o"),
    ({"press": "snapkv", "windw": 3}, "tokenwise.kv", "allowed: budget, window, kernel"),
    ({"press": "snapkv", "budget": 0}, "tokenwise.kv.budget", "whole number of tokens >= 1"),
    ({"press": "streaming", "budget": -4}, "tokenwise.kv.budget", "budget=-4"),
    ({"press": "streaming", "budget": 1.5}, "tokenwise.kv.budget", "ratio of the prompt"),
    ({"press": "snapkv", "window": 0}, "tokenwise.kv.window", "window=0"),
    ({"press": "random", "seed": 2**70}, "tokenwise.kv.seed", "from 0 to 2**53"),
    ({"press": "snapkv", "question_aware": False}, "tokenwise.kv.question_aware",
     "question_aware=False needs the context and the question apart"),
    ({"press": "snapkv", "quantize": "kivi"}, "tokenwise.kv", "give one of press"),
    ({"budget": 8}, "tokenwise.kv", "give one of press"),
    ({"quantize": "zip"}, "tokenwise.kv.quantize", "allowed kivi, saq"),
    ({"quantize": "kivi", "bits": 3}, "tokenwise.kv.bits", "allowed 2, 4, 8"),
    ({"quantize": "kivi", "residul": 8}, "tokenwise.kv", "allowed: bits, group, residual"),
    # settings the model cannot feed: a per-layer list for 3 layers, a group that does not
    # divide tw-small's head dimension (32)
    ({"press": "snapkv", "budget": [4, 4]}, "tokenwise.kv", "2 entries for a model of 3"),
    ({"quantize": "kivi", "group": 24}, "tokenwise.kv", "the head dimension 32"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_settings_are_400s_naming_the_field(server, options, param, says, stream):
    body = {"model": "tw-small", "prompt": PROMPT, "max_tokens": 2, "stream": stream,
            **_kv(**options)}
    r = httpx.post(server + "/v1/completions", json=body, headers=HEADERS, timeout=60)
    assert r.status_code == 400, r.text  # a stream too: checked before its headers go out
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_kv_with_uncertainty_is_refused(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=2,
                                  extra_body={"tokenwise": {"kv": {"press": "streaming"},
                                                            "uncertainty": {"n": 2}}})
    assert err.value.body["param"] == "tokenwise.kv"


def _stats(server):
    return httpx.get(server + "/tokenwise/stats", headers=HEADERS, timeout=30).json()


def test_a_kv_request_does_not_disturb_concurrent_plain_requests(server, aclient, small):
    prompts = ["38+45=", "markov: ka ro", "Q: Where was Tavoun born?\nA:", "7+2="]

    async def run():
        kv_call = aclient.completions.create(
            model="tw-small", prompt=PROMPT, max_tokens=24, temperature=0,
            extra_body=_kv(press="snapkv", budget=6, window=4))
        plain = [aclient.completions.create(model="tw-small", prompt=p, max_tokens=8,
                                            seed=50 + i)
                 for i, p in enumerate(prompts)]
        return await asyncio.gather(kv_call, *plain)

    before = _stats(server)
    kv_reply, *plain = asyncio.run(run())
    after = _stats(server)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tw.generate(small, PROMPT, max_new_tokens=24, kv=kv.SnapKV(6, window=4))
    assert kv_reply.choices[0].text == ref.text
    assert kv_reply.model_extra["tokenwise"]["kv"]["choices"][0]["kept_tokens"] < \
        ref.kv["seen_tokens"]
    alone = [tw.generate(small, p, Temperature(1.0), seed=50 + i, max_new_tokens=8).text
             for i, p in enumerate(prompts)]
    assert [r.choices[0].text for r in plain] == alone
    assert all(r.model_extra["tokenwise"]["kv"] is None for r in plain)
    # the kv request ran as a batch of its own; the plain ones still shared batches
    assert after["requests"] - before["requests"] == 5
    assert after["batches"] - before["batches"] < 5


def test_the_vllm_engine_refuses_kv_saying_where_it_runs():
    from tokenwise.serving.errors import APIError
    from tokenwise.serving.schemas import CompletionRequest
    from tokenwise.vllm.server import VLLMBackend

    req = CompletionRequest(model="m", prompt="x", tokenwise={"kv": {"press": "snapkv"}})
    with pytest.raises(APIError) as err:
        VLLMBackend.check(None, req)  # refused before the backend's own state is read
    body = err.value.body()["error"]
    assert body["param"] == "tokenwise.kv" and body["code"] == "unsupported_on_engine"
    assert "--engine tokenwise" in body["message"]


def test_run_batch_reports_the_cache_on_the_finish_event_and_takes_one_row(small):
    from tokenwise.errors import TokenwiseError
    from tokenwise.serving.engine import FinishEvent, Row, run_batch
    from tokenwise.serving.sampler_spec import SamplerSpec

    events = []
    run_batch(small, SamplerSpec(), [Row(PROMPT, 4, events.append, prompt_tokens=14)],
              kv=kv.KeyNorm(5))
    (finish,) = [e for e in events if isinstance(e, FinishEvent)]
    assert finish.kv["press"] == "key_norm" and finish.kv["prompt_tokens"] == 14
    assert finish.kv["kept_tokens"] == 5 + finish.kv["seen_tokens"] - 14
    with pytest.raises(TokenwiseError, match="one row at a time"):
        run_batch(small, SamplerSpec(), [Row(PROMPT, 2, print), Row(PROMPT, 2, print)],
                  kv=kv.KeyNorm(5))


def test_echo_with_kv_scores_the_prompt_in_full_and_decodes_compressed(client, small):
    r = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=4, temperature=0,
                                  echo=True, logprobs=1,
                                  extra_body=_kv(press="streaming", budget=6))
    plain = client.completions.create(model="tw-small", prompt=PROMPT, max_tokens=4,
                                      temperature=0, echo=True, logprobs=1)
    ref = tw.generate(small, PROMPT, max_new_tokens=4, kv=kv.StreamingLLM(6))
    assert r.choices[0].text == PROMPT + ref.text
    n_prompt = len(small.encode(PROMPT, add_bos=True)) - len(small.start_ids)
    # the prompt's own logprobs do not depend on the cache the reply is decoded with
    assert r.choices[0].logprobs.token_logprobs[:n_prompt] == \
        plain.choices[0].logprobs.token_logprobs[:n_prompt]
    assert r.model_extra["tokenwise"]["kv"]["choices"][0]["kept_tokens"] < \
        r.model_extra["tokenwise"]["kv"]["choices"][0]["seen_tokens"]
