"""The OpenAPI document (`tokenwise.serving.openapi`): every route in it, narrowed to the
server's own limits, and real responses of every kind valid under it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis")

from fastapi.testclient import TestClient  # noqa: E402

from tokenwise.serving import ServerConfig  # noqa: E402
from tokenwise.serving.app import create_app  # noqa: E402
from tokenwise.serving.openapi import OPENAPI_PATH, build_document, document  # noqa: E402

BASE = "http://testserver"


def _app(small, **overrides):
    settings = dict(models=("tw-small",), allowed_hosts=("testserver",), max_tokens_limit=6,
                    default_max_tokens=4, max_n=3, max_uncertainty_n=4, batch_window_ms=0)
    settings.update(overrides)
    app = create_app(ServerConfig(**settings), models={"tw-small": small})
    if app.openapi_url is None:  # until app.py calls document() itself
        document(app)
    return app


@pytest.fixture(scope="module")
def served(small):
    app = _app(small)
    with TestClient(app, base_url=BASE) as client:
        yield app, client


def _validator(doc, name):
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}",
                                        "components": doc["components"]})


def _assert_valid(doc, name, body):
    errors = [f"{e.instance_path}: {e.message}" for e in _validator(doc, name).iter_errors(body)]
    assert not errors, (name, errors, json.dumps(body)[:800])


def _events(text):
    return [chunk[len("data: "):] for chunk in text.split("\n\n") if chunk.startswith("data: ")]


def test_every_route_is_documented_and_nothing_else(served):
    app, _ = served
    doc = app.openapi()
    routes = set()
    for route in app.routes:
        path = getattr(route, "path", "")
        if path in ("/", OPENAPI_PATH, "/static") or not getattr(route, "methods", None):
            continue
        path = path.replace("{model_id:path}", "{model_id}")
        routes |= {(m.lower(), path) for m in route.methods if m != "HEAD"}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes


def test_openapi_json_is_served_and_is_the_document(served):
    app, client = served
    r = client.get(OPENAPI_PATH)
    assert r.status_code == 200
    assert r.json() == app.openapi()
    assert r.json()["openapi"] == "3.1.0"


def test_document_carries_the_servers_models_and_limits(served):
    app, _ = served
    schemas = app.openapi()["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["model"]["enum"] == ["tw-small"]
    assert chat["max_tokens"]["anyOf"][0]["maximum"] == 6
    assert chat["max_completion_tokens"]["anyOf"][0]["maximum"] == 6
    assert chat["n"]["maximum"] == 3
    assert schemas["UncertaintyOptions"]["properties"]["n"]["maximum"] == 4
    assert schemas["CompletionRequest"]["properties"]["max_tokens"]["anyOf"][0] == {
        "minimum": 0, "maximum": 6, "type": "integer"}
    timeout = chat["timeout"]["anyOf"][0]
    assert timeout["exclusiveMinimum"] == 0 and timeout["type"] == "number"
    assert "top_h" in schemas["SamplerStep"]["properties"]["name"]["enum"]


def test_key_guarded_routes_document_401_only_with_a_key(small):
    plain = build_document(_app(small))
    assert "401" not in plain["paths"]["/v1/models"]["get"]["responses"]
    assert "securitySchemes" not in plain["components"]
    keyed = build_document(_app(small, api_key="k"))
    assert "401" in keyed["paths"]["/v1/models"]["get"]["responses"]
    assert "401" not in keyed["paths"]["/health"]["get"]["responses"]
    assert keyed["paths"]["/tokenize"]["post"]["security"] == [{"bearer": []}]
    assert keyed["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_schemathesis_loads_every_operation(served):
    schemathesis = pytest.importorskip("schemathesis")
    app, _ = served
    schema = schemathesis.openapi.from_dict(app.openapi())
    labels = sorted(result.ok().label for result in schema.get_all_operations())
    assert "POST /v1/chat/completions" in labels and "GET /v1/models/{model_id}" in labels
    assert len(labels) == len({(m, p) for p, ops in app.openapi()["paths"].items()
                               for m in ops})


def test_real_json_responses_match_their_schemas(served):
    app, client = served
    doc = app.openapi()
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ("get", "/health", None, "Health"),
        ("get", "/v1/models", None, "ModelList"),
        ("get", "/v1/models/tw-small", None, "ModelCard"),
        ("get", "/tokenwise/options", None, "Options"),
        ("get", "/tokenwise/stats", None, "Stats"),
        ("post", "/v1/chat/completions", {"model": "tw-small", "messages": msgs, "n": 2,
                                          "logprobs": True, "top_logprobs": 2, "seed": 3},
         "ChatCompletion"),
        ("post", "/v1/chat/completions", {"model": "tw-small", "messages": msgs,
                                          "temperature": 0.0}, "ChatCompletion"),
        ("post", "/v1/completions", {"model": "tw-small", "prompt": ["7+2=", "1+1="],
                                     "logprobs": 2, "echo": True, "max_tokens": 2},
         "TextCompletion"),
        ("post", "/v1/completions", {"model": "tw-small", "prompt": [1, 70, 71],
                                     "max_tokens": 0, "echo": True, "logprobs": 0},
         "TextCompletion"),
        ("post", "/v1/completions", {"model": "tw-small", "prompt": "7+2=", "max_tokens": 2,
                                     "tokenwise": {"kv": {"press": "snapkv", "budget": 2}}},
         "TextCompletion"),
        ("post", "/v1/chat/completions", {"model": "tw-small", "messages": msgs, "n": 2,
                                          "tokenwise": {"kv": {"quantize": "kivi", "bits": 4}}},
         "ChatCompletion"),
        ("post", "/tokenize", {"prompt": "hi", "return_token_strs": True}, "TokenizeResponse"),
        ("post", "/tokenize", {"messages": msgs}, "TokenizeResponse"),
        ("post", "/detokenize", {"tokens": [1, 70]}, "DetokenizeResponse"),
    ]
    for method, path, body, name in cases:
        r = client.request(method, path, json=body)
        assert r.status_code == 200, (path, r.text)
        _assert_valid(doc, name, r.json())


def test_streamed_chunks_match_their_schemas(served):
    app, client = served
    doc = app.openapi()
    for path, body, name in [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                      "logprobs": True, "n": 2}, "ChatCompletionChunk"),
            ("/v1/completions", {"prompt": "7+2=", "logprobs": 1, "echo": True},
             "TextCompletionChunk")]:
        r = client.post(path, json={"model": "tw-small", "stream": True,
                                    "stream_options": {"include_usage": True}, **body})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.text)
        assert events[-1] == "[DONE]" and len(events) > 3
        for raw in events[:-1]:
            _assert_valid(doc, name, json.loads(raw))
        assert json.loads(events[-2])["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("post", "/v1/chat/completions", {"model": "tw-small", "messages": []}, 400),
    ("post", "/v1/chat/completions", {"model": "nope", "messages": [
        {"role": "user", "content": "x"}]}, 404),
    ("post", "/v1/completions", {"model": "tw-small", "prompt": "x", "max_tokens": 7}, 400),
    ("post", "/v1/completions", {"model": "tw-small", "prompt": "x", "timeout": 0}, 400),
    ("post", "/detokenize", {"tokens": [10**9]}, 400),
    ("get", "/v1/models/nope", None, 404),
])
def test_error_answers_are_documented_error_bodies(served, method, path, body, status):
    app, client = served
    doc = app.openapi()
    r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    op = doc["paths"][path if "nope" not in path else "/v1/models/{model_id}"][method]
    assert str(status) in op["responses"]
    _assert_valid(doc, "ErrorBody", r.json())


def test_documented_limits_are_the_servers(served):
    """What the document forbids the server refuses, and the bound itself is accepted."""
    _, client = served
    ok = client.post("/v1/completions", json={"model": "tw-small", "prompt": "x",
                                              "max_tokens": 6, "n": 3})
    assert ok.status_code == 200, ok.text
    over = client.post("/v1/completions", json={"model": "tw-small", "prompt": "x", "n": 4})
    assert over.status_code == 400 and over.json()["error"]["param"] == "n"


def test_kv_options_document_the_presses_and_quantisers(served):
    from tokenwise.kv import PRESSES

    app, client = served
    kv = app.openapi()["components"]["schemas"]["KVOptions"]
    assert kv["properties"]["press"]["anyOf"][0]["enum"] == sorted(PRESSES)
    assert kv["properties"]["quantize"]["anyOf"][0]["enum"] == ["kivi", "saq"]
    assert kv["additionalProperties"] is True  # the settings, checked by the press itself
    body = {"model": "tw-small", "prompt": "7+2=", "max_tokens": 2,
            "tokenwise": {"kv": {"press": "snapkv", "budget": 0}}}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokenwise.kv.budget"
    _assert_valid(app.openapi(), "ErrorBody", r.json())
