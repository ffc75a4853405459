"""``POST /tokenize`` and ``POST /detokenize`` in vLLM's shapes, with the served models' own
tokenizers.

``/tokenize`` takes ``{"model", "prompt" | "messages", "tools", "add_special_tokens",
"return_token_strs"}`` and answers ``{"count", "max_model_len", "tokens", "token_strs"}``;
the ids are those the completion routes feed the model for the same prompt or messages
(start ids included unless ``add_special_tokens`` is false), so ``count`` equals the
``usage.prompt_tokens`` of a completion. ``messages`` may hold tool calls and tool
results, and ``tools`` are rendered as a chat request with ``tool_choice: "auto"`` renders
them (:func:`~tokenwise.serving.tools.render_tool_chat`). ``/detokenize`` takes
``{"model", "tokens"}`` and answers ``{"prompt"}`` (control tokens included, as vLLM does);
an id outside the vocabulary is a 400. ``model`` may be left out when the server serves one
model.

Both paths sit outside ``/v1/`` (where vLLM has them); the API-key guard
(:mod:`tokenwise.serving.security`) covers them too.

Example:
    >>> from tokenwise.models import load
    >>> lm = load("tw-small")
    >>> tokenize({"tw-small": lm}, TokenizeRequest(prompt="7+2="))["count"]
    5
    >>> detokenize({"tw-small": lm}, DetokenizeRequest(tokens=[1, 9999]))
    Traceback (most recent call last):
    ...
    tokenwise.serving.errors.APIError: tokens[1]=9999 is not a token id of model 'tw-small': ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from tokenwise.models import Codec
from tokenwise.serving.errors import APIError, parse_body
from tokenwise.serving.planning import message_dicts, pick_model
from tokenwise.serving.schemas import DetokenizeRequest, TokenizeRequest
from tokenwise.serving.tools import check_tools, render_tool_chat


def _model(models: Mapping[str, Codec], name: str | None) -> Codec:
    if name is None:
        if len(models) != 1:
            raise APIError(400, f"model is required: this server serves {', '.join(models)}",
                           param="model", code="missing_required_parameter")
        return next(iter(models.values()))
    return pick_model(models, name)


def tokenize(models: Mapping[str, Codec], req: TokenizeRequest) -> dict[str, Any]:
    """The ``/tokenize`` answer for a validated request.

    Args:
        models: the served models by id.
        req: the request.
    """
    lm = _model(models, req.model)
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give either prompt or messages (one of them)",
                       param="prompt" if req.prompt is not None else "messages",
                       code="invalid_value")
    if req.messages is not None:
        text = render_tool_chat(lm.tokenizer, message_dicts(req.messages),
                                check_tools(req.tools), model=req.model or lm.name).prompt.text
    else:
        if req.tools is not None:
            raise APIError(400, "tools are rendered with chat messages; give messages, or "
                                "leave tools out", param="tools", code="invalid_value")
        text = req.prompt
    ids = lm.encode(text, add_bos=req.add_special_tokens)
    strs = lm.tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
    return {"count": len(ids), "max_model_len": lm.context_length, "tokens": ids,
            "token_strs": strs}


def detokenize(models: Mapping[str, Codec], req: DetokenizeRequest) -> dict[str, Any]:
    """The ``/detokenize`` answer for a validated request (400 for an id outside the
    tokenizer's vocabulary).

    Args:
        models: the served models by id.
        req: the request.
    """
    lm = _model(models, req.model)
    size = len(lm.tokenizer)
    for i, token in enumerate(req.tokens):
        if not 0 <= token < size:
            raise APIError(400, f"tokens[{i}]={token} is not a token id of model {lm.name!r}: "
                                f"allowed 0 to {size - 1}", param="tokens",
                           code="invalid_value")
    return {"prompt": lm.decode(req.tokens)}


def register(app: Any, models: Mapping[str, Codec]) -> None:
    """Add ``POST /tokenize`` and ``POST /detokenize`` to ``app`` (the API key, when the
    server has one, is checked by the guard in :mod:`tokenwise.serving.security`).

    Args:
        app: the FastAPI app.
        models: the served models by id.
    """

    @app.post("/tokenize")
    async def tokenize_route(request: Request) -> dict[str, Any]:
        return tokenize(models, parse_body(await request.body(), TokenizeRequest))

    @app.post("/detokenize")
    async def detokenize_route(request: Request) -> dict[str, Any]:
        return detokenize(models, parse_body(await request.body(), DetokenizeRequest))
