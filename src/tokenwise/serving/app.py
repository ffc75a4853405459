"""`create_app`: the FastAPI application (API, playground page, guards, error shapes).

Routes: ``GET /`` (the playground), ``/static/*`` (its assets), ``GET /health`` (503
``{"status": "draining"}`` once a shutdown drain began), ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes), ``GET /tokenwise/options``
(what the playground offers), ``GET /tokenwise/stats`` (engine counters, and the
admission's: requests held, ``max_queue``, refusals, see
:mod:`tokenwise.serving.admission`) and ``GET /metrics`` (Prometheus' text format,
:mod:`tokenwise.serving.metrics`; not served with ``ServerConfig(metrics=False)``). The
interactive API docs are off: they load scripts from a CDN, and this server serves nothing
it does not ship.

The engine is the embedded batcher unless another one is given (``engine=``, e.g.
:func:`tokenwise.vllm.server.VLLMBackend`); it is started and stopped with the app.

Example:
    >>> from tokenwise.serving.config import ServerConfig
    >>> app = create_app(ServerConfig(models=("tw-small",)))
    >>> sorted(app.state.models)
    ['tw-small']
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from tokenwise.errors import TokenwiseError
from tokenwise.models import Codec, LanguageModel
from tokenwise.serving import tokenization
from tokenwise.serving.admission import Admission
from tokenwise.serving.batcher import Batcher
from tokenwise.serving.config import ServerConfig, load_models
from tokenwise.serving.control_options import load_probes
from tokenwise.serving.errors import APIError
from tokenwise.serving.metrics import (
    MeasuredBackend,
    MetricsMiddleware,
    ServingMetrics,
    prometheus_available,
)
from tokenwise.serving.openapi import document
from tokenwise.serving.planning import pick_model
from tokenwise.serving.responses import model_card, models_list
from tokenwise.serving.route_options import load_routers
from tokenwise.serving.routes import (
    CompletionService,
    ServingBackend,
    internal_error,
    register,
)
from tokenwise.serving.security import GuardMiddleware

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("tokenwise.serving")


def options_listing(models: Mapping[str, Codec],
                    control_probes: Mapping[str, str] | None = None,
                    routers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a client may choose: models, samplers with their parameters, compression
    methods, uncertainty estimators, KV-cache presses and quantisers, the probes
    ``tokenwise.control`` may name and the routers ``tokenwise.route`` may name.

    Args:
        models: the served models by id.
        control_probes: the server's probes (NAME -> file; only the names are listed).
        routers: the server's routers (by NAME; only the names are listed).

    Example:
        >>> "top_h" in [s["name"] for s in options_listing({})["samplers"]]
        True
    """
    from tokenwise.compression import names as compression_names
    from tokenwise.kv import PRESSES
    from tokenwise.sampling import describe
    from tokenwise.serving.kv_options import QUANTIZERS
    from tokenwise.serving.uncertainty_score import available

    return {"models": list(models), "samplers": describe(),
            "compression": compression_names(), "uncertainty": available(),
            "kv": {"press": sorted(PRESSES), "quantize": list(QUANTIZERS)},
            "control_probes": sorted(control_probes or {}), "routers": sorted(routers or {})}


def load_compressors(compress_models: dict[str, str]) -> None:
    """Load each configured compression model now, so that a missing directory or a model
    of the wrong kind stops the server at start instead of failing every client's request.

    Args:
        compress_models: method -> model (a built-in name or a directory).

    Raises:
        TokenwiseError: naming the method, the model and what went wrong.

    Example:
        >>> load_compressors({"token_classifier": "/no/such/dir"})
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: compress model token_classifier=/no/such/dir: ...
    """
    from tokenwise.compression import get

    for method, model in compress_models.items():
        try:
            get(method, model=model)  # kept in the compressors' cache for the first request
        except (TokenwiseError, OSError, ValueError) as exc:
            raise TokenwiseError(f"compress model {method}={model}: {exc}") from None


def _runnable(models: Mapping[str, Codec]) -> dict[str, LanguageModel]:
    """``models``, each checked to be one the embedded batcher can decode with."""
    out = {}
    for name, model in models.items():
        if not isinstance(model, LanguageModel):
            raise TypeError(f"model {name!r} is a {type(model).__name__}, which the embedded "
                            "engine cannot decode with (it has no forward pass): give "
                            "LanguageModels (tokenwise.load), or engine= the engine that "
                            "serves it")
        out[name] = model
    return out


def create_app(config: ServerConfig | None = None,
               models: Mapping[str, Codec] | None = None,
               engine: ServingBackend | None = None) -> FastAPI:
    """Build the app; models are loaded now (given, or from ``config.models``) and fixed.

    Args:
        config: the settings (default :class:`ServerConfig`).
        models: already loaded models by id (skips loading): :class:`LanguageModel` s for
            the embedded batcher; with ``engine``, the models that engine serves, as the
            routes see them (any :class:`~tokenwise.models.Codec`, e.g. vLLM's
            ``ServedModel``).
        engine: the engine that generates (default: the embedded batcher over ``models``).

    Raises:
        TypeError: ``engine`` without ``models``, or, without ``engine``, a model the
            embedded batcher cannot run (no forward pass).
    """
    config = config or ServerConfig()
    if engine is None:
        own = load_models(config.models, config.device) if models is None else _runnable(models)
        engine = Batcher(own, batching=config.batching, window_s=config.batch_window_ms / 1000,
                         max_rows=config.max_batch_rows)
        models = own
    elif models is None:
        raise TypeError("create_app(engine=...) needs the models that engine serves")
    models = dict(models)
    load_compressors(config.compress_models)
    load_probes(config.control_probes)
    routers = load_routers(config.routers, models, config.device)
    admission = Admission(config.max_queue)
    metrics = _metrics(config, models, engine, admission)
    service = CompletionService(config, models, engine if metrics is None
                                else MeasuredBackend(engine, metrics), admission, routers)
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="tokenwise", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.config, app.state.models, app.state.engine = config, models, engine
    app.state.admission = admission  # the server's drain (SIGTERM) goes through it
    app.state.routers = routers  # NAME -> LoadedRouter (tokenwise.route)
    app.state.metrics = metrics  # None when off
    app.add_middleware(GuardMiddleware, api_key=config.resolved_api_key(),
                       max_body_bytes=config.max_request_bytes,
                       body_timeout_s=config.body_timeout_s, bound_host=config.host,
                       allowed_hosts=config.allowed_hosts,
                       allowed_origins=config.allowed_origins,
                       cors_origins=config.cors_origins)
    if metrics is not None:  # added last, so outermost: the guards' refusals count too
        app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        # a refusal's Retry-After (429) or Connection: close (503 while draining)
        return JSONResponse(exc.body(), status_code=exc.status,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), code="not_found"
                         if exc.status_code == 404 else None)
        # Starlette's own headers (a 405's Allow) are part of the answer
        return JSONResponse(error.body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(internal_error().body(), status_code=500)

    @app.get("/health")
    async def health() -> Response:
        if admission.draining:  # a load balancer stops sending requests here
            return JSONResponse({"status": "draining"}, status_code=503,
                                headers={"Connection": "close"})
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return models_list(models, started)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return model_card(model_id, pick_model(models, model_id), started)

    @app.get("/tokenwise/options")
    async def options() -> dict[str, Any]:
        return options_listing(models, config.control_probes, routers)

    @app.get("/tokenwise/stats")
    async def stats() -> dict[str, Any]:
        return {**engine.report(), **admission.report()}

    if config.metrics:
        @app.get("/metrics")
        async def scrape() -> Response:
            if metrics is None:
                raise APIError(503, "metrics are unavailable: the prometheus-client package "
                                    "is not installed (pip install 'tokenwise[serve]'); or "
                                    "start the server with --no-metrics",
                               code="metrics_unavailable")
            body, content_type = metrics.render()
            return Response(body, media_type=content_type)

    register(app, service)
    tokenization.register(app, models)
    document(app)  # GET /openapi.json: every route's requests, replies and errors

    @app.get("/")
    async def playground() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if metrics is not None:
        metrics.known_paths = frozenset(getattr(r, "path", "") for r in app.routes)
    return app


def _metrics(config: ServerConfig, models: Mapping[str, Codec], engine: ServingBackend,
             admission: Admission) -> ServingMetrics | None:
    """The app's metrics (None when off, or when ``prometheus-client`` is missing: then the
    server starts with a warning and ``/metrics`` answers 503 saying what to install)."""
    if not config.metrics:
        return None
    if not prometheus_available():
        log.warning("GET /metrics is unavailable: the prometheus-client package is not "
                    "installed (pip install 'tokenwise[serve]'); start with --no-metrics to "
                    "silence this")
        return None
    metrics = ServingMetrics(models)
    metrics.watch_engine(engine)
    metrics.watch_admission(admission.report)
    return metrics
