"""What the schema fuzz (benchmarks/serve_fuzz.py) found, each pinned by the request that
showed it: a server error, or an answer that strayed from the OpenAPI document."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis")

from fastapi.testclient import TestClient  # noqa: E402

from tokenwise.serving import ServerConfig  # noqa: E402
from tokenwise.serving.app import create_app  # noqa: E402
from tokenwise.serving.openapi import document  # noqa: E402


@pytest.fixture(scope="module")
def served(small):
    app = create_app(ServerConfig(models=("tw-small",), allowed_hosts=("testserver",),
                                  max_tokens_limit=4, default_max_tokens=4, batch_window_ms=0),
                     models={"tw-small": small})
    if app.openapi_url is None:  # until app.py calls document() itself
        document(app)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as c:
        yield app, c


def _complete(client, **fields):
    return client.post("/v1/completions", json={"model": "tw-small", "prompt": "hi there",
                                                "max_tokens": 3, **fields})


def _conforms(app, name, body):
    doc = app.openapi()
    validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}",
                                             "components": doc["components"]})
    return [e.message for e in validator.iter_errors(body)]


@pytest.mark.parametrize("key", ["423502255657126281074730094313", "9" * 5000])
def test_logit_bias_key_past_any_vocabulary_is_a_400(served, key):
    # was a 500: the id overflowed the sampler's 64-bit tensor (a 5000-digit key also passed
    # Python's int() digit limit)
    _, client = served
    for body in ({"logit_bias": {key: 1.0}},
                 {"tokenwise": {"sampler": [{"name": "logit_bias", "bias": {key: 1.0}}]}}):
        r = _complete(client, **body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "is not a token id of any model" in error["message"]
        assert error["param"] in ("logit_bias", "tokenwise.sampler.0.bias")


def test_logit_bias_key_with_leading_zeros_is_the_id(served):
    _, client = served
    r = _complete(client, logit_bias={"0" * 30 + "5": -1.0})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["max_tokens", "n", "seed", "top_k"])
def test_integer_written_with_a_zero_fraction_is_taken(served, field):
    # JSON Schema's "integer" (which the document says) takes 3.0: was a 400
    _, client = served
    r = _complete(client, **{field: 2.0})
    assert r.status_code == 200, r.text
    assert _complete(client, **{field: 2.5}).json()["error"]["param"] == field


def test_token_id_prompt_written_with_zero_fractions_is_taken(served):
    _, client = served
    r = client.post("/v1/completions", json={"model": "tw-small", "prompt": [1.0, 70.0],
                                             "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert client.post("/detokenize", json={"tokens": [70.0]}).status_code == 200


def test_greedy_reply_with_null_seed_matches_the_document(served):
    # a greedy choice has seed null in the tokenwise object: the document said integer
    app, client = served
    r = _complete(client, temperature=0.0)
    assert r.status_code == 200
    assert r.json()["tokenwise"]["seeds"] == [None]
    assert _conforms(app, "TextCompletion", r.json()) == []


def test_request_past_its_own_timeout_is_a_504_naming_timeout(served):
    # the fuzz sends timeout=5e-324: the answer is the client's own deadline, documented
    app, client = served
    r = _complete(client, timeout=5e-324)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["param"] == "timeout"
    assert "504" in app.openapi()["paths"]["/v1/completions"]["post"]["responses"]


@pytest.mark.parametrize("value", [0, -1.0, "1", True])
def test_timeout_must_be_a_positive_number(served, value):
    _, client = served
    r = _complete(client, timeout=value)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "timeout"


def test_infinite_timeout_is_a_400(served):
    _, client = served
    body = '{"model": "tw-small", "prompt": "hi", "timeout": Infinity}'
    r = client.post("/v1/completions", content=body,
                    headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "finite" in r.json()["error"]["message"]


@pytest.mark.parametrize("penalty", [5e-324, 1e-300, 1e300])
def test_a_repetition_penalty_that_would_overflow_is_a_400(served, penalty):
    # was a 500: seen tokens' positive logits divided by ~0 became inf, softmax NaN
    _, client = served
    r = _complete(client, repetition_penalty=penalty, prompt="hi hi hi hi")
    assert r.status_code == 400, r.text
    assert "repetition_penalty" in r.text and "1e-06" in r.text


def test_the_repetition_penalty_range_still_generates(served):
    _, client = served
    for penalty in (1e-6, 1e6):
        r = _complete(client, repetition_penalty=penalty, prompt="hi hi hi hi")
        assert r.status_code == 200, r.text


def test_huge_temperature_does_not_fail_generation(served):
    # was a 500: T=1e300 is inf in float32, and a masked (-inf) logit / inf is NaN
    _, client = served
    r = _complete(client, tokenwise={"sampler": [{"name": "top_k", "top_k": 5},
                                                 {"name": "temperature",
                                                  "temperature": 1e300}]})
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("temperature", [1e-40, 1e-45])
def test_tiny_temperature_does_not_fail_generation(served, temperature):
    # was a 500 from plain OpenAI fields: logits / T overflowed float32 to inf, softmax NaN
    _, client = served
    r = _complete(client, temperature=temperature)
    assert r.status_code == 200, r.text


def test_huge_mirostat_target_does_not_fail_generation(served):
    # was a 500: mu = 2 * tau = 2e300 does not fit the sampler's float32 state
    _, client = served
    r = _complete(client, tokenwise={"sampler": [{"name": "mirostat_v2", "tau": 1e300}]})
    assert r.status_code == 200, r.text
