"""tokenwise samplers inside vLLM's engine: v1 logits processors, switched on per request.

vLLM (v1 engine, checked against 0.32) samples natively with temperature, top-k, top-p and
min-p. The processors here add the tokenwise samplers it lacks: Top-H (both rules),
locally typical, epsilon, eta, Mirostat v2 and the entropy/varentropy regime sampler. Each
is a ``vllm.v1.sample.logits_processor.LogitsProcessor``; the math is the tokenwise sampler
itself (:mod:`tokenwise.sampling`), called on the rows of the requests that asked for it,
grouped by their parameters. Requests that did not ask are left untouched.

Register them all with the engine, then switch them on per request through
``SamplingParams.extra_args`` (``vllm_xargs`` in ``extra_body`` over HTTP)::

    llm = LLM(model=..., logits_processors=list(PROCESSORS))
    llm.generate(prompts, SamplingParams(temperature=1.0, extra_args={"top_h": 0.4}))

    vllm serve MODEL --logits-processors tokenwise.vllm.processors:TopHLogitsProcessor \\
        tokenwise.vllm.processors:TypicalLogitsProcessor ...    # every class in PROCESSORS
    client.completions.create(..., extra_body={"vllm_xargs": {"top_h": 0.4}})

:func:`to_vllm` turns a tokenwise chain spec into both halves (native ``SamplingParams``
keywords and ``extra_args``).

Keys of ``extra_args`` (flat, so they pass through ``vllm_xargs``). A sampler is on for a
request when its switch key is present; its other keys need the switch key. Unknown keys
with a sampler's prefix and bad values are refused when the request is made (vLLM's server
answers 400), naming the key and what is allowed.

====================================  ====================================================
key                                   meaning (tokenwise parameter)
====================================  ====================================================
``top_h``                             Top-H ``alpha`` in (0, 1]
``top_h_rule``                        ``"reference"`` (default) or ``"bound"``
``top_h_top_n``                       candidates, int >= 1 (default 100) or ``"none"``
``top_h_temperature``                 temperature of the mask's softmax (default 1.0)
``top_h_min_tokens_to_keep``          int >= 1 (default 1)
``typical``                           typical ``mass`` in (0, 1]
``typical_min_tokens_to_keep``        int >= 1 (default 1)
``epsilon``                           epsilon cut-off in (0, 1)
``epsilon_min_tokens_to_keep``        int >= 1 (default 1)
``eta``                               eta sampling's ``epsilon`` in (0, 1)
``eta_min_tokens_to_keep``            int >= 1 (default 1)
``mirostat_v2``                       Mirostat v2 target surprise ``tau`` (bits, > 0)
``mirostat_v2_eta``                   learning rate of ``mu`` (> 0; default 0.1)
``entropy_regime``                    ``true`` (or 1): on, with the defaults below
``entropy_regime_<param>``            ``h_low``, ``h_high``, ``v_low``, ``v_high``,
                                      ``explore_temperature``, ``explore_k``, ``branch_k``,
                                      ``lost_temperature``, ``lost_min_p``,
                                      ``default_min_p`` (see :class:`EntropyRegime`)
====================================  ====================================================

Where they run in vLLM's sampling order (``vllm/v1/sample/sampler.py``), per step:

1. logits to float32; allowed-token and bad-word masks;
2. processors that can change the argmax: vLLM's min-tokens and logit-bias, then
   **typical** (it may drop the most likely token, so it is not argmax-invariant);
3. repetition / frequency / presence penalties;
4. if every request in the batch is greedy, the argmax is taken here and nothing below
   runs; otherwise greedy rows take their argmax here and the rest goes on;
5. temperature (vLLM's ``temperature``);
6. argmax-invariant processors in registration order: vLLM's min-p, then **top_h,
   epsilon, eta, mirostat_v2, entropy_regime** (the order of :data:`PROCESSORS`);
7. top-k, then top-p; then a token is drawn.

What that means for a user:

* Top-H, epsilon, eta, Mirostat and the regime see the logits *after* the penalties and
  vLLM's temperature: ``temperature=0.7`` with ``top_h`` is tokenwise's
  ``Chain([Temperature(0.7), TopH(...)])``, not TopH on the raw logits. Keep
  ``temperature=1.0`` for the published behaviour (Top-H's own ``top_h_temperature`` only
  shapes its mask). vLLM's top-k and top-p come *after* them.
* Typical sees the logits before the penalties and the temperature (step 2), and applies
  to greedy requests too (greedy then picks the most likely token of the typical set).
* The argmax-invariant ones never change a greedy request's token (vLLM takes that argmax
  before step 6); Mirostat with ``temperature=0`` therefore never updates ``mu`` in steps
  where the whole batch is greedy, which changes nothing a greedy request returns.
* Mirostat v2 keeps ``mu`` per request; it follows the request as vLLM moves it in its
  persistent batch and learns from the token vLLM actually sampled (read from the
  request's output-token list, which vLLM appends to in place, at the next step). vLLM
  removes a request from the batch when it preempts it and also when it merely does not
  schedule it in a step, and later re-adds it with the same ``SamplingParams`` object and
  the tokens generated so far; the processor parks the removed request's state under that
  object (held weakly) and continues it on re-add, so ``mu`` carries on where it was.
  At most :data:`MAX_PARKED` states are parked (finished requests are parked too, as
  vLLM does not say which removals are final; the oldest go first).
* The entropy regime applies its own temperatures on top of vLLM's: use
  ``temperature=1.0`` with it.
* Logprobs: vLLM returns raw (pre-processor) logprobs by default; start the engine with
  ``logprobs_mode="processed_logprobs"`` to see the distribution after our processors
  (tokenwise's own readers, :func:`tokenwise.vllm.generate_with_stats` and
  ``sample_answers``, need the raw ones and refuse such an engine).
* vLLM refuses custom logits processors with speculative decoding and pooling models.

vLLM also loads logits processors from the entry-point group ``vllm.logits_processors``
(every installed one, in every engine). tokenwise does not register there by default: a
class registered both ways would run twice, and vLLM keeps the output-token lists that
Mirostat reads up to date under async scheduling only for processors passed explicitly.

Example:
    >>> native, extra = to_vllm([("temperature", {"temperature": 0.8}),
    ...                          ("top_h", {"alpha": 0.3, "rule": "bound"}),
    ...                          ("top_p", {"top_p": 0.9})])
    >>> native
    {'temperature': 0.8, 'top_k': 0, 'top_p': 0.9, 'min_p': 0.0}
    >>> extra
    {'top_h': 0.3, 'top_h_rule': 'bound'}
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.sampling.base import Sampler
from tokenwise.sampling.registry import get, sampler_class
from tokenwise.vllm.tracking import follow_batch, params_ref, unpark

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if HAVE_VLLM:
    from vllm.v1.sample.logits_processor import LogitsProcessor as _VllmLogitsProcessor
else:  # the module still imports (docs, to_vllm); the processors need vLLM to be built
    _VllmLogitsProcessor = object  # type: ignore[assignment,misc]

__all__ = [
    "MAX_PARKED",
    "MAX_SAMPLERS",
    "PROCESSORS",
    "EntropyRegimeLogitsProcessor",
    "EpsilonLogitsProcessor",
    "EtaLogitsProcessor",
    "MirostatV2LogitsProcessor",
    "TokenwiseLogitsProcessor",
    "TopHLogitsProcessor",
    "TypicalLogitsProcessor",
    "to_vllm",
]


#: How many removed requests' states a stateful processor (Mirostat) keeps for a re-add.
MAX_PARKED = 4096
#: How many samplers (one per distinct parameter set) a stateless processor caches.
MAX_SAMPLERS = 256


def _param_names(name: str) -> list[str]:
    sig = inspect.signature(sampler_class(name).__init__)
    return [p for p in sig.parameters if p != "self"]


def _is_switch_on(value: object) -> bool:
    # JSON true may reach us as 1 (vLLM's vllm_xargs schema has no bool).
    return value is True or (isinstance(value, int) and not isinstance(value, bool) and value == 1)


class TokenwiseLogitsProcessor(_VllmLogitsProcessor):
    """Base: one tokenwise sampler, applied to the rows of the requests that asked for it.

    Subclasses set ``sampler`` (the :data:`tokenwise.sampling.SAMPLERS` name), ``main``
    (the sampler parameter the switch key carries; ``None``: the switch is ``true``) and
    ``argmax_invariant``. State: batch row -> that request's parameters (or, for stateful
    samplers, its own sampler object), kept in step with vLLM's ``BatchUpdate``\\ s.
    """

    sampler: ClassVar[str]
    main: ClassVar[str | None]
    argmax_invariant: ClassVar[bool] = True
    #: rows carry state that must survive vLLM removing and re-adding the request
    stateful: ClassVar[bool] = False

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        if not HAVE_VLLM:
            raise TokenwiseError("tokenwise's vLLM logits processors need vllm installed "
                                 "(pip install vllm)")
        self.device = torch.device(device)
        self.rows: dict[int, Any] = {}  # batch index -> request state
        self._groups: list[tuple[Sampler, Tensor | None]] | None = None  # None: rebuild
        # parameters -> sampler (stateless ones), least recently used first
        self._samplers: dict[tuple, Sampler] = {}
        # id(SamplingParams) -> states of removed requests (stateful processors), oldest first
        self._parked: dict[int, list[Any]] = {}

    # --- per-request parameters -----------------------------------------------------

    @classmethod
    def extra_keys(cls) -> list[str]:
        """Every ``extra_args`` key this processor reads (switch key first)."""
        return [cls.sampler] + [f"{cls.sampler}_{p}" for p in _param_names(cls.sampler)
                                if p != cls.main]

    @classmethod
    def request_params(cls, extra_args: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The sampler parameters a request asks for, or ``None`` if it does not ask.

        Args:
            extra_args: ``SamplingParams.extra_args``.

        Raises:
            TokenwiseError: a key or value this processor refuses (names the key).
        """
        if not extra_args:
            return None
        name, prefix = cls.sampler, cls.sampler + "_"
        mine = {k: v for k, v in extra_args.items()
                if isinstance(k, str) and (k == name or k.startswith(prefix))}
        if not mine:
            return None
        allowed = ", ".join(repr(k) for k in cls.extra_keys())
        if name not in mine:
            raise TokenwiseError(
                f"extra_args {sorted(mine)} need {name!r} too (it switches {name} on); "
                f"keys for {name}: {allowed}")
        accepted = _param_names(name)
        params: dict[str, Any] = {}
        for key, value in mine.items():
            if key == name:
                if cls.main is not None:
                    params[cls.main] = value
                elif not _is_switch_on(value):
                    raise TokenwiseError(f"extra_args[{key!r}]={value!r}: allowed true (or 1) "
                                         f"to switch {name} on")
                continue
            param = key[len(prefix):]
            if param not in accepted or param == cls.main:
                hint = f" ({cls.main} is given as {name!r})" if param == cls.main else ""
                raise TokenwiseError(f"unknown extra_args key {key!r}{hint}; keys for "
                                     f"{name}: {allowed}")
            if param == "top_n" and isinstance(value, str) and value.lower() == "none":
                value = None  # no null in vllm_xargs: "none" means the whole vocabulary
            params[param] = value
        for param, value in params.items():
            # tokenwise samplers take per-row lists; a request is one row.
            if isinstance(value, (list, tuple, dict)):
                raise TokenwiseError(f"extra_args[{cls._key(param)!r}]={value!r}: allowed one "
                                     "value per request, not a list")
        try:
            get(name, **params)
        except TokenwiseError as err:
            message = str(err)
            bad = [p for p in params if message.startswith((f"{p}=", f"{p}["))]
            where = f"extra_args[{cls._key(bad[0])!r}]" if bad else f"extra_args for {name}"
            raise TokenwiseError(f"{where}: {message}") from err
        return params

    @classmethod
    def _key(cls, param: str) -> str:
        return cls.sampler if param == cls.main else f"{cls.sampler}_{param}"

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """vLLM calls this when a request arrives: a ``ValueError`` here becomes a 400.

        Args:
            sampling_params: the request's ``vllm.SamplingParams``.
        """
        cls.request_params(getattr(sampling_params, "extra_args", None))

    def is_argmax_invariant(self) -> bool:
        """True when the sampler never changes the most likely token (see the module)."""
        return self.argmax_invariant

    # --- batch bookkeeping ----------------------------------------------------------

    def new_row(self, params: dict[str, Any], output_ids: list[int],
                sampling_params: Any = None) -> Any:
        """State for a request joining the batch (stateless: its parameters as a key)."""
        return tuple(sorted(params.items()))

    def _park(self, row: Any) -> None:
        # vLLM removes a request it preempts or does not schedule in a step, and re-adds it
        # later with the same SamplingParams object: keep a stateful row until then.
        if not self.stateful or row.params() is None:
            return
        self._parked.setdefault(id(row.params()), []).append(row)
        if sum(map(len, self._parked.values())) > MAX_PARKED:
            for key in [k for k, rows in self._parked.items()
                        if all(r.params() is None for r in rows)]:
                del self._parked[key]  # requests that are gone for good
            while sum(map(len, self._parked.values())) > MAX_PARKED:
                del self._parked[next(iter(self._parked))]

    def _join(self, params: Any, output_ids: list[int]) -> Any:
        asked = self.request_params(getattr(params, "extra_args", None))
        if asked is None:
            return None
        resumed = unpark(self._parked, id(params), params, output_ids) if self.stateful \
            else None
        return resumed or self.new_row(asked, output_ids, params)

    def update_state(self, batch_update: Any) -> None:
        """Follow requests as they join, leave and move (vLLM's order: removed, added,
        moved).

        Args:
            batch_update: ``vllm.v1.sample.logits_processor.BatchUpdate`` or ``None``.
        """
        if follow_batch(self.rows, batch_update, self._join, self._park):
            self._groups = None

    def _sampler_for(self, key: tuple) -> Sampler:
        # least recently used last out: a server whose clients send ever new parameter values
        # keeps at most MAX_SAMPLERS samplers (they are stateless, so rebuilding one is safe)
        sampler = self._samplers.pop(key, None)
        if sampler is None:
            sampler = get(self.sampler, **dict(key))
        self._samplers[key] = sampler
        while len(self._samplers) > MAX_SAMPLERS:
            del self._samplers[next(iter(self._samplers))]
        return sampler

    def apply(self, logits: Tensor) -> Tensor:
        """Run each group's tokenwise sampler on its rows of ``logits`` (``(B, V)``)."""
        if not self.rows:
            return logits
        if self._groups is None:
            by_key: dict[tuple, list[int]] = {}
            for index, key in sorted(self.rows.items()):
                by_key.setdefault(key, []).append(index)
            self._groups = [
                (self._sampler_for(key), torch.tensor(idx, dtype=torch.long, device=self.device))
                for key, idx in by_key.items()]
        batch = logits.shape[0]
        for sampler, idx in self._groups:
            if idx.shape[0] == batch:  # every row (so rows are 0..B-1): no gather needed
                logits = sampler(logits)
            else:
                logits.index_copy_(0, idx, sampler(logits.index_select(0, idx)))  # (n, V)
        return logits


class TopHLogitsProcessor(TokenwiseLogitsProcessor):
    """Top-H (:class:`tokenwise.sampling.TopH`, both rules) per request: key ``top_h``."""

    sampler, main = "top_h", "alpha"


class TypicalLogitsProcessor(TokenwiseLogitsProcessor):
    """Locally typical sampling (:class:`tokenwise.sampling.Typical`): key ``typical``.

    Not argmax-invariant (the mode can be atypical), so vLLM runs it before penalties and
    temperature, and on greedy requests too.
    """

    sampler, main = "typical", "mass"
    argmax_invariant = False


class EpsilonLogitsProcessor(TokenwiseLogitsProcessor):
    """Epsilon sampling (:class:`tokenwise.sampling.Epsilon`): key ``epsilon``."""

    sampler, main = "epsilon", "epsilon"


class EtaLogitsProcessor(TokenwiseLogitsProcessor):
    """Eta sampling (:class:`tokenwise.sampling.Eta`): key ``eta`` (its epsilon)."""

    sampler, main = "eta", "epsilon"


class _MirostatRow:
    """One request's Mirostat state: its own sampler (``mu``) and how far it has read."""

    __slots__ = ("output_ids", "params", "sampler", "seen")

    def __init__(self, sampler: Sampler, output_ids: list[int], params: Any = None) -> None:
        self.sampler = sampler
        self.output_ids = output_ids  # vLLM's list for this request, appended in place
        self.params = params_ref(params)  # the request's SamplingParams (stable on re-add)
        self.seen: int | None = None  # len(output_ids) when the sampler last ran

    def resume(self, output_ids: list[int]) -> None:
        """Continue after vLLM re-added the request with ``output_ids`` generated so far:
        the next step observes ``output_ids[seen]``, the token drawn from the last row."""
        self.output_ids = output_ids
        if self.seen is not None and self.seen > len(output_ids):
            self.seen = len(output_ids)  # vLLM dropped tokens: observe none it lost


class MirostatV2LogitsProcessor(TokenwiseLogitsProcessor):
    """Mirostat v2 (:class:`tokenwise.sampling.MirostatV2`) with ``mu`` per request: key
    ``mirostat_v2`` (``tau``), ``mirostat_v2_eta``.

    At each step, before filtering, a request's sampler observes the token vLLM sampled
    from the distribution it filtered last time: ``output_ids[seen]``, where ``seen`` is
    the output length then. Steps whose token vLLM discarded (a chunked prefill) leave the
    length unchanged and are not observed; the newest distribution is the one kept.
    """

    sampler, main = "mirostat_v2", "tau"
    stateful = True

    @property
    def mu(self) -> dict[int, float]:
        """Batch row -> that request's current ``mu`` (bits), for rows that ran once."""
        return {i: float(r.sampler.mu[0]) for i, r in self.rows.items()
                if r.sampler.mu is not None}

    def new_row(self, params: dict[str, Any], output_ids: list[int],
                sampling_params: Any = None) -> _MirostatRow:
        return _MirostatRow(get(self.sampler, **params), output_ids, sampling_params)

    def apply(self, logits: Tensor) -> Tensor:
        """Observe each request's last sampled token, then filter its row."""
        for index, row in self.rows.items():
            n = len(row.output_ids)
            if row.seen is not None and n > row.seen:
                token = row.output_ids[row.seen]
                if token >= 0:  # -1: an async-scheduling placeholder vLLM did not fill
                    row.sampler.observe(torch.tensor([token], device=logits.device))
            row.seen = n
            logits[index:index + 1] = row.sampler(logits[index:index + 1])  # (1, V)
        return logits


class EntropyRegimeLogitsProcessor(TokenwiseLogitsProcessor):
    """The entropy/varentropy regime sampler (:class:`tokenwise.sampling.EntropyRegime`),
    decided per row: key ``entropy_regime`` (``true``) and ``entropy_regime_<param>``.

    Argmax-invariant: every regime keeps the most likely token and scales by a positive
    temperature.
    """

    sampler, main = "entropy_regime", None


#: Every tokenwise vLLM logits processor, in the order to register them (the order of
#: the argmax-invariant ones is the order vLLM applies them in).
PROCESSORS: tuple[type[TokenwiseLogitsProcessor], ...] = (
    TypicalLogitsProcessor,
    TopHLogitsProcessor,
    EpsilonLogitsProcessor,
    EtaLogitsProcessor,
    MirostatV2LogitsProcessor,
    EntropyRegimeLogitsProcessor,
)

_NATIVE = ("temperature", "top_k", "top_p", "min_p")
_NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
# Where each step runs in vLLM (see the module docstring), for the order check.
_POSITION = {name: i for i, name in enumerate(
    ["typical", "temperature", "min_p", "top_h", "epsilon", "eta", "mirostat_v2",
     "entropy_regime", "top_k", "top_p"])}
_BY_NAME = {cls.sampler: cls for cls in PROCESSORS}


def _commute(first: tuple[str, Any], second: tuple[str, Any]) -> bool:
    """Whether applying ``first`` then ``second`` equals the other order."""
    names = {first[0], second[0]}
    if "temperature" not in names:
        return False
    other = (names - {"temperature"}).pop() if len(names) == 2 else "temperature"
    temperature = first[1] if first[0] == "temperature" else second[1]
    # top-k ranks, which a temperature > 0 does not change; temperature 0 keeps only the
    # argmax, which every argmax-invariant step keeps too.
    return other == "top_k" or (temperature == 0 and other not in ("typical", "temperature"))


def to_vllm(spec: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[dict, dict]:
    """A tokenwise chain spec as vLLM request settings: ``(native, extra_args)``.

    ``native`` are keyword arguments for ``vllm.SamplingParams`` (always all of
    ``temperature``, ``top_k``, ``top_p``, ``min_p``, neutral where the chain has none, so
    a server's model defaults do not slip in); ``extra_args`` switches on this module's
    processors (they must be registered with the engine, in :data:`PROCESSORS` order).
    vLLM applies its steps in a fixed order (see the module docstring); a chain that
    needs another order is refused, except where the two orders give the same result
    (temperature beside top-k; temperature 0 beside argmax-invariant steps;
    ``temperature=1``, which does nothing).

    Args:
        spec: ``(name, params)`` pairs as :func:`tokenwise.sampling.get` takes them, in
            chain order; each sampler at most once, one value per parameter.

    Returns:
        ``(native, extra_args)``.

    Raises:
        TokenwiseError: an unknown sampler or bad parameter, a per-row list, a setting
            vLLM cannot express (``min_tokens_to_keep`` on a native step), a repeated
            sampler, or an order vLLM cannot run.

    Example:
        >>> to_vllm([("mirostat_v2", {"tau": 3.0})])
        ({'temperature': 1.0, 'top_k': 0, 'top_p': 1.0, 'min_p': 0.0}, {'mirostat_v2': 3.0})
        >>> to_vllm([("top_p", {"top_p": 0.9}), ("temperature", {"temperature": 0.5})])
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: vLLM applies temperature before top_p; the chain asks ...
    """
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise TokenwiseError(f"spec={spec!r}: allowed a sequence of (name, params) pairs")
    native: dict[str, Any] = dict(_NEUTRAL)
    extra: dict[str, Any] = {}
    steps: list[tuple[str, Any]] = []
    for i, item in enumerate(spec):
        if not (isinstance(item, (tuple, list)) and len(item) == 2
                and isinstance(item[0], str) and isinstance(item[1], Mapping)):
            raise TokenwiseError(f"spec[{i}]={item!r}: allowed a (name, params) pair "
                                 "with params a dict")
        name, params = item[0], dict(item[1])
        sampler = get(name, **params)  # validates (unknown names and parameters too)
        if name not in _POSITION:
            raise TokenwiseError(f"spec[{i}]: sampler {name!r} has no vLLM counterpart; "
                                 f"allowed: {', '.join(sorted(_POSITION))}")
        if any(step[0] == name for step in steps):
            raise TokenwiseError(f"spec has {name!r} twice; vLLM applies it at most once "
                                 "per request")
        for param, value in params.items():
            if isinstance(value, (list, tuple)) or (isinstance(value, Tensor) and value.dim()):
                raise TokenwiseError(f"spec[{i}] {name}: {param}={value!r}: allowed one "
                                     "value per request, not one per row")
        if name in _NATIVE:
            if getattr(sampler, "min_tokens_to_keep", 1) != 1:
                raise TokenwiseError(f"spec[{i}] {name}: vLLM has no min_tokens_to_keep for "
                                     f"{name}; allowed only 1")
            value = float(getattr(sampler, name))
            native[name] = int(value) if name == "top_k" else value
            if name == "temperature" and value == 1.0:
                continue  # the identity: no constraint on the order
            steps.append((name, value))
        else:
            cls = _BY_NAME[name]
            for param, value in params.items():
                if isinstance(value, Tensor):
                    value = value.item()
                if param == "top_n" and value is None:
                    value = "none"  # vllm_xargs has no null
                extra[cls._key(param)] = value
            if cls.main is None:
                extra[name] = True
            elif cls.main not in params:
                extra[name] = getattr(sampler, cls.main)
            steps.append((name, None))
    for a in range(len(steps)):
        for b in range(a + 1, len(steps)):
            first, second = steps[a], steps[b]
            if _POSITION[first[0]] > _POSITION[second[0]] and not _commute(first, second):
                raise TokenwiseError(
                    f"vLLM applies {second[0]} before {first[0]}; the chain asks for "
                    f"{first[0]} before {second[0]} (the results differ)")
    # Keys in a stable, readable order: each sampler's switch first.
    ordered = {}
    for cls in PROCESSORS:
        for key in cls.extra_keys():
            if key in extra:
                ordered[key] = extra[key]
    return native, ordered
