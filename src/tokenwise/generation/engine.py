"""The decode loop: batched prompts, KV cache, samplers, seeds, stop strings, streaming."""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.generation.records import Generation, TokenRecord
from tokenwise.generation.stops import TextStream, check_stops

if TYPE_CHECKING:
    from tokenwise.models import LanguageModel
    from tokenwise.sampling import Sampler

#: largest seed a row's random stream takes: ``torch.Generator.manual_seed`` reads seeds as
#: unsigned 64-bit integers (a larger one raises "Overflow when unpacking long long").
MAX_SEED = 2**64 - 1


def _check_prompts(prompt: str | Sequence[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise TokenwiseError("no prompt given; pass a string or a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise TokenwiseError(f"prompt {i} is {p!r}: a non-empty string is needed")
    return prompts


def _check_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, numbers.Integral):
        seeds = [seed] * n
    elif isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = list(seed)
    else:
        raise TokenwiseError(f"seed={seed!r}: allowed an integer from 0 to 2**64 - 1 "
                             f"({MAX_SEED}), a list of them (one per prompt) or None")
    if len(seeds) != n:
        raise TokenwiseError(f"{len(seeds)} seeds for {n} prompts: give one seed or one per prompt")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s <= MAX_SEED:
            raise TokenwiseError(f"seed={s!r}: allowed an integer from 0 to 2**64 - 1 "
                                 f"({MAX_SEED})")
    return [int(s) for s in seeds]


def step_records(lm: LanguageModel, raw: torch.Tensor, chosen: torch.Tensor, step: int,
                 model: str = "", top_k: int = 0) -> list[TokenRecord]:
    """One record per row for the tokens ``chosen`` from the model's raw logits.

    Args:
        lm: the model (decodes the token text).
        raw: ``(B, V)`` logits before any sampler.
        chosen: ``(B,)`` chosen ids.
        step: the generation step.
        model: the name stored in the records (EAD says who wrote each token).
        top_k: the most likely tokens each record carries (0 to ``V``).

    Returns:
        One :class:`TokenRecord` per row, in row order.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> raw = torch.tensor([[0.0, 2.0, 1.0] + [-50.0] * (lm.vocab_size - 3)])
        >>> rec = step_records(lm, raw, torch.tensor([2]), step=0, top_k=2)[0]
        >>> rec.rank, rec.top_ids
        (2, (1, 2))
    """
    stats = signals.token_stats(raw, chosen, top_k=top_k)
    ranks = ((raw > raw.gather(-1, chosen[:, None])).sum(-1) + 1).tolist()  # (B,)
    top_ids = stats.top_ids.tolist()  # (B, k)
    top_logprobs = stats.top_logprobs.tolist()  # (B, k)
    return [
        TokenRecord(id=tok, text=lm.decode([tok]), logprob=float(stats.logprobs[i]),
                    entropy=float(stats.entropies[i]),
                    varentropy=float(stats.varentropies[i]), rank=ranks[i], step=step, row=i,
                    model=model, top_ids=tuple(top_ids[i]),
                    top_logprobs=tuple(top_logprobs[i]))
        for i, tok in enumerate(chosen.tolist())
    ]


def check_top_logprobs(top_logprobs: object, vocab_size: int) -> int:
    """``top_logprobs`` as an int; raise unless it is from 0 to ``vocab_size``.

    Args:
        top_logprobs: how many most likely tokens each record should carry.
        vocab_size: the model's vocabulary (the width of its logits).

    Returns:
        The value as a Python int.

    Example:
        >>> check_top_logprobs(3, 10)
        3
        >>> check_top_logprobs(11, 10)
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: top_logprobs=11: allowed an integer from 0 to 10 ...
    """
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, numbers.Integral) \
            or not 0 <= top_logprobs <= vocab_size:
        raise TokenwiseError(f"top_logprobs={top_logprobs!r}: allowed an integer from 0 to "
                             f"{vocab_size} (the model's vocabulary size)")
    return int(top_logprobs)


def _check_budget(lm: LanguageModel, prompts: list[str], max_new_tokens: object) -> list[list[int]]:
    """Encode the prompts; raise if they and ``max_new_tokens`` do not fit the context."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) \
            or max_new_tokens < 1:
        raise TokenwiseError(f"max_new_tokens={max_new_tokens!r}: allowed an integer >= 1")
    encoded = [lm.encode(p, add_bos=True) for p in prompts]
    longest = max(len(e) for e in encoded)
    if longest + max_new_tokens - 1 > lm.context_length:
        raise TokenwiseError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the context "
            f"length {lm.context_length} of {lm.name!r}; shorten the prompt or ask for fewer "
            "tokens"
        )
    return encoded


def _resolve_sampler(sampler: Sampler | str | None) -> Sampler | None:
    if sampler is None or sampler == "greedy":
        return None
    if isinstance(sampler, str):
        from tokenwise.sampling import get

        return get(sampler)
    from tokenwise.sampling import Sampler

    if not isinstance(sampler, Sampler):
        raise TokenwiseError(f"sampler={sampler!r}: allowed None (greedy), a sampler name or a "
                             "tokenwise.sampling sampler")
    return sampler


def check_kv(kv: object) -> Any:
    """``kv`` checked as :func:`generate` takes it: None, a :mod:`tokenwise.kv` press or a
    quantised cache's settings (a question-agnostic press is refused: one prompt holds no
    separate question).

    Example:
        >>> from tokenwise.kv import KIVI
        >>> check_kv(KIVI(4)).bits
        (4,)
        >>> check_kv("snapkv")
        Traceback (most recent call last):
        ...
        tokenwise.errors.TokenwiseError: kv='snapkv': allowed None, a tokenwise.kv press ...
    """
    if kv is None:
        return None
    from tokenwise.kv import Press
    from tokenwise.kv.quantized import QuantSpec

    if not isinstance(kv, (Press, QuantSpec)):
        raise TokenwiseError(f"kv={kv!r}: allowed None, a tokenwise.kv press (e.g. "
                             "kv.SnapKV(0.25)) or a quantised cache (kv.KIVI(bits=2), kv.SAQ())")
    if getattr(kv, "question_aware", True) is False:
        raise TokenwiseError(
            f"kv={kv!r}: question_aware=False needs the context and the question apart; "
            "generate reads one prompt (question-aware when it ends with the question). Use "
            "tokenwise.kv.prefill(model, context_ids, press, question=question_ids)")
    return kv


def _decode_rows(lm: LanguageModel, prompts: list[str], encoded: list[list[int]],
                 sampler: Sampler | None, max_new_tokens: int, seeds: list[int | None],
                 stop: list[str], top_logprobs: int, kv: Any,
                 on_cache: Callable[[int, Any], None] | None = None
                 ) -> Generator[TokenRecord, None, list[Generation]]:
    """A compressed cache keeps different tokens for every row, so rows of a batch are
    decoded one after another (records keep their row index)."""
    results: list[Generation] = []
    for i, (p, e, s) in enumerate(zip(prompts, encoded, seeds, strict=True)):
        seen = None if on_cache is None else functools.partial(on_cache, i)
        loop = _decode(lm, [p], [e], sampler, max_new_tokens, [s], stop, top_logprobs, kv,
                       seen)
        try:
            while True:
                yield dataclasses.replace(next(loop), row=i)
        except StopIteration as finished:
            (result,) = finished.value
        result.tokens = [dataclasses.replace(r, row=i) for r in result.tokens]
        results.append(result)
    return results


@torch.inference_mode()
def _decode(lm: LanguageModel, prompts: list[str], encoded: list[list[int]],
            sampler: Sampler | None, max_new_tokens: int, seeds: list[int | None],
            stop: list[str], top_logprobs: int = 0, kv: Any = None,
            on_cache: Callable[[Any], None] | None = None
            ) -> Generator[TokenRecord, None, list[Generation]]:
    """Yield each token's record as it is chosen; return the finished generations.

    Arguments are checked by :func:`generate` before this generator starts, so a bad
    request fails at the call even with ``stream=True``. With ``kv`` (one prompt), the
    prompt is read into a compressed or quantised cache and no mask is passed (no padding).
    """
    longest = max(len(e) for e in encoded)
    device = lm.device
    pad = lm.tokenizer.pad_token_id
    pad = lm.eos_token_id if pad is None else pad
    pad = 0 if pad is None else pad
    batch = len(prompts)
    ids = torch.full((batch, longest), pad, dtype=torch.long)
    mask = torch.zeros((batch, longest), dtype=torch.long)
    for i, e in enumerate(encoded):  # left padding: every prompt ends at the last column
        ids[i, longest - len(e):] = torch.tensor(e)
        mask[i, longest - len(e):] = 1
    mask = mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = [None if s is None else torch.Generator(device=device).manual_seed(s)
                  for s in seeds]
    if sampler is not None:
        sampler.reset()  # stateful samplers (Mirostat) start fresh for each generation
        sampler.observe_prompt(encoded)  # history for the samplers that read it (penalties)
    if kv is None:
        out = lm.forward(ids, mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    else:
        from tokenwise.kv import prefill
        from tokenwise.models.language_model import ForwardOutput

        cache, last = prefill(lm, encoded[0], kv)
        out = ForwardOutput(logits=last[:, None], cache=cache)
        if on_cache is not None:
            on_cache(cache)
    texts = [TextStream(lambda ids: lm.decode(ids, skip_special_tokens=True), stop)
             for _ in prompts]
    results = [Generation(prompt=p, text="", prompt_tokens=len(e),
                          seed=None if sampler is None else s)
               for p, e, s in zip(prompts, encoded, seeds, strict=True)]
    done = [False] * batch
    ends = lm.end_token_ids
    for step in range(max_new_tokens):
        raw = out.logits[:, -1].float()  # (B, V) the model's own distribution
        if sampler is None:
            chosen = raw.argmax(-1)  # (B,)
        else:
            probs = sampler(raw).softmax(-1)  # (B, V), dropped tokens 0
            chosen = torch.stack([
                torch.multinomial(probs[i], 1, generator=generators[i])[0] for i in range(batch)
            ])  # (B,)
            sampler.observe(chosen)
        records = step_records(lm, raw, chosen, step, top_k=top_logprobs)
        for i, tok in enumerate(chosen.tolist()):
            if done[i]:
                continue
            if tok in ends:
                done[i], results[i].finish_reason = True, "eos"
                continue
            results[i].tokens.append(records[i])
            yield records[i]
            texts[i].push(tok)
            if texts[i].stopped:
                done[i], results[i].finish_reason = True, "stop"
            results[i].text = texts[i].text
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], 1)
        positions = positions[:, -1:] + 1
        # a compressed cache holds fewer tokens than the mask would count; unpadded, none needed
        out = lm.forward(chosen[:, None], None if kv is not None else mask, cache=out.cache,
                         position_ids=positions, use_cache=True)
    if kv is not None:
        from tokenwise.generation.kv_report import cache_report

        results[0].kv = cache_report(out.cache, len(encoded[0]))
    return results


def generate(
    model: LanguageModel | str,
    prompt: str | Sequence[str],
    sampler: Sampler | str | None = None,
    *,
    max_new_tokens: int = 64,
    seed: int | Sequence[int] | None = None,
    stop: str | Sequence[str] | None = None,
    stream: bool = False,
    top_logprobs: int = 0,
    kv: Any = None,
    on_cache: Callable[[int, Any], None] | None = None,
) -> Generation | list[Generation] | Iterator[TokenRecord]:
    """Generate from one prompt or a batch, with a record for every token.

    Greedy when ``sampler`` is None; otherwise each row samples from the sampler's output
    with its own seeded random stream, so a prompt with a given seed gives the same text
    alone or in any batch.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel`, or a built-in name / directory.
        prompt: a string, or a list of strings (a batch; left-padded).
        sampler: None (greedy), a sampler name, or a :mod:`tokenwise.sampling` sampler
            (e.g. ``Chain([TopH(0.4), Temperature(0.8)])``).
        max_new_tokens: most tokens generated per prompt (>= 1).
        seed: one seed, or one per prompt, each from 0 to ``MAX_SEED`` (2**64 - 1)
            (sampling only; default: fresh randomness).
        stop: string(s) that end a generation; the text is cut before the first one.
        stream: return an iterator of :class:`TokenRecord` as tokens are chosen
            (``record.row`` says which prompt) instead of the finished generations.
        top_logprobs: the most likely tokens each record carries (``top_ids``,
            ``top_logprobs``), from 0 to the model's vocabulary size; they come from the
            same pass that gives the record's entropy.
        kv: compress the KV cache: a :mod:`tokenwise.kv` press (``kv.SnapKV(0.25)``: the
            cache keeps a budget of tokens, really freeing the rest) or a quantised cache
            (``kv.KIVI(bits=2)``, ``kv.SAQ()``). Each prompt of a batch is then decoded on its
            own (rows keep different tokens); the prompt is read in ``chunk_size`` pieces when
            the press sets one. A budget of at least the prompt evicts nothing (a warning
            says so). Each :class:`Generation`'s ``kv`` then reports what its cache held
            (prompt, kept tokens, bytes: :func:`~tokenwise.generation.kv_report.cache_report`).
        on_cache: with ``kv``, called as ``on_cache(row, cache)`` once a row's prompt is in
            its cache, so a caller that streams (and sees no :class:`Generation`) can keep
            the cache and report on it (``cache_report``) when the row ends.

    Returns:
        A :class:`Generation` for a string prompt, a list for a list of prompts, or an
        iterator of records with ``stream=True``.

    Example:
        >>> import tokenwise as tw
        >>> g = tw.generate("tw-large", "7+2=", max_new_tokens=3, stop="\\n")
        >>> g.text, g.finish_reason, g.tokens[0].rank
        ('9', 'stop', 1)
    """
    from tokenwise.models import LanguageModel, load

    prompts = _check_prompts(prompt)
    lm = model if isinstance(model, LanguageModel) else load(model)
    chosen_sampler = _resolve_sampler(sampler)
    seeds = _check_seeds(seed, len(prompts))
    if chosen_sampler is not None:  # fresh randomness when no seed is given
        seeds = [int(torch.randint(0, 2**62, (1,)).item()) if s is None else s for s in seeds]
    stops = check_stops(stop)
    top_logprobs = check_top_logprobs(top_logprobs, lm.vocab_size)
    encoded = _check_budget(lm, prompts, max_new_tokens)
    kv = check_kv(kv)
    if on_cache is not None and (kv is None or not callable(on_cache)):
        raise TokenwiseError(f"on_cache={on_cache!r}: allowed a function of (row, cache), and "
                             "only with kv (without it there is no compressed cache to report)")
    if kv is None:
        loop = _decode(lm, prompts, encoded, chosen_sampler, int(max_new_tokens), seeds, stops,
                       top_logprobs)
    else:
        loop = _decode_rows(lm, prompts, encoded, chosen_sampler, int(max_new_tokens), seeds,
                            stops, top_logprobs, kv, on_cache)
    if stream:
        return loop
    try:
        while True:
            next(loop)
    except StopIteration as finished:
        results: list[Generation] = finished.value
    return results[0] if isinstance(prompt, str) else results
