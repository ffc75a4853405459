"""`tokenwise serve`: the OpenAI-compatible server with the playground page at ``/``."""

from __future__ import annotations

import click

from tokenwise.errors import TokenwiseError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_compress_models(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("token_classifier=DIR",)`` -> ``{"token_classifier": "DIR"}``.

    Example:
        >>> parse_compress_models(("perplexity=tw-large",))
        {'perplexity': 'tw-large'}
    """
    out: dict[str, str] = {}
    for pair in pairs:
        method, sep, model = pair.partition("=")
        if not sep or not method.strip() or not model.strip():
            raise TokenwiseError(f"--compress-model {pair!r}: write METHOD=DIR, e.g. "
                                 "--compress-model token_classifier=./llmlingua2-model")
        if method.strip() in out:
            raise TokenwiseError(f"--compress-model gives {method.strip()!r} twice")
        out[method.strip()] = model.strip()
    return out


@click.command("serve")
@click.option("--model", "-m", "models", multiple=True, metavar="NAME_OR_DIR",
              help="Model to serve, repeatable: a built-in name or a local Hugging Face "
                   "directory (default: every built-in model). Fixed for the server's life.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes the server; set a key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", default=None, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on the API (default: the "
                   "TOKENWISE_API_KEY environment variable; unset: no key).")
@click.option("--no-batching", is_flag=True,
              help="Decode every request alone (the load benchmark's baseline).")
@click.option("--batch-window-ms", type=click.FloatRange(min=0), default=5.0,
              show_default=True, help="How long an idle engine waits to batch requests.")
@click.option("--max-batch-rows", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most sequences decoded together.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), default=512,
              show_default=True, help="Largest max_tokens a request may ask for.")
@click.option("--default-max-tokens", type=click.IntRange(min=1), default=64,
              show_default=True, help="max_tokens when a request gives none.")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=1_000_000,
              show_default=True, help="Largest request body.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=120.0,
              show_default=True, help="Seconds before an unfinished request is stopped (504).")
@click.option("--compress-model", "compress_models", multiple=True, metavar="METHOD=DIR",
              help="The model a compression method reads with, repeatable "
                   "(e.g. token_classifier=DIR); other methods use their default.")
@click.option("--device", default="cpu", show_default=True,
              help="Where to load the models: cpu, cuda, cuda:N or auto.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info",
                                                 "debug"]), default="info", show_default=True)
def serve_command(models: tuple[str, ...], host: str, port: int, api_key: str | None,
                  no_batching: bool, batch_window_ms: float, max_batch_rows: int,
                  max_tokens_limit: int, default_max_tokens: int, max_request_bytes: int,
                  timeout_s: float, compress_models: tuple[str, ...], device: str,
                  log_level: str) -> None:
    """Serve models over an OpenAI-compatible HTTP API, with a playground at /.

    Any OpenAI client works unchanged (base URL http://HOST:PORT/v1); answers carry each
    token's entropy in their logprobs and a `tokenwise` object; tokenwise options go in
    the request's `tokenwise` field (extra_body in the openai client).
    """
    try:
        from tokenwise.serving import ServerConfig
        from tokenwise.serving.server import run
    except ImportError as exc:
        raise click.ClickException(f"the server needs the 'serve' extra ({exc.name} is "
                                   "missing): pip install 'tokenwise[serve]'") from None
    try:
        config = ServerConfig(
            models=models, host=host, port=port, api_key=api_key, batching=not no_batching,
            batch_window_ms=batch_window_ms, max_batch_rows=max_batch_rows,
            max_tokens_limit=max_tokens_limit, default_max_tokens=default_max_tokens,
            max_request_bytes=max_request_bytes, request_timeout_s=timeout_s,
            compress_models=parse_compress_models(compress_models), device=device)
    except TokenwiseError as exc:
        raise click.ClickException(str(exc)) from None
    if host not in _LOOPBACK and config.resolved_api_key() is None:
        click.echo(f"warning: serving on {host} without an API key; anyone who can reach "
                   "this port can use it (set --api-key or TOKENWISE_API_KEY)", err=True)
    click.echo(f"tokenwise serve: http://{host}:{port}/ (playground), "
               f"http://{host}:{port}/v1 (API); batching "
               f"{'on' if config.batching else 'off'}; "
               f"API key {'required' if config.resolved_api_key() else 'not required'}",
               err=True)
    try:
        run(config, log_level=log_level)
    except TokenwiseError as exc:
        raise click.ClickException(str(exc)) from None
