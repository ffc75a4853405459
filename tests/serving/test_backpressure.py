"""Backpressure and deadlines: past ``max_queue`` held requests a new one gets 429 with an
honest ``Retry-After`` and is not queued (counted in the stats and ``/metrics``); a
request's own ``timeout`` ends work that no client waits for (504, or a final error event
when streamed)."""

from __future__ import annotations

import contextlib
import time

import httpx
import pytest
from click.testing import CliRunner
from tests.serving.conftest import API_KEY
from tests.serving.test_batcher import SlowLM, wait_for

from tokenwise.errors import TokenwiseError
from tokenwise.serving.admission import Admission, RefusedError
from tokenwise.serving.config import ServerConfig
from tokenwise.serving.metrics import prometheus_available

openai = pytest.importorskip("openai")

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SERVER_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def full_server(small):
    """A server holding at most two requests, of a model slow enough to keep them."""
    from tokenwise.serving.server import serve_in_thread

    config = ServerConfig(port=0, api_key=API_KEY, max_queue=2,
                          request_timeout_s=SERVER_TIMEOUT_S)
    with serve_in_thread(config, models={"tw-slow": SlowLM(small, 0.05)}) as url:
        yield url


def stats(url: str) -> dict:
    return httpx.get(url + "/tokenwise/stats", headers=AUTH).json()


@contextlib.contextmanager
def held_streams(url: str, count: int):
    """``count`` slow streams (143 tokens each, seconds of work), answered 200 (so held:
    the first decodes, the others wait for the engine); closed on exit."""
    body = {"model": "tw-slow", "prompt": "markov: ka", "max_tokens": 200, "stream": True,
            "seed": 7}
    with httpx.Client(timeout=30) as http, contextlib.ExitStack() as stack:
        for _ in range(count):
            response = stack.enter_context(http.stream("POST", url + "/v1/completions",
                                                       json=body, headers=AUTH))
            assert response.status_code == 200
        assert wait_for(lambda: stats(url)["requests_held"] == count)
        yield


def test_a_request_past_max_queue_gets_429_with_retry_after_and_is_not_queued(full_server):
    with held_streams(full_server, 2):
        before = stats(full_server)
        assert before["requests_held"] == 2 and before["max_queue"] == 2
        r = httpx.post(full_server + "/v1/completions", headers=AUTH,
                       json={"model": "tw-slow", "prompt": "7+2=", "max_tokens": 2})
        after = stats(full_server)
        assert r.status_code == 429
        error = r.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        assert "max_queue=2" in error["message"] and error["param"] is None
        # nothing finished yet: the honest bound is the held requests' earliest deadline
        retry = r.headers["Retry-After"]
        assert retry.isdigit() and 1 <= int(retry) <= SERVER_TIMEOUT_S
        assert f"retry in {retry} s" in error["message"]
        # refused before any work: the engine never saw it
        assert after["requests"] == before["requests"] and after["requests_held"] == 2
        assert after["rejected_queue_full"] == before["rejected_queue_full"] + 1
        # an OpenAI client reads it as a rate limit
        client = openai.OpenAI(base_url=full_server + "/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="tw-slow", prompt="7+2=", max_tokens=2)
        if prometheus_available():
            scrape = httpx.get(full_server + "/metrics", headers=AUTH).text
            assert "tokenwise_requests_held 2.0" in scrape
            assert 'tokenwise_requests_rejected_total{reason="queue_full"} ' \
                f'{after["rejected_queue_full"] + 1:.1f}' in scrape
    # the held streams' clients left: their places are free again
    assert wait_for(lambda: stats(full_server)["requests_held"] == 0)
    r = httpx.post(full_server + "/v1/completions", headers=AUTH, timeout=30,
                   json={"model": "tw-slow", "prompt": "7+2=", "max_tokens": 2})
    assert r.status_code == 200


def test_retry_after_is_the_sooner_of_the_pace_and_the_earliest_deadline():
    adm = Admission(max_queue=3)
    slots = [adm.admit(timeout_s=7.0) for _ in range(3)]
    with pytest.raises(RefusedError) as err:
        adm.admit(timeout_s=7.0)
    # no request finished yet: only the deadline bound (7 s, rounded up)
    assert err.value.status == 429 and err.value.headers == {"Retry-After": "7"}
    now = time.monotonic()
    adm._finished.extend(now - 10 + k for k in range(11))  # 1 request per second
    assert adm.retry_after() == 3  # three held at one a second: sooner than 7 s
    adm._finished.clear()
    adm._finished.extend([now - 1.0, now - 0.5])  # 2 per second
    assert adm.retry_after() == 2  # ceil(3 / 2)
    for slot in slots:
        adm.release(slot)  # never planned: they say nothing of the pace
    assert list(adm._finished) == [now - 1.0, now - 0.5]
    assert adm.report()["requests_held"] == 0 and adm.report()["rejected_queue_full"] == 1
    assert adm.retry_after() >= 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_max_queue_must_be_a_positive_integer(bad):
    with pytest.raises(TokenwiseError, match=rf"max_queue={bad!r}: allowed an integer >= 1"):
        ServerConfig(max_queue=bad)


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "5"])
def test_drain_timeout_must_be_a_finite_number_of_seconds(bad):
    with pytest.raises(TokenwiseError,
                       match=r"drain_timeout_s=.*allowed a finite number >= 0"):
        ServerConfig(drain_timeout_s=bad)


@pytest.mark.parametrize(("flag", "bad"), [("--max-queue", "0"), ("--max-queue", "-1"),
                                         ("--drain-timeout", "-1")])
def test_the_cli_refuses_a_bad_limit_naming_the_option(flag, bad):
    from tokenwise.cli.serve import serve_command

    result = CliRunner().invoke(serve_command, [flag, bad])
    assert result.exit_code == 2 and flag in result.output and bad in result.output


# --- per-request deadlines ---------------------------------------------------------------

def test_a_requests_own_timeout_ends_its_work_with_a_504(full_server):
    before = stats(full_server)
    body = {"model": "tw-slow", "prompt": "markov: ka", "max_tokens": 200, "seed": 7,
            "timeout": 0.4}
    r = httpx.post(full_server + "/v1/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 504
    error = r.json()["error"]
    assert error["code"] == "timeout" and error["param"] == "timeout"
    assert "its timeout of 0.4 s" in error["message"]
    # its row is freed at the next step: stopped, far from the 200 tokens asked for
    assert wait_for(lambda: stats(full_server)["requests_held"] == 0)
    assert wait_for(lambda: stats(full_server)["cancelled"] + stats(full_server)["timed_out"]
                    > before["cancelled"] + before["timed_out"])
    assert stats(full_server)["tokens"] - before["tokens"] < 100
    # streamed: the final event says so
    with httpx.stream("POST", full_server + "/v1/completions", headers=AUTH, timeout=30,
                      json={**body, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and '"code": "timeout"' in lines[-2]
    assert "its timeout of 0.4 s" in lines[-2]


def test_a_timeout_longer_than_the_servers_leaves_the_servers(full_server):
    body = {"model": "tw-slow", "prompt": "7+2=", "max_tokens": 2, "timeout": 1e6}
    r = httpx.post(full_server + "/v1/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200  # the server's 30 s applies, and is plenty
