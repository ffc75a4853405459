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
    assert "add --allowed-host NAME" in result.output


def test_an_empty_api_key_is_refused_not_dropped(monkeypatch):
    seen = {}
    monkeypatch.setattr("tokenwise.serving.server.run", lambda config, log_level: seen.update(
        config=config))
    monkeypatch.setenv("TOKENWISE_API_KEY", "from-env")
    result = CliRunner().invoke(serve_command, ["--api-key", ""])  # --api-key "$KEY", KEY unset
    assert result.exit_code != 0 and seen == {}
    assert "--api-key '' is empty" in result.output
    assert "leave --api-key out and TOKENWISE_API_KEY unset" in result.output
    monkeypatch.setenv("TOKENWISE_API_KEY", "")
    result = CliRunner().invoke(serve_command, [])
    assert result.exit_code != 0 and seen == {}
    assert "TOKENWISE_API_KEY is set but empty" in result.output


def test_guard_and_limit_options_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr("tokenwise.serving.server.run",
                        lambda config, log_level: seen.update(config=config))
    result = CliRunner().invoke(serve_command, [
        "--allowed-host", "tw.example.com", "--allowed-origin", "https://a.example.com",
        "--cors-origin", "http://localhost:3000", "--cors-origin", "http://localhost:3001",
        "--header-timeout", "4", "--body-timeout", "9", "--max-choices", "16"])
    assert result.exit_code == 0, result.output
    cfg = seen["config"]
    assert cfg.allowed_hosts == ("tw.example.com",)
    assert cfg.allowed_origins == ("https://a.example.com",)
    assert cfg.cors_origins == ("http://localhost:3000", "http://localhost:3001")
    assert (cfg.header_timeout_s, cfg.body_timeout_s, cfg.max_choices) == (4, 9, 16)


def test_bad_operator_settings_stop_the_server_before_it_starts(monkeypatch):
    seen = {}
    monkeypatch.setattr("tokenwise.serving.server.run", lambda config, log_level: seen.update(
        config=config))
    result = CliRunner().invoke(serve_command, ["--compress-model", "nope=tw-small"])
    assert result.exit_code != 0 and seen == {}
    assert "unknown method 'nope': allowed extractive, generative, perplexity" in result.output
    result = CliRunner().invoke(serve_command, ["--cors-origin", "localhost:3000"])
    assert result.exit_code != 0 and "cors_origins entry 'localhost:3000'" in result.output
    assert seen == {}


def test_any_origin_without_a_key_warns(monkeypatch):
    monkeypatch.setattr("tokenwise.serving.server.run", lambda config, log_level: None)
    monkeypatch.delenv("TOKENWISE_API_KEY", raising=False)
    result = CliRunner().invoke(serve_command, ["--cors-origin", "*"])
    assert result.exit_code == 0 and "any web page may call this server" in result.output


def test_a_missing_compression_model_is_a_start_up_error(monkeypatch, tmp_path):
    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("tokenwise.serving.server.uvicorn_server", started)
    missing = tmp_path / "gone"
    result = CliRunner().invoke(serve_command, ["--model", "tw-small", "--compress-model",
                                                f"token_classifier={missing}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"compress model token_classifier={missing}: token classifier" in result.output
