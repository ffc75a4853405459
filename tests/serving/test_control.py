"""``"tokenwise": {"control": {"probe": NAME, ...}}``: semantic control on the server with a
probe the server was started with. The reply is the one tokenwise.generate gives with the
same SemanticControl; a request names probes, never files; bad requests are 400s naming the
field; the probes are listed in /tokenwise/options and in the OpenAPI document."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")

from fastapi.testclient import TestClient

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.sampling import Chain, Temperature
from tokenwise.sampling.semantic_control import (
    HiddenStateEmbedder,
    LogisticProbe,
    SemanticControl,
)
from tokenwise.serving import ServerConfig
from tokenwise.serving.app import create_app

BASE = "http://testserver"
PROMPT = "markov: ka lo"


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory):
    """A probe fitted by ``tokenwise control train`` on testbed symbol runs, liking " pe",
    and one of the wrong width."""
    from click.testing import CliRunner
    from tests.cli.test_control import markov_lines

    from tokenwise.cli.main import cli

    folder = tmp_path_factory.mktemp("probes")
    likes_pe = folder / "likes-pe.json"
    result = CliRunner().invoke(cli, ["control", "train",
                                      str(markov_lines(folder / "lines.jsonl", count=300)),
                                      "--out", str(likes_pe), "--l2", "1e-4"])
    assert result.exit_code == 0, result.output
    narrow = folder / "narrow.json"
    LogisticProbe([1.0, 2.0, 3.0]).save(narrow, model="elsewhere", embedding="hidden")
    return {"pe": str(likes_pe), "narrow": str(narrow)}


@pytest.fixture(scope="module")
def served(small, probe_files):
    config = ServerConfig(models=("tw-small",), allowed_hosts=("testserver",),
                          max_tokens_limit=16, default_max_tokens=6, batch_window_ms=0,
                          control_probes=probe_files)
    with TestClient(create_app(config, models={"tw-small": small}), base_url=BASE) as client:
        yield client


def _post(client, **body):
    body = {"model": "tw-small", "prompt": PROMPT, "max_tokens": 6, **body}
    return client.post("/v1/completions", json=body)


def _control(**options):
    return {"tokenwise": {"control": {"probe": "pe", **options}}}


def _reference(small, probe_files, seed, **settings):
    control = SemanticControl(LogisticProbe.load(probe_files["pe"]), HiddenStateEmbedder(small),
                              small, length=6, **settings)
    return tw.generate(small, PROMPT, Chain([control, Temperature(1.0)]), max_new_tokens=6,
                       seed=seed).text


def test_the_reply_is_generates_with_the_same_control(served, small, probe_files):
    r = _post(served, seed=11, n=2, **_control(top_k=3, horizon=2, strength=2.0))
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["choices"]]
    # each choice decoded alone, with its own seed (seed + choice), as generate does it
    assert texts == [_reference(small, probe_files, s, top_k=3, horizon=2, strength=2.0)
                     for s in (11, 12)]
    step = r.json()["tokenwise"]["sampler"][0]
    assert step["name"] == "semantic_control" and step["probe"] == "pe"
    assert step["length"] == 6 and step["top_k"] == 3 and "fitted_on" not in step
    assert probe_files["pe"] not in r.text  # the file stays the server's


def test_control_steers_towards_the_probes_attribute(served):
    hits = []
    for body in ({}, _control(top_k=4, horizon=3)):
        texts = []
        for seed in (0, 8, 16):
            r = _post(served, seed=seed, n=8, max_tokens=8, **body)
            assert r.status_code == 200, r.text
            texts += [c["text"] for c in r.json()["choices"]]
        hits.append(sum(" pe" in t for t in texts))
    assert hits[1] >= hits[0] + 6, hits  # as tokenwise.generate: 6 -> 17 of 24 there


def test_greedy_with_control_picks_the_argmax_of_the_steered_logits(served, small,
                                                                     probe_files):
    r = _post(served, temperature=0, **_control(top_k=3, horizon=2))
    assert r.status_code == 200, r.text
    control = SemanticControl(LogisticProbe.load(probe_files["pe"]),
                              HiddenStateEmbedder(small), small, top_k=3, horizon=2, length=6)
    ref = tw.generate(small, PROMPT, Chain([control, Temperature(0.0)]), max_new_tokens=6,
                      seed=r.json()["tokenwise"]["seeds"][0])
    assert r.json()["choices"][0]["text"] == ref.text


@pytest.mark.parametrize("control, param, says", [
    ({"probe": "nope"}, "tokenwise.control.probe", "allowed narrow, pe"),
    ({"probe": "/etc/passwd"}, "tokenwise.control.probe", "is not a probe of this server"),
    ({"probe": "narrow"}, "tokenwise.control.probe", "3-d hidden embeddings"),
    ({"probe": "pe", "top_k": 0}, "tokenwise.control.top_k", "greater than or equal to 1"),
    ({"probe": "pe", "horizon": 33}, "tokenwise.control.horizon", "less than or equal to 32"),
    ({"probe": "pe", "path": "/tmp/x.json"}, "tokenwise.control.path", "Unrecognized"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_control_is_a_400_naming_the_field(served, control, param, says, stream):
    r = _post(served, stream=stream, tokenwise={"control": control})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


@pytest.mark.parametrize("other", [{"uncertainty": {"n": 2}}, {"ead": {"large": "tw-small"}}])
def test_control_with_uncertainty_or_ead_is_refused(served, other):
    r = _post(served, tokenwise={"control": {"probe": "pe"}, **other})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "tokenwise.control"


def test_probes_are_listed_by_name_in_options_and_openapi(served, probe_files):
    assert served.get("/tokenwise/options").json()["control_probes"] == ["narrow", "pe"]
    doc = served.get("/openapi.json").json()
    probe = doc["components"]["schemas"]["ControlOptions"]["properties"]["probe"]
    assert probe["enum"] == ["narrow", "pe"]
    assert all(path not in served.get("/openapi.json").text for path in probe_files.values())


def test_a_server_without_probes_refuses_control_saying_how_to_add_one(small):
    config = ServerConfig(models=("tw-small",), allowed_hosts=("testserver",), batch_window_ms=0)
    with TestClient(create_app(config, models={"tw-small": small}), base_url=BASE) as client:
        r = _post(client, **_control())
        assert r.status_code == 400
        assert "--control-probe NAME=FILE" in r.json()["error"]["message"]
        assert client.get("/tokenwise/options").json()["control_probes"] == []


@pytest.mark.parametrize("probes, says", [
    ({"../up": "p.json"}, "control probe name '../up'"),
    ({"ok": ""}, "is not a file path"),
    ("p.json", "allowed a dict NAME -> probe file"),
])
def test_config_checks_probe_names(probes, says):
    with pytest.raises(TokenwiseError, match=says):
        ServerConfig(control_probes=probes)


def test_a_missing_or_bad_probe_file_stops_the_server_at_start(small, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"weight": "x"}')
    for path, says in ((tmp_path / "absent.json", "does not exist"),
                       (bad, "is not a probe written by LogisticProbe.save")):
        config = ServerConfig(control_probes={"p": str(path)})
        with pytest.raises(TokenwiseError, match=f"control probe p={path}: .*{says}"):
            create_app(config, models={"tw-small": small})


def test_the_vllm_engine_refuses_control():
    from tokenwise.serving.errors import APIError
    from tokenwise.serving.schemas import CompletionRequest
    from tokenwise.vllm.server import VLLMBackend

    req = CompletionRequest(model="m", prompt="x", tokenwise={"control": {"probe": "pe"}})
    with pytest.raises(APIError) as err:
        VLLMBackend.check(None, req)
    body = err.value.body()["error"]
    assert body["param"] == "tokenwise.control" and body["code"] == "unsupported_on_engine"


def test_cli_parses_probe_pairs():
    from tokenwise.cli.serve import parse_control_probes

    assert parse_control_probes(("a=x.json", "b = y.json")) == {"a": "x.json", "b": "y.json"}
    for bad in (("a",), ("=x.json",), ("a=x", "a=y")):
        with pytest.raises(TokenwiseError, match="--control-probe"):
            parse_control_probes(bad)
