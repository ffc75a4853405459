"""Entropy-adaptive decoding for a request: the request's model writes, a larger served
model takes over where the rolling entropy rises (:func:`tokenwise.generation.ead.generate_ead`).

EAD decodes one sequence at a time with two KV caches, so these requests are not batched;
their tokens are sent when the sequence is done (a streamed EAD response arrives at once).
Top alternatives are not reported: the records of two models' steps do not keep them.

Example:
    >>> from tokenwise.models import load
    >>> from tokenwise.serving.schemas import EADOptions
    >>> from tokenwise.serving.sampler_spec import SamplerSpec
    >>> events, info = run_ead(load("tw-small"), load("tw-large"), "7+2=", SamplerSpec(),
    ...                        EADOptions(large="tw-large", up=0.5), 3, ["\\n"], None)
    >>> events[-1].text, info["large_share"] > 0
    ('9', True)
"""

from __future__ import annotations

from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead
from tokenwise.models import LanguageModel
from tokenwise.serving.engine import FinishEvent, TokenEvent
from tokenwise.serving.errors import APIError
from tokenwise.serving.logprobs import TokenBytes, WireToken
from tokenwise.serving.sampler_spec import SamplerSpec
from tokenwise.serving.schemas import EADOptions
from tokenwise.serving.text_stream import TextStream


def run_ead(small: LanguageModel, large: LanguageModel, prompt: str, spec: SamplerSpec,
            options: EADOptions, max_tokens: int, stops: list[str], seed: int | None
            ) -> tuple[list[TokenEvent | FinishEvent], dict[str, Any]]:
    """Decode ``prompt`` with EAD; return the events a batch would have sent, and the
    settings and costs for the response's ``tokenwise.ead``.

    Args:
        small: the request's model.
        large: the model that takes over.
        prompt: the prompt.
        spec: the sampler (applied to whichever model writes).
        options: thresholds and window.
        max_tokens: most tokens.
        stops: stop strings.
        seed: sampling seed.
    """
    try:
        result = generate_ead(small, large, prompt, spec.build(), up=options.up,
                              down=options.down, window=options.window,
                              min_run=options.min_run, judge=options.judge,
                              max_new_tokens=max_tokens, seed=seed,
                              stop=stops or None)
    except TokenwiseError as exc:
        raise APIError(400, f"tokenwise.ead: {exc}", param="tokenwise.ead") from None
    names = TokenBytes(small.tokenizer)
    text = TextStream(lambda ids: small.decode(ids, skip_special_tokens=True), stops)
    events: list[TokenEvent | FinishEvent] = []
    for record in result.tokens:
        token = WireToken(id=record.id, text=names.text(record.id),
                          bytes=names.bytes(record.id), logprob=record.logprob,
                          entropy=record.entropy, model=record.model)
        events.append(TokenEvent(token, text.push(record.id)))
    reason = "length" if result.finish_reason == "length" else "stop"
    events.append(FinishEvent(reason, text.flush(), result.text, len(result.tokens)))
    info = {"small": small.name, "large": large.name, "up": options.up,
            "down": options.up if options.down is None else options.down,
            "window": options.window, "min_run": options.min_run,
            "judge": options.judge,
            "large_share": result.large_share, "switches": result.switches,
            "flops": result.flops, "forward_passes": result.forward_passes}
    return events, info
