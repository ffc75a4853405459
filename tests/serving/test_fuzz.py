"""A bounded schema fuzz of the server (schemathesis; ``make fuzz`` runs the large one): a
fixed seed and example count, positive and negative requests for every documented
operation, against tw-small. No answer may be a server error or stray from the OpenAPI
document, and the server must still answer afterwards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, uvicorn)")
pytest.importorskip("schemathesis", reason="schema fuzzing needs schemathesis (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
#: requests per operation and mode: a few hundred requests in all, well under a minute
EXAMPLES = 16
SEED = 20261207


def _fuzzer():
    """benchmarks/serve_fuzz.py, the runner ``make fuzz`` uses (not a package: loaded by
    path)."""
    spec = importlib.util.spec_from_file_location("serve_fuzz",
                                                  ROOT / "benchmarks" / "serve_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz_report(small):
    fuzz = _fuzzer()
    app = fuzz.build_app(fuzz.fuzz_config(), models={"tw-small": small})
    return fuzz.run(app, EXAMPLES, SEED, log=lambda _: None)


def test_fuzz_finds_no_server_error_or_schema_violation(fuzz_report):
    failures = [f"{f['route']} ({f['mode']}) {f['status']}: {f['title']}\n{f['message'][:600]}"
                f"\n{f['curl'][:600]}" for f in fuzz_report["failures"]]
    assert not failures, "\n\n".join(failures)


def test_fuzz_covered_every_operation_both_ways(fuzz_report):
    routes = fuzz_report["by_route"]
    for route in ("POST /v1/chat/completions", "POST /v1/completions", "POST /tokenize",
                  "POST /detokenize"):
        positive, negative = routes[route]["positive"], routes[route]["negative"]
        assert sum(negative.values()) >= EXAMPLES // 2, (route, negative)
        assert all(400 <= int(s) < 500 for s in negative), (route, negative)
        assert positive.get("200", 0) > 0, (route, positive)
    assert routes["GET /v1/models/{model_id}"]["positive"] == {"200": 1}
    assert fuzz_report["requests"] >= 100


def test_server_still_answers_after_the_fuzz(fuzz_report):
    assert fuzz_report["still_answering"]
