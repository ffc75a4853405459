"""`tokenwise serve`: options become the server's config; bad ones fail before serving."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("fastapi")

from tokenwise.cli.serve import serve_command


def test_options_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr("tokenwise.serving.server.run",
                        lambda config, log_level: seen.update(config=config, level=log_level))
    result = CliRunner().invoke(serve_command, [
        "--model", "tw-small", "--port", "9123", "--api-key", "k", "--no-batching",
        "--max-tokens-limit", "100", "--compress-model", "token_classifier=/x/clf"])
    assert result.exit_code == 0, result.output
    cfg = seen["config"]
    assert cfg.models == ("tw-small",) and cfg.port == 9123 and cfg.host == "127.0.0.1"
    assert cfg.batching is False and cfg.max_tokens_limit == 100
    assert cfg.resolved_api_key() == "k"
    assert cfg.compress_models == {"token_classifier": "/x/clf"}


def test_bad_options_fail_with_a_message(monkeypatch):
    monkeypatch.setattr("tokenwise.serving.server.run", lambda config, log_level: None)
    result = CliRunner().invoke(serve_command, ["--compress-model", "token_classifier"])
    assert result.exit_code != 0 and "METHOD=DIR" in result.output
    result = CliRunner().invoke(serve_command, ["--default-max-tokens", "600"])
    assert result.exit_code != 0 and "max_tokens_limit" in result.output


def test_a_public_bind_without_a_key_warns(monkeypatch):
    monkeypatch.setattr("tokenwise.serving.server.run", lambda config, log_level: None)
    monkeypatch.delenv("TOKENWISE_API_KEY", raising=False)
    result = CliRunner().invoke(serve_command, ["--host", "0.0.0.0"])
    assert result.exit_code == 0 and "without an API key" in result.output
