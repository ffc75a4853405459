"""The batch runner: one batch of sequences through the decode loop
(:func:`tokenwise.generate`), reported per sequence.

The batch shares one model and one sampler spec; everything else is per sequence: its
seed (the decode loop gives every row its own random stream, so a seeded request gives the
same text alone or in any batch), its ``max_tokens`` and stop strings (applied here, so
requests that differ in them still share a batch), how many top alternatives it wants, and
whether its client is still there. The batch is decoded for the longest ``max_tokens`` and
stops early once every sequence has finished, been cancelled or timed out.

Top alternatives come with the decode loop's records (the most any row asks for, from the
same pass that gives the record's entropy); each row keeps as many as it asked for.

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

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenwise.generation import TokenRecord, generate
from tokenwise.generation.stops import TextStream
from tokenwise.models import LanguageModel
from tokenwise.serving.logprobs import Alternative, TokenBytes, WireToken
from tokenwise.serving.sampler_spec import SamplerSpec


@dataclass(frozen=True)
class TokenEvent:
    """A token was generated; ``delta`` is the text it releases (may be empty)."""

    token: WireToken
    delta: str


@dataclass(frozen=True)
class FinishEvent:
    """The sequence ended.

    Attributes:
        reason: ``"stop"`` (stop string or end-of-text), ``"length"``, ``"cancelled"``,
            ``"timeout"`` or ``"error"`` (the batch failed; the exception follows).
        delta: text not yet released.
        text: the whole generated text.
        completion_tokens: tokens generated.
    """

    reason: str
    delta: str
    text: str
    completion_tokens: int


@dataclass
class Row:
    """One sequence to generate.

    Attributes:
        prompt: the prompt text (the decode loop adds BOS).
        max_tokens: most tokens.
        sink: receives :class:`TokenEvent` and finally one :class:`FinishEvent`; called on
            the thread that runs the batch.
        prompt_tokens: tokens of the prompt, BOS included (for batching decisions).
        stops: stop strings.
        seed: sampling seed (required unless the spec is greedy).
        top_logprobs: alternatives to report per token (0: none).
        cancelled: returns True once nobody waits for the result.
        deadline: ``time.monotonic()`` after which the sequence is stopped.
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


@dataclass
class BatchStats:
    """What one batch did: sequences, decode steps and tokens delivered."""

    rows: int
    steps: int = 0
    tokens: int = 0
    cancelled: int = 0
    timed_out: int = 0


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


def run_batch(lm: LanguageModel, spec: SamplerSpec, rows: list[Row],
              names: TokenBytes | None = None) -> BatchStats:
    """Decode ``rows`` together; every row's sink gets its tokens and one finish event.

    Args:
        lm: the model.
        spec: the sampler every row uses.
        rows: the sequences (prompt plus ``max_tokens`` must fit the context; the caller
            checks that).
        names: token texts and bytes (built from the tokenizer when None).

    Returns:
        :class:`BatchStats`.
    """
    names = names or TokenBytes(lm.tokenizer)
    # a vocabulary smaller than a row's request gives that row all of it
    top_k = min(max(r.top_logprobs for r in rows), lm.vocab_size)
    sampler = spec.build()
    seeds = None if sampler is None else [r.seed for r in rows]
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
        rows[i].sink(FinishEvent(reason, streams[i].flush(), streams[i].text, counts[i]))

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
    try:  # generate checks its arguments at the call: a refusal ends the rows too
        loop = generate(lm, [r.prompt for r in rows], sampler,
                        max_new_tokens=max(r.max_tokens for r in rows), seed=seeds, stream=True,
                        top_logprobs=top_k)
        for record in loop:
            if record.step != step:
                step = record.step
                new_step(step)
                if not any(active):
                    break
            i = record.row
            if not active[i]:
                continue
            last_step[i] = step
            token = WireToken(id=record.id, text=names.text(record.id),
                              bytes=names.bytes(record.id), logprob=record.logprob,
                              entropy=record.entropy,
                              top=alternatives(record, rows[i].top_logprobs, names),
                              model=lm.name)
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
        stats.steps = step + 1
    return stats
