"""The guards: constant-time key check on the API only, request-size limit, loopback bind."""

from __future__ import annotations

import httpx
import pytest
from tests.serving.conftest import API_KEY

from tokenwise.serving.config import API_KEY_ENV, ServerConfig
from tokenwise.serving.security import key_matches


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
    r = httpx.post(server + "/v1/completions", content=b"", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
