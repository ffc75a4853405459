"""Schema fuzzing of `tokenwise serve` with schemathesis: requests generated from the
server's own OpenAPI document (``GET /openapi.json``), every response checked against it.

The app runs in this process (schemathesis' ASGI transport, lifespan included, so the
batcher works as in a real server) on the built-in tw-small, with small but real limits
(``max_tokens`` <= 4, ``n`` <= 2, ...): the document carries them, so generated requests
stay cheap without any limit being loosened for the fuzzer. For every operation, in two
modes, ``--examples`` requests are drawn from a fixed seed (hypothesis, derandomized by
the seed): *positive* ones valid under the document, and *negative* ones that break it
(wrong types, out-of-range numbers, unknown fields, missing fields, empty arrays). Huge
strings come from hypothesis' own draws and from the negative mode's length mutations.

Checks on every response: no status >= 500; the status, content type, headers and body
as documented (a streamed reply's events each a documented chunk or error, the last
``[DONE]``); a request the document rejects answered 4xx. After the run the server must
still answer ``/health`` and a chat completion.

Run (``make fuzz`` runs the large one):
    .venv/bin/python benchmarks/serve_fuzz.py --examples 1300 --seed 0 \\
        --out benchmarks/results/serve_fuzz.json

Prints the requests by route, mode and status, and every failure (a curl command to
reproduce each); exits 1 if any.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: schemathesis checks run on every response (besides :func:`no_server_error` and the
#: event-stream check here)
CHECK_NAMES = ("status_code_conformance", "content_type_conformance",
               "response_headers_conformance", "response_schema_conformance",
               "negative_data_rejection")


#: how long the fuzzer's client waits for a response: longer than the server's
#: ``request_timeout_s`` in :func:`fuzz_config` (60 s), so the server, not the client, ends it
CLIENT_TIMEOUT_S = 120.0


def own_timeout(response: Any) -> bool:
    """Whether a response is the 504 of a request that set its own ``timeout`` and ran past
    it: what that client asked for, not a server error."""
    if response.status_code != 504:
        return False
    try:
        return response.json()["error"]["param"] == "timeout"
    except Exception:
        return False


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' ``not_a_server_error``, except for :func:`own_timeout`."""
    if response.status_code >= 500 and not own_timeout(response):
        raise AssertionError(f"server error {response.status_code}: {response.text[:500]}")
    return True


def fuzz_config(**overrides: Any) -> Any:
    """The server the fuzzer drives: tw-small, small real limits, the ASGI test host
    allowed (schemathesis' in-process client sends ``Host: testserver``)."""
    from tokenwise.serving.config import ServerConfig

    settings: dict[str, Any] = dict(
        models=("tw-small",), allowed_hosts=("testserver",), max_tokens_limit=4,
        default_max_tokens=4, max_n=2, max_choices=4, max_uncertainty_n=3,
        max_request_bytes=64_000, batch_window_ms=0, request_timeout_s=60.0, api_key=None)
    settings.update(overrides)
    return ServerConfig(**settings)


def build_app(config: Any = None, models: dict[str, Any] | None = None) -> Any:
    """The app with its OpenAPI document (see :func:`tokenwise.serving.openapi.document`)."""
    from tokenwise.serving.app import create_app
    from tokenwise.serving.openapi import document

    app = create_app(config or fuzz_config(), models=models)
    if getattr(app, "openapi_url", None) is None:  # app.py may call document() itself
        document(app)
    return app


def _sse_check(doc: dict[str, Any]) -> Callable[..., bool | None]:
    """A check that a streamed reply's events are each a documented chunk or error body and
    the last is ``[DONE]`` (schemathesis sees an event's ``data`` as a string only)."""
    import jsonschema_rs

    validators: dict[str, Any] = {}

    def validator(ref: str) -> Any:
        if ref not in validators:
            root = {"$ref": ref, "components": doc["components"]}
            validators[ref] = jsonschema_rs.validator_for(root)
        return validators[ref]

    def sse_events_conform(ctx: Any, response: Any, case: Any) -> bool | None:
        kind = response.headers.get("content-type", [""])
        kind = kind[0] if isinstance(kind, list) else kind
        if not kind.startswith("text/event-stream"):
            return None
        ok = doc["paths"][case.operation.path][case.method.lower()]["responses"]["200"]
        data_schema = ok["content"]["text/event-stream"]["schema"]["properties"]["data"]
        chunk_ref = data_schema["anyOf"][1]["contentSchema"]["oneOf"][0]["$ref"]
        events = [line[len("data: "):] for line in response.text.split("\n\n")
                  if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            raise AssertionError(f"the stream does not end with data: [DONE] (last event: "
                                 f"{events[-1] if events else None!r})")
        for i, raw in enumerate(events[:-1]):
            data = json.loads(raw)
            ref = "#/components/schemas/ErrorBody" if "error" in data else chunk_ref
            errors = [e.message for e in validator(ref).iter_errors(data)]
            if errors:
                raise AssertionError(f"event {i} does not conform to {ref}: {errors[:3]} "
                                     f"(event: {raw[:300]})")
        return True

    return sse_events_conform


def run(app: Any, examples: int, seed: int, *, modes: tuple[str, ...] = ("positive",
                                                                             "negative"),
        log: Callable[[str], None] = print,
        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Fuzz every documented operation of ``app``.

    Args:
        app: the app (with its OpenAPI document).
        examples: requests to draw per operation and mode (hypothesis stops earlier when an
            operation has fewer distinct requests, e.g. a GET without parameters).
        seed: the seed of every draw.
        modes: ``"positive"`` and/or ``"negative"``.
        log: where progress lines go.
        progress: called with the report so far (``"partial": True``) after each operation
            and mode, so that a long run that is stopped still leaves its figures.

    Returns:
        ``{"requests", "by_route": {route: {mode: {status: count}}}, "failures": [...],
        "still_answering": bool, "seconds"}``.

    Example:
        >>> report = run(build_app(), examples=5, seed=0)  # doctest: +SKIP
        >>> report["failures"]
        []
    """
    import hypothesis
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.failures import FailureGroup
    from schemathesis.python import asgi

    doc = app.openapi()
    schema = schemathesis.openapi.from_dict(doc)
    # reproductions must show the body as sent: the default masks keys like "max_tokens"
    schema.config.output.sanitization.enabled = False
    # schemathesis' client gives up on a response after 10 s by default and keeps the part of
    # an event stream it has read: on a loaded machine a 4-choice stream can take longer, and
    # the cut stream (no [DONE]) would count against the server. Wait past the server's own
    # deadline instead, so that every stream ends as the server ends it (at worst a 504 event).
    schema.config.request_timeout = CLIENT_TIMEOUT_S
    checks = [getattr(schemathesis.checks, name) for name in CHECK_NAMES]
    checks += [no_server_error, _sse_check(doc)]
    by_route: dict[str, dict[str, Counter[str]]] = {}
    failures: list[dict[str, Any]] = []
    refusals: Counter[tuple[str, str, str]] = Counter()
    examples_of: dict[tuple[str, str, str], str] = {}
    total = 0
    started = time.monotonic()

    def report(still: bool | None) -> dict[str, Any]:
        return {"requests": total, "seed": seed, "examples": examples,
                "by_route": {r: {m: dict(sorted(c.items())) for m, c in modes_.items()}
                             for r, modes_ in by_route.items()},
                "refusals": [{"route": r, "mode": m, "error": e, "count": n,
                              "example": examples_of[r, m, e]}
                             for (r, m, e), n in refusals.most_common()],
                "failures": failures, "still_answering": still, "partial": still is None,
                "seconds": round(time.monotonic() - started, 1)}

    def exercise(case: Any, route: str, mode: str, counts: Counter[str]) -> None:
        nonlocal total
        total += 1
        try:
            response = case.call(session=client, app=app)
        except Exception as exc:  # the app raised: the client saw a 500
            counts["500"] += 1
            failures.append({"route": route, "mode": mode, "status": 500,
                             "check": "no_server_error",
                             "title": f"the app raised {type(exc).__name__}",
                             "message": f"{type(exc).__name__}: {exc}"[:2000],
                             "curl": case.as_curl_command()[:4000], "response": ""})
            return
        counts[str(response.status_code)] += 1
        if 400 <= response.status_code < 500:
            key = (route, mode, _refusal(response))
            refusals[key] += 1
            examples_of.setdefault(key, response.text[:300])
        try:
            case.validate_response(response, checks=checks)
        except (FailureGroup, Exception) as exc:  # FailureGroup is no Exception subclass
            for failure in exc.exceptions if isinstance(exc, FailureGroup) else [exc]:
                failures.append({"route": route, "mode": mode,
                                 "status": response.status_code,
                                 "check": type(failure).__name__,
                                 "title": getattr(failure, "title", ""),
                                 "message": str(getattr(failure, "message", failure))[:2000],
                                 "curl": case.as_curl_command()[:4000],
                                 "response": response.text[:1000]})

    with asgi.get_client(app, max_stream_events=10_000) as client:
        for result in schema.get_all_operations():
            op = result.ok()
            route = f"{op.method.upper()} {op.path}"
            for mode in modes:
                counts = by_route.setdefault(route, {}).setdefault(mode, Counter())
                generation = GenerationMode.POSITIVE if mode == "positive" \
                    else GenerationMode.NEGATIVE
                try:
                    strategy = op.as_strategy(generation_mode=generation)
                except Exception as exc:  # nothing to negate (a GET without parameters)
                    log(f"{route} {mode}: no requests ({type(exc).__name__}: {exc})")
                    continue

                one = _draw(strategy, examples, seed, functools.partial(
                    exercise, route=route, mode=mode, counts=counts))
                before = total
                try:
                    one()
                except hypothesis.errors.Unsatisfiable:  # nothing to negate in the operation
                    log(f"{route} {mode}: no requests (nothing in it can be made invalid)")
                    continue
                log(f"{route} {mode}: {total - before} requests, "
                    f"{dict(sorted(counts.items()))}")
                if progress is not None:
                    progress(report(None))
        still = _still_answering(client)
    return report(still)


def _draw(strategy: Any, examples: int, seed: int,
          exercise: Callable[[Any], None]) -> Callable[[], None]:
    """A hypothesis run of ``exercise`` over ``examples`` cases of ``strategy``, seeded."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings

    @hypothesis.seed(seed)
    @settings(max_examples=examples, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=strategy)
    def one(case: Any) -> None:
        exercise(case)

    return one


def _refusal(response: Any) -> str:
    """A 4xx answer in short: its status, code and param (the message without values)."""
    try:
        error = response.json()["error"]
    except Exception:
        return f"{response.status_code} (not an error body)"
    return f"{response.status_code} {error.get('code')} {error.get('param')}"


def _still_answering(client: Any) -> bool:
    """Whether the server answers ``/health`` and a chat completion after the run."""
    health = client.get("http://testserver/health")
    chat = client.post("http://testserver/v1/chat/completions",
                       json={"model": "tw-small", "max_tokens": 2,
                             "messages": [{"role": "user", "content": "hi"}]})
    return health.status_code == 200 and chat.status_code == 200 \
        and chat.json()["choices"][0]["finish_reason"] in ("stop", "length")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1300,
                        help="requests per operation and mode (default 1300: >= 10,000 in all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f"--examples={args.examples}: allowed an integer >= 1")

    def save(partial: dict[str, Any]) -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(partial, indent=1) + "\n")

    report = run(build_app(), args.examples, args.seed, log=lambda s: print(s, flush=True),
                 progress=save)
    print(f"\n{report['requests']} requests in {report['seconds']} s, "
          f"{len(report['failures'])} failures, still answering: {report['still_answering']}")
    for f in report["failures"]:
        print(f"\nFAIL {f['route']} ({f['mode']}) {f['status']} {f['title']}\n"
              f"{f['message']}\n{f['curl']}")
    save(report)
    return 0 if not report["failures"] and report["still_answering"] else 1


if __name__ == "__main__":
    sys.exit(main())
