"""``tokenwise.control`` of a request: semantic control with a probe the server was started
with.

The server loads every probe file it is given (``tokenwise serve --control-probe
NAME=FILE``, files written by ``tokenwise control train``) when it starts
(:func:`load_probes`), so a missing or malformed file stops the server instead of failing a
client. A request names a probe by NAME (``"tokenwise": {"control": {"probe": NAME}}``),
never by path: the server reads no file a request points at. :func:`control_spec` checks the
request against the probe and the model (a probe fitted on another model's embeddings is
refused, naming both sizes) and gives a :class:`ControlSpec`, hashable data that
:meth:`ControlSpec.build` turns into a fresh
:class:`~tokenwise.sampling.SemanticControl` for each decode.

Example:
    >>> import os, tempfile
    >>> from tokenwise.models import load
    >>> from tokenwise.sampling.semantic_control import LogisticProbe
    >>> from tokenwise.serving.schemas import ControlOptions
    >>> lm = load("tw-small")
    >>> path = os.path.join(tempfile.mkdtemp(), "probe.json")
    >>> LogisticProbe([0.0] * lm.config.hidden_size).save(path, model="tw-small",
    ...                                                  embedding="hidden", layer=-1)
    >>> probes = load_probes({"calm": path})
    >>> spec = control_spec(ControlOptions(probe="calm"), probes, lm, max_tokens=8)
    >>> spec.describe()["probe"], spec.length
    ('calm', 8)
    >>> control_spec(ControlOptions(probe="/etc/passwd"), probes, lm, max_tokens=8)
    Traceback (most recent call last):
    ...
    tokenwise.serving.errors.APIError: tokenwise.control.probe: '/etc/passwd' is not a probe ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import ControlOptions

#: the embedders a probe file may name (``tokenwise control train --embedding``)
EMBEDDINGS = ("hidden", "tokens")
#: the most ``top_k * max_tokens * vocabulary`` a request may ask for: the sampler holds a
#: few float32 tensors of that size (2**28 floats = 1 GiB each)
MAX_CONTROL_CELLS = 2**28

#: probe file -> the probe, loaded once (at start-up by :func:`load_probes`)
_LOADED: dict[str, Any] = {}


def _probe(path: str) -> Any:
    from tokenwise.sampling.semantic_control import LogisticProbe

    if path not in _LOADED:
        _LOADED[path] = LogisticProbe.load(path)
    return _LOADED[path]


def load_probes(paths: Mapping[str, str]) -> dict[str, str]:
    """Load every probe file now, checking what it says it was fitted on.

    Args:
        paths: probe NAME -> file written by ``tokenwise control train``
            (:meth:`~tokenwise.sampling.semantic_control.LogisticProbe.save`).

    Returns:
        The same mapping (names -> files), every file loaded and kept for the requests.

    Raises:
        TokenwiseError: naming NAME=FILE and what is wrong with it.

    Example:
        >>> load_probes({"calm": "/no/such/probe.json"})
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: control probe calm=/no/such/probe.json: probe file ...
    """
    out = {}
    for name, path in paths.items():
        try:
            probe = _probe(path)
        except TokenwiseError as exc:
            raise TokenwiseError(f"control probe {name}={path}: {exc}") from None
        embedding = probe.info.get("embedding", "hidden")
        if embedding not in EMBEDDINGS:
            raise TokenwiseError(f"control probe {name}={path}: embedding={embedding!r} in "
                                 f"the file: allowed {', '.join(EMBEDDINGS)} (as written by "
                                 "tokenwise control train)")
        layer = probe.info.get("layer", -1)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TokenwiseError(f"control probe {name}={path}: layer={layer!r} in the file: "
                                 "allowed an integer")
        out[name] = path
    return out


@dataclass(frozen=True)
class ControlSpec:
    """Semantic control as data (hashable: requests with equal specs may share a job).

    Attributes:
        probe: the probe's NAME on this server.
        path: its file (loaded at start-up).
        embedding: ``"hidden"`` (the model's mean hidden state) or ``"tokens"`` (the mean
            of its input embeddings), as the probe was fitted.
        layer: the hidden state the probe reads (``embedding="hidden"``).
        strength: multiplies the log estimate.
        top_k: candidates scored per token.
        horizon: rollout tokens per candidate.
        spread: the probit correction (see :class:`~tokenwise.sampling.SemanticControl`).
        seed: seed of the rollouts.
        length: the reply's length in tokens (``max_tokens``): the rollouts stop there.
    """

    probe: str
    path: str
    embedding: str
    layer: int
    strength: float
    top_k: int
    horizon: int
    spread: bool
    seed: int
    length: int

    def build(self, lm: Any) -> Any:
        """A fresh :class:`~tokenwise.sampling.SemanticControl` on ``lm``.

        Args:
            lm: the request's :class:`~tokenwise.models.LanguageModel` (rollouts and
                embeddings run on it).
        """
        from tokenwise.sampling.semantic_control import (
            HiddenStateEmbedder,
            SemanticControl,
            TokenMeanEmbedder,
        )

        embedder = (HiddenStateEmbedder(lm, self.layer) if self.embedding == "hidden"
                    else TokenMeanEmbedder(lm.hf_model.get_input_embeddings().weight))
        return SemanticControl(_probe(self.path), embedder, lm, strength=self.strength,
                               top_k=self.top_k, horizon=self.horizon, length=self.length,
                               spread=self.spread, seed=self.seed)

    def describe(self) -> dict[str, Any]:
        """The settings as a response reports them: the probe by name, neither its file nor
        the model it was fitted on (which may be a directory of the server's)."""
        return {"name": "semantic_control", "probe": self.probe, "embedding": self.embedding,
                "layer": self.layer, "strength": self.strength, "top_k": self.top_k,
                "horizon": self.horizon, "length": self.length, "spread": self.spread,
                "seed": self.seed}


def _embedding_size(lm: Any, embedding: str) -> int | None:
    """The width of the embeddings the probe will read on ``lm`` (None: not a model the
    embedded engine runs, e.g. vLLM's, which refuses control itself)."""
    hf = getattr(lm, "hf_model", None)
    if hf is None or not hasattr(hf, "get_input_embeddings"):
        return None
    if embedding == "tokens":
        return int(hf.get_input_embeddings().weight.shape[1])
    return int(getattr(hf.config, "hidden_size", hf.get_input_embeddings().weight.shape[1]))


def control_spec(opts: ControlOptions, probes: Mapping[str, str], lm: Any, max_tokens: int,
                 model: str = "") -> ControlSpec:
    """Check a request's ``tokenwise.control`` and give its :class:`ControlSpec`.

    Args:
        opts: the request's options.
        probes: the server's probes, NAME -> file (``ServerConfig.control_probes``).
        lm: the request's model.
        max_tokens: the reply's budget (the text the probe judges ends there).
        model: the request's model id (named in errors).

    Raises:
        APIError: 400 naming the field: an unknown probe name (the allowed ones listed), a
            probe fitted on embeddings of another size, or a request too large to steer.
    """
    if opts.probe not in probes:
        allowed = (f"allowed {', '.join(sorted(probes))}" if probes else
                   "this server was started with none (tokenwise serve --control-probe "
                   "NAME=FILE)")
        raise APIError(400, f"tokenwise.control.probe: {opts.probe!r} is not a probe of this "
                            f"server: {allowed}", param="tokenwise.control.probe",
                       code="invalid_value")
    path = probes[opts.probe]
    probe = _probe(path)
    embedding = probe.info.get("embedding", "hidden")
    layer = probe.info.get("layer", -1)
    width = probe.weight.numel()
    size = _embedding_size(lm, embedding)
    if size is not None and size != width:
        raise APIError(400, f"tokenwise.control.probe: probe {opts.probe!r} reads "
                            f"{width}-d {embedding} embeddings, but model "
                            f"{model or getattr(lm, 'name', '?')!r} gives {size}-d ones: "
                            "use a probe fitted on this model", param="tokenwise.control.probe",
                       code="invalid_value")
    vocab = int(getattr(lm, "vocab_size", 0) or 0)
    cells = opts.top_k * max_tokens * vocab
    if cells > MAX_CONTROL_CELLS:
        raise APIError(400, f"tokenwise.control.top_k: top_k={opts.top_k} x max_tokens="
                            f"{max_tokens} x vocabulary {vocab} = {cells:,} is over this "
                            f"server's limit of {MAX_CONTROL_CELLS:,} (each is a float the "
                            "sampler holds several times): lower top_k or max_tokens",
                       param="tokenwise.control.top_k", code="invalid_value")
    return ControlSpec(probe=opts.probe, path=path, embedding=embedding, layer=int(layer),
                       strength=float(opts.strength), top_k=opts.top_k, horizon=opts.horizon,
                       spread=opts.spread, seed=opts.seed, length=max_tokens)
