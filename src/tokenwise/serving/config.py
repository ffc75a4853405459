"""`ServerConfig`: everything fixed when the server starts (models, key, limits, batching).

Requests choose among what is configured here and never name a file: models are loaded
once, by the operator, and the list cannot change while the server runs.

Example:
    >>> cfg = ServerConfig(models=("tw-small",))
    >>> cfg.host, cfg.max_tokens_limit, cfg.batching
    ('127.0.0.1', 512, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenwise.errors import TokenwiseError

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel

#: environment variable read when no ``api_key`` is given.
API_KEY_ENV = "TOKENWISE_API_KEY"


@dataclass
class ServerConfig:
    """Settings of one server.

    Args:
        models: built-in names or local model directories (default: every built-in model).
        host: interface to bind (loopback unless asked otherwise).
        port: TCP port.
        api_key: the bearer key clients must send (None: read ``TOKENWISE_API_KEY``; empty
            there too: no key required).
        batching: batch concurrent compatible requests in the engine.
        batch_window_ms: how long the batcher waits for company when it finds one request.
        max_batch_rows: most sequences decoded together.
        max_tokens_limit: largest ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_n: most choices per request.
        max_uncertainty_n: most answers an uncertainty score may sample.
        max_request_bytes: largest request body.
        request_timeout_s: a request still unfinished after this is stopped (504).
        compress_models: compression method -> the model it reads with (a directory or a
            built-in name); methods not listed use their own default.
        device: where models are loaded (``"cpu"``, ``"cuda"``, ``"auto"``).
    """

    models: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    batching: bool = True
    batch_window_ms: float = 5.0
    max_batch_rows: int = 64
    max_tokens_limit: int = 512
    default_max_tokens: int = 64
    max_n: int = 8
    max_uncertainty_n: int = 20
    max_request_bytes: int = 1_000_000
    request_timeout_s: float = 120.0
    compress_models: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("max_batch_rows", "max_tokens_limit", "default_max_tokens", "max_n",
                     "max_uncertainty_n", "max_request_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TokenwiseError(f"{name}={value!r}: allowed an integer >= 1")
        if self.default_max_tokens > self.max_tokens_limit:
            raise TokenwiseError(f"default_max_tokens={self.default_max_tokens} exceeds "
                                 f"max_tokens_limit={self.max_tokens_limit}")
        for name in ("batch_window_ms", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise TokenwiseError(f"{name}={value!r}: allowed a number >= 0")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise TokenwiseError(f"port={self.port!r}: allowed 0..65535")

    def resolved_api_key(self) -> str | None:
        """The key in force: ``api_key``, else the environment variable; None if neither.

        Example:
            >>> ServerConfig(api_key="s3cret").resolved_api_key()
            's3cret'
        """
        key = self.api_key if self.api_key is not None else os.environ.get(API_KEY_ENV)
        return key or None


def load_models(specs: tuple[str, ...] | list[str], device: str = "cpu"
                ) -> dict[str, LanguageModel]:
    """Load every model once, keyed by the id clients use (a built-in name or the
    directory's name).

    Args:
        specs: built-in names or directories; empty: every built-in model.
        device: where to load them.

    Example:
        >>> sorted(load_models(["tw-small"]))
        ['tw-small']
    """
    from tokenwise.models import builtin_names, load

    chosen = list(specs) or builtin_names()
    models: dict[str, LanguageModel] = {}
    for spec in chosen:
        lm = load(spec, device=device)
        if lm.name in models:
            raise TokenwiseError(f"two models are both called {lm.name!r} ({spec!r}); model "
                                 "ids come from directory names, so rename one directory")
        models[lm.name] = lm
    return models
