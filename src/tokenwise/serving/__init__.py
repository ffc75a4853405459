"""An OpenAI-compatible HTTP server whose answers carry per-token entropy, and a playground.

``tokenwise serve`` runs it; :func:`create_app` builds the ASGI app for any server;
:func:`serve_in_thread` runs one in the background. Needs the ``serve`` extra
(``pip install tokenwise[serve]``: fastapi, uvicorn).

Example:
    >>> from tokenwise.serving import ServerConfig
    >>> ServerConfig().host
    '127.0.0.1'
"""

from tokenwise.serving.config import API_KEY_ENV, ServerConfig, load_models

__all__ = ["API_KEY_ENV", "ServerConfig", "create_app", "load_models", "run", "serve_in_thread"]


def __getattr__(name: str):  # fastapi and uvicorn load only when a server is built
    if name == "create_app":
        from tokenwise.serving.app import create_app

        return create_app
    if name in ("run", "serve_in_thread"):
        from tokenwise.serving import server

        return getattr(server, name)
    raise AttributeError(f"module 'tokenwise.serving' has no attribute {name!r}")
