"""`GET /metrics`: Prometheus' text format, counters equal to the usage the responses
reported, statuses counted, one registry per app, and off (404) when configured so."""

from __future__ import annotations

import json
import logging
import sys

import httpx
import pytest
from click.testing import CliRunner

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tokenwise.errors import TokenwiseError  # noqa: E402
from tokenwise.serving import ServerConfig  # noqa: E402
from tokenwise.serving.metrics import EngineCollector  # noqa: E402
from tokenwise.serving.server import serve_in_thread  # noqa: E402

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def settings(**more) -> ServerConfig:
    return ServerConfig(port=0, api_key=KEY, max_tokens_limit=16, default_max_tokens=8, **more)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    r = httpx.get(url + "/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def streamed_usage(url: str, path: str, body: dict) -> dict:
    """The usage chunk of a streamed request."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + path, json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    return chunks[-1]["usage"]


@pytest.fixture(scope="module")
def served(small):
    with serve_in_thread(settings(batch_window_ms=1), models={"tw-small": small}) as url:
        yield url


def test_counters_equal_the_usage_the_responses_reported(served):
    chat = {"model": "tw-small", "messages": [{"role": "user", "content": "7+5="}],
            "max_tokens": 6, "seed": 1, "temperature": 1.0}
    text = {"model": "tw-small", "prompt": ["Where was Tavoun born?", "31+18="], "n": 2,
            "max_tokens": 5, "seed": 2, "temperature": 1.0}
    before = scrape(served)
    usages = [httpx.post(served + "/v1/chat/completions", json=chat, headers=AUTH,
                         timeout=60).json()["usage"],
              httpx.post(served + "/v1/completions", json=text, headers=AUTH,
                         timeout=60).json()["usage"],
              streamed_usage(served, "/v1/chat/completions", chat),
              streamed_usage(served, "/v1/completions", text)]
    bad = httpx.post(served + "/v1/completions", json={**text, "max_tokens": 17},
                     headers=AUTH)
    assert bad.status_code == 400
    after = scrape(served)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("tokenwise_prompt_tokens_total", model="tw-small") == \
        sum(u["prompt_tokens"] for u in usages)
    assert grew("tokenwise_completion_tokens_total", model="tw-small") == \
        sum(u["completion_tokens"] for u in usages)
    choices = 1 + 4 + 1 + 4
    finished = total(after, "tokenwise_finished_sequences_total") - \
        total(before, "tokenwise_finished_sequences_total")
    assert finished == choices
    for endpoint in ("/v1/chat/completions", "/v1/completions"):
        assert grew("tokenwise_http_requests_total", endpoint=endpoint, model="tw-small",
                    status="200") == 2
    assert grew("tokenwise_http_requests_total", endpoint="/v1/completions", model="",
                status="400") == 1
    for kind in ("chat", "completion"):  # the 400 never reached the engine
        assert grew("tokenwise_request_latency_seconds_count", model="tw-small",
                    kind=kind) == 2
    assert grew("tokenwise_time_to_first_token_seconds_count", model="tw-small") == 2
    assert grew("tokenwise_engine_batch_rows_total") == choices
    assert value(after, "tokenwise_requests_generating") == 0
    assert value(after, "tokenwise_engine_info", engine="tokenwise", batching="true") == 1


def test_the_guards_refusals_are_counted_under_their_endpoint(served):
    before = scrape(served)
    r = httpx.post(served + "/v1/chat/completions", json={"model": "tw-small"})
    assert r.status_code == 401
    assert httpx.get(served + "/no/such/path").status_code == 404
    after = scrape(served)
    for labels in ({"endpoint": "/v1/chat/completions", "model": "", "status": "401"},
                   {"endpoint": "other", "model": "", "status": "404"}):
        assert value(after, "tokenwise_http_requests_total", **labels) - \
            value(before, "tokenwise_http_requests_total", **labels) == 1


def test_two_apps_in_one_process_count_apart(small, served):
    with serve_in_thread(settings(), models={"tw-small": small}) as other:
        before = scrape(served)
        r = httpx.post(other + "/v1/completions", headers=AUTH, timeout=60,
                       json={"model": "tw-small", "prompt": "7+5=", "max_tokens": 3})
        used = r.json()["usage"]
        mine = scrape(other)
        assert value(mine, "tokenwise_completion_tokens_total", model="tw-small") == \
            used["completion_tokens"]
        assert value(mine, "tokenwise_http_requests_total", endpoint="/v1/completions",
                     model="tw-small", status="200") == 1
    after = scrape(served)
    assert value(after, "tokenwise_completion_tokens_total", model="tw-small") == \
        value(before, "tokenwise_completion_tokens_total", model="tw-small")


def test_metrics_off_is_404_and_serving_goes_on(small):
    with serve_in_thread(settings(metrics=False), models={"tw-small": small}) as url:
        assert httpx.get(url + "/metrics", headers=AUTH).status_code == 404
        r = httpx.post(url + "/v1/completions", headers=AUTH, timeout=60,
                       json={"model": "tw-small", "prompt": "7+5=", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_without_prometheus_client_the_route_says_what_to_install(small, monkeypatch,
                                                                  caplog):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="tokenwise.serving"), \
            serve_in_thread(settings(), models={"tw-small": small}) as url:
        r = httpx.get(url + "/metrics", headers=AUTH)
        assert r.status_code == 503
        assert "prometheus-client" in r.json()["error"]["message"]
        assert "--no-metrics" in r.json()["error"]["message"]
        ok = httpx.post(url + "/v1/completions", headers=AUTH, timeout=60,
                        json={"model": "tw-small", "prompt": "7+5=", "max_tokens": 2})
        assert ok.status_code == 200
    assert any("prometheus-client" in rec.getMessage() for rec in caplog.records)


def test_metrics_need_the_api_key(served):
    assert httpx.get(served + "/metrics").status_code == 401


def test_engine_report_becomes_queue_depth_batch_sizes_and_counters():
    registry = prometheus_client.CollectorRegistry()
    report = {"engine": "tokenwise", "batching": True, "batches": 5, "rows": 11,
              "engine_busy_s": 1.5, "queue_depth": 3, "largest_batch": 4,
              "batch_sizes": {"1": 3, "4": 2}, "note": "not a number", "steps": True}
    registry.register(EngineCollector(lambda: report))
    text = prometheus_client.generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert value(samples, "tokenwise_engine_batches_total") == 5
    assert value(samples, "tokenwise_engine_busy_seconds_total") == 1.5
    assert value(samples, "tokenwise_engine_queue_depth") == 3
    assert value(samples, "tokenwise_engine_largest_batch_rows") == 4
    assert value(samples, "tokenwise_engine_batch_size_rows_bucket", le="1.0") == 3
    assert value(samples, "tokenwise_engine_batch_size_rows_bucket", le="2.0") == 3
    assert value(samples, "tokenwise_engine_batch_size_rows_bucket", le="4.0") == 5
    assert value(samples, "tokenwise_engine_batch_size_rows_bucket", le="+Inf") == 5
    assert value(samples, "tokenwise_engine_batch_size_rows_sum") == 11
    # a bool is not a count: left out rather than exported as 1
    assert not any(name.startswith("tokenwise_engine_decode_steps") for name, _ in samples)


def test_vllm_report_keys_become_metrics():
    registry = prometheus_client.CollectorRegistry()
    report = {"engine": "vllm", "batching": True, "requests": 4, "vllm_requests": 6,
              "tokens": 40, "aborted": 1, "calls": 0, "unfinished": 2}
    registry.register(EngineCollector(lambda: report))
    text = prometheus_client.generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert value(samples, "tokenwise_engine_unfinished_requests") == 2
    assert value(samples, "tokenwise_engine_aborted_requests_total") == 1
    assert value(samples, "tokenwise_engine_info", engine="vllm", batching="true") == 1


def test_the_metrics_setting_is_a_bool():
    with pytest.raises(TokenwiseError, match=r"metrics='no': allowed True or False"):
        ServerConfig(metrics="no")


def test_no_metrics_flag_reaches_the_config(monkeypatch):
    from tokenwise.cli.serve import serve_command

    seen = {}
    monkeypatch.setattr("tokenwise.serving.server.run",
                        lambda config, log_level: seen.update(config=config))
    assert CliRunner().invoke(serve_command, ["--no-metrics"]).exit_code == 0
    assert seen["config"].metrics is False
    assert CliRunner().invoke(serve_command, []).exit_code == 0
    assert seen["config"].metrics is True


class ScriptedEngine:
    """A backend other than the batcher, shaped like vLLM's: each choice writes "ab" and
    stops; its report has vLLM's keys."""

    async def start(self):
        pass

    async def stop(self):
        pass

    def check(self, req):
        pass

    def check_plan(self, plan):
        pass

    async def call(self, fn):
        return fn()

    async def events(self, plan, deadline):
        from tokenwise.serving.engine import FinishEvent, TokenEvent
        from tokenwise.serving.logprobs import WireToken

        for c in range(plan.choices):
            for piece in "ab":
                yield c, TokenEvent(WireToken(1, piece, list(piece.encode()), None, None),
                                    piece)
            yield c, FinishEvent("stop", "", "ab", 2)

    async def uncertainty(self, plan):
        return {}

    def report(self):
        return {"engine": "vllm", "batching": True, "requests": 1, "vllm_requests": 3,
                "tokens": 6, "aborted": 0, "calls": 0, "unfinished": 0}


def test_another_backend_is_counted_through_the_same_wrapper(small):
    from fastapi.testclient import TestClient

    from tokenwise.serving.app import create_app

    app = create_app(settings(), models={"tw-small": small}, engine=ScriptedEngine())
    with TestClient(app, base_url="http://127.0.0.1") as http:
        r = http.post("/v1/completions", headers=AUTH,
                      json={"model": "tw-small", "prompt": "7+5=", "n": 3, "seed": 1,
                            "temperature": 1.0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6
        text = http.get("/metrics", headers=AUTH).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert value(samples, "tokenwise_completion_tokens_total", model="tw-small") == 6
    assert value(samples, "tokenwise_finished_sequences_total", model="tw-small",
                 reason="stop") == 3
    assert value(samples, "tokenwise_engine_info", engine="vllm", batching="true") == 1
    assert value(samples, "tokenwise_engine_unfinished_requests") == 0
    assert value(samples, "tokenwise_engine_vllm_requests_total") == 3
