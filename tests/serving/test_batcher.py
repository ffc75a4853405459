"""Batching, cancellation and timeouts on live servers: concurrent requests share batches
yet each gets exactly what it would get alone; a client that leaves stops its decoding."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest
from tests.serving.conftest import API_KEY

import tokenwise as tw
from tokenwise.models import LanguageModel
from tokenwise.sampling import Temperature
from tokenwise.serving.batcher import Batcher, Job
from tokenwise.serving.engine import FinishEvent, Row, TokenEvent
from tokenwise.serving.sampler_spec import SamplerSpec

openai = pytest.importorskip("openai")

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPTS = ["markov: ka", "7+2=", "Q: Where was Tavoun born?\nA:", "12+30="]


class SlowLM(LanguageModel):
    """tw-small that takes ``delay`` seconds per forward pass (time for a client to leave)."""

    def __init__(self, lm: LanguageModel, delay: float) -> None:
        self.__dict__.update(lm.__dict__)
        self.name, self.inner, self.delay = "tw-slow", lm, delay

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner.forward(*args, **kwargs)


def stats(url: str) -> dict:
    return httpx.get(url + "/tokenwise/stats", headers=AUTH).json()


def wait_for(predicate, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def slow_server(small):
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, request_timeout_s=1.0)
    with serve_in_thread(config, models={"tw-slow": SlowLM(small, 0.05)}) as url:
        yield url


@pytest.fixture(scope="module")
def unbatched_server(small):
    from tokenwise.serving import ServerConfig
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, batching=False)
    with serve_in_thread(config, models={"tw-small": small}) as url:
        yield url


async def _concurrent(url: str, n: int) -> list[str]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
    calls = [client.completions.create(model="tw-small", prompt=PROMPTS[i % len(PROMPTS)],
                                       max_tokens=4 + i, seed=100 + i)
             for i in range(n)]
    out = await asyncio.gather(*calls)
    await client.close()
    return [r.choices[0].text for r in out]


def _alone(small, n: int) -> list[str]:
    return [tw.generate(small, PROMPTS[i % len(PROMPTS)], Temperature(1.0), seed=100 + i,
                        max_new_tokens=4 + i).text for i in range(n)]


def test_concurrent_requests_share_batches_and_match_their_solo_answers(server, small):
    before = stats(server)
    texts = asyncio.run(_concurrent(server, 8))
    after = stats(server)
    assert texts == _alone(small, 8)
    assert after["requests"] - before["requests"] == 8
    assert after["largest_batch"] >= 2
    assert after["batches"] - before["batches"] < 8
    # the size distribution /metrics reports adds up to the counters, and nothing waits now
    sizes = {int(k): v for k, v in after["batch_sizes"].items()}
    assert sum(sizes.values()) == after["batches"]
    assert sum(k * v for k, v in sizes.items()) == after["rows"]
    assert max(sizes) == after["largest_batch"] and after["queue_depth"] == 0


def test_without_batching_every_request_decodes_alone(unbatched_server, small):
    texts = asyncio.run(_concurrent(unbatched_server, 6))
    after = stats(unbatched_server)
    assert texts == _alone(small, 6)
    assert after["batching"] is False and after["largest_batch"] == 1
    assert after["batches"] == 6
    assert after["batch_sizes"] == {"1": 6}  # JSON keys


def test_a_stream_whose_client_leaves_stops_decoding(slow_server):
    before = stats(slow_server)
    body = {"model": "tw-slow", "prompt": "markov: ka", "max_tokens": 60, "stream": True,
            "seed": 1}
    with httpx.Client(timeout=10) as http, \
            http.stream("POST", slow_server + "/v1/completions", json=body,
                        headers=AUTH) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = 0
        while got < 2:
            got += next(lines).startswith("data:")
    # the connection is closed here, after two tokens
    assert wait_for(lambda: stats(slow_server)["cancelled"] > before["cancelled"])
    after = stats(slow_server)
    assert after["tokens"] - before["tokens"] < 30  # of the 60 asked for


def test_a_plain_request_whose_client_leaves_stops_decoding(slow_server):
    before = stats(slow_server)
    body = {"model": "tw-slow", "prompt": "markov: ka", "max_tokens": 15, "seed": 2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(slow_server + "/v1/completions", json=body, headers=AUTH, timeout=0.3)
    assert wait_for(lambda: stats(slow_server)["cancelled"] > before["cancelled"])
    assert stats(slow_server)["tokens"] - before["tokens"] < 15


def test_a_request_past_the_timeout_is_a_504(slow_server):
    client = openai.OpenAI(base_url=slow_server + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        client.completions.create(model="tw-slow", prompt="markov: ka", max_tokens=60)
    assert err.value.status_code == 504
    assert err.value.body["code"] == "timeout"
    chunks = client.completions.create(model="tw-slow", prompt="markov: ka", max_tokens=60,
                                       stream=True)
    with pytest.raises(openai.APIError, match="timeout"):
        list(chunks)


class FailingBatchLM(LanguageModel):
    """tw-small whose forward pass fails in a shared batch (several rows) on call
    ``fail_on``, once; alone, every row decodes."""

    def __init__(self, lm: LanguageModel, fail_on: int) -> None:
        self.__dict__.update(lm.__dict__)
        self.inner, self.fail_on, self.calls = lm, fail_on, 0

    def forward(self, ids, *args, **kwargs):
        if ids.shape[0] > 1:
            self.calls += 1
            if self.calls == self.fail_on:
                raise RuntimeError("a deliberate failure of the shared batch")
        return self.inner.forward(ids, *args, **kwargs)


SEEDED = SamplerSpec((("temperature", (("temperature", 1.0),)),))


def _decode_together(lm: LanguageModel, seeds: list[int], max_tokens: int = 6):
    """Submit one job per seed at once (they share a batch) and wait for every finish."""

    async def main():
        batcher = Batcher({"tw-small": lm}, window_s=0.05)
        await batcher.start()
        loop = asyncio.get_running_loop()
        events: list[list] = [[] for _ in seeds]
        finished = [loop.create_future() for _ in seeds]

        def sink(i, event):
            events[i].append(event)
            if isinstance(event, FinishEvent):
                loop.call_soon_threadsafe(finished[i].set_result, event)

        for i, seed in enumerate(seeds):
            row = Row(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens, seed=seed,
                      prompt_tokens=12, sink=lambda ev, i=i: sink(i, ev))
            batcher.submit(Job("tw-small", SEEDED, [row]))
        await asyncio.wait_for(asyncio.gather(*finished), 60)
        for _ in range(500):  # the counters are updated just after the last finish event
            if batcher.stats.batches:
                break
            await asyncio.sleep(0.01)
        await batcher.stop()
        return events, batcher.stats

    return asyncio.run(main())


def _check_solo(small, i: int, seed: int, events: list, max_tokens: int = 6) -> None:
    ref = tw.generate(small, PROMPTS[i % len(PROMPTS)], Temperature(1.0), seed=seed,
                      max_new_tokens=max_tokens)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    finish = events[-1]
    assert [e for e in events if isinstance(e, FinishEvent)] == [finish]
    assert finish.reason in ("stop", "length") and finish.text == ref.text
    assert [t.token.id for t in tokens] == [r.id for r in ref.tokens]  # each token once
    assert "".join(t.delta for t in tokens) + finish.delta == ref.text


def test_a_row_that_fails_its_batch_fails_alone(small):
    # 2**64 is past torch.Generator.manual_seed: the whole batch raised (issue 15)
    seeds = [1, 2, 2**64, 3]
    events, stats = _decode_together(small, seeds)
    for i, seed in enumerate(seeds):
        if i != 2:
            _check_solo(small, i, seed, events[i])
    assert events[2] == [FinishEvent("error", "", "", 0)]
    assert stats.failed_batches == 1 and stats.largest_batch == 4  # they did share a batch
    assert stats.failed_rows == 1


def test_a_batch_failing_midway_still_completes_every_row_once(small):
    # the third forward pass fails: every row has already delivered two tokens
    seeds = [11, 12, 13, 14]
    events, stats = _decode_together(FailingBatchLM(small, fail_on=3), seeds)
    for i, seed in enumerate(seeds):
        _check_solo(small, i, seed, events[i])
    assert stats.failed_batches == 1 and stats.failed_rows == 0


def test_a_rerun_that_strays_from_the_delivered_tokens_ends_in_an_error(small, monkeypatch):
    # a rerun alone that does not repeat its tokens must not splice two different answers
    from tokenwise.serving import batcher as batcher_module

    real = batcher_module.run_batch

    def reseeded(lm, spec, rows, names=None):
        if len(rows) == 1:
            rows = [dataclasses.replace(rows[0], seed=rows[0].seed + 1000)]
        return real(lm, spec, rows, names)

    monkeypatch.setattr(batcher_module, "run_batch", reseeded)
    events, stats = _decode_together(FailingBatchLM(small, fail_on=3), [21, 22], max_tokens=12)
    assert stats.failed_batches == 1
    for ev in events:
        tokens = [e for e in ev if isinstance(e, TokenEvent)]
        assert ev[-1].reason == "error" and len(tokens) == 2  # nothing after the failure
