"""Run one batch of sequences through :func:`tokenwise.generate` and report per sequence.

The batch shares one model and one sampler spec; everything else is per sequence: its
seed (the engine gives every row its own random stream, so a seeded request gives the same
text alone or in any batch), its ``max_tokens`` and stop strings (applied here, so requests
that differ in them still share a batch), whether it wants top alternatives, and whether
its client is still there. The batch is decoded for the longest ``max_tokens`` and stops
early once every sequence has finished, been cancelled or timed out.

Top alternatives need the model's raw logits, which the engine's records do not carry:
a thin :class:`LanguageModel` view keeps the last forward pass's logits, which at the time a
record is yielded are exactly those the record's token was chosen from.

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
from typing import Any

import torch

from tokenwise.generation import generate
from tokenwise.models import LanguageModel
from tokenwise.serving.logprobs import Alternative, TokenBytes, WireToken
from tokenwise.serving.sampler_spec import SamplerSpec
from tokenwise.serving.text_stream import TextStream


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
        prompt: the prompt text (the engine adds BOS).
        max_tokens: most tokens.
        sink: receives :class:`TokenEvent` and finally one :class:`FinishEvent`; called on
            the engine's thread.
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


class _LogitsTap(LanguageModel):
    """The same model, remembering the last position's logits of its latest forward pass."""

    def __init__(self, lm: LanguageModel) -> None:  # shares everything, copies nothing
        self.__dict__.update(lm.__dict__)
        self.inner = lm
        self.last: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner.forward(*args, **kwargs)  # the model's own forward, even a subclass's
        self.last = out.logits[:, -1]  # (B, V)
        return out


@dataclass
class BatchStats:
    """What one batch did: sequences, decode steps and tokens delivered."""

    rows: int
    steps: int = 0
    tokens: int = 0
    cancelled: int = 0
    timed_out: int = 0


def _alternatives(logits: torch.Tensor, k: int, names: TokenBytes) -> list[Alternative]:
    logp = torch.log_softmax(logits.float(), -1)  # (V,)
    values, ids = logp.topk(min(k, logp.shape[-1]))
    return [Alternative(names.text(i), names.bytes(i), float(v))
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)]


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
    tap = _LogitsTap(lm)
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
            if last_step[i] < step - 1:  # the engine yields nothing for a row after its EOS
                finish(i, "stop")
            elif row.cancelled():
                finish(i, "cancelled")
            elif now > row.deadline:
                finish(i, "timeout")

    loop = None
    step = 0
    try:  # generate checks its arguments at the call: a refusal ends the rows too
        loop = generate(tap, [r.prompt for r in rows], sampler,
                        max_new_tokens=max(r.max_tokens for r in rows), seed=seeds, stream=True)
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
            top: list[Alternative] = []
            if rows[i].top_logprobs and tap.last is not None:
                top = _alternatives(tap.last[i], rows[i].top_logprobs, names)
            token = WireToken(id=record.id, text=names.text(record.id),
                              bytes=names.bytes(record.id), logprob=record.logprob,
                              entropy=record.entropy, top=top, model=lm.name)
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
            if active[i]:  # the engine ended the rows still open: they all hit end-of-text
                finish(i, "stop")
    finally:
        if loop is not None:
            loop.close()  # stops the decode loop when every row ended early
        stats.steps = step + 1
    return stats
