"""tokenwise on a vLLM engine: per-token entropy, prompt surprisal and sampled answers.

A vLLM ``LLM`` is recognised by duck typing (:func:`is_vllm_llm`); nothing here imports ``vllm``
until an engine is actually used, so ``import tokenwise`` never pulls it in. :class:`VLLMModel`
wraps an ``LLM`` as a codec (the tokenizer, start and end ids, context length; the same encoding
rule as :class:`~tokenwise.models.LanguageModel`) and a prompt scorer
(:class:`~tokenwise.models.protocols.PromptScorer`), and :func:`generate_with_stats` returns the
same :class:`~tokenwise.generation.Generation` / :class:`~tokenwise.generation.TokenRecord`
records as :func:`tokenwise.generate`, so code downstream of generation does not care which
engine produced them. Prompts are always sent as token ids encoded the tokenwise way (the
tokenizer's own start ids, then the text with special-token strings read as text), so the engine
scores exactly the ids the Hugging Face path scores.

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

import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from tokenwise.errors import TokenwiseError
from tokenwise.generation import Generation, TokenRecord
from tokenwise.models.language_model import TokenizerCodec
from tokenwise.scoring import token_surprisal
from tokenwise.vllm import recorder
from tokenwise.vllm.logprobs import _normalise_rows, _position_rows, _rows_stats
from tokenwise.vllm.recorder import STATS_KEY, _collect_engine_stats, _match_track

__all__ = [
    "VLLMModel",
    "as_vllm_model",
    "generate_with_stats",
    "is_vllm_llm",
    "prompt_surprisal",
    "sample_logprobs",
]


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
# the engine adapter
# --------------------------------------------------------------------------------------------


class VLLMModel(TokenizerCodec):
    """A vLLM ``LLM`` as a codec (:class:`~tokenwise.models.language_model.TokenizerCodec`:
    the same encoding rule as :class:`~tokenwise.models.LanguageModel`) and a
    :class:`~tokenwise.models.protocols.PromptScorer` (prompt logprobs from the engine).

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

    def _generation_config(self) -> Any:
        """The engine's generation config (its ``eos_token_id`` may list more end ids)."""
        listed = self._config.try_get_generation_config() or {}
        return SimpleNamespace(eos_token_id=listed.get("eos_token_id"))

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

    def sample_completions(self, prompt: str, *, n: int, temperature: float,
                           max_new_tokens: int, seed: int | None, stop: Sequence[str],
                           entropies: bool = False
                           ) -> list[tuple[str, tuple[float, ...] | None,
                                           tuple[float, ...] | None, str]]:
        """``n`` completions of one prompt, completion ``i`` seeded ``seed + i`` (vLLM's rule
        for the ``n`` children of one request): what
        :func:`tokenwise.uncertainty.sample_answers` asks of an engine.

        Args:
            prompt: the prompt text (encoded with the start token, as tokenwise does).
            n: completions.
            temperature: sampling temperature.
            max_new_tokens: tokens per completion at most.
            seed: the first completion's seed, or None.
            stop: stop strings.
            entropies: also each token's entropy (full-vocabulary logprobs: the engine
                needs ``max_logprobs=-1``); without, only the chosen tokens' logprobs.

        Returns:
            One ``(text, token_logprobs, token_entropies, finish_reason)`` per completion;
            the tuples are None when no token was kept (entropies also without
            ``entropies``).

        Example:
            >>> VLLMModel(llm).sample_completions("Q: hi\\nA:", n=2, temperature=1.0,
            ...     max_new_tokens=8, seed=0, stop=[])  # doctest: +SKIP
            [(' a doctor', (-0.2, -1.3), None, 'stop'), ...]
        """
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, seed=seed,
                                max_tokens=max_new_tokens, stop=list(stop) or None)
        if entropies:
            return [(g.text, tuple(t.logprob for t in g.tokens) or None,
                     tuple(t.entropy for t in g.tokens) or None, g.finish_reason)
                    for g in generate_with_stats(self, prompt, params)]
        return [(text, lps, None, reason)
                for text, lps, reason in sample_logprobs(self, prompt, params)]


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


def _records(model: VLLMModel, completion: Any, row: int, route: str,
             engine_stats: tuple[list[float], list[float]] | None) -> list[Any]:
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
        if len(items) > recorder.MAX_FINISHED_TAGS:
            raise TokenwiseError(f"{len(items)} prompts for route='engine': the recorder keeps "
                                 f"at most {recorder.MAX_FINISHED_TAGS} requests' statistics "
                                 "until they are collected; send them in smaller calls")
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

    The same numbers as :func:`tokenwise.scoring.token_surprisal` on the
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
    model = as_vllm_model(llm)
    ids = model.encode(text) if isinstance(text, str) else [int(i) for i in text]
    pre = model.encode(prefix) if isinstance(prefix, str) else [int(i) for i in prefix]
    return token_surprisal(model, ids, pre, window=window, stride=stride)


