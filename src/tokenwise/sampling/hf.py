"""transformers' own sampling beside ours: what ``model.generate`` adds after a tokenwise
processor, and a generation config under which the tokenwise sampler alone decides.

:meth:`Sampler.as_hf` gives a ``LogitsProcessor``. ``model.generate(logits_processor=[p])``
runs ``p`` and then, when it samples (``do_sample=True``), appends transformers' own warpers
(``GenerationMixin._get_logits_processor``, transformers 5.25), in this order:

- ``temperature`` when it is not 1.0,
- ``top_h`` when it is set,
- ``top_k`` when it is neither None nor 0,
- ``top_p`` below 1.0,
- ``min_p`` when it is set (0.0 keeps every token),
- ``typical_p`` below 1.0,
- ``epsilon_cutoff`` and ``eta_cutoff`` strictly between 0 and 1.

A field the call leaves unset (None) is taken from ``model.generation_config``, and then from
transformers' defaults, among which ``top_k=50``: a plain ``do_sample=True`` samples from our
distribution cut to its 50 likeliest tokens. With ``do_sample=False`` no warper runs, but the
token is the argmax of our processor's output, so a sampler that only drops tokens changes
nothing. :func:`hf_generation_config` gives a config with every warper neutral and
``do_sample=True``; :meth:`Sampler.as_hf` called with the model warns
(:class:`TransformersWarpersWarning`) when its generation config would stack warpers.

Example:
    >>> from transformers import GenerationConfig
    >>> config, _ = merged_generation_config(None, GenerationConfig(do_sample=True,
    ...                                                             temperature=0.7))
    >>> added_warpers(config)  # the unset top_k is transformers' default
    [('temperature', 0.7), ('top_k', 50)]
"""

from __future__ import annotations

import copy
from typing import Any

from tokenwise.errors import TokenwiseError

__all__ = ["WARPER_FIELDS", "TransformersWarpersWarning", "added_warpers",
           "generation_defaults", "hf_generation_config", "hf_model_of",
           "merged_generation_config", "stacking_message"]

#: the fields from which transformers builds its warpers, in the order it applies them
WARPER_FIELDS = ("temperature", "top_h", "top_k", "top_p", "min_p", "typical_p",
                 "epsilon_cutoff", "eta_cutoff")

#: transformers' defaults for unset fields, used only where its own
#: ``GenerationConfig._get_default_generation_params`` (a private name) is missing
_FALLBACK_DEFAULTS: dict[str, Any] = {
    "max_length": 20, "min_length": 0, "do_sample": False, "num_beams": 1,
    "temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0,
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "num_return_sequences": 1,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
}

#: warper values that change nothing (``top_h`` has none: every value keeps at most 100 tokens)
_NEUTRAL: dict[str, Any] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                            "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


class TransformersWarpersWarning(UserWarning):
    """``model.generate`` would apply transformers' own warpers after a tokenwise processor
    (or would not sample at all), so the tokens would not come from the tokenwise sampler's
    distribution."""


def generation_defaults() -> dict[str, Any]:
    """transformers' values for the generation fields a call and the model leave unset.

    Example:
        >>> generation_defaults()["top_k"]
        50
    """
    from transformers import GenerationConfig

    own = getattr(GenerationConfig, "_get_default_generation_params", None)
    return dict(own()) if callable(own) else dict(_FALLBACK_DEFAULTS)


def _fields() -> set[str]:
    """The fields a ``GenerationConfig`` knows (custom entries and bookkeeping left out)."""
    from transformers import GenerationConfig

    return {k for k in GenerationConfig().to_dict() if not k.startswith("_")} \
        - {"transformers_version"}


def hf_model_of(model: Any) -> Any:
    """The transformers model behind ``model`` (a tokenwise ``LanguageModel`` or itself),
    checked to carry a ``generation_config``.

    Args:
        model: a transformers causal LM or a :class:`~tokenwise.models.LanguageModel`.

    Example:
        >>> from tokenwise.models import load
        >>> type(hf_model_of(load("tw-small"))).__name__
        'LlamaForCausalLM'
    """
    hf = getattr(model, "hf_model", model)
    if getattr(hf, "generation_config", None) is None:
        raise TokenwiseError(f"model={type(model).__name__}: allowed a transformers model with a "
                             "generation_config (e.g. a LlamaForCausalLM) or a tokenwise "
                             "LanguageModel")
    return hf


def merged_generation_config(model: Any, generation_config: Any = None,
                             **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """The config ``model.generate(generation_config=..., **kwargs)`` would run with.

    As transformers 5 merges them: the ``generation_config`` passed (or an empty one),
    its unset fields filled from ``model.generation_config`` and then from transformers'
    defaults; generation fields in ``kwargs`` override all of these.

    Args:
        model: a transformers model or a tokenwise ``LanguageModel``; None for none (only the
            passed config and the defaults count).
        generation_config: the ``GenerationConfig`` passed to ``generate``, or None.
        kwargs: the keyword arguments passed to ``generate``.

    Returns:
        ``(config, rest)``: the merged ``GenerationConfig`` (a copy; nothing passed in is
        changed) and the keyword arguments that are not generation fields.

    Example:
        >>> from tokenwise.models import load
        >>> cfg, rest = merged_generation_config(load("tw-small"), max_new_tokens=3, foo=1)
        >>> cfg.max_new_tokens, cfg.eos_token_id, cfg.top_k, rest
        (3, 2, 50, {'foo': 1})
    """
    from transformers import GenerationConfig

    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise TokenwiseError(f"generation_config={generation_config!r}: allowed a "
                             "transformers.GenerationConfig or None")
    config = copy.deepcopy(generation_config) if generation_config is not None \
        else GenerationConfig()
    fields = _fields()
    # Attributes are set directly: GenerationConfig.update validates as it goes and logs
    # warnings about half-merged states the finished config does not have.
    if model is not None:
        for key, value in hf_model_of(model).generation_config.to_dict().items():
            if key in fields and getattr(config, key, None) is None:
                setattr(config, key, copy.deepcopy(value))
    for key, value in generation_defaults().items():
        if key in fields and getattr(config, key, None) is None:
            setattr(config, key, value)
    rest = {}
    for key, value in kwargs.items():
        if key in fields:
            setattr(config, key, value)
        else:
            rest[key] = value
    return config, rest


def added_warpers(config: Any) -> list[tuple[str, Any]]:
    """The warpers transformers appends after the passed processors when it samples with
    ``config`` (a merged config: see :func:`merged_generation_config`).

    Args:
        config: a ``GenerationConfig`` whose unset fields were filled as generate fills them.

    Returns:
        ``(field, value)`` for each warper transformers would add, in its order.

    Example:
        >>> from transformers import GenerationConfig
        >>> added_warpers(GenerationConfig(top_k=0, top_p=0.9, min_p=0.0))
        [('top_p', 0.9)]
    """
    out = []
    for field in WARPER_FIELDS:
        value = getattr(config, field, None)
        if value is None:
            continue
        if field == "top_h":
            stacked = True
        elif field == "top_k":
            stacked = value != 0
        elif field in ("top_p", "typical_p"):
            stacked = value < 1.0
        elif field in ("epsilon_cutoff", "eta_cutoff"):
            stacked = 0.0 < value < 1.0
        else:  # temperature and min_p: only their neutral value leaves the scores as they are
            stacked = value != _NEUTRAL[field]
        if stacked:
            out.append((field, value))
    return out


def stacking_message(sampler: Any, model: Any = None, generation_config: Any = None
                     ) -> str | None:
    """Why ``model.generate`` would not sample from ``sampler``'s distribution, or None.

    Args:
        sampler: the tokenwise sampler (named in the message).
        model: the transformers model (or ``LanguageModel``) that will generate, or None.
        generation_config: the ``GenerationConfig`` that will be passed to ``generate``.

    Example:
        >>> from tokenwise.models import load
        >>> from tokenwise.sampling import TopP
        >>> lm = load("tw-small")
        >>> stacking_message(TopP(0.9), lm, hf_generation_config(lm)) is None
        True
        >>> print(stacking_message(TopP(0.9), lm))  # doctest: +ELLIPSIS
        model.generate(logits_processor=[TopP(...).as_hf()]) ... top_k=50 (transformers' default)...
    """
    config, _ = merged_generation_config(model, generation_config)
    own = getattr(getattr(model, "hf_model", model), "generation_config", None)
    passed = generation_config.to_diff_dict() if generation_config is not None else {}

    def source(field: str) -> str:
        if field in passed:
            return "the generation_config passed"
        if own is not None and getattr(own, field, None) is not None:
            return "model.generation_config"
        return "transformers' default"

    problems = [f"{field}={value!r} ({source(field)})" for field, value in added_warpers(config)]
    greedy = not config.do_sample
    if not problems and not greedy:
        return None
    head = f"model.generate(logits_processor=[{sampler!r}.as_hf()])"
    parts = []
    if problems:
        parts.append(f"{head} with do_sample=True applies transformers' own warpers after "
                     f"tokenwise's: {', '.join(problems)}")
    if greedy:
        parts.append(f"{'it' if problems else head} does not sample: do_sample is False "
                     f"({source('do_sample')}), so it takes the argmax of the processor's "
                     "output")
    return ("; ".join(parts) + ". Pass generation_config=tokenwise.hf_generation_config(model) "
            "to generate() so that the tokenwise sampler alone decides (and the same config to "
            "as_hf(model, generation_config=...) to check it).")


def hf_generation_config(model: Any, **overrides: Any) -> Any:
    """A ``GenerationConfig`` under which a tokenwise processor alone decides the sampling.

    A copy of ``model.generation_config`` (so its ``max_new_tokens``, ``eos_token_id``,
    ``pad_token_id`` and other settings stay) with ``do_sample=True`` and every warper
    field neutral: ``temperature=1.0``, ``top_k=0`` (None would be filled with the model's
    value or transformers' default 50), ``top_p=1.0``, ``typical_p=1.0``,
    ``epsilon_cutoff=0.0``, ``eta_cutoff=0.0``, and ``min_p=0.0`` where the model's config
    sets a ``min_p``. Processors that transformers runs *before* ours (a
    ``repetition_penalty`` in the model's config, ``suppress_tokens``, ...) are kept; put
    :class:`~tokenwise.sampling.Penalties` in the chain instead where you want ours.

    Args:
        model: a transformers causal LM or a :class:`~tokenwise.models.LanguageModel`.
        overrides: other generation fields to set (``max_new_tokens=32``,
            ``pad_token_id=0``, ...); a warper field set to anything but its neutral value,
            or ``do_sample=False``, is refused: it would take the choice from the sampler.

    Returns:
        A new ``transformers.GenerationConfig`` (the model's own is not changed).

    Raises:
        TokenwiseError: an override that is not a generation field or that would stack a
            warper; or the model's config sets ``top_h``, which transformers fills into any
            config that leaves it unset and which has no neutral value (set
            ``model.generation_config.top_h = None`` first).

    Example:
        >>> import torch
        >>> import tokenwise as tw
        >>> from tokenwise.sampling import TopH
        >>> lm = tw.load("tw-small")
        >>> config = tw.hf_generation_config(lm, max_new_tokens=4)
        >>> config.do_sample, config.top_k, config.temperature, config.eos_token_id
        (True, 0, 1.0, 2)
        >>> ids = torch.tensor([lm.encode("7+5=", add_bos=True)])
        >>> out = lm.hf_model.generate(ids, generation_config=config,
        ...                            logits_processor=[TopH(0.4).as_hf()])
        >>> out.shape[1] <= ids.shape[1] + 4
        True
    """
    hf = hf_model_of(model)
    own = hf.generation_config
    if getattr(own, "top_h", None) is not None:
        raise TokenwiseError(
            f"model.generation_config.top_h={own.top_h!r}: transformers fills an unset top_h "
            "from the model's config, and no top_h value turns Top-H off (it keeps at most "
            "100 tokens); set model.generation_config.top_h = None first (or use "
            "tokenwise.sampling.TopH in your sampler)")
    fields = _fields()
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TokenwiseError(f"{', '.join(unknown)}: not generation config fields; allowed "
                             "fields of transformers.GenerationConfig such as max_new_tokens")
    if overrides.get("do_sample", True) is not True:
        raise TokenwiseError(f"do_sample={overrides['do_sample']!r}: allowed True here; "
                             "without sampling generate() takes the argmax and the sampler "
                             "cannot decide")
    config = copy.deepcopy(own)
    config.do_sample = True
    for field, neutral in _NEUTRAL.items():
        if field == "min_p" and getattr(own, "min_p", None) is None:
            continue  # unset stays unset: transformers then adds no min-p step at all
        setattr(config, field, neutral)
    for field, value in overrides.items():
        setattr(config, field, value)
    # Checked on the config as generate() will complete it: an override of None is filled
    # from the model's config or transformers' defaults (top_k=None becomes 50).
    stacked = added_warpers(merged_generation_config(hf, config)[0])
    if stacked:
        named = ", ".join(f"{field}={value!r}" for field, value in stacked)
        raise TokenwiseError(
            f"{named}: transformers would apply it after the tokenwise sampler; leave it out "
            f"(neutral values: {', '.join(f'{k}={v!r}' for k, v in _NEUTRAL.items())}) and "
            "put the step in the sampler instead, e.g. tokenwise.sampling.Chain([..., "
            "Temperature(0.7)])")
    config.validate()
    return config
