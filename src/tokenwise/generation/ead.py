"""Entropy Adaptive Decoding (Simonds, 2025): a small model writes, a large one takes over
where the small one's rolling entropy says it is guessing.

Both models share a tokenizer and keep their own KV cache. At each step the active model's
next-token entropy (bits, from raw logits, before any sampler) joins a rolling window; when
the small model is active and the window mean rises above ``up`` the large model produces
this very token (it first reads, in one forward pass, every token it has not seen); when the
large model is active and the mean falls below ``down`` the small one takes back. A switch
needs the current model to have run at least ``min_run`` tokens (hysteresis).

Whose entropy is watched (``judge``):

- ``"active"`` (default, as in the EAD paper): the window holds the entropy of whichever
  model wrote each token, and the large model hands back when *its own* entropy falls below
  ``down``; the first token after a hand-back is always the small model's.
- ``"small"``: the small model reads every token and its entropy alone fills the window; the
  window decides, at every step, who writes this very token (up and back). The question a
  switch answers is "is the small model guessing here?", which the large model's entropy does
  not measure: where both are unsure (facts neither knows well) ``"active"`` keeps the large
  model writing without gain. It costs one small-model pass per large-model token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.generation.engine import (
    _check_seeds,
    _resolve_sampler,
    check_kv,
    check_top_logprobs,
    step_records,
)
from tokenwise.generation.records import TokenRecord
from tokenwise.generation.stops import TextStream, check_stops
from tokenwise.models import LanguageModel
from tokenwise.sampling import Sampler
from tokenwise.sampling.base import check_float, check_int

_LN2 = 0.6931471805599453
_JUDGES = ("active", "small")


@dataclass
class EADGeneration:
    """An EAD generation: the text, per-token records (``record.model`` says who wrote
    each), and what it cost.

    Attributes:
        text: generated text (cut before a stop string).
        tokens: one record per token.
        finish_reason: ``"stop"``, ``"eos"`` or ``"length"``.
        large_share: share of the tokens the large model produced.
        forward_passes: forward passes per model name.
        tokens_processed: tokens each model read (prefill and catch-up included).
        flops: estimated forward FLOPs, ``2 x parameters x tokens read`` per model, summed.
        switches: how many times control changed hands.
        seconds: wall-clock time.
        kv: with ``kv``, what each model's cache held at the end, under ``"small"`` and
            ``"large"`` (:func:`~tokenwise.generation.kv_report.cache_report`; None for a
            model with a full cache or that never ran); None without ``kv``.
    """

    text: str
    tokens: list[TokenRecord] = field(default_factory=list)
    finish_reason: str = "length"
    large_share: float = 0.0
    forward_passes: dict[str, int] = field(default_factory=dict)
    tokens_processed: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0
    switches: int = 0
    seconds: float = 0.0
    kv: dict[str, dict[str, Any] | None] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = dict(self.__dict__)
        out["tokens"] = [t.as_dict() for t in self.tokens]
        return out


class _Runner:
    """One model with its own KV cache and how many tokens of the sequence it has read.

    With ``kv`` the model's first pass reads the prompt alone into a compressed or quantised
    cache (:func:`tokenwise.kv.prefill`, in the press's chunks), so a ratio budget is of the
    prompt and both models compress the same prompt the same way, however late the large one
    joins; the tokens written before it joined are then read like decoded tokens. A press with
    ``question_tokens`` probes each chunk with the prompt's question; those extra passes and
    tokens are counted in ``forward_passes`` and ``tokens_processed``.
    """

    def __init__(self, lm: LanguageModel, prompt_tokens: int, kv: Any = None) -> None:
        self.lm = lm
        self.prompt_tokens = prompt_tokens
        self.kv = kv
        self.cache: Any = None
        self.seen = 0
        self.passes = 0
        self.read = 0
        # after a per-layer budget the layers hold different lengths: no shared mask for a
        # pass of several tokens, so catch-up reads one token at a time
        self.one_by_one = isinstance(getattr(kv, "budget", None), tuple)

    def next_logits(self, seq: list[int]) -> torch.Tensor:
        logits = None
        if self.kv is not None and self.cache is None:
            from tokenwise.kv import prefill

            self.cache, last = prefill(self.lm, seq[:self.prompt_tokens], self.kv)
            # the passes and tokens prefill ran: its chunks, and any question probes
            self.passes += self.cache.prefill_passes
            self.read = self.cache.prefill_tokens
            self.seen = self.prompt_tokens
            logits = last[0]
        while self.seen < len(seq):
            end = self.seen + 1 if self.one_by_one else len(seq)
            new = torch.tensor([seq[self.seen:end]])  # (1, unseen): catch up in one pass
            positions = torch.arange(self.seen, end)[None]
            # no mask: a compressed cache holds fewer tokens than a mask would count, and the
            # one sequence has no padding
            out = self.lm.forward(new, cache=self.cache, position_ids=positions,
                                  use_cache=True, logits_to_keep=1)
            self.cache, self.seen = out.cache, end
            self.passes += 1
            self.read += new.shape[1]
            logits = out.logits[0, -1]
        assert logits is not None, "next_logits called with nothing new to read"
        return logits.float()  # (V,)

    def kv_report(self) -> dict[str, Any] | None:
        """What this model's cache held (None without kv, or when the model never ran)."""
        if self.kv is None or self.cache is None:
            return None
        from tokenwise.generation.kv_report import cache_report

        return cache_report(self.cache, self.prompt_tokens)


def _check_ead_kv(kv: object) -> dict[str, Any]:
    """``kv`` as one setting per model: a press or quantised spec for both, or a mapping
    ``{"small": ..., "large": ...}`` (a missing or None entry: that model keeps a full
    cache)."""
    from collections.abc import Mapping

    if isinstance(kv, Mapping):
        unknown = sorted(set(map(str, kv)) - {"small", "large"})
        if unknown:
            raise TokenwiseError(f"kv has key(s) {', '.join(map(repr, unknown))}; allowed "
                                 "'small' and 'large' (one cache setting per model)")
        return {name: check_kv(kv.get(name)) for name in ("small", "large")}
    setting = check_kv(kv)
    return {"small": setting, "large": setting}


@torch.inference_mode()
def generate_ead(
    small: LanguageModel,
    large: LanguageModel,
    prompt: str,
    sampler: Sampler | str | None = None,
    *,
    up: float = 1.0,
    down: float | None = None,
    window: int = 5,
    min_run: int = 1,
    judge: str = "active",
    max_new_tokens: int = 64,
    seed: int | None = None,
    stop: str | list[str] | None = None,
    top_logprobs: int = 0,
    kv: Any = None,
) -> EADGeneration:
    """Generate with the small model, handing over to the large one where entropy rises.

    Args:
        small: the model that writes by default.
        large: the model that takes over; must share the small one's tokenizer.
        prompt: the prompt.
        sampler: None (greedy), a sampler name, or a sampler (applied to whichever model
            is active).
        up: rolling mean entropy in bits above which the large model takes over (> 0).
        down: rolling mean entropy in bits below which the small model takes back
            (default ``up``; must be <= ``up``).
        window: tokens in the rolling mean (EAD: 5).
        min_run: tokens a model must produce before control can change hands again.
        judge: whose entropy fills the window: ``"active"`` (the model that wrote each token)
            or ``"small"`` (the small model's at every token; it then reads every token).
        max_new_tokens: most tokens generated.
        seed: sampling seed.
        stop: string(s) that end the generation.
        top_logprobs: the most likely tokens each record carries, from the distribution of
            the model that wrote the token (0 to the vocabulary size).
        kv: compress the KV caches, as ``tokenwise.generate(..., kv=...)`` does: a
            :mod:`tokenwise.kv` press or quantised cache (``kv.SnapKV(0.25)``,
            ``kv.KIVI(bits=2)``) applies to **both** models, each compressing its own cache
            of the same prompt with the same settings (the memory EAD holds is both caches,
            and the large model's is the bigger). To set them apart pass
            ``{"small": ..., "large": ...}``; a missing or None entry keeps that model's
            cache full. A ratio budget is of the prompt; tokens decoded later are kept
            unless the press sets ``every``. ``result.kv`` reports each cache.

    Returns:
        An :class:`EADGeneration`.

    Example:
        >>> from tokenwise.models import load
        >>> g = generate_ead(load("tw-small"), load("tw-large"), "7+2=", up=0.5,
        ...                  max_new_tokens=3, stop="\\n")
        >>> g.text, g.tokens[0].model
        ('9', 'tw-large')
    """
    if small.tokenizer.get_vocab() != large.tokenizer.get_vocab():
        raise TokenwiseError(f"models {small.name!r} and {large.name!r} have different "
                             "tokenizers; entropy-adaptive decoding needs one shared vocabulary")
    up = check_float("up", up, 0.0, float("inf"), high_open=True)
    if down is not None:
        given_down = down
        down = check_float("down", down, 0.0, float("inf"), low_open=False, high_open=True)
        if down > up:
            raise TokenwiseError(f"down={given_down!r}: allowed a number from 0 to up={up:g} (the "
                                 "large model takes over above up and hands back below down)")
    down = up if down is None else down
    window = check_int("window", window, 1)
    min_run = check_int("min_run", min_run, 1)
    if judge not in _JUDGES:
        raise TokenwiseError(f"judge={judge!r}: allowed {', '.join(map(repr, _JUDGES))}")
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    if not isinstance(prompt, str) or not prompt.strip():
        raise TokenwiseError(f"prompt={prompt!r}: a non-empty string is needed")
    chosen_sampler = _resolve_sampler(sampler)
    (seed_value,) = _check_seeds(seed, 1)
    gen = None
    if chosen_sampler is not None:
        # One generator on the large model's device: its logits and the small model's are
        # both moved there for sampling.
        gen = torch.Generator(device=large.device).manual_seed(
            seed_value if seed_value is not None else int(torch.randint(0, 2**62, (1,))))
    stops = check_stops(stop)
    top_logprobs = check_top_logprobs(top_logprobs, min(small.vocab_size, large.vocab_size))
    settings = _check_ead_kv(kv)
    seq = small.encode(prompt, add_bos=True)
    limit = min(small.context_length, large.context_length)
    if len(seq) + max_new_tokens - 1 > limit:
        raise TokenwiseError(f"prompt of {len(seq)} tokens + max_new_tokens={max_new_tokens} "
                             f"exceeds the shared context length {limit}")
    if chosen_sampler is not None:
        chosen_sampler.reset()
        chosen_sampler.observe_prompt([seq])
    runners = {name: _Runner(lm, len(seq), settings[name])
               for name, lm in (("small", small), ("large", large))}
    ends = {name: r.lm.end_token_ids for name, r in runners.items()}  # built once, not per token
    active, last, run, switches = "small", None, 0, 0
    bits: list[float] = []

    def rolling(latest: float) -> float:
        recent = [*bits, latest][-window:]
        return sum(recent) / len(recent)

    def rolling_mean() -> float:
        recent = bits[-window:]
        return sum(recent) / len(recent)

    result = EADGeneration(text="")
    written = TextStream(lambda ids: small.decode(ids, skip_special_tokens=True), stops)
    start = time.perf_counter()
    for step in range(max_new_tokens):
        if judge == "small":
            logits = runners["small"].next_logits(seq)
            bits.append(float(signals.entropy(logits)) / _LN2)
            mean = rolling_mean()
            if last is None or run >= min_run:
                if active == "small" and mean > up:
                    active = "large"
                elif active == "large" and mean < down:
                    active = "small"
            producer = active
            if producer == "large":
                logits = runners["large"].next_logits(seq)
        else:
            producer = active
            logits = runners[producer].next_logits(seq)
            h = float(signals.entropy(logits)) / _LN2
            may_switch = last is None or (last == "small" and run >= min_run)
            if producer == "small" and rolling(h) > up and may_switch:
                producer = "large"  # it writes this very token
                logits = runners[producer].next_logits(seq)
                h = float(signals.entropy(logits)) / _LN2
            bits.append(h)
        if chosen_sampler is None:
            tok = int(logits.argmax())
        else:
            probs = chosen_sampler(logits[None].to(large.device)).softmax(-1)[0]
            tok = int(torch.multinomial(probs, 1, generator=gen))
            chosen_sampler.observe(torch.tensor([tok], device=large.device))
        if producer != last:
            switches += last is not None
            run = 0
        run, last, active = run + 1, producer, producer
        if judge == "active" and producer == "large" and rolling_mean() < down \
                and run >= min_run:
            active = "small"  # hands back from the next token on
        lm = runners[producer].lm
        if tok in ends[producer]:
            result.finish_reason = "eos"
            break
        chosen = torch.tensor([tok], device=logits.device)
        result.tokens.extend(step_records(lm, logits[None], chosen, step, model=lm.name,
                                          top_k=top_logprobs))
        seq.append(tok)
        written.push(tok)
        result.text = written.text
        if written.stopped:
            result.finish_reason = "stop"
            break
    result.seconds = time.perf_counter() - start
    n_large = sum(t.model == large.name for t in result.tokens)
    result.large_share = n_large / len(result.tokens) if result.tokens else 0.0
    result.switches = switches
    result.forward_passes = {r.lm.name: r.passes for r in runners.values()}
    result.tokens_processed = {r.lm.name: r.read for r in runners.values()}
    result.flops = float(sum(2 * r.lm.num_parameters() * r.read for r in runners.values()))
    if kv is not None:
        result.kv = {name: r.kv_report() for name, r in runners.items()}
    return result
