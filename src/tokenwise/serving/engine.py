"""The batch runner: one batch of sequences through the decode loop
(:func:`tokenwise.generate`), reported per sequence.

The batch shares one model and one sampler spec; everything else is per sequence: its
seed (the decode loop gives every row its own random stream, so a seeded request gives the
same text alone or in any batch), its ``max_tokens`` and stop strings (applied here, so
requests that differ in them still share a batch), its constraint (JSON or a forced tool
call, :mod:`tokenwise.serving.constraints`: a :class:`RowConstraints` first in the chain
holds each row to its own, so requests with different schemas share a batch too), how many
top alternatives it wants, and whether its client is still there. The batch is decoded for
the longest ``max_tokens`` and stops early once every sequence has finished, been cancelled
or timed out.

Top alternatives come with the decode loop's records (the most any row asks for, from the
same pass that gives the record's entropy); each row keeps as many as it asked for.

A row with ``echo`` gets a :class:`PromptEvent` first: its prompt, and with
``score_prompt`` every prompt token's logprob, entropy and top alternatives, from one
forward pass over the batch's echoed prompts (:func:`score_prompts`, before the decode
loop, which reads only the prompt's last position). A row with ``max_tokens=0`` (echo only)
is not decoded: it finishes with ``"length"`` after its prompt event.

Example:
    >>> from tokenwise.models import load
    >>> from tokenwise.serving.sampler_spec import SamplerSpec
    >>> events = []
    >>> row = Row(prompt="7+2=", max_tokens=3, stops=["\\n"], sink=events.append)
    >>> _ = run_batch(load("tw-small"), SamplerSpec(), [row])
    >>> events[-1].reason, events[-1].text
    ('stop', '9')
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenwise import signals
from tokenwise.errors import TokenwiseError
from tokenwise.generation import TokenRecord, generate
from tokenwise.generation.kv_report import cache_report
from tokenwise.generation.stops import TextStream
from tokenwise.models import LanguageModel
from tokenwise.models.language_model import EncodedText
from tokenwise.sampling import Chain, Sampler, Temperature
from tokenwise.serving.constraints import Constraint, RowConstraints
from tokenwise.serving.logprobs import Alternative, TokenBytes, WireToken
from tokenwise.serving.sampler_spec import SamplerSpec


@dataclass(frozen=True)
class TokenEvent:
    """A token was generated; ``delta`` is the text it releases (may be empty)."""

    token: WireToken
    delta: str


@dataclass(frozen=True)
class PromptEvent:
    """The prompt of an ``echo`` row, sent before its first token.

    Attributes:
        text: the prompt as echoed (a text prompt as given; token ids decoded, special
            tokens included, as vLLM echoes them).
        tokens: every prompt token as the model reads it (a text prompt's start ids
            included), each with the logprob, entropy and top alternatives of the model's
            prediction of it; the first token's logprob and entropy are None (nothing
            predicts it). None when the row did not ask for them (``score_prompt``).
        hidden: how many leading tokens ``text`` leaves out (a text prompt's start ids).
    """

    text: str
    tokens: list[WireToken] | None
    hidden: int = 0


@dataclass(frozen=True)
class FinishEvent:
    """The sequence ended.

    Attributes:
        reason: ``"stop"`` (stop string or end-of-text), ``"length"``, ``"cancelled"``,
            ``"timeout"`` or ``"error"`` (the batch failed; the exception follows).
        delta: text not yet released.
        text: the whole generated text.
        completion_tokens: tokens generated.
        kv: with ``tokenwise.kv``, what the sequence's cache held when it ended
            (:func:`~tokenwise.generation.kv_report.cache_report`; with EAD, one report per
            model under ``"small"`` and ``"large"``); None otherwise.
    """

    reason: str
    delta: str
    text: str
    completion_tokens: int
    kv: dict[str, Any] | None = None


@dataclass
class Row:
    """One sequence to generate.

    Attributes:
        prompt: the prompt text (the decode loop adds BOS), or an
            :class:`~tokenwise.models.language_model.EncodedText` whose ids it reads as
            they are.
        max_tokens: most tokens (0: none; only with ``echo``).
        sink: receives a :class:`PromptEvent` (with ``echo``), the :class:`TokenEvent` s and
            finally one :class:`FinishEvent`; called on the thread that runs the batch.
        prompt_tokens: tokens of the prompt, BOS included (for batching decisions).
        stops: stop strings.
        seed: sampling seed (required unless the spec is greedy).
        top_logprobs: alternatives to report per token (0: none).
        cancelled: returns True once nobody waits for the result.
        deadline: ``time.monotonic()`` after which the sequence is stopped.
        echo: send the prompt back first (a :class:`PromptEvent`).
        score_prompt: with ``echo``, score the prompt's tokens (``top_logprobs``
            alternatives each).
        constraint: what the reply must be (None: free text); its tokens then carry their
            ``constrained_entropy``.
    """

    prompt: str
    max_tokens: int
    sink: Callable[[TokenEvent | FinishEvent], None]
    prompt_tokens: int = 0
    stops: list[str] = field(default_factory=list)
    seed: int | None = None
    top_logprobs: int = 0
    cancelled: Callable[[], bool] = lambda: False
    deadline: float = float("inf")
    echo: bool = False
    score_prompt: bool = False
    constraint: Constraint | None = None


@dataclass
class BatchStats:
    """What one batch did: sequences, decode steps and tokens delivered."""

    rows: int
    steps: int = 0
    tokens: int = 0
    cancelled: int = 0
    timed_out: int = 0

    def absorb(self, part: BatchStats, *, tokens: int | None = None) -> None:
        """Count a run made for some of this batch's rows (its steps, cancellations and
        time-outs; its tokens, or ``tokens`` when only some of them are new).

        Example:
            >>> done = BatchStats(rows=2)
            >>> done.absorb(BatchStats(rows=1, steps=3, tokens=3)); (done.steps, done.tokens)
            (3, 3)
        """
        self.steps += part.steps
        self.tokens += part.tokens if tokens is None else tokens
        self.cancelled += part.cancelled
        self.timed_out += part.timed_out


def alternatives(record: TokenRecord, k: int, names: TokenBytes) -> list[Alternative]:
    """The first ``k`` of the top alternatives ``record`` carries, as the wire needs them.

    Args:
        record: a decode-loop record with at least ``k`` alternatives.
        k: how many to keep.
        names: token texts and bytes.

    Example:
        >>> from tokenwise.models import load
        >>> rec = TokenRecord(id=9, text="9", logprob=-0.1, entropy=0.3, varentropy=0.0,
        ...                   rank=1, step=0, top_ids=(9, 8), top_logprobs=(-0.1, -2.5))
        >>> names = TokenBytes(load("tw-small").tokenizer)
        >>> [(a.text, a.logprob) for a in alternatives(rec, 1, names)] == [(names.text(9), -0.1)]
        True
    """
    return [Alternative(names.text(i), names.bytes(i), v)
            for i, v in zip(record.top_ids[:k], record.top_logprobs[:k], strict=True)]


#: most logits one scoring forward pass makes (prompts x positions x vocabulary): 2**25
#: float32 logits are 128 MiB; a longer prompt goes alone, read in chunks of positions.
SCORE_LOGITS = 2**25


@torch.inference_mode()
def score_prompts(lm: LanguageModel, prompts: list[list[int]], top_k: int,
                  names: TokenBytes) -> list[list[WireToken]]:
    """Every token of each prompt with the model's logprob, entropy and top alternatives for
    it, the way the decode loop reports a generated token (:func:`signals.token_stats` of the
    model's own logits at the position before it).

    Prompts are read together in right-padded forward passes of at most
    :data:`SCORE_LOGITS` logits: a prompt's positions are ``0..len - 1`` as when read alone,
    and causal attention keeps its tokens from seeing the padding after it. A prompt whose
    logits alone exceed that is read in chunks of positions through the KV cache.

    Args:
        lm: the model.
        prompts: token ids, read as they are (put any start ids in them).
        top_k: alternatives per scored token (0 to the vocabulary size).
        names: token texts and bytes.

    Returns:
        One list per prompt, a :class:`WireToken` per token; the first token's logprob and
        entropy are None (nothing predicts it) and it has no alternatives.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> toks = score_prompts(lm, [lm.encode("7+2=9", add_bos=True)], 1,
        ...                      TokenBytes(lm.tokenizer))[0]
        >>> toks[0].logprob is None, toks[-1].top[0].text
        (True, '9')
    """
    out: list[list[WireToken]] = [
        [WireToken(id=p[0], text=names.text(p[0]), bytes=names.bytes(p[0]), logprob=None,
                   entropy=None, model=lm.name)] if p else [] for p in prompts]
    vocab = lm.vocab_size
    groups: list[list[int]] = []
    for i in sorted((i for i, p in enumerate(prompts) if len(p) > 1),
                    key=lambda i: -len(prompts[i])):  # longest first: a group's first sets T
        if groups and (len(groups[-1]) + 1) * len(prompts[groups[-1][0]]) * vocab \
                <= SCORE_LOGITS:
            groups[-1].append(i)
        else:
            groups.append([i])
    pad = lm.tokenizer.pad_token_id
    pad = lm.eos_token_id if pad is None else pad
    pad = 0 if pad is None else pad
    for group in groups:
        longest = len(prompts[group[0]])
        ids = torch.full((len(group), longest), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(group), longest), dtype=torch.long)  # (B, T)
        for b, i in enumerate(group):
            ids[b, :len(prompts[i])] = torch.tensor(prompts[i])
            mask[b, :len(prompts[i])] = 1
        # A prompt too long for one pass is read in position chunks through the KV cache,
        # so no pass makes more than SCORE_LOGITS logits (exact: causal attention).
        step = max(1, SCORE_LOGITS // (len(group) * vocab))
        cache = None
        for start in range(0, longest - 1, step):
            stop = min(longest, start + step)
            piece = lm.forward(ids[:, start:stop], mask[:, :stop], cache=cache,
                               use_cache=stop < longest)
            cache = piece.cache
            # position t predicts token t + 1: a prompt of L tokens has L - 1 predictions
            rows = [(b, i, min(stop, len(prompts[i]) - 1)) for b, i in enumerate(group)]
            rows = [(b, i, end) for b, i, end in rows if end > start]
            preds = torch.cat([piece.logits[b, :end - start] for b, _, end in rows]
                              ).float()  # (N, V)
            targets = torch.tensor([t for _, i, end in rows
                                    for t in prompts[i][start + 1:end + 1]],
                                   device=preds.device)  # (N,)
            stats = signals.token_stats(preds, targets, top_k=top_k)
            logprobs, entropies = stats.logprobs.tolist(), stats.entropies.tolist()
            top_ids, top_logprobs = stats.top_ids.tolist(), stats.top_logprobs.tolist()
            n = 0
            for _, i, end in rows:
                for tok in prompts[i][start + 1:end + 1]:
                    out[i].append(WireToken(
                        id=tok, text=names.text(tok), bytes=names.bytes(tok),
                        logprob=logprobs[n], entropy=entropies[n],
                        top=[Alternative(names.text(a), names.bytes(a), v)
                             for a, v in zip(top_ids[n], top_logprobs[n], strict=True)],
                        model=lm.name))
                    n += 1
    return out


def send_prompts(lm: LanguageModel, rows: list[Row], names: TokenBytes) -> None:
    """Give every ``echo`` row its :class:`PromptEvent`, the scored ones from one
    :func:`score_prompts` call (a prompt shared by several rows, e.g. a request's ``n``
    choices, is scored once).

    Args:
        lm: the model.
        rows: the batch's rows (those without ``echo`` are left alone).
        names: token texts and bytes.
    """
    echo = [i for i, r in enumerate(rows) if r.echo]
    ids = {i: tuple(lm.encode(rows[i].prompt, add_bos=True)) for i in echo}
    scored = {ids[i] for i in echo if rows[i].score_prompt}
    unique = sorted(scored)
    top_k = min(max((rows[i].top_logprobs for i in echo), default=0), lm.vocab_size)
    tokens = dict(zip(unique, score_prompts(lm, [list(u) for u in unique], top_k, names),
                      strict=True))
    for i in echo:
        row = rows[i]
        mine = None
        if row.score_prompt:
            mine = [dataclasses.replace(t, top=t.top[:row.top_logprobs]) for t in tokens[ids[i]]]
        # token ids are echoed as they decode; a text prompt's start ids are not in its text
        hidden = 0 if isinstance(row.prompt, EncodedText) else len(lm.start_ids)
        row.sink(PromptEvent(str(row.prompt), mine, hidden))


def _decodable(prompt: str) -> str:
    """``prompt`` as the decode loop takes it: it refuses a blank text, which a prompt of
    token ids (one space token) may decode to; the ids are what it reads, the text is only
    shown."""
    if isinstance(prompt, EncodedText) and not prompt.strip():
        return EncodedText(f"<token ids {list(prompt.ids)}>", prompt.ids)
    return prompt


def batch_sampler(lm: LanguageModel, spec: SamplerSpec, rows: list[Row]
                  ) -> tuple[Sampler | None, RowConstraints | None]:
    """The sampler of a batch's decoding rows, and its :class:`RowConstraints` when a row has
    a constraint (first in the chain; a greedy spec then chooses with ``Temperature(0)``).

    Args:
        lm: the model.
        spec: the batch's sampler spec.
        rows: the rows the decode loop runs, in its order.

    Example:
        >>> from tokenwise.models import load
        >>> batch_sampler(load("tw-small"), SamplerSpec(), [Row("7+2=", 3, print)])
        (None, None)
    """
    sampler = spec.build(lm)
    if all(r.constraint is None for r in rows):
        return sampler, None
    constrained = RowConstraints(lm, [r.constraint for r in rows])
    return Chain([constrained, sampler if sampler is not None else Temperature(0.0)]), \
        constrained


def run_batch(lm: LanguageModel, spec: SamplerSpec, rows: list[Row],
              names: TokenBytes | None = None, kv: Any = None) -> BatchStats:
    """Decode ``rows`` together; every row's sink gets its tokens and one finish event (an
    ``echo`` row its :class:`PromptEvent` first; see :func:`send_prompts`).

    Args:
        lm: the model.
        spec: the sampler every row uses.
        rows: the sequences (prompt plus ``max_tokens`` must fit the context; the caller
            checks that).
        names: token texts and bytes (built from the tokenizer when None).
        kv: a :mod:`tokenwise.kv` press or quantised cache for the one decoding row (its
            cache keeps other tokens than any other row's would: a batch with ``kv`` decodes
            one row); its finish event reports the cache (``FinishEvent.kv``).

    Returns:
        :class:`BatchStats`.
    """
    names = names or TokenBytes(lm.tokenizer)
    decoding = [i for i, r in enumerate(rows) if r.max_tokens > 0]  # max_tokens=0: echo only
    if kv is not None and len(decoding) > 1:
        raise TokenwiseError(f"run_batch with kv decodes one row at a time; got "
                             f"{len(decoding)} rows to decode")
    caches: dict[int, Any] = {}  # with kv: row -> its cache, reported when the row ends
    # a vocabulary smaller than a row's request gives that row all of it
    top_k = min(max((rows[i].top_logprobs for i in decoding), default=0), lm.vocab_size)
    constrained = None
    streams = [TextStream(lambda ids: lm.decode(ids, skip_special_tokens=True), r.stops)
               for r in rows]
    active = [True] * len(rows)
    counts = [0] * len(rows)
    last_step = [-1] * len(rows)
    stats = BatchStats(rows=len(rows))

    def finish(i: int, reason: str) -> None:
        active[i] = False
        stats.cancelled += reason == "cancelled"
        stats.timed_out += reason == "timeout"
        cache = caches.pop(i, None)
        report = None if cache is None else cache_report(
            cache, rows[i].prompt_tokens or len(lm.encode(rows[i].prompt, add_bos=True)))
        rows[i].sink(FinishEvent(reason, streams[i].flush(), streams[i].text, counts[i],
                                 report))

    def new_step(step: int) -> None:
        now = time.monotonic()
        for i, row in enumerate(rows):
            if not active[i]:
                continue
            if last_step[i] < step - 1:  # the decode loop yields nothing for a row after EOS
                finish(i, "stop")
            elif row.cancelled():
                finish(i, "cancelled")
            elif now > row.deadline:
                finish(i, "timeout")

    loop = None
    step = 0
    try:  # a failed sampler build or prompt pass, or generate refusing, ends the rows too
        sampler, constrained = batch_sampler(lm, spec, [rows[i] for i in decoding])
        # a greedy spec has no seeds; under a constraint it still picks the argmax (any seed)
        seeds = None if sampler is None else [
            0 if rows[i].seed is None else rows[i].seed for i in decoding]
        send_prompts(lm, rows, names)
        for i, row in enumerate(rows):
            if row.max_tokens <= 0:
                finish(i, "length")
        if decoding:
            with_kv = {} if kv is None else {
                "kv": kv, "on_cache": lambda row, cache: caches.__setitem__(decoding[row],
                                                                             cache)}
            loop = generate(lm, [_decodable(rows[i].prompt) for i in decoding], sampler,
                            max_new_tokens=max(rows[i].max_tokens for i in decoding),
                            seed=seeds, stream=True, top_logprobs=top_k, **with_kv)
        for record in loop or ():
            if record.step != step:
                step = record.step
                new_step(step)
                if not any(active):
                    break
            i = decoding[record.row]
            if not active[i]:
                continue
            last_step[i] = step
            # the decode loop yields a step's records before its next sampler call, so the
            # constraint's entropies are still this step's
            token = WireToken(id=record.id, text=names.text(record.id),
                              bytes=names.bytes(record.id), logprob=record.logprob,
                              entropy=record.entropy,
                              top=alternatives(record, rows[i].top_logprobs, names),
                              model=lm.name,
                              constrained_entropy=None if constrained is None else
                              constrained.constrained_entropy(record.row))
            delta = streams[i].push(record.id)
            counts[i] += 1
            stats.tokens += 1
            rows[i].sink(TokenEvent(token, delta))
            if streams[i].stopped:
                finish(i, "stop")
            elif counts[i] >= rows[i].max_tokens:
                finish(i, "length")
            if not any(active):
                break
    except BaseException:
        for i in range(len(rows)):
            if active[i]:
                finish(i, "error")
        raise
    else:
        for i in range(len(rows)):
            if active[i]:  # the decode loop ended the rows still open: all hit end-of-text
                finish(i, "stop")
    finally:
        if loop is not None:
            loop.close()  # stops the decode loop when every row ended early
        stats.steps = step + 1 if decoding else 0
    return stats
