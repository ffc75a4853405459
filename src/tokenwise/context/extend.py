"""``extend``: give a RoPE model a longer context by one of four methods; ``restore`` undoes it.

Everything an extension changes lives in the config, so ``save_pretrained`` keeps it and a
reload rebuilds the same model:

- ``rope_parameters`` (the RoPE type and base transformers reads),
- ``max_position_embeddings`` (the new length; the model's ``context_length``),
- ``tokenwise_context``: the method, trained length, original RoPE parameters and length,
  and Entropy-ABF's query-scaling settings,
- for Entropy-ABF, ``attn_implementation`` (the registered scaled attention, see
  :mod:`tokenwise.context.entropy_abf`).
"""

from __future__ import annotations

import copy
import os
from typing import Any

from tokenwise.context import entropy_abf, ntk, pi, yarn
from tokenwise.context.rope import rebuild_rotary, rope_dicts, rotary_dim
from tokenwise.errors import TokenwiseError

METHODS = {"entropy_abf": entropy_abf, "pi": pi, "ntk": ntk, "yarn": yarn}
#: the config attribute holding what an extension changed (saved in config.json).
CONFIG_KEY = "tokenwise_context"


def _hf(model: Any) -> Any:
    return getattr(model, "hf_model", model)


def _name(model: Any) -> str:
    return str(getattr(model, "name", type(_hf(model)).__name__))


def trained_length(model: Any) -> int:
    """The length the model was trained at: before any extension by this module.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` or a transformers model.

    Example:
        >>> from tokenwise.models import load
        >>> trained_length(load("tw-reader"))
        256
    """
    config = _hf(model).config
    saved = getattr(config, CONFIG_KEY, None)
    if saved:
        return int(saved["original_length"])
    length = getattr(config, "max_position_embeddings", None)
    if not isinstance(length, int) or length <= 0:
        raise TokenwiseError(f"model {_name(model)!r}: config has no max_position_embeddings "
                             f"({length!r}); cannot tell its trained length")
    return length


def _available_bytes(device: Any) -> int:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def estimate_memory(model: Any, length: int, batch_size: int = 1) -> int:
    """Bytes one forward pass over ``length`` tokens needs, roughly (an upper estimate).

    Weights, the KV cache, one layer's attention scores (``heads x length^2`` float32: the
    explicit softmax, or SDPA's math path), one layer's activations and the logits.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` or a transformers model.
        length: tokens per sequence.
        batch_size: sequences at once.

    Example:
        >>> from tokenwise.models import load
        >>> estimate_memory(load("tw-reader"), 1024) < 2**30
        True
    """
    hf = _hf(model)
    config = getattr(hf.config, "text_config", None) or hf.config
    weights = sum(p.numel() * p.element_size() for p in hf.parameters())
    width = next(hf.parameters()).element_size()
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = int(config.num_hidden_layers)
    tokens = batch_size * length
    kv_cache = 2 * layers * kv_heads * head_dim * tokens * width
    scores = batch_size * heads * length * length * 4
    inter = int(getattr(config, "intermediate_size", 4 * config.hidden_size))
    activations = tokens * (4 * config.hidden_size + 2 * inter) * 4
    logits = tokens * int(config.vocab_size) * 4
    return int(weights + kv_cache + scores + activations + logits)


def require_memory(model: Any, length: int, batch_size: int = 1) -> None:
    """Raise :class:`TokenwiseError` when ``length`` tokens would not fit in free memory.

    Example:
        >>> from tokenwise.models import load
        >>> require_memory(load("tw-reader"), 512)
    """
    need = estimate_memory(model, length, batch_size)
    device = next(_hf(model).parameters()).device
    have = _available_bytes(device)
    if need > have:
        raise TokenwiseError(
            f"target_length={length}: a forward pass of model {_name(model)!r} at that length "
            f"needs about {need / 2**30:.1f} GiB, but only {have / 2**30:.1f} GiB is free on "
            f"{device}; use a shorter target, a GPU, or check_memory=False to try anyway"
        )


def restore(model: Any) -> Any:
    """Undo :func:`extend`: the RoPE, length and attention the model was trained with.

    A model never extended is returned unchanged.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` or a transformers model.

    Returns:
        The same model, restored in place.

    Example:
        >>> from tokenwise.models import load
        >>> lm = restore(extend(load("tw-reader"), 1024, method="pi"))
        >>> lm.context_length, lm.config.rope_parameters["rope_type"]
        (256, 'default')
    """
    hf = _hf(model)
    config = hf.config
    saved = getattr(config, CONFIG_KEY, None)
    if not saved:
        return model
    config.rope_parameters = copy.deepcopy(saved["original_rope_parameters"])
    config.max_position_embeddings = int(saved["original_length"])
    attn = saved.get("original_attn_implementation") or "sdpa"
    delattr(config, CONFIG_KEY)
    if hasattr(config, "attn_implementation"):
        delattr(config, "attn_implementation")
    if config._attn_implementation == entropy_abf.ATTENTION_NAME:
        hf.set_attn_implementation(attn)
    rebuild_rotary(hf)
    return model


def extend(model: Any, target_length: int, method: str = "entropy_abf", *,
           base: float | None = None, base_factor: float = entropy_abf.PAPER_BASE_FACTOR,
           skip_layers: int | None = None, scale_queries: bool = True,
           beta_fast: float = 32.0, beta_slow: float = 1.0,
           check_memory: bool = True) -> Any:
    """Extend a RoPE model's context to ``target_length`` tokens, in place.

    Methods: ``"entropy_abf"`` (raised base + query scaling ``max(1, log_L(pos+1))``),
    ``"pi"`` (position interpolation), ``"ntk"`` (NTK-aware base), ``"yarn"``. A model
    extended before is first restored, so the factor is always counted from the trained
    length. Windowed layers (Gemma 3's sliding layers) keep their RoPE.

    Args:
        model: a :class:`~tokenwise.models.LanguageModel` or a transformers causal LM.
        target_length: the new context length, longer than the trained one.
        method: one of :data:`METHODS`.
        base: Entropy-ABF's new RoPE base (default: the model's base x ``base_factor``).
        base_factor: Entropy-ABF's base multiplier (the paper's 10,000 -> 500,000: 50).
        skip_layers: Entropy-ABF: the first layers left unscaled (default: 2, as in the
            paper, on models of 8 layers or more; 0 below).
        scale_queries: Entropy-ABF: scale queries (False leaves only the base change, ABF).
        beta_fast: YaRN's fast boundary (rotations).
        beta_slow: YaRN's slow boundary.
        check_memory: refuse a length whose forward pass would not fit in free memory.

    Returns:
        The same model, extended (undo with :func:`restore`).

    Raises:
        TokenwiseError: an unknown method; a target not longer than the trained length; a
            model without RoPE; a length that does not fit in memory (the message says how
            much it needs); a bad ``skip_layers`` or ``base``.

    Example:
        >>> from tokenwise.models import load
        >>> lm = extend(load("tw-reader"), 1024, method="yarn")
        >>> lm.context_length, lm.config.rope_parameters["factor"]
        (1024, 4.0)
    """
    if method not in METHODS:
        raise TokenwiseError(f"method={method!r}: allowed {', '.join(sorted(METHODS))}")
    hf = _hf(model)
    name = _name(model)
    config = hf.config
    original = trained_length(model)
    if isinstance(target_length, bool) or not isinstance(target_length, int):
        raise TokenwiseError(f"target_length={target_length!r}: allowed a whole number of "
                             f"tokens longer than the trained length {original}")
    if target_length <= original:
        raise TokenwiseError(
            f"target_length={target_length} is not longer than model {name!r}'s trained length "
            f"{original}: allowed a target > {original} (the model already handles shorter)"
        )
    dicts = rope_dicts(config, name)
    layers = int(config.num_hidden_layers)
    if skip_layers is None:
        skip_layers = entropy_abf.default_skip_layers(layers)
    if isinstance(skip_layers, bool) or not isinstance(skip_layers, int) \
            or not 0 <= skip_layers <= layers:
        raise TokenwiseError(f"skip_layers={skip_layers!r}: allowed 0..{layers} "
                             f"(model {name!r} has {layers} layers)")
    if base is not None and not base > 0:
        raise TokenwiseError(f"base={base!r}: allowed a RoPE base > 0")
    if check_memory:
        require_memory(model, target_length)
    # Checked first, so a refused call leaves an earlier extension in place.
    restore(model)
    dicts = rope_dicts(config, name)
    factor = target_length / original
    saved = {
        "method": method,
        "original_length": original,
        "target_length": target_length,
        "original_rope_parameters": copy.deepcopy(config.rope_parameters),
        "original_attn_implementation": config._attn_implementation,
    }
    new_params = copy.deepcopy(config.rope_parameters)
    # the options only some methods take
    options = {"entropy_abf": {"base": base, "base_factor": base_factor},
               "yarn": {"beta_fast": beta_fast, "beta_slow": beta_slow}}.get(method, {})
    for layer_type, params in dicts.items():
        new = METHODS[method].rope_parameters(params, factor, original,
                                              rotary_dim(config, params), **options)
        if layer_type is None:
            new_params = new
        else:
            new_params[layer_type] = new
    config.rope_parameters = new_params
    config.max_position_embeddings = target_length
    if method == "entropy_abf":
        saved.update(scale_queries=bool(scale_queries), skip_layers=skip_layers,
                     inner_attention="sdpa")
    setattr(config, CONFIG_KEY, saved)
    if method == "entropy_abf" and scale_queries:
        entropy_abf.register()
        # Saved in config.json: transformers reads it back as the attention implementation.
        config.attn_implementation = entropy_abf.ATTENTION_NAME
        hf.set_attn_implementation(entropy_abf.ATTENTION_NAME)
    rebuild_rotary(hf)
    return model
