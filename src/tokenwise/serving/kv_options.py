"""``tokenwise.kv`` of a request: the press or quantised cache it asks for, checked twice
before a token is generated (so a bad setting is a 400, also for a stream).

:func:`kv_setting` builds the press (:func:`tokenwise.kv.get`) or quantiser
(:func:`tokenwise.kv.KIVI`, :func:`tokenwise.kv.SAQ`) from the request alone: an unknown
name or setting, a budget of 0 or below, a bad window are refused naming the field.
:func:`check_model` then checks it against the served model, on the thread that runs the
model: a press needs Llama-style attention whose layers are all full attention, a per-layer
budget one entry per layer, a quantiser a head dimension its groups and bit packing divide.

Example:
    >>> from tokenwise.serving.schemas import KVOptions
    >>> kv_setting(KVOptions(press="snapkv", budget=0.25, window=8)).window
    8
    >>> kv_setting(KVOptions(press="snapkv", budget=0))
    Traceback (most recent call last):
    ...
    tokenwise.serving.errors.APIError: tokenwise.kv.budget: budget=0: allowed a whole number ...
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

from tokenwise.errors import TokenwiseError
from tokenwise.serving.errors import APIError
from tokenwise.serving.schemas import KVOptions

#: ``quantize`` names -> the function that builds the settings.
QUANTIZERS = ("kivi", "saq")


def _quantizer(name: str) -> Any:
    from tokenwise import kv

    return {"kivi": kv.KIVI, "saq": kv.SAQ}[name]


def _integral(name: str, value: Any) -> Any:
    """A setting written ``3.0`` as the integer it is (JSON does not tell them apart), in
    lists too; ``budget`` is left as given, where ``1.0`` (the whole prompt) and ``1`` (one
    token) differ."""
    if name == "budget":
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(name, v) for v in value]
    return value


def _refuse(exc: Exception, field: str = "tokenwise.kv") -> APIError:
    """The 400 of a setting the press or quantiser refused, naming it when the message does
    (``budget=0: ...`` names ``tokenwise.kv.budget``)."""
    named = re.match(r"(\w+)=", str(exc))
    param = f"tokenwise.kv.{named.group(1)}" if named and field == "tokenwise.kv" else field
    return APIError(400, f"{param}: {exc}", param=param, code="invalid_value")


def kv_setting(options: KVOptions) -> Any:
    """The press or quantised cache settings a request's ``tokenwise.kv`` asks for.

    Args:
        options: the request's ``tokenwise.kv``.

    Returns:
        A :class:`tokenwise.kv.Press` or :class:`tokenwise.kv.QuantSpec`.

    Raises:
        APIError: 400 naming the field (``tokenwise.kv.press``, ``tokenwise.kv.budget``,
            ...) and what is allowed.
    """
    from tokenwise.generation.engine import check_kv
    from tokenwise.kv import PRESSES, get

    if (options.press is None) == (options.quantize is None):
        raise APIError(400, "tokenwise.kv: give one of press (a token-evicting press: "
                            f"{', '.join(sorted(PRESSES))}) or quantize (a quantised cache: "
                            f"{', '.join(QUANTIZERS)})", param="tokenwise.kv",
                       code="invalid_value")
    settings = {k: _integral(k, v) for k, v in options.settings().items()}
    if options.press is not None:
        if options.press not in PRESSES:
            raise APIError(400, f"tokenwise.kv.press={options.press!r}: allowed "
                                f"{', '.join(sorted(PRESSES))}", param="tokenwise.kv.press",
                           code="invalid_value")
        try:
            setting = get(options.press, **settings)
        except (TokenwiseError, TypeError, ValueError) as exc:
            raise _refuse(exc) from None
    else:
        if options.quantize not in QUANTIZERS:
            raise APIError(400, f"tokenwise.kv.quantize={options.quantize!r}: allowed "
                                f"{', '.join(QUANTIZERS)}", param="tokenwise.kv.quantize",
                           code="invalid_value")
        build = _quantizer(options.quantize)
        accepted = list(inspect.signature(build).parameters)
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise APIError(400, f"tokenwise.kv: quantize {options.quantize!r} has no "
                                f"setting(s) {', '.join(unknown)}; allowed: "
                                f"{', '.join(accepted)}", param="tokenwise.kv",
                           code="invalid_value")
        try:
            setting = build(**settings)
        except (TokenwiseError, TypeError, ValueError) as exc:
            raise _refuse(exc) from None
    try:
        return check_kv(setting)
    except TokenwiseError as exc:
        raise _refuse(exc, "tokenwise.kv.question_aware") from None


def describe(setting: Any, options: KVOptions) -> dict[str, Any]:
    """The settings as applied, JSON-ready (the response's ``tokenwise.kv.setting``).

    Example:
        >>> opts = KVOptions(quantize="kivi", bits=4)
        >>> describe(kv_setting(opts), opts)["bits"]
        [4]
    """
    from tokenwise.kv import Press

    if isinstance(setting, Press):
        return setting.describe()
    out = {"quantize": options.quantize, **dataclasses.asdict(setting)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def check_model(lm: Any, setting: Any, field: str = "tokenwise.kv") -> None:
    """Refuse (400) a setting the model cannot feed; run it on the thread that runs the
    model (a press's cache hooks the model's attention layers while it is built).

    Args:
        lm: the served model (a tokenwise ``LanguageModel``).
        setting: from :func:`kv_setting`.
        field: the request field named in the error.

    Example:
        >>> from tokenwise.models import load
        >>> check_model(load("tw-small"), kv_setting(KVOptions(quantize="kivi", group=24)))
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: tokenwise.kv: model 'tw-small' cannot use this ...
    """
    from tokenwise.kv import CompressedCache, QuantSpec
    from tokenwise.kv.cache import hf_model_of
    from tokenwise.kv.quantized import quantize

    try:
        if isinstance(setting, QuantSpec):
            import torch

            config = hf_model_of(lm).config.get_text_config(decoder=True)
            head_dim = getattr(config, "head_dim", None) or \
                config.hidden_size // config.num_attention_heads
            block = torch.zeros(1, 1, 2, head_dim)  # (B, H, T, D): the packing needs no more
            for bits in setting.bits:
                quantize(block, bits, per_channel=True, group=setting.group)
                quantize(block, bits, per_channel=False, group=setting.group)
        else:
            CompressedCache(lm, setting).close()
    except (TokenwiseError, AttributeError) as exc:
        raise APIError(400, f"{field}: model {getattr(lm, 'name', '?')!r} cannot use this "
                            f"cache setting: {exc}", param=field,
                       code="unsupported_value") from None
