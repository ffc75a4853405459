"""tokenwise on a vLLM engine: per-token entropy, prompt surprisal and sampled answers.

A vLLM ``LLM`` is recognised by duck typing (:func:`is_vllm_llm`); nothing here imports
``vllm`` until an engine is actually used, so ``import tokenwise`` never pulls it in.
:class:`VLLMModel` wraps an ``LLM`` with the small part of the
:class:`~tokenwise.models.LanguageModel` interface that scoring needs (tokenizer, BOS, context
length), and :func:`generate_with_stats` returns the same
:class:`~tokenwise.generation.Generation` / :class:`~tokenwise.generation.TokenRecord` records
as :func:`tokenwise.generate`, so code downstream of generation does not care which engine
produced them. Prompts are always sent as token ids encoded the tokenwise way (the start token
from :attr:`VLLMModel.bos_token_id`, then the text with special-token strings read as text), so
the engine scores exactly the ids the Hugging Face path scores.

Two ways to get each generated token's entropy and varentropy out of vLLM
--------------------------------------------------------------------------

1. **Full-vocabulary logprobs** (``route="logprobs"``, the default; any vLLM engine started
   with ``max_logprobs=-1``). Each request asks for ``logprobs=-1``; the sampler then returns
   the log-softmax of the raw logits (``logprobs_mode="raw_logprobs"``, vLLM's default: before
   temperature, penalties and logits processors, the distribution :class:`TokenRecord`
   describes) for every vocabulary entry, and :func:`token_stats` reduces each position here.
   Cost per generated token: the worker gathers and sorts ``V`` values (plus the chosen
   token's), ``V`` float32 logprobs + ``V`` int32 ids + ranks cross the worker -> engine-core
   -> front-end process boundaries (about ``12 V`` bytes per hop: 12 KiB per token for
   ``V = 1024``, 1.5 MiB for a 128k vocabulary), and the front end detokenizes all ``V`` ids
   and stores ``V`` entries per token in Python (``flat_logprobs=True``, used here, stores them
   in flat lists rather than ``V`` ``Logprob`` objects). Everything scales with ``V``; the
   last two dominate, in Python, on one front-end core.
2. **Inside the engine** (``route="engine"``; an engine started with :class:`EntropyRecorder`
   among its ``logits_processors`` and ``worker_extension_cls=WORKER_EXTENSION``). A logits
   processor computes entropy and varentropy from the logits tensor on the worker (one
   vectorised log-softmax per step, ``O(V)`` arithmetic on the device, no sort), keeps two
   floats per token, and :func:`generate_with_stats` collects them afterwards with one
   ``collective_rpc`` call: 16 bytes per token cross the process boundary, independent of
   ``V``; the chosen token's logprob and rank come back through ``logprobs=0``, which is cheap.
   The processor sees the logits where vLLM applies its non-argmax-invariant processors: the
   model's raw float32 logits, unless the request also uses ``logit_bias``, ``min_tokens``,
   ``allowed_token_ids``, ``bad_words`` or another processor placed before it (register it
   first). It declares itself *not* argmax-invariant although it never changes a logit,
   because vLLM skips argmax-invariant processors for greedy batches, which would leave
   greedy requests without statistics. vLLM removes a request from its batch when it
   preempts it or merely does not schedule it in a step, and re-adds it later with the same
   ``SamplingParams`` object and the tokens generated so far; the recorder finds the track
   the request left (by that object, held weakly, and its tokens) and continues it.

Both routes, :func:`sample_logprobs` and prompt surprisal read vLLM's logprobs, so they
refuse an engine whose ``logprobs_mode`` would make those other values (logits, or the
processed distribution for generated tokens). ``logprobs_mode`` itself only chooses
*which* full distribution the first route ships
(``raw_*`` before, ``processed_*`` after temperature/penalties/processors; ``*_logits``
unnormalised); none of its options reduces what crosses the boundary, so it cannot carry
entropy alone. ``benchmarks/vllm_entropy.py`` measures both routes against no logprobs (the
full-vocabulary route is by far the slower, and its gap grows with ``V``): see BENCHMARKS.md,
section "Per-token entropy from vLLM: two routes".
Prompt surprisal (:func:`prompt_surprisal`) needs only the prompt token's own logprob
(``prompt_logprobs=0``): one value per token, whatever ``V``.
"""

from __future__ import annotations

import math
import numbers
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tokenwise.errors import TokenwiseError
from tokenwise.models.language_model import end_token_id, start_token_id

if TYPE_CHECKING:
    from tokenwise.generation import Generation

__all__ = [
    "STATS_KEY",
    "WORKER_EXTENSION",
    "VLLMModel",
    "as_vllm_model",
    "generate_with_stats",
    "is_vllm_llm",
    "position_entries",
    "prompt_surprisal",
    "sample_logprobs",
    "token_stats",
]

#: ``SamplingParams.extra_args`` key that switches :class:`EntropyRecorder` on for a request.
STATS_KEY = "tokenwise_stats"
#: ``worker_extension_cls`` that lets :func:`generate_with_stats` collect the recorder's values.
WORKER_EXTENSION = "tokenwise.models.vllm.StatsWorkerExtension"
#: :class:`EntropyRecorder` keeps the tracks of at most this many tags that nobody has
#: taken yet (the oldest tag goes first), and drops a tag once :data:`STALE_TAKES` later
#: ``take`` calls (one per ``generate_with_stats(route="engine")``) have passed it by.
MAX_FINISHED_TAGS = 65_536
STALE_TAKES = 16
#: How far from 1 the probability mass of a full-vocabulary position may be (float32 sums).
MASS_TOLERANCE = 1e-4

_FULL_VOCAB_HINT = ("ask vLLM for the full vocabulary: SamplingParams(logprobs=-1) on an engine "
                    "started with LLM(..., max_logprobs=-1)")


def is_vllm_llm(obj: object) -> bool:
    """Whether ``obj`` is a vLLM ``LLM`` (by its class's module and interface, without importing
    vllm).

    Example:
        >>> is_vllm_llm("tw-small")
        False
    """
    if isinstance(obj, VLLMModel):
        return False
    module = getattr(type(obj), "__module__", "") or ""
    return (module.split(".")[0] == "vllm" and hasattr(obj, "generate")
            and hasattr(obj, "llm_engine") and hasattr(obj, "get_tokenizer"))


# --------------------------------------------------------------------------------------------
# entropy and varentropy from logprobs
# --------------------------------------------------------------------------------------------


def _rows_stats(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy and varentropy (nats) of each row of normalised log-probabilities ``(T, V)``."""
    p = np.exp(lp)  # (T, V)
    # p == 0 covers -inf (masked) entries, whose p * log p is 0 in the limit
    lp_safe = np.where(p > 0, lp, 0.0)  # (T, V)
    h = -(p * lp_safe).sum(-1)  # (T,)
    # centred form, as tokenwise.signals: E[(log p)^2] - H^2 cancels for peaked rows
    v = (p * (lp_safe + h[:, None]) ** 2).sum(-1)  # (T,)
    return np.maximum(h, 0.0), v


def _normalise_rows(values: np.ndarray, what: str, *, full_vocab_known: bool) -> np.ndarray:
    """Check rows of logprobs ``(T, V)`` and renormalise away float32 rounding."""
    if np.isnan(values).any() or np.isposinf(values).any():
        bad = "NaN" if np.isnan(values).any() else "+inf"
        raise TokenwiseError(f"{what} contain {bad}; allowed finite log-probabilities "
                             "or -inf for a token the engine masked")
    with np.errstate(divide="ignore"):
        top = values.max(-1, keepdims=True)  # (T, 1)
        if np.isneginf(top).any():
            raise TokenwiseError(f"{what}: a position where every log-probability is -inf "
                                 "has no distribution")
        lse = (top + np.log(np.exp(values - top).sum(-1, keepdims=True)))  # (T, 1)
    mass = np.exp(lse[:, 0])  # (T,)
    off = np.abs(mass - 1.0)
    if not full_vocab_known and (off > MASS_TOLERANCE).any():
        i = int(off.argmax())
        raise TokenwiseError(
            f"{what} hold probability mass {mass[i]:.6f} at position {i} over "
            f"{values.shape[-1]} entries: not a full-vocabulary distribution (top-k logprobs "
            f"cannot give the entropy, nor do logits); {_FULL_VOCAB_HINT}")
    if full_vocab_known and (off > 1e-2).any():
        i = int(off.argmax())
        raise TokenwiseError(
            f"{what} hold probability mass {mass[i]:.6f} at position {i}: these are not "
            "log-probabilities (an engine with logprobs_mode='raw_logits' or "
            "'processed_logits' returns logits; use a *_logprobs mode)")
    return values - lse


def _position_array(logprobs: Any, vocab_size: int | None) -> np.ndarray:
    """One position's logprobs as a float64 vector, checked for coverage of the vocabulary."""
    if isinstance(logprobs, Mapping):
        if not logprobs:
            raise TokenwiseError(f"logprobs is an empty mapping; {_FULL_VOCAB_HINT}")
        ids = []
        values = []
        for key, entry in logprobs.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral):
                raise TokenwiseError(f"logprobs key {key!r}: allowed an integer token id")
            value = getattr(entry, "logprob", entry)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TokenwiseError(f"logprobs[{key}] is {entry!r}: allowed a vLLM Logprob "
                                     "or a number")
            ids.append(int(key))
            values.append(float(value))
        if vocab_size is not None:
            if len(ids) != vocab_size:
                raise TokenwiseError(
                    f"logprobs hold {len(ids)} token ids for a vocabulary of {vocab_size}: not "
                    f"the full vocabulary, so no exact entropy; {_FULL_VOCAB_HINT}")
            bad = [i for i in ids if not 0 <= i < vocab_size]
            if bad:
                raise TokenwiseError(f"token id {bad[0]} is outside the vocabulary "
                                     f"0..{vocab_size - 1}")
        return np.asarray(values, dtype=np.float64)
    if isinstance(logprobs, torch.Tensor):
        arr = logprobs.detach().to("cpu", torch.float64).numpy()
    elif isinstance(logprobs, np.ndarray | Sequence) and not isinstance(logprobs, str | bytes):
        try:
            arr = np.asarray(logprobs, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TokenwiseError(f"logprobs could not be read as numbers: {exc}") from None
    else:
        raise TokenwiseError(f"logprobs is a {type(logprobs).__name__}: allowed a vLLM "
                             "dict[int, Logprob], a mapping id -> logprob, or a sequence, "
                             "array or tensor of floats (one per vocabulary entry)")
    if arr.ndim != 1 or arr.size == 0:
        raise TokenwiseError(f"logprobs must be one position's values, a non-empty 1-D "
                             f"sequence; got shape {arr.shape}")
    if vocab_size is not None and arr.size != vocab_size:
        raise TokenwiseError(f"{arr.size} logprobs for a vocabulary of {vocab_size}: give one "
                             "per vocabulary entry")
    return arr


def token_stats(logprobs: Any, *, vocab_size: int | None = None) -> tuple[float, float]:
    """Entropy and varentropy (nats, nats squared) of one position's full-vocabulary logprobs.

    The units and definitions are those of :mod:`tokenwise.signals` and
    :class:`~tokenwise.generation.TokenRecord`: ``H = -sum p log p`` and
    ``sum p (log p + H)^2``. Entries of ``-inf`` (tokens an engine masked) contribute 0.

    Only the full vocabulary gives these numbers: top-k logprobs leave out the tail, whose
    share of the entropy cannot be recovered, so a truncated input is refused rather than
    reduced. With ``vocab_size`` the entry count must equal it; without, the probabilities
    must sum to 1 within :data:`MASS_TOLERANCE` (a top-k that leaves out more mass is
    refused). Tiny float32 deviations of the sum from 1 are renormalised away.

    Args:
        logprobs: vLLM's ``dict[int, Logprob]`` for one position (e.g.
            ``output.logprobs[t]`` with ``logprobs=-1``), a mapping ``id -> float``, or a
            sequence / array / tensor of ``V`` log-probabilities.
        vocab_size: the model's vocabulary size, when known (a stricter check).

    Returns:
        ``(entropy, varentropy)`` as Python floats.

    Raises:
        TokenwiseError: an input that is not one position of full-vocabulary log-probabilities
            (too few entries, mass far from 1, NaN/+inf, wrong type or shape).

    Example:
        >>> import math
        >>> h, v = token_stats([math.log(0.25), math.log(0.75)])
        >>> round(h, 6), round(v, 6), round(0.25 * 0.75 * math.log(3) ** 2, 6)
        (0.562335, 0.226303, 0.226303)
        >>> token_stats({0: math.log(0.5), 1: math.log(0.5), 2: float("-inf")}, vocab_size=3)
        (0.6931471805599453, 0.0)
    """
    if vocab_size is not None and (isinstance(vocab_size, bool)
                                   or not isinstance(vocab_size, numbers.Integral)
                                   or vocab_size < 1):
        raise TokenwiseError(f"vocab_size={vocab_size!r}: allowed an integer >= 1 or None")
    arr = _position_array(logprobs, vocab_size)
    lp = _normalise_rows(arr[None], "logprobs", full_vocab_known=False)
    h, v = _rows_stats(lp)
    return float(h[0]), float(v[0])


# --------------------------------------------------------------------------------------------
# the engine adapter
# --------------------------------------------------------------------------------------------


class VLLMModel:
    """A vLLM ``LLM`` seen through the parts of :class:`~tokenwise.models.LanguageModel` that
    scoring and generation need.

    Args:
        llm: a ``vllm.LLM``.

    Attributes:
        llm: the engine.
        tokenizer: its Hugging Face tokenizer (the one vLLM tokenizes with).
        name: the model directory's name (or the model id).
    """

    def __init__(self, llm: Any):
        if not is_vllm_llm(llm):
            raise TokenwiseError(f"expected a vllm.LLM, got {type(llm).__name__}")
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self._config = llm.llm_engine.model_config
        self.name = Path(str(self._config.model)).name or str(self._config.model)

    def __repr__(self) -> str:
        return f"VLLMModel({self.name!r}, max_model_len={self._config.max_model_len})"

    @property
    def vocab_size(self) -> int:
        """Width of the model's logits (the vocabulary vLLM returns logprobs over)."""
        return int(self._config.get_vocab_size())

    @property
    def context_length(self) -> int:
        """Longest input whose *next* token can be scored: ``max_model_len - 2``.

        vLLM reports a token's surprisal as a prompt logprob, so the scored token itself must
        be in the prompt (a Hugging Face forward pass over ``n`` tokens scores the token after
        them), and vLLM admits a prompt only when one output token still fits after it. Two
        positions of ``max_model_len`` are kept for those, so windows of this length match
        the Hugging Face path's windows of the same length (texts longer than it are read in
        windows two tokens shorter than the Hugging Face default, the model's full context).
        """
        return int(self._config.max_model_len) - 2

    @property
    def bos_token_id(self) -> int | None:
        """The token that starts a text: BOS, else EOS, else None (as LanguageModel)."""
        return start_token_id(self.tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        """The end-of-text token, if the tokenizer has one."""
        return end_token_id(self.tokenizer)

    @property
    def logprobs_mode(self) -> str:
        """The engine's ``logprobs_mode`` (which distribution its logprobs describe)."""
        return str(getattr(self._config, "logprobs_mode", "raw_logprobs"))

    def check_logprobs_mode(self, what: str, *, prompt_only: bool = False) -> None:
        """Refuse an engine whose ``logprobs_mode`` does not give the model's raw logprobs.

        Generated tokens need ``"raw_logprobs"`` (vLLM's default): ``*_logits`` modes return
        logits, and ``"processed_logprobs"`` describes the distribution after temperature,
        penalties and logits processors. Prompt tokens skip all processing, so for them
        ``"processed_logprobs"`` gives the raw values too (``prompt_only``).

        Args:
            what: the function that needs the values (for the message).
            prompt_only: only prompt logprobs are read.

        Raises:
            TokenwiseError: an engine in a mode that gives other values.
        """
        mode = self.logprobs_mode
        allowed = ("raw_logprobs", "processed_logprobs") if prompt_only else ("raw_logprobs",)
        if mode in allowed:
            return
        gives = ("logits, not log-probabilities" if mode.endswith("_logits") else
                 "log-probabilities after temperature, penalties and logits processors")
        raise TokenwiseError(
            f"{what} needs the model's raw log-probabilities, but this engine was started "
            f"with logprobs_mode={mode!r}, which returns {gives}; start it with "
            f"LLM(..., logprobs_mode='raw_logprobs') (vLLM's default)"
            + (" or 'processed_logprobs'" if prompt_only else ""))

    @property
    def full_vocab_logprobs(self) -> bool:
        """Whether the engine allows ``logprobs=-1`` (started with ``max_logprobs=-1`` or a
        limit of at least the vocabulary)."""
        limit = getattr(self._config, "max_logprobs", 20)
        return limit == -1 or limit >= self.vocab_size

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` exactly as :meth:`LanguageModel.encode` makes them.

        Args:
            text: the text.
            add_bos: put the start token (:attr:`bos_token_id`) in front.
        """
        ids = list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                                  verbose=False)["input_ids"])
        if add_bos:
            if self.bos_token_id is None:
                raise TokenwiseError(f"model {self.name!r} has neither a BOS nor an EOS token; "
                                     "encode with add_bos=False")
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def prompt_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """``log p(ids[t] | ids[:t])`` for ``t >= 1`` of each id list, in one engine call.

        Args:
            prompts: token id lists, each of 2..``max_model_len - 1`` ids.

        Returns:
            One float64 array of ``len(ids) - 1`` values per prompt.

        Raises:
            TokenwiseError: a prompt of the wrong length, or an engine whose
                ``logprobs_mode`` returns logits (``raw_logits``, ``processed_logits``).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.check_logprobs_mode("prompt_logprobs (prompt surprisal, perplexity compression)",
                                 prompt_only=True)
        limit = self.context_length + 1
        for i, ids in enumerate(prompts):
            if not 2 <= len(ids) <= limit:
                raise TokenwiseError(f"prompt {i} has {len(ids)} tokens: allowed 2..{limit} "
                                     "(max_model_len - 1, so that one output token fits)")
        if not prompts:
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(map(int, ids)))
                                  for ids in prompts], params, use_tqdm=False)
        result = []
        for ids, out in zip(prompts, outs, strict=True):
            plp = out.prompt_logprobs
            values = np.empty(len(ids) - 1, dtype=np.float64)
            for t in range(1, len(ids)):
                entry = plp[t][int(ids[t])]
                values[t - 1] = entry.logprob
            result.append(values)
        return result


def as_vllm_model(model: Any) -> VLLMModel:
    """A :class:`VLLMModel` for a vLLM ``LLM`` (or the adapter itself).

    Example:
        >>> as_vllm_model("tw-small")
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: expected a vllm.LLM, got str
    """
    return model if isinstance(model, VLLMModel) else VLLMModel(model)


# --------------------------------------------------------------------------------------------
# generation with per-token statistics
# --------------------------------------------------------------------------------------------


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    if not items or any(not isinstance(p, str) for p in items):
        raise TokenwiseError(f"prompts={prompts!r}: allowed a string or a non-empty list of "
                             "strings")
    return items


def _finish_reason(completion: Any) -> str:
    if completion.finish_reason == "length":
        return "length"
    if completion.finish_reason == "stop":
        # a stop string is reported as that string, EOS as None (or the stop token's id)
        if isinstance(completion.stop_reason, str):
            return "stop"
        return "eos"
    return str(completion.finish_reason)


def _kept_tokens(completion: Any, eos: int | None) -> list[int]:
    """The completion's tokens without the end-of-text token that ended it.

    vLLM stops on the tokenizer's EOS (``stop_reason None``) and on every other EOS id of the
    model's generation config and any ``stop_token_ids`` (``stop_reason`` = that id); each
    is end-of-text, which :func:`tokenwise.generate` does not record as a token.
    """
    tokens = list(completion.token_ids)
    if not tokens or _finish_reason(completion) != "eos":
        return tokens
    reason = completion.stop_reason
    end = reason if isinstance(reason, int) and not isinstance(reason, bool) else eos
    return tokens[:-1] if end is not None and tokens[-1] == end else tokens


def position_entries(logprobs: Any, t: int, vocab: int) -> tuple[Sequence[int], Sequence[float]]:
    """Step ``t``'s ``(ids, logprobs)`` from vLLM's per-position logprobs, each id once.

    vLLM's sampler writes the sampled token first, then its top-k (the whole vocabulary
    under ``logprobs=-1``), so a flat step of ``vocab + 1`` entries holds the sampled token
    twice and its first entry is dropped; dict steps (and flat ones vLLM rebuilt through
    dicts when merging streamed outputs) hold each id once already.

    Args:
        logprobs: a completion's ``logprobs`` (``FlatLogprobs`` or a list of dicts).
        t: the step.
        vocab: the vocabulary size (the full-vocabulary width of a step).

    Example:
        >>> from types import SimpleNamespace
        >>> flat = SimpleNamespace(start_indices=[0], end_indices=[3], token_ids=[1, 1, 0],
        ...                        logprobs=[-0.29, -0.29, -1.39])
        >>> position_entries(flat, 0, vocab=2)
        ([1, 0], [-0.29, -1.39])
    """
    if hasattr(logprobs, "start_indices") and hasattr(logprobs, "token_ids"):
        a, b = logprobs.start_indices[t], logprobs.end_indices[t]
        a = a + 1 if b - a == vocab + 1 else a
        return logprobs.token_ids[a:b], logprobs.logprobs[a:b]
    entry = logprobs[t]
    return list(entry.keys()), [lp.logprob for lp in entry.values()]


def _position_rows(logprobs: Any, n_tokens: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-vocabulary ``(T, V)`` logprobs and ids from vLLM's per-position containers."""
    rows = np.empty((n_tokens, vocab), dtype=np.float64)
    ids = np.empty((n_tokens, vocab), dtype=np.int64)
    for t in range(n_tokens):
        tok, val = position_entries(logprobs, t, vocab)
        if len(tok) != vocab:
            raise TokenwiseError(
                f"vLLM returned {len(tok)} logprobs at step {t} for a vocabulary of {vocab}; "
                f"{_FULL_VOCAB_HINT}")
        rows[t] = val
        ids[t] = tok
    return rows, ids


def _records(model: VLLMModel, completion: Any, row: int, route: str,
             engine_stats: tuple[list[float], list[float]] | None) -> list[Any]:
    from tokenwise.generation import TokenRecord

    tokens = _kept_tokens(completion, model.eos_token_id)
    n = len(tokens)
    if n == 0:
        return []
    if completion.logprobs is None:
        raise TokenwiseError("vLLM returned no logprobs; the request needs logprobs set")
    if route == "logprobs":
        vals, ids = _position_rows(completion.logprobs, n, model.vocab_size)
        lp = _normalise_rows(vals, "vLLM logprobs", full_vocab_known=True)  # (T, V)
        ent, var = _rows_stats(lp)
        chosen_pos = np.argmax(ids == np.asarray(tokens)[:, None], axis=1)  # (T,)
        chosen = lp[np.arange(n), chosen_pos]  # (T,)
        ranks = (lp > chosen[:, None]).sum(-1) + 1  # (T,)
        logprobs = chosen.tolist()
        ranks_l = ranks.tolist()
    else:
        assert engine_stats is not None
        ent = np.asarray(engine_stats[0][:n], dtype=np.float64)
        var = np.asarray(engine_stats[1][:n], dtype=np.float64)
        logprobs, ranks_l = [], []
        for t, tok in enumerate(tokens):
            a, b = completion.logprobs.start_indices[t], completion.logprobs.end_indices[t]
            at = completion.logprobs.token_ids.index(tok, a, b)
            logprobs.append(float(completion.logprobs.logprobs[at]))
            ranks_l.append(int(completion.logprobs.ranks[at]))
    return [TokenRecord(id=tok, text=model.decode([tok]), logprob=float(logprobs[t]),
                        entropy=float(ent[t]), varentropy=float(var[t]), rank=int(ranks_l[t]),
                        step=t, row=row, model=model.name)
            for t, tok in enumerate(tokens)]


def generate_with_stats(llm: Any, prompts: str | Sequence[str], sampling_params: Any = None,
                        *, route: str = "logprobs", use_tqdm: bool = False) -> list[Generation]:
    """Generate with vLLM and return tokenwise records with each token's entropy.

    Each prompt is encoded as :func:`tokenwise.generate` encodes it (start token, then the
    text) and sent as token ids. Every generated token gets a
    :class:`~tokenwise.generation.TokenRecord` whose logprob, entropy, varentropy and rank
    describe the model's own (raw, temperature-1) distribution at that step, as in
    :func:`tokenwise.generate`; an end-of-text token ends the generation (``finish_reason
    "eos"``) without a record of its own, and a stop string cuts the text (``"stop"``) while
    the token that completed it keeps its record. End-of-text is any token vLLM stops on:
    the tokenizer's EOS, the other EOS ids of the model's generation config (Llama-3
    style), and ``stop_token_ids``.

    Args:
        llm: a ``vllm.LLM`` (or :class:`VLLMModel`).
        prompts: one prompt or a list.
        sampling_params: a ``vllm.SamplingParams`` (default: greedy, 64 tokens). It is
            copied; its ``logprobs`` (and, for ``route="engine"``, ``extra_args``) are set
            here. With ``n > 1`` each prompt gives ``n`` generations, in order.
        route: ``"logprobs"`` (full-vocabulary logprobs; the engine needs
            ``max_logprobs=-1``) or ``"engine"`` (computed inside the engine by
            :class:`EntropyRecorder`; see the module docstring for both and their cost).
        use_tqdm: show vLLM's progress bar.

    Returns:
        ``len(prompts) * n`` :class:`~tokenwise.generation.Generation` objects, prompt-major;
        ``row`` in each record is the generation's index in that list.

    Raises:
        TokenwiseError: bad prompts or route, an engine whose ``logprobs_mode`` is not
            ``"raw_logprobs"`` (its values would describe logits or the processed
            distribution), an engine that cannot give full-vocabulary logprobs
            (``route="logprobs"``) or has no recorder (``route="engine"``).

    Example:
        >>> from vllm import LLM, SamplingParams  # doctest: +SKIP
        >>> gens = generate_with_stats(llm, "7+2=", SamplingParams(temperature=0, max_tokens=3))
        ... # doctest: +SKIP
        >>> gens[0].tokens[0].entropy  # doctest: +SKIP
        0.0123...
    """
    from tokenwise.generation import Generation

    model = as_vllm_model(llm)
    items = _check_prompts(prompts)
    if route not in ("logprobs", "engine"):
        raise TokenwiseError(f"route={route!r}: allowed 'logprobs' or 'engine'")
    # both routes read the chosen token's logprob and rank from vLLM's logprobs
    model.check_logprobs_mode("generate_with_stats (TokenRecord: raw, temperature-1 values)")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=64) if sampling_params is None \
        else sampling_params.clone()
    tags: list[str] = []
    if route == "logprobs":
        if not model.full_vocab_logprobs:
            raise TokenwiseError("this engine limits logprobs below the vocabulary "
                                 f"({model.vocab_size}); start it with LLM(..., "
                                 "max_logprobs=-1), or use route='engine'")
        params.logprobs = -1
        params.flat_logprobs = True
        requests = [params] * len(items)
    else:
        if len(items) > MAX_FINISHED_TAGS:
            raise TokenwiseError(f"{len(items)} prompts for route='engine': the recorder keeps "
                                 f"at most {MAX_FINISHED_TAGS} requests' statistics until they "
                                 "are collected; send them in smaller calls")
        params.logprobs = 0
        params.flat_logprobs = True
        requests = []
        base = uuid.uuid4().hex
        for i in range(len(items)):
            p = params.clone()
            tag = f"{base}-{i}"
            p.extra_args = {**(params.extra_args or {}), STATS_KEY: tag}
            tags.append(tag)
            requests.append(p)
    encoded = [model.encode(p, add_bos=True) for p in items]
    outs = model.llm.generate([TokensPrompt(prompt_token_ids=e) for e in encoded], requests,
                              use_tqdm=use_tqdm)
    collected: dict[str, list[tuple[list[int], list[float], list[float]]]] = {}
    if route == "engine":
        collected = _collect_engine_stats(model, tags)
    results: list[Generation] = []
    for i, (prompt, ids, out) in enumerate(zip(items, encoded, outs, strict=True)):
        for completion in sorted(out.outputs, key=lambda c: c.index):
            stats = None
            if route == "engine":
                stats = _match_track(collected.get(tags[i], []), list(completion.token_ids))
            gen = Generation(prompt=prompt, text=completion.text,
                             tokens=_records(model, completion, len(results), route, stats),
                             finish_reason=_finish_reason(completion),
                             prompt_tokens=len(ids),
                             seed=None if params.temperature == 0 else _child_seed(
                                 params.seed, completion.index))
            results.append(gen)
    return results


def _child_seed(seed: int | None, index: int) -> int | None:
    # vLLM gives the i-th of n parallel samples the seed `seed + i`
    return None if seed is None else int(seed) + int(index)


def sample_logprobs(llm: Any, prompt: str, sampling_params: Any
                    ) -> list[tuple[str, tuple[float, ...] | None, str]]:
    """Sample completions of one prompt with each chosen token's logprob only (cheap).

    The request asks for ``logprobs=0``: vLLM then returns the chosen token's raw
    (temperature-1) logprob and no others, one value per token whatever the vocabulary. The
    end-of-text token (any token vLLM stopped on) is left out as in
    :func:`generate_with_stats`.

    Args:
        llm: a ``vllm.LLM`` (or :class:`VLLMModel`).
        prompt: the prompt text (encoded with the start token, as tokenwise does).
        sampling_params: a ``vllm.SamplingParams`` (copied; ``logprobs`` is set here).

    Returns:
        One ``(text, token_logprobs or None when no token was kept, finish_reason)`` per
        completion, in vLLM's order (``n`` of them).

    Raises:
        TokenwiseError: an engine whose ``logprobs_mode`` is not ``"raw_logprobs"``.

    Example:
        >>> sample_logprobs(llm, "Q: hi\\nA:", SamplingParams(n=2, seed=0))  # doctest: +SKIP
        [(' a doctor', (-0.2, -1.3), 'stop'), ...]
    """
    from vllm.inputs import TokensPrompt

    model = as_vllm_model(llm)
    if not isinstance(prompt, str):
        raise TokenwiseError(f"prompt={prompt!r}: allowed a string")
    model.check_logprobs_mode("sample_logprobs (sampled answers' token logprobs)")
    params = sampling_params.clone()
    params.logprobs = 0
    params.flat_logprobs = True
    ids = model.encode(prompt, add_bos=True)
    out = model.llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    eos = model.eos_token_id
    result = []
    for completion in sorted(out.outputs, key=lambda c: c.index):
        reason = _finish_reason(completion)
        tokens = _kept_tokens(completion, eos)
        flat = completion.logprobs
        values = []
        for t, tok in enumerate(tokens):
            a, b = flat.start_indices[t], flat.end_indices[t]
            values.append(float(flat.logprobs[flat.token_ids.index(tok, a, b)]))
        result.append((completion.text, tuple(values) if values else None, reason))
    return result


# --------------------------------------------------------------------------------------------
# prompt surprisal
# --------------------------------------------------------------------------------------------


def prompt_surprisal(llm: Any, text: str | Sequence[int], prefix: str | Sequence[int] = "",
                     *, window: int | None = None, stride: int | None = None) -> np.ndarray:
    """Surprisal (nats) of each token of ``text`` given the start token, ``prefix`` and the
    tokens before it, from vLLM's prompt logprobs.

    The same numbers as :func:`tokenwise.compression.perplexity.token_surprisal` on the
    Hugging Face model (including its overlapping windows for texts longer than the window).

    Args:
        llm: a ``vllm.LLM`` (or :class:`VLLMModel`).
        text: the text, or its token ids.
        prefix: what it is conditioned on (text or ids; not scored).
        window, stride: reading windows (default: :attr:`VLLMModel.context_length`, half).

    Example:
        >>> s = prompt_surprisal(llm, "12+7=19")  # doctest: +SKIP
        >>> s.shape  # doctest: +SKIP
        (7,)
    """
    from tokenwise.compression.perplexity import token_surprisal

    model = as_vllm_model(llm)
    ids = model.encode(text) if isinstance(text, str) else [int(i) for i in text]
    pre = model.encode(prefix) if isinstance(prefix, str) else [int(i) for i in prefix]
    return token_surprisal(model, ids, pre, window=window, stride=stride)


# --------------------------------------------------------------------------------------------
# the in-engine route: a recording logits processor and a worker extension to read it
# --------------------------------------------------------------------------------------------


def _match_track(tracks: list[tuple[list[int], list[float], list[float]]],
                 tokens: list[int]) -> tuple[list[float], list[float]]:
    if not tracks:
        raise TokenwiseError("the engine recorded no statistics for a generation; start it "
                             "with logits_processors=[EntropyRecorder, ...] and "
                             f"worker_extension_cls={WORKER_EXTENSION!r}")
    for i, (out_ids, ent, var) in enumerate(tracks):
        if out_ids[:len(tokens)] == tokens and len(ent) >= len(tokens):
            lost = [t for t in range(len(tokens)) if math.isnan(ent[t])]
            if lost:
                raise TokenwiseError(
                    f"the engine lost the statistics of steps {lost[:5]} of a generation of "
                    f"{len(tokens)} tokens: vLLM removed the request from its batch and "
                    "re-added it, and the recorder found no earlier track to continue; use "
                    "route='logprobs' for it")
            tracks.pop(i)
            return ent, var
    have = sorted(len(ent) for _, ent, _ in tracks)
    raise TokenwiseError(f"the engine's recorded statistics ({len(tracks)} track(s) of "
                         f"{have} steps) do not cover a generation of {len(tokens)} tokens")


def _collect_engine_stats(model: VLLMModel, tags: list[str]) -> dict[str, Any]:
    try:
        replies = model.llm.collective_rpc("tokenwise_take_stats", args=(tags,))
    except Exception as exc:  # vLLM raises its own types for an unknown worker method
        raise TokenwiseError(f"route='engine' needs an engine started with "
                             f"worker_extension_cls={WORKER_EXTENSION!r} and "
                             f"logits_processors=[EntropyRecorder, ...]: {exc}") from exc
    return _merge_replies(replies)


def _merge_replies(replies: Sequence[Any]) -> dict[str, list[tuple]]:
    """One ``tag -> tracks`` store from every worker's reply.

    Every rank follows the batch, so every rank has a track per request, but only ranks that
    compute logits fill it: with tensor parallelism every rank holds the same values, with
    pipeline parallelism only the last stage holds any (the others return tracks without
    values). Per tag, the reply whose tracks hold the most values is kept.
    """
    merged: dict[str, list[tuple]] = {}
    filled: dict[str, int] = {}
    for reply in replies:
        for tag, tracks in (reply or {}).items():
            count = sum(len(track[1]) for track in tracks)
            if tag not in merged or count > filled[tag]:
                merged[tag], filled[tag] = list(tracks), count
    return merged


def _params_ref(params: Any) -> Any:
    """A handle that gives ``params`` back while it lives (a weak one when possible)."""
    try:
        return weakref.ref(params)
    except TypeError:  # not weak-referenceable: hold it (bounded by the finished store)
        return lambda: params


def _same_history(old: list[int], new: list[int]) -> bool:
    """Whether two output-token lists of one request agree where both are known (vLLM's
    async scheduling leaves ``-1`` placeholders and may hand over a rebuilt list)."""
    return all(a == b or a < 0 or b < 0 for a, b in zip(old, new, strict=False))


class _Track:
    __slots__ = ("entropy", "finished_at", "output_ids", "params", "tag", "varentropy")

    def __init__(self, tag: str, output_ids: list[int], params: Any = None):
        self.tag = tag
        self.output_ids = output_ids  # vLLM's live list of the request's generated tokens
        self.params = _params_ref(params)  # the request's SamplingParams, kept across re-adds
        self.entropy: list[float] = []
        self.varentropy: list[float] = []
        self.finished_at = 0  # the recorder's take count when the track left the batch

    def put(self, step: int, h: float, v: float) -> None:
        # indexed by step, not appended: a re-run step (preemption, a discarded partial
        # prefill) overwrites its earlier value
        if step < len(self.entropy):
            self.entropy[step], self.varentropy[step] = h, v
            del self.entropy[step + 1:], self.varentropy[step + 1:]
            return
        if step > len(self.entropy):
            # Steps this track never saw (a request re-added without its earlier track):
            # NaN marks them, so reading them fails instead of shifting every value.
            gap = [math.nan] * (step - len(self.entropy))
            self.entropy.extend(gap)
            self.varentropy.extend(gap)
        self.entropy.append(h)
        self.varentropy.append(v)

    def resume(self, output_ids: list[int]) -> None:
        """Continue after vLLM re-added the request with ``output_ids`` already generated."""
        n = len(output_ids)
        del self.entropy[n:], self.varentropy[n:]  # steps whose tokens vLLM dropped
        self.output_ids = output_ids

    def as_tuple(self) -> tuple[list[int], list[float], list[float]]:
        return list(self.output_ids), self.entropy, self.varentropy


def _make_recorder_class() -> type:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

    class EntropyRecorder(LogitsProcessor):
        """Records entropy and varentropy of each step's logits for requests that ask
        (``SamplingParams(extra_args={STATS_KEY: tag})``); never changes a logit.

        Read the values with :func:`generate_with_stats` (``route="engine"``), which needs the
        engine's ``worker_extension_cls`` to be :data:`WORKER_EXTENSION`.
        """

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            tag = (sampling_params.extra_args or {}).get(STATS_KEY)
            if tag is not None and not isinstance(tag, str):
                raise ValueError(f"extra_args[{STATS_KEY!r}]={tag!r}: allowed a string tag")

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
            self.rows: dict[int, _Track] = {}
            # tag -> tracks that left the batch (finished, or removed and maybe re-added
            # later), oldest tag first; bounded (see _finish and take)
            self.finished: dict[str, list[_Track]] = {}
            self.takes = 0  # how many times take() ran

        def _finish(self, track: _Track) -> None:
            track.finished_at = self.takes
            self.finished.setdefault(track.tag, []).append(track)
            while len(self.finished) > MAX_FINISHED_TAGS:
                del self.finished[next(iter(self.finished))]  # the oldest tag

        def _resume(self, tag: str, params: Any, output_ids: list[int]) -> _Track | None:
            # vLLM removes a request it preempts or does not schedule in a step and later
            # re-adds it with the same SamplingParams object and the tokens generated so far
            # (the same list object, or under async scheduling a rebuilt one): continue the
            # track it left. A request re-added with no tokens has nothing to continue.
            if not output_ids:
                return None
            tracks = self.finished.get(tag, [])
            same = [t for t in tracks if t.params() is params]
            found = next((t for t in same if t.output_ids is output_ids), None)
            if found is None:
                found = next((t for t in same if len(t.output_ids) <= len(output_ids)
                              and _same_history(t.output_ids, output_ids)), None)
            if found is None:
                return None
            tracks.remove(found)
            if not tracks:
                del self.finished[tag]
            found.resume(output_ids)
            return found

        def is_argmax_invariant(self) -> bool:
            # It changes nothing, but vLLM skips argmax-invariant processors on greedy
            # batches; declaring False keeps it running for greedy requests too.
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            for index in batch_update.removed:
                track = self.rows.pop(index, None)
                if track is not None:
                    self._finish(track)
            for index, params, _prompt, output_ids in batch_update.added:
                old = self.rows.pop(index, None)
                if old is not None:
                    self._finish(old)
                tag = (params.extra_args or {}).get(STATS_KEY) if params is not None else None
                if tag is not None:
                    self.rows[index] = (self._resume(tag, params, output_ids)
                                        or _Track(tag, output_ids, params))
            for a, b, direction in batch_update.moved:
                ta, tb = self.rows.pop(a, None), self.rows.pop(b, None)
                if ta is not None:
                    self.rows[b] = ta
                if tb is not None and str(direction).endswith("SWAP"):
                    self.rows[a] = tb
                elif tb is not None:
                    self._finish(tb)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            index = sorted(i for i in self.rows if i < logits.shape[0])
            if not index:
                return logits
            rows = logits[index].float()  # (R, V)
            lp = torch.log_softmax(rows, -1)  # (R, V)
            p = lp.exp()
            lp = torch.where(p > 0, lp, 0.0)
            h = -(p * lp).sum(-1)  # (R,)
            v = (p * (lp + h[:, None]).square()).sum(-1)  # (R,)
            for i, hi, vi in zip(index, h.tolist(), v.tolist(), strict=True):
                track = self.rows[i]
                track.put(len(track.output_ids), hi, vi)
            return logits

        def take(self, tags: Sequence[str]) -> dict[str, list[tuple]]:
            # A finished request leaves the batch only at the next step's update, which may
            # never come when the engine goes idle: a caller that asks has seen its requests
            # finish, so their tracks still in `rows` are taken too.
            wanted = set(tags)
            for index in [i for i, t in self.rows.items() if t.tag in wanted]:
                self._finish(self.rows.pop(index))
            got = {tag: [t.as_tuple() for t in self.finished.pop(tag, [])] for tag in tags}
            # Tracks nobody asks for (an aborted call, requests sent through `vllm serve`)
            # go once STALE_TAKES later takes have passed them by.
            self.takes += 1
            stale = [tag for tag, tracks in self.finished.items()
                     if all(self.takes - t.finished_at > STALE_TAKES for t in tracks)]
            for tag in stale:
                del self.finished[tag]
            return got

    EntropyRecorder.__module__ = __name__
    EntropyRecorder.__qualname__ = "EntropyRecorder"
    return EntropyRecorder


class StatsWorkerExtension:
    """Methods vLLM adds to its workers (``worker_extension_cls``) to read the recorder."""

    def tokenwise_take_stats(self, tags: Sequence[str]) -> dict[str, list[tuple]]:
        """The finished statistics of the requests tagged ``tags`` (removed from the store)."""
        procs = self.model_runner.input_batch.logitsprocs.all  # type: ignore[attr-defined]
        for proc in procs:
            if type(proc).__name__ == "EntropyRecorder" and hasattr(proc, "take"):
                return proc.take(tags)
        return {}


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    # EntropyRecorder subclasses vLLM's LogitsProcessor, so it is built on first use (vLLM
    # and its worker processes look it up by this module's name).
    if name == "EntropyRecorder":
        if name not in _LAZY:
            _LAZY[name] = _make_recorder_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

