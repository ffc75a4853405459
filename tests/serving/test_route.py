"""``"tokenwise": {"route": NAME}``: a request answered by a router the server was started
with. The reply is the router's answer (the one Router.answer gives with the same seed), the
``tokenwise.route`` object carries its decision; requests name routers, never directories;
what a router would not honour is a 400 naming the field; a bad request harms no other."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")

from fastapi.testclient import TestClient

from tokenwise.errors import TokenwiseError
from tokenwise.routing import (
    DifficultyProbe,
    RouteItem,
    Router,
    collect,
    feature_flops,
    fit_router,
    load_strategies,
    prompt_features,
)
from tokenwise.serving import ServerConfig
from tokenwise.serving.app import create_app

BASE = "http://testserver"
SUMS = [("2+3=", "5"), ("4+1=", "5"), ("7+2=", "9"), ("1+2=", "3"), ("0+7=", "7"),
        ("8+5=", "13"), ("3+5=", "8"), ("0+3=", "3"), ("6+6=", "12"), ("9+7=", "16"),
        ("5+5=", "10"), ("6+2=", "8")]
TABLE = [{"name": "small", "model": "tw-small", "max_new_tokens": 4},
         {"name": "large", "model": "tw-large", "max_new_tokens": 4},
         {"name": "vote", "model": "tw-large", "max_new_tokens": 4, "n": 3,
          "sampler": [{"name": "temperature", "temperature": 1.5}]},
         {"name": "idk", "abstain": True}]


def always(strategy, small):
    """A difficulty router whose every label maps to ``strategy``."""
    probe = DifficultyProbe().fit(prompt_features(small, ["2+3=", "9+7="]), ["easy", "hard"])
    return Router(load_strategies(TABLE), feature_model="tw-small",
                  probes={"difficulty": probe}, mapping={"easy": strategy, "hard": strategy},
                  abstain="idk")


@pytest.fixture(scope="module")
def models(small, large):
    return {"tw-small": small, "tw-large": large}


@pytest.fixture(scope="module")
def routers(models, tmp_path_factory):
    """A value router fitted on 12 sums (k=2, 2 folds), and two fixed ones, saved."""
    folder = tmp_path_factory.mktemp("routers")
    table = load_strategies(TABLE[:2])
    items = [RouteItem(p, (a,)) for p, a in SUMS]
    data = collect(items, models, table, feature_model="tw-small", k=2, progress=False)
    fitted = fit_router(data, table, policy="value", folds=2)
    made = {"math": fitted, "vote": always("vote", models["tw-small"]),
            "never": always("idk", models["tw-small"])}
    return {name: (router, str(router.save(folder / name))) for name, router in made.items()}


@pytest.fixture(scope="module")
def app(models, routers):
    config = ServerConfig(models=("tw-small", "tw-large"), allowed_hosts=("testserver",),
                          max_tokens_limit=16, default_max_tokens=6, batch_window_ms=0,
                          routers={name: path for name, (_, path) in routers.items()})
    return create_app(config, models=models)


@pytest.fixture(scope="module")
def served(app):
    with TestClient(app, base_url=BASE) as client:
        yield client


def _complete(client, route="math", **body):
    body = {"model": "tw-small", "prompt": "2+3=", "tokenwise": {"route": route}, **body}
    return client.post("/v1/completions", json=body)


def test_a_completion_is_the_routers_answer_with_its_decision(served, routers, models):
    router = routers["math"][0]
    for prompt in ("2+3=", "9+7="):
        r = _complete(served, prompt=prompt, seed=5)
        assert r.status_code == 200, r.text
        body = r.json()
        routed = router.answer(models, prompt, seed=5)
        assert body["choices"][0]["text"] == routed.text
        assert body["model"] == "tw-small"
        info = body["tokenwise"]["route"]
        assert info["router"] == "math" and info["strategy"] == routed.decision.strategy
        assert info["decision"] == {"label": None, "reason": routed.decision.reason,
                                    "probabilities": routed.decision.probabilities}
        assert info["flops"] == routed.flops and info["abstained"] is False
        strategy = router.by_name[routed.decision.strategy]
        assert info["model"] == strategy.model and info["samples"] == routed.answer.samples
        lm = models[strategy.model]
        assert body["usage"]["prompt_tokens"] == len(lm.encode(prompt, add_bos=True))
        assert body["usage"]["completion_tokens"] == routed.answer.tokens
        assert body["tokenwise"]["sampler"] == [] and body["tokenwise"]["seeds"] == [None]


def test_a_chat_asks_the_router_its_one_user_message(served, routers, models):
    r = served.post("/v1/chat/completions", json={
        "model": "tw-large", "messages": [{"role": "user", "content": "7+2="}],
        "seed": 0, "tokenwise": {"route": {"router": "math"}}})
    assert r.status_code == 200, r.text
    body = r.json()
    routed = routers["math"][0].answer(models, "7+2=", seed=0)
    assert body["object"] == "chat.completion" and body["model"] == "tw-large"
    assert body["choices"][0]["message"]["content"] == routed.text
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_sampled_strategy_uses_the_requests_seed_and_votes(served, routers, models):
    router = routers["vote"][0]
    bodies = [_complete(served, route="vote", prompt="8+5=", seed=s).json() for s in (1, 1, 2)]
    assert bodies[0]["choices"] == bodies[1]["choices"]  # the same seed, the same answer
    for body, seed in zip(bodies, (1, 1, 2), strict=True):
        routed = router.answer(models, "8+5=", seed=seed)
        info = body["tokenwise"]["route"]
        assert body["choices"][0]["text"] == routed.text
        assert (info["strategy"], info["n"], info["seed"]) == ("vote", 3, seed)
        assert info["samples"] == routed.answer.samples and info["votes"] == routed.answer.votes
        assert body["tokenwise"]["seeds"] == [seed]
        assert body["tokenwise"]["sampler"] == [{"name": "temperature", "temperature": 1.5}]
    drawn = _complete(served, route="vote", prompt="8+5=").json()["tokenwise"]["route"]["seed"]
    assert isinstance(drawn, int)  # no seed given: one drawn, and reported


def test_an_abstaining_route_runs_no_model_but_the_probe(served, models):
    r = _complete(served, route="never", prompt="6+6=")
    assert r.status_code == 200, r.text
    body = r.json()
    info = body["tokenwise"]["route"]
    assert body["choices"][0]["text"] == "I don't know."
    assert info["abstained"] is True and info["model"] is None and info["strategy"] == "idk"
    assert info["flops"] == feature_flops(models["tw-small"], "6+6=")
    assert body["usage"]["completion_tokens"] == 0


def test_the_replies_match_the_openapi_document(served, app):
    jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="installed with schemathesis")
    from tokenwise.serving.openapi import document

    if app.openapi_url is None:
        document(app)
    doc = served.get("/openapi.json").json()
    for name, path, body in (
            ("TextCompletion", "/v1/completions",
             {"model": "tw-small", "prompt": "2+3=", "tokenwise": {"route": "math"}}),
            ("ChatCompletion", "/v1/chat/completions",
             {"model": "tw-small", "messages": [{"role": "user", "content": "2+3="}],
              "tokenwise": {"route": "never"}})):
        reply = served.post(path, json=body).json()
        validator = jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}",
                                                 "components": doc["components"]})
        assert [e.message for e in validator.iter_errors(reply)] == []
    route = doc["components"]["schemas"]["RouteOptions"]["properties"]["router"]
    assert route["enum"] == ["math", "never", "vote"]


def test_the_routers_are_listed_and_share_the_served_models(served, app, models):
    assert served.get("/tokenwise/options").json()["routers"] == ["math", "never", "vote"]
    # a served model the routers name is the same object, not a second copy
    for loaded in app.state.routers.values():
        assert loaded.models["tw-large"] is models["tw-large"]
        assert loaded.models["tw-small"] is models["tw-small"]


def test_a_routed_request_past_its_timeout_is_a_504_and_the_next_one_is_answered(served):
    late = _complete(served, timeout=1e-9)
    assert late.status_code == 504, late.text
    assert late.json()["error"]["param"] == "timeout"
    assert _complete(served, seed=0).status_code == 200


def test_an_unknown_router_is_a_400_naming_the_available_ones(served):
    for route in ("nope", {"router": "nope"}):
        r = _complete(served, route=route)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "tokenwise.route"
        assert "'nope' is not a router of this server: allowed math, never, vote" in \
            error["message"]


@pytest.mark.parametrize("extra, param, says", [
    ({"stream": True}, "stream", "send stream=false"),
    ({"n": 2}, "n", "n=2: a router gives one answer"),
    ({"temperature": 0.7, "top_p": 0.9}, "temperature", "fields given: temperature, top_p"),
    ({"stop": ["\n"]}, "stop", "its own stop string"),
    ({"logprobs": 1}, "logprobs", "no per-token logprobs"),
    ({"echo": True}, "echo", "its own prompt templates"),
    ({"max_tokens": 2}, "max_tokens", "max_tokens=2 is below the 4 tokens"),
    ({"max_tokens": 99}, "max_tokens", "over this server's limit of 16"),
    ({"prompt": ["2+3=", "4+1="]}, "prompt", "one question given as text"),
    ({"prompt": [5, 6, 7]}, "prompt", "not token ids"),
    ({"prompt": "  "}, "prompt", "prompt 0 is empty"),
    ({"response_format": {"type": "json_object"}}, "response_format", "free text"),
])
def test_what_a_router_would_not_honour_is_a_400(served, extra, param, says):
    r = _complete(served, **extra)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


@pytest.mark.parametrize("option", [
    {"sampler": [{"name": "temperature", "temperature": 0.5}]},
    {"kv": {"press": "snapkv", "budget": 0.5}},
    {"control": {"probe": "p"}},
    {"uncertainty": {"n": 2}},
    {"ead": {"large": "tw-large"}},
])
def test_other_tokenwise_extras_with_route_are_a_400(served, option):
    r = served.post("/v1/completions", json={"model": "tw-small", "prompt": "2+3=",
                                             "tokenwise": {"route": "math", **option}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    name = next(iter(option))
    assert error["param"] == f"tokenwise.{name}"
    assert "cannot be combined with tokenwise.route" in error["message"]


@pytest.mark.parametrize("messages, tools, param", [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3="}], None,
     "messages"),
    ([{"role": "user", "content": "2+3="}],
     [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}],
     "tools"),
])
def test_a_chat_a_router_cannot_read_is_a_400(served, messages, tools, param):
    body = {"model": "tw-small", "messages": messages, "tokenwise": {"route": "math"}}
    if tools:
        body["tools"] = tools
    r = served.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_bad_request_harms_no_other(served, routers, models):
    too_long = "1+" * 400 + "1="  # past the strategies' models' context
    bad = _complete(served, prompt=too_long)
    assert bad.status_code == 400, bad.text
    assert "could not answer this question" in bad.json()["error"]["message"]
    assert _complete(served, route="nope").status_code == 400
    good = _complete(served, prompt="4+1=", seed=0)
    assert good.status_code == 200, good.text
    assert good.json()["choices"][0]["text"] == routers["math"][0].answer(
        models, "4+1=", seed=0).text
    plain = served.post("/v1/completions", json={"model": "tw-small", "prompt": "4+1=",
                                                 "max_tokens": 2})
    assert plain.status_code == 200 and "route" not in plain.json()["tokenwise"]


def test_a_missing_router_or_a_model_it_cannot_load_stops_the_server(small, routers, tmp_path):
    ghost = tmp_path / "ghost"
    routers["math"][0].save(ghost)
    config = json.loads((ghost / "router.json").read_text())
    config["strategies"][0]["model"] = "no-such-model"
    (ghost / "router.json").write_text(json.dumps(config))
    for path, says in ((tmp_path / "absent", "holds no router.json"),
                       (ghost, "runs model 'no-such-model', which does not load")):
        with pytest.raises(TokenwiseError, match=f"router r={path}.*{says}"):
            create_app(ServerConfig(routers={"r": str(path)}), models={"tw-small": small})
    with pytest.raises(TokenwiseError, match="router name 'a b'"):
        ServerConfig(routers={"a b": "x"})


def test_the_vllm_engine_refuses_route():
    from tokenwise.serving.errors import APIError
    from tokenwise.serving.schemas import CompletionRequest
    from tokenwise.vllm.server import VLLMBackend

    req = CompletionRequest(model="m", prompt="x", tokenwise={"route": "math"})
    with pytest.raises(APIError) as err:
        VLLMBackend.check(None, req)
    body = err.value.body()["error"]
    assert body["param"] == "tokenwise.route" and body["code"] == "unsupported_on_engine"


def test_cli_parses_router_pairs_and_refuses_them_on_vllm(tmp_path):
    from click.testing import CliRunner

    from tokenwise.cli.main import cli
    from tokenwise.cli.serve import parse_routers

    assert parse_routers(("a=x", "b = y")) == {"a": "x", "b": "y"}
    for bad in (("a",), ("=x",), ("a=x", "a=y")):
        with pytest.raises(TokenwiseError, match="--router"):
            parse_routers(bad)
    result = CliRunner().invoke(cli, ["serve", "--engine", "vllm", "--model", "tw-small",
                                      "--router", f"m={tmp_path}"])
    assert result.exit_code != 0 and "--router: not used by --engine vllm" in result.output


def _scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``GET /metrics``: (name, sorted labels) -> value."""
    parser = pytest.importorskip("prometheus_client.parser")
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(r.text)
            for s in family.samples}


def test_routed_requests_are_counted_in_the_metrics_once(served):
    """Prompt and completion tokens, finish reasons, latency and the HTTP counter's model
    label of routed requests, as the normal path counts them: by the usage they reported,
    under the request's model, once."""
    before = _scrape(served)
    replies = [_complete(served, seed=0), _complete(served, route="vote", seed=1),
               _complete(served, route="never", prompt="6+6="),
               served.post("/v1/chat/completions", json={
                   "model": "tw-small", "messages": [{"role": "user", "content": "7+2="}],
                   "seed": 0, "tokenwise": {"route": "math"}})]
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    bodies = [r.json() for r in replies]
    after = _scrape(served)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("tokenwise_prompt_tokens_total", model="tw-small") == \
        sum(b["usage"]["prompt_tokens"] for b in bodies) > 0
    assert grew("tokenwise_completion_tokens_total", model="tw-small") == \
        sum(b["usage"]["completion_tokens"] for b in bodies) > 0
    reasons = [b["choices"][0]["finish_reason"] for b in bodies]
    for reason in set(reasons):
        assert grew("tokenwise_finished_sequences_total", model="tw-small",
                    reason=reason) == reasons.count(reason)
    assert grew("tokenwise_request_latency_seconds_count", model="tw-small",
                kind="completion") == 3
    assert grew("tokenwise_request_latency_seconds_count", model="tw-small", kind="chat") == 1
    for endpoint, count in (("/v1/completions", 3), ("/v1/chat/completions", 1)):
        assert grew("tokenwise_http_requests_total", endpoint=endpoint, model="tw-small",
                    status="200") == count
    assert after[("tokenwise_requests_generating", ())] == 0
    # no routed request reached the engine's generation path
    assert grew("tokenwise_time_to_first_token_seconds_count", model="tw-small") == 0
