"""`tokenwise serve --engine vllm`: our OpenAI-compatible API on a real vLLM engine, through
the real openai client. Greedy answers (text, logprobs, entropies, top alternatives) are
compared with the embedded engine serving the same model; sampled tokens are checked
against the sampler chain's own mask on the model's logits."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai", reason="the API tests use the real openai client")
pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
httpx = pytest.importorskip("httpx")

KEY = "test-key-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "Where was Tavoun born?"
QA_PROMPT = f"Q: {QUESTION}\nA:"
PROMPTS = ["markov: ka", "7+2=", QA_PROMPT, "12+30=", "31+18=", "markov: lo"]


def _serve(app, config):
    """Run ``app`` with uvicorn in a daemon thread; return (url, server, thread)."""
    from tokenwise.vllm.server import uvicorn_server

    server = uvicorn_server(app, config, "warning")
    thread = threading.Thread(target=server.run, name="vllm-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 600  # vLLM start-up: ~40 s here, more on a busy machine
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://{config.host}:{port}", server, thread


@pytest.fixture(scope="module")
def vllm_server():
    """``(url, engine)`` of the one vLLM-backed server of this module."""
    from tokenwise.serving import ServerConfig
    from tokenwise.vllm.server import VLLMOptions, build_app

    config = ServerConfig(port=0, api_key=KEY, max_tokens_limit=200, request_timeout_s=60)
    options = VLLMOptions(gpu_memory_utilization=0.3, max_model_len=256, enforce_eager=True,
                          dtype="float32")
    app = build_app(config, "tw-small", options)
    url, server, thread = _serve(app, config)
    yield url, app.state.engine
    server.should_exit = True
    thread.join(timeout=60)  # the app's shutdown stops vLLM's engine process


@pytest.fixture(scope="module")
def vllm_url(vllm_server):
    return vllm_server[0]


@pytest.fixture(scope="module")
def small():
    from tokenwise.models import load

    return load("tw-small")


@pytest.fixture(scope="module")
def embedded_url(small):
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=KEY, max_tokens_limit=200)
    with serve_in_thread(config, models={"tw-small": small}) as url:
        yield url


def client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def stats(url: str) -> dict:
    return httpx.get(url + "/tokenwise/stats", headers=AUTH).json()


def token_ids(lm, content) -> list[int]:
    """The ids of chat logprob entries, from their exact bytes."""
    from tokenwise.serving.logprobs import TokenBytes

    names = TokenBytes(lm.tokenizer)
    by_bytes = {tuple(names.bytes(i)): i for i in range(lm.vocab_size)}
    return [by_bytes[tuple(t.bytes)] for t in content]


def admissible(lm, prompt: str, token_ids: list[int], chain) -> list[bool]:
    """Whether each generated token survives ``chain`` on the model's own logits."""
    ids = lm.encode(prompt, add_bos=True)
    out = []
    with torch.no_grad():
        for tok in token_ids:
            logits = lm.hf_model(torch.tensor([ids])).logits[:, -1].float()  # (1, V)
            out.append(bool(torch.isfinite(chain(logits)[0, tok])))
            ids.append(tok)
    return out


def test_models_and_stats_name_the_engine(vllm_url):
    assert [m.id for m in client(vllm_url).models.list()] == ["tw-small"]
    assert client(vllm_url).models.retrieve("tw-small").model_extra["context_length"] == 256
    assert stats(vllm_url)["engine"] == "vllm"


def test_greedy_completion_with_logprobs_equals_the_embedded_engine(vllm_url, embedded_url):
    kwargs = dict(model="tw-small", prompt="markov: ka", max_tokens=12, temperature=0,
                  logprobs=3)
    got = client(vllm_url).completions.create(**kwargs)
    ref = client(embedded_url).completions.create(**kwargs)
    g, r = got.choices[0], ref.choices[0]
    assert g.text == r.text and g.finish_reason == r.finish_reason == "length"
    assert g.logprobs.tokens == r.logprobs.tokens
    assert g.logprobs.text_offset == r.logprobs.text_offset
    assert g.logprobs.token_logprobs == pytest.approx(r.logprobs.token_logprobs, abs=1e-4)
    assert g.logprobs.model_extra["token_entropies"] == pytest.approx(
        r.logprobs.model_extra["token_entropies"], abs=1e-4)
    for a, b in zip(g.logprobs.top_logprobs, r.logprobs.top_logprobs, strict=True):
        assert a.keys() == b.keys()
        assert list(a.values()) == pytest.approx(list(b.values()), abs=1e-4)
    assert got.usage == ref.usage
    info = got.model_extra["tokenwise"]
    assert info["mean_entropy"][0] == pytest.approx(ref.model_extra["tokenwise"]
                                                    ["mean_entropy"][0], abs=1e-4)


def test_greedy_chat_and_its_stream_equal_the_embedded_engine(vllm_url, embedded_url):
    kwargs = dict(model="tw-small", messages=[{"role": "user", "content": QUESTION}],
                  max_tokens=16, temperature=0, logprobs=True, top_logprobs=2)
    got = client(vllm_url).chat.completions.create(**kwargs)
    ref = client(embedded_url).chat.completions.create(**kwargs)
    assert got.choices[0].message.content == ref.choices[0].message.content
    assert got.choices[0].finish_reason == ref.choices[0].finish_reason == "stop"
    gc, rc = got.choices[0].logprobs.content, ref.choices[0].logprobs.content
    assert [t.token for t in gc] == [t.token for t in rc]
    assert [t.model_extra["entropy"] for t in gc] == pytest.approx(
        [t.model_extra["entropy"] for t in rc], abs=1e-4)
    assert [[a.token for a in t.top_logprobs] for t in gc] == \
        [[a.token for a in t.top_logprobs] for t in rc]
    assert got.model_extra["tokenwise"]["prompt"] == QA_PROMPT
    chunks = list(client(vllm_url).chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.choices[0].message.content
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in rc]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["tokenwise"]["mean_entropy"][0] == \
        pytest.approx(ref.model_extra["tokenwise"]["mean_entropy"][0], abs=1e-4)
    assert chunks[-1].usage.completion_tokens == ref.usage.completion_tokens


def test_without_logprobs_the_text_is_the_same_and_entropy_is_not_computed(vllm_url,
                                                                           embedded_url):
    kwargs = dict(model="tw-small", prompt="7+2=", max_tokens=12, temperature=0, stop=["+"])
    got = client(vllm_url).completions.create(**kwargs)
    ref = client(embedded_url).completions.create(**kwargs)
    assert got.choices[0].text == ref.choices[0].text
    assert got.choices[0].finish_reason == ref.choices[0].finish_reason
    assert got.choices[0].logprobs is None
    assert got.model_extra["tokenwise"]["mean_entropy"] == [None]
    chunks = list(client(vllm_url).completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == ref.choices[0].text


def test_top_level_min_p_and_top_h_run_in_vllm_order_and_are_reproducible(vllm_url, small):
    from tokenwise.sampling import Chain, MinP, Temperature, TopH

    kwargs = dict(model="tw-small", messages=[{"role": "user", "content": QUESTION}],
                  max_tokens=10, seed=11, temperature=0.8, n=2, logprobs=True,
                  extra_body={"min_p": 0.1, "top_h": 0.4})
    r = client(vllm_url).chat.completions.create(**kwargs)
    info = r.model_extra["tokenwise"]
    assert [s["name"] for s in info["sampler"]] == ["temperature", "min_p", "top_h"]
    assert info["seeds"] == [11, 12]
    chain = Chain([Temperature(0.8), MinP(0.1), TopH(0.4)])
    for choice in r.choices:
        ids = token_ids(small, choice.logprobs.content)
        assert ids and all(admissible(small, QA_PROMPT, ids, chain))
    again = client(vllm_url).chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == \
        [c.message.content for c in r.choices]


def test_tokenwise_sampler_chain_runs_in_vllm_with_our_processors(vllm_url, small):
    from tokenwise.sampling import Chain, Temperature, TopH, Typical

    steps = [{"name": "typical", "mass": 0.9}, {"name": "temperature", "temperature": 0.9},
             {"name": "top_h", "alpha": 0.3}]
    r = client(vllm_url).chat.completions.create(
        model="tw-small", messages=[{"role": "user", "content": QUESTION}], max_tokens=12,
        seed=5, n=3, logprobs=True, extra_body={"tokenwise": {"sampler": steps}})
    applied = r.model_extra["tokenwise"]["sampler"]
    assert [s["name"] for s in applied] == ["typical", "temperature", "top_h"]
    chain = Chain([Typical(0.9), Temperature(0.9), TopH(0.3)])
    for choice in r.choices:
        content = choice.logprobs.content
        assert all(t.model_extra["entropy"] >= 0 for t in content)
        assert all(admissible(small, QA_PROMPT, token_ids(small, content), chain))


@pytest.mark.parametrize("body, param, fragment", [
    ({"frobnicate": 1}, "frobnicate", "frobnicate"),
    ({"tokenwise": {"sampler": [{"name": "top_h", "alpha": 2.0}]}}, "tokenwise.sampler.0",
     "alpha=2.0"),
    ({"tokenwise": {"sampler": [{"name": "top_p", "top_p": 0.9},
                                {"name": "temperature", "temperature": 0.5}]}},
     "tokenwise.sampler", "vLLM applies temperature before top_p"),
    ({"tokenwise": {"ead": {"large": "tw-large"}}}, "tokenwise.ead", "--engine tokenwise"),
])
def test_bad_or_unsupported_requests_are_400_naming_the_field(vllm_url, body, param, fragment):
    with pytest.raises(openai.BadRequestError) as err:
        client(vllm_url).completions.create(model="tw-small", prompt="x", max_tokens=2,
                                            extra_body=body)
    assert err.value.body["param"] == param
    assert fragment in err.value.body["message"]


def test_ead_is_refused_with_a_reason(vllm_url):
    with pytest.raises(openai.BadRequestError) as err:
        client(vllm_url).chat.completions.create(
            model="tw-small", messages=[{"role": "user", "content": "7+2="}],
            extra_body={"tokenwise": {"ead": {"large": "tw-small", "up": 0.5}}})
    message = err.value.body["message"]
    assert "not supported" in message and "vLLM" in message
    assert err.value.body["code"] == "unsupported_on_engine"


def test_concurrent_requests_are_all_answered_like_alone(vllm_url, embedded_url):
    async def run(url: str) -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0,
                                     timeout=120)
        calls = [aclient.completions.create(model="tw-small", prompt=PROMPTS[i % 6],
                                            max_tokens=4 + i, temperature=0)
                 for i in range(12)]
        out = await asyncio.gather(*calls)
        await aclient.close()
        return [r.choices[0].text for r in out]

    before = stats(vllm_url)
    got = asyncio.run(run(vllm_url))
    assert got == asyncio.run(run(embedded_url))
    assert stats(vllm_url)["requests"] - before["requests"] == 12


def test_a_stream_whose_client_leaves_is_aborted_in_vllm(vllm_url):
    before = stats(vllm_url)
    body = {"model": "tw-small", "prompt": "markov: ka", "max_tokens": 200, "stream": True,
            "seed": 1, "logprobs": 5}  # full-vocabulary logprobs: slower, so still running
    with httpx.Client(timeout=30) as http, \
            http.stream("POST", vllm_url + "/v1/completions", json=body,
                        headers=AUTH) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = 0
        while got < 2:
            got += next(lines).startswith("data:")
    end = time.monotonic() + 20
    while time.monotonic() < end and stats(vllm_url)["aborted"] == before["aborted"]:
        time.sleep(0.05)
    after = stats(vllm_url)
    assert after["aborted"] == before["aborted"] + 1
    assert after["tokens"] - before["tokens"] < 200
    end = time.monotonic() + 20
    while time.monotonic() < end and stats(vllm_url)["unfinished"]:
        time.sleep(0.05)
    assert stats(vllm_url)["unfinished"] == 0


def test_uncertainty_samples_n_answers_through_vllm(vllm_url):
    body = dict(model="tw-small", prompt=QA_PROMPT, max_tokens=8, seed=7, stop=["\n"],
                extra_body={"tokenwise": {"uncertainty": {"method": "predictive_entropy",
                                                          "n": 3}}})
    r = client(vllm_url).completions.create(**body)
    unc = r.model_extra["tokenwise"]["uncertainty"]
    assert unc["method"] == "predictive_entropy" and unc["n"] == 3
    assert len(unc["answers"]) == 3 and all("\n" not in a for a in unc["answers"])
    assert unc["score"] > 0
    again = client(vllm_url).completions.create(**body)
    assert again.model_extra["tokenwise"]["uncertainty"] == unc


def test_prompt_compression_runs_before_the_engine_as_on_the_embedded_one(vllm_url,
                                                                          embedded_url):
    context = ("The council met on Monday to discuss the budget for the water project. "
               "Members agreed that the park plan needs a public hearing in July.")
    kwargs = dict(model="tw-small", messages=[{"role": "user", "content": context}],
                  max_tokens=4, temperature=0,
                  extra_body={"tokenwise": {"compress": {"method": "perplexity", "rate": 0.5}}})
    got = client(vllm_url).chat.completions.create(**kwargs)
    ref = client(embedded_url).chat.completions.create(**kwargs)
    g, r = got.model_extra["tokenwise"], ref.model_extra["tokenwise"]
    assert g["compression"]["text"] == r["compression"]["text"]
    assert g["compression"]["tokens_after"] < g["compression"]["tokens_before"]
    assert g["prompt"] == r["prompt"]
    assert got.choices[0].message.content == ref.choices[0].message.content


# -- regressions from the review of the vLLM engine ----------------------------------------


def test_step_stats_equal_a_naive_reduction_of_vllms_flat_rows():
    from vllm.logprobs import FlatLogprobs

    from tokenwise.vllm.server import step_stats

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g, dtype=torch.float64)  # (T, V)
    logits[2, :6] = 3.0  # ties among the best: the engine's rank order breaks them
    lp = torch.log_softmax(logits, -1)  # (T, V)
    flat, chosen = FlatLogprobs(), [7, 0, 3, 49]
    for row, tok in zip(lp, chosen, strict=True):
        vals, idx = torch.sort(row, descending=True, stable=True)  # as vLLM's top-k: best first
        flat.append_fast([tok, *idx.tolist()], [float(row[tok]), *vals.tolist()],
                         iter(range(51)), [None] * 51)
    got = step_stats(flat, 4, top=5, vocab_size=50)
    for k, (row, tok) in enumerate(zip(lp, chosen, strict=True)):
        p = row.exp()
        assert got[k].logprob == pytest.approx(float(row[tok]))
        assert got[k].entropy == pytest.approx(float(-(p * row).sum()), abs=1e-9)
        order = sorted(range(50), key=lambda i: (-float(row[i]), i))[:5]
        assert [i for i, _ in got[k].top] == order
        assert [v for _, v in got[k].top] == pytest.approx([float(row[i]) for i in order])
    assert [s.entropy for s in step_stats(flat, 2, top=0, vocab_size=None)] == [None, None]
    # positions vLLM rebuilt through dicts (merged stream outputs) hold the sampled token once
    merged = FlatLogprobs()
    merged.extend(flat)
    assert merged.end_indices[0] == 50
    again = step_stats(merged, 4, top=5, vocab_size=50)
    assert [s.top for s in again] == [s.top for s in got]
    assert [s.entropy for s in again] == pytest.approx([s.entropy for s in got], abs=1e-12)


def test_logprobs_are_reduced_off_the_event_loop_without_a_dict_per_token(
        vllm_url, embedded_url, monkeypatch):
    from vllm.logprobs import FlatLogprobs

    import tokenwise
    import tokenwise.vllm.server as adapter  # where the server looks token_stats up

    threads, indexed = [], []
    real_stats, real_getitem = adapter.token_stats, FlatLogprobs.__getitem__
    package_dir = os.path.dirname(tokenwise.__file__) + os.sep

    def stats_spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_stats(*args, **kwargs)

    def getitem_spy(self, index):
        # One position as a dict of V Logprob objects, asked for by our code (directly or by
        # iterating). vLLM does it itself when it merges outputs a lagging consumer has not
        # read yet (RequestOutput.add -> FlatLogprobs.extend): timing-dependent, not ours.
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.endswith(
                os.path.join("vllm", "logprobs.py")):
            frame = frame.f_back
        if isinstance(index, int) and frame is not None and \
                frame.f_code.co_filename.startswith(package_dir):
            indexed.append(index)
        return real_getitem(self, index)

    monkeypatch.setattr(adapter, "token_stats", stats_spy)
    monkeypatch.setattr(FlatLogprobs, "__getitem__", getitem_spy)
    kwargs = dict(model="tw-small", prompt="markov: lo", max_tokens=6, temperature=0,
                  logprobs=2)
    got = client(vllm_url).completions.create(**kwargs)
    ref = client(embedded_url).completions.create(**kwargs)
    assert got.usage.completion_tokens == 6 and not indexed
    assert len(threads) == 6 and all(t.startswith("tokenwise-logprobs") for t in threads)
    g, r = got.choices[0].logprobs, ref.choices[0].logprobs
    assert g.model_extra["token_entropies"] == pytest.approx(
        r.model_extra["token_entropies"], abs=1e-4)
    assert [list(a) for a in g.top_logprobs] == [list(b) for b in r.top_logprobs]


@pytest.mark.parametrize("body, param, fragment", [
    # passes tokenwise's checks, but vLLM's transport takes 64-bit integers only
    ({"tokenwise": {"sampler": [{"name": "top_h", "alpha": 0.4, "top_n": 2**70}]}},
     "tokenwise.sampler", "extra_args"),
    ({"top_k": 2**70, "temperature": 1.0}, "top_k", "top_k=" + str(2**70)),
])
def test_a_value_vllm_refuses_is_a_400_naming_the_field_not_a_timeout(vllm_url, body, param,
                                                                       fragment):
    with pytest.raises(openai.BadRequestError) as err:
        client(vllm_url).completions.create(model="tw-small", prompt="7+2=", max_tokens=2,
                                            extra_body=body)
    assert err.value.body["param"] == param and fragment in err.value.body["message"]
    assert client(vllm_url).completions.create(model="tw-small", prompt="7+2=",
                                               max_tokens=2).choices[0].text


def test_seeds_past_what_vllm_takes_are_a_400(vllm_url):
    top = 2**63 - 1
    for seed, n, extra in [(2**64 - 1, 2, None), (top, 2, None),
                           (top - 2, 1, {"tokenwise": {"uncertainty": {
                               "method": "predictive_entropy", "n": 3}}})]:
        with pytest.raises(openai.BadRequestError) as err:
            client(vllm_url).completions.create(model="tw-small", prompt="7+2=", max_tokens=2,
                                                n=n, seed=seed, temperature=1.0,
                                                extra_body=extra)
        assert err.value.body["param"] == "seed"
        assert "2**63 - 1" in err.value.body["message"]
    r = client(vllm_url).completions.create(model="tw-small", prompt="7+2=", max_tokens=2,
                                            n=2, seed=top - 1, temperature=1.0)
    assert r.model_extra["tokenwise"]["seeds"] == [top - 1, top]


def _prompt_of(lm, size: int) -> str:
    """A completion prompt of exactly ``size`` tokens, BOS included."""
    text = "ka " * size
    while len(lm.encode(text, add_bos=True)) > size:
        text = text[:-1]
    assert len(lm.encode(text, add_bos=True)) == size
    return text


def test_at_the_context_limit_vllm_answers_in_full_or_refuses_with_a_400(vllm_url,
                                                                        embedded_url, small):
    prompt = _prompt_of(small, 250)
    kwargs = dict(model="tw-small", prompt=prompt, temperature=0)
    got = client(vllm_url).completions.create(**kwargs, max_tokens=6)  # 250 + 6 = 256
    ref = client(embedded_url).completions.create(**kwargs, max_tokens=6)
    assert got.usage == ref.usage and got.choices[0].text == ref.choices[0].text
    for size, max_tokens, param in [(250, 7, "max_tokens"), (256, 1, "prompt")]:
        with pytest.raises(openai.BadRequestError) as err:  # vLLM would give one token less
            client(vllm_url).completions.create(model="tw-small",
                                                prompt=_prompt_of(small, size),
                                                max_tokens=max_tokens)
        assert err.value.body["code"] == "context_length_exceeded"
        assert err.value.body["param"] == param
        assert "256" in err.value.body["message"]


def test_vllms_own_request_validation_is_a_400_with_its_message(vllm_server, small,
                                                                 monkeypatch):
    url, engine = vllm_server
    # past tokenwise's own length check, vLLM's input validation refuses the prompt
    monkeypatch.setattr(engine, "check_plan", lambda plan: None, raising=False)
    with pytest.raises(openai.BadRequestError) as err:
        client(url).completions.create(model="tw-small", prompt=_prompt_of(small, 256),
                                       max_tokens=1)
    assert "maximum model length" in err.value.body["message"]
    assert client(url).completions.create(model="tw-small", prompt="7+2=",
                                          max_tokens=2).choices[0].text


def test_every_end_of_text_id_ends_the_answer_and_is_left_out(vllm_server, embedded_url,
                                                              small):
    url, engine = vllm_server
    kwargs = dict(model="tw-small", messages=[{"role": "user", "content": QUESTION}],
                  max_tokens=16, temperature=0, logprobs=True)
    ref = client(embedded_url).chat.completions.create(**kwargs)
    ids = token_ids(small, ref.choices[0].logprobs.content)
    j = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])
    saved = engine.end_ids
    # a model whose generation config lists a second end-of-text id (Llama-3 style)
    engine.end_ids = saved | {ids[j]}
    try:
        got = client(url).chat.completions.create(**kwargs)
    finally:
        engine.end_ids = saved
    g = got.choices[0]
    assert g.finish_reason == "stop" and got.usage.completion_tokens == j
    assert token_ids(small, g.logprobs.content) == ids[:j]
    assert g.message.content == small.decode(ids[:j], skip_special_tokens=True)
