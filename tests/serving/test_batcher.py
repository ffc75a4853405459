"""Batching, cancellation and timeouts on live servers: concurrent requests share batches
yet each gets exactly what it would get alone; a client that leaves stops its decoding."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from tests.serving.conftest import API_KEY

import tokenwise as tw
from tokenwise.models import LanguageModel
from tokenwise.sampling import Temperature

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


def test_without_batching_every_request_decodes_alone(unbatched_server, small):
    texts = asyncio.run(_concurrent(unbatched_server, 6))
    after = stats(unbatched_server)
    assert texts == _alone(small, 6)
    assert after["batching"] is False and after["largest_batch"] == 1
    assert after["batches"] == 6


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
