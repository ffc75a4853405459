"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI clients read this shape to raise their typed exceptions (``BadRequestError`` on 400,
``AuthenticationError`` on 401, ...), so every failure the server reports uses it.

Example:
    >>> APIError(400, "bad", param="top_k").body()["error"]["param"]
    'top_k'
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          404: "invalid_request_error", 408: "timeout_error", 413: "invalid_request_error",
          429: "rate_limit_error", 499: "cancelled", 500: "server_error",
          503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    """An error the server answers with, as an HTTP status and an OpenAI error body.

    Args:
        status: the HTTP status.
        message: what went wrong and what is allowed.
        param: the request field at fault, dotted (``tokenwise.sampler.0.alpha``).
        code: a short machine-readable code (``unknown_field``, ``invalid_api_key``, ...).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message,
                          "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


def _model_names() -> set[str]:
    """The class names of every pydantic model defined so far (pydantic names a model member
    of a union by its class name)."""
    names, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__name__ not in names:
                names.add(sub.__name__)
                todo.append(sub)
    return names


def _is_member(part: Any) -> bool:
    """Whether a location part is the name pydantic gives a union member: a type ("str",
    "list[...]") or a model's class name (``NamedToolChoice`` in ``str | NamedToolChoice``).
    Field names here are lower case, so only a capitalised part is looked up."""
    if not isinstance(part, str):
        return False
    if "[" in part or part in ("str", "float", "int", "bool", "none"):
        return True
    return part[:1].isupper() and part.isidentifier() and part in _model_names()


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not _is_member(p))


def _wrong_member(error: Any) -> bool:
    """An error saying the value is not of one union member's type (``prompt: []`` is not a
    "str"): about a member the client did not mean, so another member's error says more."""
    loc = error["loc"]
    return bool(loc) and _is_member(loc[-1]) and error["type"].endswith("_type")


def from_validation(error: ValidationError) -> APIError:
    """A 400 for a request that failed schema validation: unknown fields first, all named.

    Example:
        >>> from tokenwise.serving.schemas import CompletionRequest
        >>> try:
        ...     CompletionRequest.model_validate_json('{"model": "m", "prompt": "x", "foo": 1}')
        ... except ValidationError as exc:
        ...     print(from_validation(exc).message)
        Unrecognized request argument supplied: foo
    """
    errors = error.errors(include_url=False)
    unknown = [_dotted(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return APIError(400, "Unrecognized request argument supplied: " + ", ".join(unknown),
                        param=unknown[0], code="unknown_field")
    first = next((e for e in errors if not _wrong_member(e)), errors[0])
    if first["type"] == "json_invalid":
        return APIError(400, f"The request body is not valid JSON: {first['msg']}",
                        code="invalid_json")
    where = _dotted(first["loc"])
    if first["type"] == "missing":
        return APIError(400, f"Missing required parameter: {where}", param=where,
                        code="missing_required_parameter")
    if first["type"] == "too_short" and first.get("input") == []:
        least = first.get("ctx", {}).get("min_length", 1)
        return APIError(400, f"Invalid value for {where}: the list is empty; give at least "
                             f"{least} item{'s' if least != 1 else ''}", param=where,
                        code="invalid_value")
    got = first.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return APIError(400, f"Invalid value for {where or 'the body'}: {first['msg']} "
                         f"(got {shown})", param=where or None, code="invalid_value")


def parse_body(raw: bytes, schema: type[M]) -> M:
    """A request body validated as ``schema``: a 400 for an empty body, the first validation
    error otherwise (see :func:`from_validation`).

    Args:
        raw: the body's bytes.
        schema: the request model.

    Example:
        >>> from tokenwise.serving.schemas import CompletionRequest
        >>> parse_body(b" ", CompletionRequest)
        Traceback (most recent call last):
        ...
        tokenwise.serving.errors.APIError: the request body is empty; send a JSON object
    """
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation(exc) from None
