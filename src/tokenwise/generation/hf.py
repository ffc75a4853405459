"""transformers' ``custom_generate`` route into the tokenwise decode loop.

transformers 5 runs a directory's ``custom_generate/generate.py`` in place of its own decoding
when asked ``model.generate(..., custom_generate=DIR, trust_remote_code=True)``
(``GenerationMixin.load_custom_generate``): for a local directory it checks that
``DIR/custom_generate/generate.py`` exists, copies it into its module cache
(``~/.cache/huggingface/modules/transformers_modules``), imports it and calls its
``generate(model=..., **arguments)`` with every argument the call got. Nothing is asked of the
hub. ``trust_remote_code=True`` is required even for a local directory.

tokenwise ships such a directory (:func:`custom_generate_path`); its ``generate`` is
:func:`custom_generate`, which runs :func:`tokenwise.generate` (or entropy-adaptive decoding
with ``large=``) on the model and returns what ``generate`` returns (a ``(rows, T)`` id
tensor, or a ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate=True``), with the
per-token records attached.

Example:
    >>> import torch
    >>> import tokenwise as tw
    >>> lm = tw.load("tw-large")
    >>> ids = torch.tensor([lm.encode("7+2=", add_bos=True)])
    >>> out = lm.hf_model.generate(ids, custom_generate=tw.custom_generate_path(),
    ...                            trust_remote_code=True, tokenizer=lm.tokenizer,
    ...                            max_new_tokens=3, stop_strings="\\n")
    >>> lm.decode(out[0, ids.shape[1]:]), out.tokenwise_records[0][0].rank
    ('9\\n', 1)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from tokenwise.errors import TokenwiseError
from tokenwise.generation.ead import generate_ead
from tokenwise.generation.engine import MAX_SEED, _resolve_sampler, generate
from tokenwise.generation.records import TokenRecord
from tokenwise.models import LanguageModel
from tokenwise.models.language_model import EncodedText
from tokenwise.sampling import Chain, Epsilon, Eta, MinP, Sampler, Temperature, TopK, TopP, Typical
from tokenwise.sampling.hf import (
    WARPER_FIELDS,
    added_warpers,
    generation_defaults,
    hf_model_of,
    merged_generation_config,
)

__all__ = ["TokenwiseGenerateOutput", "custom_generate", "custom_generate_path"]

#: the directory to pass as ``custom_generate=``: it holds ``custom_generate/generate.py``
REPO_DIR = Path(__file__).resolve().parent / "hf_custom_generate"

#: arguments transformers' loader reads to find the code (hub revisions, tokens); they have
#: no meaning for a local directory and reach :func:`custom_generate` as well
_LOADING_KWARGS = ("revision", "token", "cache_dir", "force_download", "local_files_only",
                   "proxies")

#: generation fields that change how tokens are computed, not which: the tokenwise loop keeps
#: its own dynamic KV cache and does not compile; beam-only and assistant-only fields have no
#: effect without beams or an assistant (which are refused), as in transformers
_NO_EFFECT_FIELDS = frozenset({
    "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
    "disable_compile", "prefill_chunk_size", "low_memory", "continuous_batching_config",
    "early_stopping", "length_penalty", "is_assistant", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
    "target_lookbehind", "assistant_ensemble_weight", "decoder_start_token_id", "bos_token_id",
})

#: generation fields this route reads
_READ_FIELDS = frozenset({
    "max_length", "max_new_tokens", "do_sample", "num_return_sequences",
    "return_dict_in_generate", "stop_strings", "pad_token_id", "eos_token_id", "output_scores",
    "output_logits", "output_attentions", "output_hidden_states", *WARPER_FIELDS,
})

#: where to turn for a transformers feature the tokenwise loop does not have
_HINTS = {
    "repetition_penalty": "put tokenwise.sampling.Penalties(repetition_penalty=...) in sampler=",
    "sequence_bias": "put tokenwise.sampling.LogitBias in sampler=",
    "bad_words_ids": "put tokenwise.sampling.LogitBias (a bias of -100) in sampler=",
    "suppress_tokens": "put tokenwise.sampling.LogitBias (a bias of -100) in sampler=",
    "num_beams": "beam search is transformers' own: call generate() without custom_generate",
}

#: EAD's options (``ead={...}``), as :func:`~tokenwise.generation.ead.generate_ead` names them
_EAD_OPTIONS = ("up", "down", "window", "min_run", "judge")


@dataclass
class TokenwiseGenerateOutput(GenerateDecoderOnlyOutput):
    """transformers' ``GenerateDecoderOnlyOutput`` with the tokenwise results.

    Attributes:
        tokenwise_records: one list of :class:`~tokenwise.generation.TokenRecord` per output
            row (its entropy, logprob, rank, ... at each generated token; the end-of-text token
            that finished a row has none).
        tokenwise_generations: one :class:`~tokenwise.generation.Generation` (or
            :class:`~tokenwise.generation.ead.EADGeneration` with ``large=``) per output row:
            text, finish reason and, for EAD, what each model cost.
    """

    tokenwise_records: list[list[TokenRecord]] | None = None
    tokenwise_generations: list[Any] | None = None


def custom_generate_path() -> str:
    """The directory to pass as ``model.generate(custom_generate=...)``: it runs the
    tokenwise decode loop (:func:`custom_generate`) instead of transformers' own.

    A ``str``, as transformers needs (it ignores a ``Path`` there).

    Example:
        >>> import os
        >>> import tokenwise as tw
        >>> os.path.isfile(os.path.join(tw.custom_generate_path(), "custom_generate",
        ...                             "generate.py"))
        True
    """
    return str(REPO_DIR)


class _ChosenIds(Sampler):
    """Passes the logits through ``inner`` (greedy when None: only the argmax stays, which
    sampling then picks surely) and keeps every step's chosen ids.

    The decode loops leave the end-of-text token out of their records, and transformers'
    sequences end with it; ``observe`` is the one place that sees it (and which one of
    several end ids it was).
    """

    name = "chosen_ids"

    def __init__(self, inner: Sampler | None) -> None:
        self.inner = inner
        self.steps: list[list[int]] = []

    def params(self) -> dict[str, Any]:
        return {} if self.inner is None else self.inner.params()

    def reset(self) -> None:
        self.steps = []
        if self.inner is not None:
            self.inner.reset()

    def observe_prompt(self, prompt_ids: Any) -> None:
        if self.inner is not None:
            self.inner.observe_prompt(prompt_ids)

    def observe(self, chosen: torch.Tensor) -> None:
        self.steps.append([int(t) for t in chosen.tolist()])
        if self.inner is not None:
            self.inner.observe(chosen)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            return self.inner(logits)
        best = logits.argmax(-1, keepdim=True)  # (B, 1) the first maximum, as argmax decodes
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, best, True)
        return logits.masked_fill(~keep, float("-inf"))

    def __repr__(self) -> str:
        return "greedy" if self.inner is None else repr(self.inner)


class _CallModel(LanguageModel):
    """A LanguageModel whose end tokens follow the generate call's config (its
    ``eos_token_id`` may differ from the model's own ``generation_config``)."""

    def __init__(self, hf_model: Any, tokenizer: Any, name: str, config: Any) -> None:
        super().__init__(hf_model, tokenizer, name=name)
        self._call_config = config

    def _generation_config(self) -> Any:
        return self._call_config


def _refuse_unsupported_arguments(args: dict[str, Any]) -> None:
    hints = {
        "logits_processor": "give the sampler as sampler= (a tokenwise sampler or Chain)",
        "stopping_criteria": "use stop_strings=, eos_token_id= or max_new_tokens=",
        "prefix_allowed_tokens_fn": "constrain with a tokenwise sampler in sampler=",
        "assistant_model": "for two models use large= (entropy-adaptive decoding)",
        "streamer": "call tokenwise.generate(..., stream=True) for records as they come",
        "negative_prompt_ids": "classifier-free guidance is transformers' own",
        "negative_prompt_attention_mask": "classifier-free guidance is transformers' own",
    }
    for name, value in args.items():
        empty_list = isinstance(value, (list, tuple)) and len(value) == 0
        if value is not None and not empty_list and not (name == "synced_gpus" and not value):
            hint = hints.get(name, "it has no counterpart in the tokenwise loop")
            raise TokenwiseError(f"custom_generate=tokenwise: {name}={value!r} is not supported "
                                 f"({hint}); leave it out, or call generate() without "
                                 "custom_generate")


def _is_neutral(field: str, value: Any, defaults: dict[str, Any]) -> bool:
    if value is None or value is False or (isinstance(value, (list, tuple, dict)) and not value):
        return True
    if field == "guidance_scale" and value == 1:  # transformers adds no guidance at 1
        return True
    if isinstance(value, numbers.Number) and not isinstance(value, bool) and value == 0 \
            and defaults.get(field) in (None, 0):
        return True
    return field in defaults and value == defaults[field]


def _refuse_unapplied_fields(config: Any, explicit: set[str], defaults: dict[str, Any]) -> None:
    """Raise for a generation field set to something the tokenwise loop would not apply."""
    for field, value in sorted(config.to_dict().items()):
        if field.startswith("_") or field in _READ_FIELDS or field in _NO_EFFECT_FIELDS \
                or field == "transformers_version" or _is_neutral(field, value, defaults):
            continue
        source = "passed to generate()" if field in explicit else "in model.generation_config"
        hint = _HINTS.get(field, "it has no counterpart in the tokenwise loop")
        shown = defaults.get(field)
        raise TokenwiseError(
            f"custom_generate=tokenwise: {field}={value!r} ({source}) is not applied by the "
            f"tokenwise decode loop ({hint}); pass {field}={shown!r} to generate() to go on "
            "without it, or call generate() without custom_generate")
    for field in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
        if getattr(config, field, None):
            raise TokenwiseError(
                f"custom_generate=tokenwise: {field}=True is not available (the tokenwise loop "
                "keeps no per-step tensors); each token's record carries its logprob, entropy, "
                "varentropy and rank, and top_logprobs=N adds the N likeliest tokens")


#: transformers' warper fields -> the tokenwise sampler that does the same (top_h has none)
_WARPER_SAMPLERS: dict[str, type[Sampler]] = {
    "temperature": Temperature, "top_k": TopK, "top_p": TopP, "min_p": MinP,
    "typical_p": Typical, "epsilon_cutoff": Epsilon, "eta_cutoff": Eta}


def _sampler_from_config(config: Any) -> Sampler | None:
    """The sampling transformers would do with ``config``, as tokenwise samplers (None: greedy).

    Same steps in the same order as transformers' warpers; ours follow their rules.
    """
    if not config.do_sample:
        return None
    steps: list[Sampler] = []
    for field, value in added_warpers(config):
        if field == "top_h":
            raise TokenwiseError(
                f"custom_generate=tokenwise: top_h={value!r} from the generation config has no "
                "exact tokenwise counterpart (transformers renormalises its top 100 first); "
                f"pass sampler=tokenwise.sampling.TopH(alpha={value!r}) and top_h=None")
        steps.append(_WARPER_SAMPLERS[field](value))
    if not steps:  # plain sampling from the model's distribution
        return Temperature(1.0)
    return steps[0] if len(steps) == 1 else Chain(steps)


def _int_field(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise TokenwiseError(f"custom_generate=tokenwise: {name}={value!r}: allowed an integer "
                             f">= {minimum}")
    return int(value)


def _prompt_rows(input_ids: Any, attention_mask: Any, config: Any, ends: set[int]
                 ) -> list[list[int]]:
    """Each row's prompt ids without its left padding."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 \
            or input_ids.shape[1] == 0 or input_ids.is_floating_point():
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else None
        raise TokenwiseError(f"custom_generate=tokenwise: input_ids of shape {shape}: allowed a "
                             "(batch, tokens) tensor of token ids with at least one token")
    pad = config.pad_token_id
    if attention_mask is None:
        # transformers' rule: the pad id marks padding when it is in the input and is not EOS
        if pad is not None and pad not in ends and bool((input_ids == pad).any()):
            attention_mask = (input_ids != pad).long()
        else:
            attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise TokenwiseError(f"custom_generate=tokenwise: attention_mask of shape "
                             f"{tuple(getattr(attention_mask, 'shape', ()))}: allowed the shape of "
                             f"input_ids {tuple(input_ids.shape)}")
    rows = []
    for i, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist(), strict=True)):
        start = len(mask) - sum(1 for m in mask if m)
        if any(mask[:start]) or not all(mask[start:]) or start == len(mask):
            raise TokenwiseError(f"custom_generate=tokenwise: row {i} of attention_mask is "
                                 f"{mask}: allowed 0s (left padding) then at least one 1, as "
                                 "decoder-only generation needs")
        rows.append(ids[start:])
    return rows


def _seeds(seed: Any, rows: int) -> list[int] | None:
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        if not 0 <= seed <= MAX_SEED:
            raise TokenwiseError(f"seed={seed!r}: allowed an integer from 0 to 2**64 - 1, or one "
                                 "per output row")
        return [(int(seed) + r) % (MAX_SEED + 1) for r in range(rows)]
    if isinstance(seed, (list, tuple)):
        if len(seed) != rows:
            raise TokenwiseError(f"{len(seed)} seeds for {rows} output rows (batch x "
                                 "num_return_sequences): give one seed or one per row")
        return list(seed)  # the decode loop checks each
    raise TokenwiseError(f"seed={seed!r}: allowed an integer from 0 to 2**64 - 1, a list with one "
                         "per output row, or None")


def _model_name(hf: Any, fallback: str) -> str:
    path = str(getattr(hf.config, "_name_or_path", "") or getattr(hf, "name_or_path", "") or "")
    return Path(path).name or fallback


def custom_generate(
    model: Any,
    inputs: torch.Tensor | None = None,
    generation_config: Any = None,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    prefix_allowed_tokens_fn: Any = None,
    synced_gpus: bool | None = None,
    assistant_model: Any = None,
    streamer: Any = None,
    negative_prompt_ids: Any = None,
    negative_prompt_attention_mask: Any = None,
    *,
    tokenizer: Any = None,
    sampler: Sampler | str | None = None,
    large: Any = None,
    ead: dict[str, Any] | None = None,
    seed: int | list[int] | None = None,
    stop: str | list[str] | None = None,
    top_logprobs: int = 0,
    **kwargs: Any,
) -> torch.Tensor | TokenwiseGenerateOutput:
    """``model.generate`` through the tokenwise decode loop (transformers' ``custom_generate``).

    Called by transformers as ``model.generate(input_ids, custom_generate=
    tokenwise.custom_generate_path(), trust_remote_code=True, tokenizer=tok, ...)``; every
    argument of that call arrives here.

    Sampling: with ``sampler=`` the tokenwise sampler alone decides (the model's
    ``generation_config`` sampling fields do not apply; passing ``temperature=``, ``top_k=``,
    ... or ``do_sample=False`` beside it is an error). Without it the call samples as
    transformers would: greedy unless ``do_sample``, and then the config's ``temperature``,
    ``top_k`` (transformers' default 50 included), ``top_p``, ``min_p``, ``typical_p``,
    ``epsilon_cutoff`` and ``eta_cutoff``, as the same tokenwise samplers in the same order.

    Read from the call and the model's generation config as transformers reads them:
    ``max_new_tokens`` (else ``max_length``), ``num_return_sequences``, ``stop_strings``,
    ``eos_token_id`` (the tokenizer's EOS ends a row too), ``pad_token_id`` (pads rows that
    end early), ``return_dict_in_generate``, ``attention_mask`` (left padding only). Settings
    of the KV cache and compilation are accepted and have no effect on the tokens. Anything
    else the loop would not apply (``num_beams>1``, ``repetition_penalty``, ``min_new_tokens``,
    a streamer, ``logits_processor``, ``output_scores``, ...) is refused with a
    :class:`~tokenwise.errors.TokenwiseError` that names it, never ignored, including such a
    value in the model's own generation config (pass the neutral value to go on). The model
    runs in eval mode (no dropout) and is put back in the mode it was in.

    Args:
        model: the transformers causal LM (transformers passes it).
        inputs: ``(batch, T)`` prompt ids (or ``input_ids=``), left-padded with an
            ``attention_mask`` for a batch of different lengths.
        generation_config: a ``GenerationConfig``; its unset fields come from the model's.
        logits_processor: refused unless empty (give ``sampler=``).
        stopping_criteria: refused unless empty.
        prefix_allowed_tokens_fn: refused.
        synced_gpus: refused when True.
        assistant_model: refused (use ``large=``).
        streamer: refused.
        negative_prompt_ids: refused.
        negative_prompt_attention_mask: refused.
        tokenizer: the model's tokenizer (required: it gives each token's text, the stop
            strings and the end-of-text ids).
        sampler: a :mod:`tokenwise.sampling` sampler (``Chain([TopH(0.4), Temperature(0.8)])``,
            ``MirostatV2(tau=3.0)``) or a registered name (``"top_h"``, defaults).
        large: a second causal LM (transformers or tokenwise ``LanguageModel``) sharing the
            tokenizer: entropy-adaptive decoding, ``model`` writing and ``large`` taking over
            where entropy rises (one prompt, ``num_return_sequences=1``).
        ead: EAD's options ``up``, ``down``, ``window``, ``min_run``, ``judge`` (see
            :func:`~tokenwise.generation.ead.generate_ead`); only with ``large``.
        seed: output row ``r`` samples with seed ``seed + r`` (so one prompt with one seed
            gives what ``tokenwise.generate(..., seed=seed)`` gives); a list gives one seed per
            output row; None draws them from torch's global generator.
        stop: stop string(s), beside ``stop_strings``; a row's text is cut before the first,
            its ids keep the token that completed it (as transformers' ``stop_strings``).
        top_logprobs: the likeliest tokens each record carries (0 to the vocabulary size).
        kwargs: ``input_ids``, ``attention_mask``, generation fields, and the loader's own
            (``revision``, ``token``, ...; no effect for a local directory).

    Returns:
        A ``(batch * num_return_sequences, T + new)`` tensor like ``generate``'s (rows are the
        input ids, then the new ids with the end-of-text token that ended a row, then
        ``pad_token_id``), carrying ``tokenwise_records`` and ``tokenwise_generations`` as
        attributes (tensor operations drop them: keep the returned object); or, with
        ``return_dict_in_generate=True``, a :class:`TokenwiseGenerateOutput` (a
        ``GenerateDecoderOnlyOutput``) with ``sequences`` and those two fields.

    Raises:
        TokenwiseError: an argument or generation setting the loop does not apply, a missing
            tokenizer, bad ids or mask.

    Example:
        >>> import torch
        >>> import tokenwise as tw
        >>> from tokenwise.sampling import TopH
        >>> lm = tw.load("tw-small")
        >>> ids = torch.tensor([lm.encode("markov: ka", add_bos=True)])
        >>> out = lm.hf_model.generate(ids, custom_generate=tw.custom_generate_path(),
        ...                            trust_remote_code=True, tokenizer=lm.tokenizer,
        ...                            sampler=TopH(0.4), seed=0, max_new_tokens=4,
        ...                            return_dict_in_generate=True)
        >>> ours = tw.generate(lm, "markov: ka", TopH(0.4), seed=0, max_new_tokens=4)
        >>> out.sequences[0, ids.shape[1]:].tolist() == [t.id for t in ours.tokens]
        True
    """
    _refuse_unsupported_arguments({
        "logits_processor": logits_processor, "stopping_criteria": stopping_criteria,
        "prefix_allowed_tokens_fn": prefix_allowed_tokens_fn, "synced_gpus": synced_gpus,
        "assistant_model": assistant_model, "streamer": streamer,
        "negative_prompt_ids": negative_prompt_ids,
        "negative_prompt_attention_mask": negative_prompt_attention_mask,
    })
    hf = hf_model_of(model)
    for name in _LOADING_KWARGS:
        kwargs.pop(name, None)
    input_ids = kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise TokenwiseError("custom_generate=tokenwise: both inputs and input_ids given; pass "
                             "the prompt ids once")
    input_ids = inputs if inputs is not None else input_ids
    if input_ids is None:
        raise TokenwiseError("custom_generate=tokenwise: no prompt ids; pass them as the first "
                             "argument or input_ids= (inputs_embeds are not supported)")
    attention_mask = kwargs.pop("attention_mask", None)
    config, rest = merged_generation_config(hf, generation_config, **kwargs)
    if rest:
        raise TokenwiseError(
            f"custom_generate=tokenwise: unknown argument(s) {', '.join(sorted(rest))}; allowed: "
            "input_ids, attention_mask, generation config fields, tokenizer, sampler, large, "
            "ead, seed, stop, top_logprobs")
    explicit = set(kwargs) | (set(generation_config.to_diff_dict())
                              if generation_config is not None else set())
    defaults = generation_defaults()
    _refuse_unapplied_fields(config, explicit, defaults)
    if sampler is not None:
        clashing = [f"{field}={value!r}" for field, value in added_warpers(config)
                    if field in explicit]
        if "do_sample" in explicit and not config.do_sample:
            clashing.append("do_sample=False")
        if clashing:
            raise TokenwiseError(
                f"custom_generate=tokenwise: {', '.join(clashing)} beside sampler={sampler!r}: "
                "the sampler decides alone; put the step in it (e.g. Chain([..., "
                "Temperature(0.7)])) and leave the field out")
        chosen = _resolve_sampler(sampler)
    else:
        chosen = _sampler_from_config(config)
    if tokenizer is None:
        raise TokenwiseError("custom_generate=tokenwise: tokenizer= is required (each token's "
                             "record carries its text, and stop strings and end tokens come "
                             "from it); pass model.generate(..., tokenizer=tokenizer)")
    copies = _int_field("num_return_sequences", config.num_return_sequences, 1)
    if chosen is None and copies > 1:
        raise TokenwiseError(f"custom_generate=tokenwise: num_return_sequences={copies} with "
                             "greedy decoding gives the same row each time; sample "
                             "(do_sample=True or sampler=) or ask for 1")
    was_training = hf.training
    try:
        lm = _CallModel(hf, tokenizer, _model_name(hf, "model"), config)
        rows = _prompt_rows(input_ids, attention_mask, config, set(lm.end_token_ids))
        if config.max_new_tokens is not None:
            max_new = _int_field("max_new_tokens", config.max_new_tokens, 1)
        else:
            max_new = _int_field("max_length", config.max_length, 1) - input_ids.shape[1]
            if max_new < 1:
                raise TokenwiseError(
                    f"custom_generate=tokenwise: max_length={config.max_length} leaves no room "
                    f"after a prompt of {input_ids.shape[1]} tokens; pass max_new_tokens=")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        strings = config.stop_strings
        stops += [strings] if isinstance(strings, str) else list(strings or [])
        prompts = []
        for ids in rows:
            text = tokenizer.decode(ids)
            shown = text if text.strip() else f"<{len(ids)} ids>"  # for display: ids are read
            prompts.extend([EncodedText(shown, ids)] * copies)
        seeds = _seeds(seed, len(prompts))
        if chosen is None:
            seeds = [0] * len(prompts)  # greedy: the loop draws no seeds from torch's generator
        recorder = _ChosenIds(chosen)
        if large is not None:
            results = [_run_ead(lm, large, tokenizer, prompts, recorder, ead, max_new,
                                None if seeds is None else seeds[0], stops, top_logprobs)]
        else:
            if ead is not None:
                raise TokenwiseError("custom_generate=tokenwise: ead= without large=; EAD needs "
                                     "the large model (large=...)")
            results = generate(lm, prompts, recorder, max_new_tokens=max_new, seed=seeds,
                               stop=stops or None, top_logprobs=top_logprobs)
        if chosen is None:
            for result in results:
                if hasattr(result, "seed"):
                    result.seed = None
        return _output(input_ids, copies, results, recorder.steps, config, lm)
    finally:
        hf.train(was_training)  # LanguageModel puts the model in eval mode


def _run_ead(lm: LanguageModel, large: Any, tokenizer: Any, prompts: list[EncodedText],
             recorder: _ChosenIds, ead: dict[str, Any] | None, max_new: int, seed: int | None,
             stops: list[str], top_logprobs: int) -> Any:
    if len(prompts) != 1:
        raise TokenwiseError(f"custom_generate=tokenwise: large= (entropy-adaptive decoding) "
                             f"takes one prompt and num_return_sequences=1; got {len(prompts)} "
                             "output rows")
    options = dict(ead or {})
    unknown = sorted(set(options) - set(_EAD_OPTIONS))
    if unknown:
        raise TokenwiseError(f"ead={ead!r}: unknown option(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(_EAD_OPTIONS)}")
    large_hf = getattr(large, "hf_model", None) if isinstance(large, LanguageModel) \
        else hf_model_of(large)
    was_training = large_hf.training
    try:
        if isinstance(large, LanguageModel):
            large_lm = large
        else:
            name = _model_name(large_hf, "large")
            large_lm = LanguageModel(large_hf, tokenizer,
                                     name=name if name != lm.name else "large")
        if large_lm.name == lm.name:  # EAD tells who wrote each token by name
            lm.name = "small"
        return generate_ead(lm, large_lm, prompts[0], recorder, max_new_tokens=max_new,
                            seed=seed, stop=stops or None, top_logprobs=top_logprobs, **options)
    finally:
        large_hf.train(was_training)


def _output(input_ids: torch.Tensor, copies: int, results: list[Any], steps: list[list[int]],
            config: Any, lm: LanguageModel) -> torch.Tensor | TokenwiseGenerateOutput:
    """transformers' shape of the result: prompt ids, new ids (end token kept), padding."""
    new_rows = []
    for r, result in enumerate(results):
        ids = [t.id for t in result.tokens]
        if result.finish_reason == "eos":
            ids.append(steps[len(result.tokens)][r])  # the end token the records leave out
        new_rows.append(ids)
    width = max(len(ids) for ids in new_rows)
    pad = config.pad_token_id
    if pad is None:  # transformers pads with the (first) EOS id then
        eos = config.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if pad is None:
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None \
            else lm.eos_token_id
    if pad is None and any(len(ids) < width for ids in new_rows):
        raise TokenwiseError("custom_generate=tokenwise: rows ended at different lengths and "
                             "neither the config nor the tokenizer has a pad or EOS id; pass "
                             "pad_token_id=")
    new = torch.tensor([ids + [pad] * (width - len(ids)) for ids in new_rows],
                       dtype=input_ids.dtype, device=input_ids.device)  # (rows, width)
    sequences = torch.cat([input_ids.repeat_interleave(copies, dim=0), new], dim=1)
    records = [list(result.tokens) for result in results]
    if config.return_dict_in_generate:
        return TokenwiseGenerateOutput(sequences=sequences, tokenwise_records=records,
                                       tokenwise_generations=list(results))
    sequences.tokenwise_records = records  # type: ignore[attr-defined]
    sequences.tokenwise_generations = list(results)  # type: ignore[attr-defined]
    return sequences
