"""Run the app with uvicorn: in the foreground (``tokenwise serve``) or in a background
thread of the current process (tests, benchmarks, notebooks).

Example:
    >>> from tokenwise.serving.config import ServerConfig
    >>> with serve_in_thread(ServerConfig(models=("tw-small",), port=0)) as url:  # doctest: +SKIP
    ...     print(url)
    http://127.0.0.1:40123
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.serving.app import create_app
from tokenwise.serving.config import ServerConfig

#: seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 15


def _uvicorn_server(config: ServerConfig, models: dict[str, Any] | None,
                    log_level: str) -> Any:
    import uvicorn

    app = create_app(config, models)
    return uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level,
        timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=5,
        limit_concurrency=1024, server_header=False))


def run(config: ServerConfig, log_level: str = "info") -> None:
    """Serve until interrupted.

    Args:
        config: the settings.
        log_level: uvicorn's log level.
    """
    _uvicorn_server(config, None, log_level).run()


@contextlib.contextmanager
def serve_in_thread(config: ServerConfig, models: dict[str, Any] | None = None,
                    log_level: str = "warning", start_timeout_s: float = 120.0
                    ) -> Iterator[str]:
    """Serve in a daemon thread; yield the base URL (``port=0`` picks a free port).

    Args:
        config: the settings.
        models: already loaded models (skips loading).
        log_level: uvicorn's log level.
        start_timeout_s: how long to wait for the server to listen.
    """
    server = _uvicorn_server(config, models, log_level)
    thread = threading.Thread(target=server.run, name="tokenwise-serve", daemon=True)
    thread.start()
    waited = 0.0
    while not server.started:
        if not thread.is_alive() or waited > start_timeout_s:
            raise TokenwiseError(f"the server did not start on {config.host}:{config.port} "
                                 "(port in use?); see the log above")
        time.sleep(0.05)
        waited += 0.05
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
