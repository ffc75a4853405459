"""Entropy-adaptive decoding for a request: the request's model writes, a larger served
model takes over where the rolling entropy rises (:func:`tokenwise.generation.ead.generate_ead`).

EAD decodes one sequence at a time with two KV caches, so these requests are not batched;
their tokens are sent when the sequence is done (a streamed EAD response arrives at once).
Each token's top alternatives come from the model that wrote it.

Example:
    >>> from tokenwise.models import load
    >>> from tokenwise.serving.schemas import EADOptions
    >>> from tokenwise.serving.sampler_spec import SamplerSpec
    >>> events, info = run_ead(load("tw-small"), load("tw-large"), "7+2=", SamplerSpec(),
    ...                        EADOptions(large="tw-large", up=0.5), 3, ["\\n"], None,
    ...                        top_logprobs=2)
    >>> events[-1].text, info["large_share"] > 0, len(events[0].token.top)
    ('9', True, 2)
"""

from __future__ import annotations

from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead
from tokenwise.generation.stops import TextStream
from tokenwise.models import LanguageModel
from tokenwise.serving.engine import FinishEvent, TokenEvent, alternatives
from tokenwise.serving.errors import APIError
from tokenwise.serving.logprobs import TokenBytes, WireToken
from tokenwise.serving.sampler_spec import SamplerSpec
from tokenwise.serving.schemas import EADOptions


def run_ead(small: LanguageModel, large: LanguageModel, prompt: str, spec: SamplerSpec,
            options: EADOptions, max_tokens: int, stops: list[str], seed: int | None,
            top_logprobs: int = 0, kv: Any = None
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
        top_logprobs: top alternatives per token (0: none).
        kv: the request's ``tokenwise.kv`` setting (a press or quantised cache), applied to
            both models' caches; the finish event reports each (``FinishEvent.kv``).
    """
    # a vocabulary smaller than the request gives all of it, as in a batch
    top_k = min(top_logprobs, small.vocab_size, large.vocab_size)
    try:
        result = generate_ead(small, large, prompt, spec.build(), up=options.up,
                              down=options.down, window=options.window,
                              min_run=options.min_run, judge=options.judge,
                              max_new_tokens=max_tokens, seed=seed,
                              stop=stops or None, top_logprobs=top_k, kv=kv)
    except TokenwiseError as exc:
        raise APIError(400, f"tokenwise.ead: {exc}", param="tokenwise.ead") from None
    names = TokenBytes(small.tokenizer)
    text = TextStream(lambda ids: small.decode(ids, skip_special_tokens=True), stops)
    events: list[TokenEvent | FinishEvent] = []
    for record in result.tokens:
        token = WireToken(id=record.id, text=names.text(record.id),
                          bytes=names.bytes(record.id), logprob=record.logprob,
                          entropy=record.entropy,
                          top=alternatives(record, top_logprobs, names), model=record.model)
        events.append(TokenEvent(token, text.push(record.id)))
    reason = "length" if result.finish_reason == "length" else "stop"
    events.append(FinishEvent(reason, text.flush(), result.text, len(result.tokens),
                              result.kv))
    info = {"small": small.name, "large": large.name, "up": options.up,
            "down": options.up if options.down is None else options.down,
            "window": options.window, "min_run": options.min_run,
            "judge": options.judge,
            "large_share": result.large_share, "switches": result.switches,
            "flops": result.flops, "forward_passes": result.forward_passes}
    return events, info
