"""`ServerConfig`: everything fixed when the server starts (models, key, limits, batching).

Requests choose among what is configured here and never name a file: models are loaded
once, by the operator, and the list cannot change while the server runs.

Example:
    >>> cfg = ServerConfig(models=("tw-small",))
    >>> cfg.host, cfg.max_tokens_limit, cfg.batching
    ('127.0.0.1', 512, True)
"""

from __future__ import annotations

import ipaddress
import os
import re
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
        api_key: the bearer key clients must send (None: read ``TOKENWISE_API_KEY``; unset
            there too: no key required). An empty key, here or in the environment variable,
            is an error: it is what ``--api-key "$KEY"`` gives when ``KEY`` is unset.
        batching: batch concurrent compatible requests in the engine.
        batch_window_ms: how long the batcher waits for company when it finds one request.
        max_batch_rows: most sequences decoded together.
        max_tokens_limit: largest ``max_tokens`` a request may ask for.
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_n: most choices per prompt (``n``).
        max_choices: most choices one request may produce in all (prompts x ``n``).
        max_uncertainty_n: most answers an uncertainty score may sample.
        max_request_bytes: largest request body.
        request_timeout_s: a request still unfinished after this is stopped (504); a
            request's own ``timeout`` field may set a shorter one.
        max_queue: most completion requests held at once, waiting for the engine or
            generating (an integer >= 1; there is no unbounded setting: a server that
            holds everything answers nobody in time once it falls behind). One more is
            refused with 429 and ``Retry-After``.
        drain_timeout_s: on SIGTERM, seconds the requests in flight get to finish while
            new ones get 503; those still running then end with a 503, and the server
            exits (status 0).
        compress_models: compression method -> the model it reads with (a directory or a
            built-in name); methods not listed use their own default.
        control_probes: probe NAME -> probe file (written by ``tokenwise control train``)
            that a request's ``tokenwise.control.probe`` may name; a request never gives a
            path. Loaded when the app is created.
        routers: router NAME -> router directory (written by ``tokenwise route train``)
            that a request's ``tokenwise.route`` may name; a request never gives a path.
            Loaded, with every model they run, when the app is created.
        device: where models are loaded (``"cpu"``, ``"cuda"``, ``"auto"``).
        allowed_hosts: more names the ``Host`` header may carry (besides the loopback names,
            the bound host, and any IP address when bound to all interfaces); ``"*"``: any
            (this gives up the DNS-rebinding guard; e.g. behind a proxy that checks Host).
        allowed_origins: origins (``https://app.example``) whose pages may send requests,
            besides the server's own; ``"*"``: any.
        cors_origins: origins answered with CORS headers (and preflights), so that their
            pages can read the answers; also allowed as origins. ``"*"``: any.
        header_timeout_s: a request's line and headers must arrive within this many
            seconds of its first byte (and a new connection must start one in this time).
        body_timeout_s: a request's body must arrive within this many seconds of its
            headers (408 otherwise).
        metrics: serve ``GET /metrics`` (Prometheus; needs ``prometheus-client``).
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
    max_choices: int = 64
    max_uncertainty_n: int = 20
    max_request_bytes: int = 1_000_000
    request_timeout_s: float = 120.0
    max_queue: int = 256
    drain_timeout_s: float = 30.0
    compress_models: dict[str, str] = field(default_factory=dict)
    control_probes: dict[str, str] = field(default_factory=dict)
    routers: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    metrics: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_rows", "max_tokens_limit", "default_max_tokens", "max_n",
                     "max_choices", "max_uncertainty_n", "max_request_bytes", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TokenwiseError(f"{name}={value!r}: allowed an integer >= 1")
        if self.default_max_tokens > self.max_tokens_limit:
            raise TokenwiseError(f"default_max_tokens={self.default_max_tokens} exceeds "
                                 f"max_tokens_limit={self.max_tokens_limit}")
        for name in ("batch_window_ms", "request_timeout_s", "drain_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < float("inf"):
                raise TokenwiseError(f"{name}={value!r}: allowed a finite number >= 0")
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < float("inf"):
                raise TokenwiseError(f"{name}={value!r}: allowed a number of seconds > 0")
        if not isinstance(self.metrics, bool):
            raise TokenwiseError(f"metrics={self.metrics!r}: allowed True or False")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise TokenwiseError(f"port={self.port!r}: allowed 0..65535")
        _check_key(self.api_key, "api_key")
        if self.api_key is None:
            _check_key(os.environ.get(API_KEY_ENV), API_KEY_ENV)
        self.allowed_hosts = tuple(_host_name(h) for h in _strings(self.allowed_hosts,
                                                                   "allowed_hosts"))
        self.allowed_origins = tuple(_origin(o, "allowed_origins") for o in
                                     _strings(self.allowed_origins, "allowed_origins"))
        self.cors_origins = tuple(_origin(o, "cors_origins") for o in
                                  _strings(self.cors_origins, "cors_origins"))
        self.compress_models = _compress_models(self.compress_models)
        self.control_probes = _control_probes(self.control_probes)
        self.routers = _named_paths(self.routers, "routers", "router", "router directory")

    def resolved_api_key(self) -> str | None:
        """The key in force: ``api_key``, else the environment variable; None if neither.

        Example:
            >>> ServerConfig(api_key="s3cret").resolved_api_key()
            's3cret'
        """
        if self.api_key is not None:
            return self.api_key
        key = os.environ.get(API_KEY_ENV)
        _check_key(key, API_KEY_ENV)  # the environment may have changed since __post_init__
        return key


def _check_key(key: str | None, where: str) -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise TokenwiseError(f"{where}: the key must be a string (got {type(key).__name__})")
    if not key:
        if where == "api_key":
            raise TokenwiseError(f"api_key='' is empty: give the key, or api_key=None to read "
                                 f"{API_KEY_ENV} (with neither, the server needs no key)")
        raise TokenwiseError(f"{where} is set but empty: set it to the key, or unset it to "
                             "serve without a key")
    if key != key.strip() or not key.isascii() or not key.isprintable():
        raise TokenwiseError(f"{where}: the key has surrounding whitespace or characters "
                             "that are not printable ASCII, which an 'Authorization: Bearer' "
                             "header cannot carry; allowed printable ASCII")


def _strings(values: object, name: str) -> tuple[str, ...]:
    # A lone string would be iterated character by character: refuse it by name.
    if isinstance(values, str) or not isinstance(values, (tuple, list)) \
            or not all(isinstance(v, str) for v in values):
        raise TokenwiseError(f"{name}={values!r}: allowed a tuple of strings")
    return tuple(values)


def _host_name(value: str) -> str:
    """An ``allowed_hosts`` entry, lower-cased, IPv6 brackets removed."""
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "*":
        return name
    bad = not name or "/" in name or any(c.isspace() for c in name)
    if not bad and ":" in name:
        try:  # colons are only allowed in an IPv6 address (a port is never part of it)
            ipaddress.IPv6Address(name)
        except ValueError:
            bad = True
    if bad:
        raise TokenwiseError(f"allowed_hosts entry {value!r}: allowed a host name or IP "
                             "address without scheme or port (e.g. tw.example.com), or '*'")
    return name


def _origin(value: str, name: str) -> str:
    """An origin entry (``scheme://host[:port]``), lower-cased; ``*`` stays."""
    from urllib.parse import urlsplit

    origin = value.strip().lower().rstrip("/")
    if origin == "*":
        return origin
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.path or parts.query or parts.fragment or parts.username:
        raise TokenwiseError(f"{name} entry {value!r}: allowed an origin such as "
                             "https://app.example.com or http://localhost:3000 (scheme, host "
                             "and optional port, no path), or '*'")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    # Browsers leave a scheme's default port out of Origin: compare in that form.
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


#: what a probe's NAME may be: it travels in requests and responses
_PROBE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _control_probes(given: object) -> dict[str, str]:
    """Probe names checked (short, plain names) and files made strings; the files are
    loaded when the app is created (:func:`tokenwise.serving.control_options.load_probes`)."""
    return _named_paths(given, "control_probes", "control probe", "probe file")


def _named_paths(given: object, option: str, what: str, path_kind: str) -> dict[str, str]:
    """``NAME -> path`` with each NAME short and plain (it travels in requests and responses)
    and each path a string; what the paths hold is read when the app is created."""
    if not isinstance(given, dict):
        raise TokenwiseError(f"{option}={given!r}: allowed a dict NAME -> {path_kind}")
    out: dict[str, str] = {}
    for name, path in given.items():
        if not isinstance(name, str) or not _PROBE_NAME.fullmatch(name):
            raise TokenwiseError(f"{what} name {name!r}: allowed 1-64 letters, digits, "
                                 "'_', '.' or '-', starting with a letter or digit")
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise TokenwiseError(f"{what} {name!r}: {path!r} is not a "
                                 f"{'file' if path_kind.endswith('file') else 'directory'} "
                                 "path")
        out[name] = os.fspath(path)
    return out


def _compress_models(given: object) -> dict[str, str]:
    """Method names checked (aliases to their names); the models are loaded at start-up."""
    if not isinstance(given, dict):
        raise TokenwiseError(f"compress_models={given!r}: allowed a dict METHOD -> model")
    if not given:
        return {}
    from tokenwise.compression.registry import ALIASES, names

    known = names()
    out: dict[str, str] = {}
    for method, model in given.items():
        name = ALIASES.get(method, method)
        if name not in known:
            raise TokenwiseError(f"compress model for unknown method {method!r}: allowed "
                                 f"{', '.join(known)}")
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise TokenwiseError(f"compress model for {method!r}: {model!r} is not a model "
                                 "name or directory")
        if name in out:
            raise TokenwiseError(f"compress models give {name!r} twice ({method!r} is "
                                 f"another name for {name!r})")
        out[name] = os.fspath(model)
    return out


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
