"""`tokenwise serve`: the OpenAI-compatible server with the playground page at ``/``.

``--engine tokenwise`` (the default) generates in this process with tokenwise's own
batcher; ``--engine vllm`` generates on a vLLM engine (continuous batching, tensor and
pipeline parallelism, multi-node through Ray) with the same API.
"""

from __future__ import annotations

from typing import Any

import click

from tokenwise.errors import TokenwiseError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: CLI option -> VLLMOptions field, for the options that only the vLLM engine takes.
_VLLM_OPTIONS = {"gpu_memory_utilization": "--gpu-memory-utilization",
                 "max_model_len": "--max-model-len",
                 "tensor_parallel_size": "--tensor-parallel-size",
                 "pipeline_parallel_size": "--pipeline-parallel-size",
                 "distributed_executor_backend": "--distributed-executor-backend",
                 "dtype": "--dtype", "enforce_eager": "--enforce-eager"}
#: options of the embedded engine that have no meaning on vLLM.
_EMBEDDED_ONLY = {"no_batching": "--no-batching", "batch_window_ms": "--batch-window-ms",
                  "device": "--device", "routers": "--router"}


def vllm_options(ctx: click.Context, engine: str, models: tuple[str, ...],
                 given: dict[str, Any], max_batch_rows: int) -> Any:
    """Check the engine-specific options; the :class:`VLLMOptions` for ``--engine vllm``
    (None for the embedded engine).

    Raises:
        TokenwiseError: an option the chosen engine does not take, or not exactly one model
            for vLLM, or vLLM not installed.
    """
    explicit = {name for name in [*_VLLM_OPTIONS, *_EMBEDDED_ONLY, "max_batch_rows"]
                if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if engine == "tokenwise":
        wrong = [flag for name, flag in _VLLM_OPTIONS.items() if name in explicit]
        if wrong:
            raise TokenwiseError(f"{', '.join(wrong)}: vLLM engine option(s); add "
                                 "--engine vllm, or leave them out")
        return None
    if "routers" in explicit:
        raise TokenwiseError("--router: not used by --engine vllm (a router's probe reads a "
                             "hidden state and its strategies run models tokenwise loads "
                             "itself); serve routers with --engine tokenwise (the default)")
    wrong = [flag for name, flag in _EMBEDDED_ONLY.items() if name in explicit]
    if wrong:
        raise TokenwiseError(f"{', '.join(wrong)}: not used by --engine vllm (vLLM batches "
                             "continuously and places the model itself; see "
                             "--tensor-parallel-size)")
    if len(models) != 1:
        raise TokenwiseError(f"--engine vllm serves exactly one model; give one --model "
                             f"(got {len(models)})")
    from tokenwise.vllm.server import VLLMOptions, require_vllm

    require_vllm()
    kwargs = {name: given[name] for name in _VLLM_OPTIONS if given[name] is not None}
    kwargs["enforce_eager"] = bool(given["enforce_eager"])
    if "max_batch_rows" in explicit:
        kwargs["max_num_seqs"] = max_batch_rows
    return VLLMOptions(**kwargs)


def _parse_pairs(pairs: tuple[str, ...], option: str, form: str) -> dict[str, str]:
    """``KEY=VALUE`` options into a dict; ``form`` says how to write one (in errors)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise TokenwiseError(f"{option} {pair!r}: write {form}")
        if key.strip() in out:
            raise TokenwiseError(f"{option} gives {key.strip()!r} twice")
        out[key.strip()] = value.strip()
    return out


def parse_compress_models(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("token_classifier=DIR",)`` -> ``{"token_classifier": "DIR"}``.

    Example:
        >>> parse_compress_models(("perplexity=tw-large",))
        {'perplexity': 'tw-large'}
    """
    # ServerConfig checks the method names; the server loads the models at start
    return _parse_pairs(pairs, "--compress-model", "METHOD=DIR, e.g. --compress-model "
                        "token_classifier=./llmlingua2-model")


def parse_control_probes(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("calm=probe.json",)`` -> ``{"calm": "probe.json"}``.

    Example:
        >>> parse_control_probes(("calm=./calm.json",))
        {'calm': './calm.json'}
    """
    # ServerConfig checks the names; the server loads the files at start
    return _parse_pairs(pairs, "--control-probe",
                        "NAME=FILE, e.g. --control-probe calm=./calm-probe.json")


def parse_routers(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("math=./router",)`` -> ``{"math": "./router"}``.

    Example:
        >>> parse_routers(("math=./math-router",))
        {'math': './math-router'}
    """
    # ServerConfig checks the names; the server loads the routers at start
    return _parse_pairs(pairs, "--router", "NAME=DIR, e.g. --router math=./math-router (a "
                        "directory written by tokenwise route train)")


@click.command("serve")
@click.option("--model", "-m", "models", multiple=True, metavar="NAME_OR_DIR",
              help="Model to serve, repeatable: a built-in name or a local Hugging Face "
                   "directory (default: every built-in model). Fixed for the server's life.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes the server; set a key.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", default=None, metavar="KEY",
              help="Require 'Authorization: Bearer KEY' on the API (default: the "
                   "TOKENWISE_API_KEY environment variable; both unset: no key). An empty "
                   "KEY is an error.")
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
@click.option("--max-choices", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most choices one request may produce in all (prompts x n).")
@click.option("--max-request-bytes", type=click.IntRange(min=1), default=1_000_000,
              show_default=True, help="Largest request body.")
@click.option("--header-timeout", "header_timeout_s", type=click.FloatRange(min=0.1),
              default=10.0, show_default=True,
              help="Seconds a request's line and headers may take to arrive.")
@click.option("--body-timeout", "body_timeout_s", type=click.FloatRange(min=0.1),
              default=30.0, show_default=True,
              help="Seconds a request's body may take to arrive after its headers (408).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A name clients reach the server by, repeatable (besides loopback names, "
                   "--host, and any IP address when bound to all interfaces); other Host "
                   "headers are refused (DNS rebinding). '*': any.")
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
              help="An origin (https://app.example.com) whose web pages may send requests, "
                   "repeatable; other pages' requests are refused (403). '*': any.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="An origin answered with CORS headers, so its pages can call the API "
                   "and read the answers, repeatable (also an allowed origin). '*': any.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=120.0,
              show_default=True, help="Seconds before an unfinished request is stopped (504).")
@click.option("--max-queue", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most completion requests held at once (waiting or generating); one "
                   "more gets 429 with Retry-After.")
@click.option("--drain-timeout", "drain_timeout_s", type=click.FloatRange(min=0),
              default=30.0, show_default=True,
              help="On SIGTERM: seconds in-flight requests get to finish while new ones get "
                   "503; then the rest end with 503 and the server exits 0. A second "
                   "SIGTERM stops at once.")
@click.option("--compress-model", "compress_models", multiple=True, metavar="METHOD=DIR",
              help="The model a compression method reads with, repeatable "
                   "(e.g. token_classifier=DIR); other methods use their default.")
@click.option("--control-probe", "control_probes", multiple=True, metavar="NAME=FILE",
              help="A probe written by 'tokenwise control train' that requests may steer "
                   "with by NAME (tokenwise.control.probe), repeatable. Requests name probes, "
                   "never files.")
@click.option("--router", "routers", multiple=True, metavar="NAME=DIR",
              help="A router written by 'tokenwise route train' that requests may be answered "
                   "by, by NAME (tokenwise.route), repeatable; it and every model it runs load "
                   "at start. Requests name routers, never directories.")
@click.option("--device", default="cpu", show_default=True,
              help="Where to load the models: cpu, cuda, cuda:N or auto.")
@click.option("--no-metrics", is_flag=True,
              help="Do not serve GET /metrics (Prometheus counters and latency histograms).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info",
                                                 "debug"]), default="info", show_default=True)
@click.option("--engine", type=click.Choice(["tokenwise", "vllm"]), default="tokenwise",
              show_default=True,
              help="What generates: tokenwise's own batcher in this process, or a vLLM "
                   "engine (needs vllm installed; one --model, a directory or built-in name).")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True),
              default=None, help="vLLM: fraction of each GPU's memory to use [0.9].")
@click.option("--max-model-len", type=click.IntRange(min=1), default=None,
              help="vLLM: longest prompt + completion [the model's context].")
@click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=None,
              help="vLLM: GPUs each layer is split over [1].")
@click.option("--pipeline-parallel-size", type=click.IntRange(min=1), default=None,
              help="vLLM: pipeline stages (e.g. one per node with Ray) [1].")
@click.option("--distributed-executor-backend", type=click.Choice(["mp", "ray", "uni"]),
              default=None, help="vLLM: worker processes on this node (mp) or on a Ray "
                                 "cluster (ray, multi-node) [vLLM chooses].")
@click.option("--dtype", type=click.Choice(["auto", "float16", "bfloat16", "float32"]),
              default=None, help="vLLM: weights and activations dtype [auto].")
@click.option("--enforce-eager", is_flag=True, default=None,
              help="vLLM: no CUDA graphs (less memory, slower; needed on CPU).")
@click.pass_context
def serve_command(ctx: click.Context, models: tuple[str, ...], host: str, port: int,
                  api_key: str | None, no_batching: bool, batch_window_ms: float,
                  max_batch_rows: int, max_tokens_limit: int, default_max_tokens: int,
                  max_choices: int, max_request_bytes: int, header_timeout_s: float,
                  body_timeout_s: float, allowed_hosts: tuple[str, ...],
                  allowed_origins: tuple[str, ...], cors_origins: tuple[str, ...],
                  timeout_s: float, max_queue: int, drain_timeout_s: float,
                  compress_models: tuple[str, ...], control_probes: tuple[str, ...],
                  routers: tuple[str, ...], device: str, no_metrics: bool, log_level: str,
                  engine: str, **vllm: Any) -> None:
    """Serve models over an OpenAI-compatible HTTP API, with a playground at /.

    Any OpenAI client works unchanged (base URL http://HOST:PORT/v1); answers carry each
    token's entropy in their logprobs and a `tokenwise` object; tokenwise options go in
    the request's `tokenwise` field (extra_body in the openai client).

    With --engine vllm, requests run on vLLM (continuous batching, tensor/pipeline
    parallel, multi-node via Ray); per-token entropy then needs logprobs=true (vLLM returns
    the full-vocabulary logprobs it is computed from only then), the top-level sampling
    fields run in vLLM's order (temperature before min_p/top_h/top_p), and tokenwise.ead,
    tokenwise.kv, tokenwise.control and tokenwise.route are refused (--router too).

    Browsers: only pages served by this server (the playground) may call it, unless
    --allowed-origin or --cors-origin says otherwise; requests whose Host header is not a
    name of this server are refused (add names with --allowed-host).
    """
    if api_key is not None and not api_key.strip():
        raise click.ClickException(
            f"--api-key {api_key!r} is empty (e.g. --api-key \"$KEY\" with KEY unset): give "
            "the key; to serve without a key, leave --api-key out and TOKENWISE_API_KEY unset")
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
            max_choices=max_choices, max_request_bytes=max_request_bytes,
            request_timeout_s=timeout_s, max_queue=max_queue,
            drain_timeout_s=drain_timeout_s, header_timeout_s=header_timeout_s,
            body_timeout_s=body_timeout_s, allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins, cors_origins=cors_origins,
            compress_models=parse_compress_models(compress_models),
            control_probes=parse_control_probes(control_probes),
            routers=parse_routers(routers), device=device,
            metrics=not no_metrics)
        options = vllm_options(ctx, engine, models, vllm, max_batch_rows)
        key = config.resolved_api_key()
    except TokenwiseError as exc:
        raise click.ClickException(str(exc)) from None
    if host not in _LOOPBACK and key is None:
        click.echo(f"warning: serving on {host} without an API key; anyone who can reach "
                   "this port can use it (set --api-key or TOKENWISE_API_KEY)", err=True)
    if host not in _LOOPBACK and not config.allowed_hosts:
        named = "an IP address of this machine" if host in ("0.0.0.0", "::", "") else \
            f"{host} or a loopback name"
        click.echo(f"note: clients must reach the server as {named}; to accept a DNS name, "
                   "add --allowed-host NAME", err=True)
    if key is None and ("*" in config.cors_origins or "*" in config.allowed_origins):
        click.echo("warning: any web page may call this server, which needs no API key "
                   "(--cors-origin/--allowed-origin '*'); set --api-key", err=True)
    # Said before the models load (a bad model stops here with an error, not a dead URL);
    # uvicorn says "running on ..." once the server listens.
    click.echo(f"tokenwise serve: loading models; then http://{host}:{port}/ (playground), "
               f"http://{host}:{port}/v1 (API); engine {engine}; batching "
               f"{'on' if config.batching else 'off'}; "
               f"API key {'required' if key else 'not required'}", err=True)
    try:
        if options is None:
            run(config, log_level=log_level)
        else:
            from tokenwise.vllm import server as vllm_server

            vllm_server.run(config, models[0], options, log_level=log_level)
    except TokenwiseError as exc:
        raise click.ClickException(str(exc)) from None
