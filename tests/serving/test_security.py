"""The guards: constant-time key check on the API only, request-size limit, loopback bind,
and the operator's settings checked when the server starts."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.serving.conftest import API_KEY

from tokenwise.errors import TokenwiseError
from tokenwise.serving.config import API_KEY_ENV, ServerConfig
from tokenwise.serving.security import host_allowed, key_matches, same_origin


def test_key_matches_only_the_exact_bearer_key():
    assert key_matches(f"Bearer {API_KEY}", API_KEY)
    assert key_matches(f"bearer {API_KEY}", API_KEY)
    for header in (None, "", API_KEY, f"Basic {API_KEY}", f"Bearer {API_KEY}x",
                   f"Bearer {API_KEY[:-1]}"):
        assert not key_matches(header, API_KEY)


def test_key_comes_from_the_option_or_the_environment(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServerConfig().resolved_api_key() == "from-env"
    assert ServerConfig(api_key="given").resolved_api_key() == "given"
    monkeypatch.delenv(API_KEY_ENV)
    assert ServerConfig().resolved_api_key() is None
    assert ServerConfig().host == "127.0.0.1"


@pytest.mark.parametrize("path", ["/v1/models", "/tokenwise/stats", "/tokenwise/options"])
def test_api_routes_need_the_key(server, path):
    r = httpx.get(server + path)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server + path, headers={"Authorization": f"Bearer {API_KEY}"}).is_success


def test_a_body_over_the_limit_is_413_before_parsing(server):
    body = b'{"model": "tw-small", "prompt": "' + b"a" * 30_000 + b'"}'
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    r = httpx.post(server + "/v1/completions", content=body, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies to the bytes received
        for _ in range(40):
            yield b"a" * 1000

    r = httpx.post(server + "/v1/completions", content=chunks(), headers=headers)
    assert r.status_code == 413


def test_unknown_routes_and_methods_answer_in_openai_shape(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.get(server + "/v1/embeddings", headers=headers)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(server + "/v1/completions", content=b"",
                   headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_an_empty_key_is_an_error_not_a_keyless_server(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    with pytest.raises(TokenwiseError, match=r"api_key='' is empty.*needs no key"):
        ServerConfig(api_key="")  # e.g. --api-key "$KEY" with KEY unset
    monkeypatch.setenv(API_KEY_ENV, "")
    with pytest.raises(TokenwiseError, match=f"{API_KEY_ENV} is set but empty.*unset it"):
        ServerConfig()
    assert ServerConfig(api_key="given").resolved_api_key() == "given"
    for key in (" padded", "tab\tinside", "naïve"):
        with pytest.raises(TokenwiseError, match="printable ASCII"):
            ServerConfig(api_key=key)


def test_unknown_compression_methods_are_refused_at_start():
    with pytest.raises(TokenwiseError, match=r"unknown method 'nope': allowed extractive, "
                                             r"generative, perplexity"):
        ServerConfig(compress_models={"nope": "tw-small"})
    assert ServerConfig(compress_models={"llmlingua2": "d"}).compress_models == \
        {"token_classifier": "d"}
    with pytest.raises(TokenwiseError, match="'token_classifier' twice"):
        ServerConfig(compress_models={"llmlingua2": "a", "token_classifier": "b"})


def test_a_missing_compression_model_stops_the_server_at_start(small, tmp_path):
    from tokenwise.serving.app import create_app

    missing = tmp_path / "no-such-classifier"
    config = ServerConfig(compress_models={"token_classifier": str(missing)})
    with pytest.raises(TokenwiseError, match=f"compress model token_classifier={missing}: "
                                             "token classifier .* not found"):
        create_app(config, models={"tw-small": small})
    config = ServerConfig(compress_models={"token_classifier": "tw-small"})
    with pytest.raises(TokenwiseError, match="no token-classification head"):
        create_app(config, models={"tw-small": small})


@pytest.mark.parametrize("field, value, fragment", [
    ("allowed_hosts", ("tw.test:8000",), "without scheme or port"),
    ("allowed_hosts", ("http://tw.test",), "without scheme or port"),
    ("allowed_hosts", "tw.test", "allowed a tuple of strings"),
    ("allowed_origins", ("app.test",), "allowed an origin such as"),
    ("cors_origins", ("https://app.test/path",), "no path"),
    ("header_timeout_s", 0, "allowed a number of seconds > 0"),
    ("body_timeout_s", float("nan"), "allowed a number of seconds > 0"),
])
def test_bad_guard_settings_name_the_value(field, value, fragment):
    with pytest.raises(TokenwiseError, match=f"{field}.*{re.escape(fragment)}"):
        ServerConfig(**{field: value})


def test_guard_settings_are_normalised():
    cfg = ServerConfig(allowed_hosts=("TW.test", "[::1]"), cors_origins=("HTTPS://App.test:443",),
                       allowed_origins=["http://x.test:8080/"])
    assert cfg.allowed_hosts == ("tw.test", "::1")
    assert cfg.cors_origins == ("https://app.test",)
    assert cfg.allowed_origins == ("http://x.test:8080",)


@pytest.mark.parametrize("host, bound, allowed, ok", [
    ("127.0.0.1:8000", "127.0.0.1", (), True),
    ("LocalHost", "127.0.0.1", (), True),
    ("[::1]:8000", "127.0.0.1", (), True),
    ("attacker.test:8000", "127.0.0.1", (), False),  # DNS rebinding
    ("10.0.0.5:8000", "127.0.0.1", (), False),
    ("10.0.0.5:8000", "0.0.0.0", (), True),  # all interfaces: any address
    ("attacker.test", "0.0.0.0", (), False),
    ("tw.example.com", "0.0.0.0", ("tw.example.com",), True),
    ("anything.test", "127.0.0.1", ("*",), True),
    ("a b", "127.0.0.1", (), False),
    ("localhost:99999", "127.0.0.1", (), False),
    ("evil.test@localhost", "127.0.0.1", (), False),
])
def test_host_allowed(host, bound, allowed, ok):
    assert host_allowed(host, bound, allowed) is ok


def test_same_origin_compares_host_and_port():
    assert same_origin("http://localhost:8000", "localhost:8000")
    assert same_origin("https://tw.example.com", "tw.example.com")  # TLS ended by a proxy
    assert not same_origin("http://localhost:8001", "localhost:8000")
    assert not same_origin("http://evil.test", "localhost")
    assert not same_origin("null", "localhost")
